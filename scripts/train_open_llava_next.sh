#!/usr/bin/env bash
# Open-LLaVA-NeXT (configs/open_llava_next.yaml) on 4 nodes of 8 GPUs, as its scripts/v1_6/train/8b/*.sh:
# global batch 256 (align, 8 per GPU) then 128 (instruct, 4 per GPU), DeepSpeed ZeRO-2. Run on every node:
#   NNODES=4 NODE_RANK=$i MASTER_ADDR=node0 ENCODER=/shared/ov2-l14-336/encoder \
#     LLM=/models/Meta-Llama-3-8B-Instruct OUT=/shared/runs/open-llava-next scripts/train_open_llava_next.sh
# DATA_ROOT (default data) holds the data as the YAML names it (LLaVA-Pretrain/, open-llava-next/).
# With fewer GPUs keep the global batch: --stages.0.grad_accum / --stages.1.grad_accum, or edit the YAML.
set -euo pipefail
: "${ENCODER:?set ENCODER to an encoder folder}"
: "${LLM:?set LLM to a local Hugging Face causal-LM folder (Llama-3-8B-Instruct in the reference run)}"
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "${NPROC_PER_NODE:-8}" \
  --master_addr "${MASTER_ADDR:-localhost}" --master_port "${MASTER_PORT:-29500}" \
  -m mllm.cli train --config configs/open_llava_next.yaml --out "${OUT:-runs/open-llava-next}" \
  --encoder.path "$ENCODER" --llm.path "$LLM" "$@"
