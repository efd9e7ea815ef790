#!/usr/bin/env bash
# The OpenVision papers' SmolLM recipe (configs/openvision_smollm.yaml): align, knowledge, instruct, at an input
# resolution RES (384, 448, 512, 672 or 768 in the paper's ablation) on one node of 8 GPUs.
#   RES=768 DATA_ROOT=/shared/data ENCODER=runs/ov2-l14/phase2/encoder LLM=/models/SmolLM2-135M-Instruct \
#     scripts/train_openvision_smollm.sh
# Under DATA_ROOT the YAML expects LLaVA's layout (LLaVA-Pretrain/, llava_v1_5_mix665k.json and its image
# folders) plus knowledge/recap_captions.json with knowledge/images, a LLaVA-format caption set (the stage the
# paper scales x1..x8). For LLaVA-NeXT's 1M or LLaVA-OneVision's 3M instruct mix, copy the YAML and change the
# last stage's data.
set -euo pipefail
: "${ENCODER:?set ENCODER to an OpenVision encoder folder (its sin-cos positions take any RES)}"
: "${LLM:?set LLM to a local SmolLM(2)-Instruct folder}"
exec torchrun --nproc_per_node "${NGPU:-8}" -m mllm.cli train --config configs/openvision_smollm.yaml \
  --out "${OUT:-runs/openvision-smollm-${RES:-384}}" --data_root "${DATA_ROOT:-data}" \
  --encoder.path "$ENCODER" --encoder.image_size "${RES:-384}" --llm.path "$LLM" "$@"
