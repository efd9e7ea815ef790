#!/usr/bin/env bash
# LLaVA-1.5 (configs/llava15.yaml) on one node of 8 GPUs with torchrun; the HF Trainer handles DDP and
# DeepSpeed. Global batch 256 (align) then 128 (instruct) = batch_size x grad_accum x GPUs.
#   DATA_ROOT=/shared/llava-data ENCODER=runs/ov2-l14/phase2/encoder LLM=/models/Meta-Llama-3-8B-Instruct \
#     scripts/train_llava15.sh
# The LLM folder must hold a tokenizer with a chat template (Llama-3-Instruct, SmolLM-Instruct), or pass
# --llm.chat_template vicuna_v1 for Vicuna. Rerunning after a failure with --resume latest continues the stage
# that was running. Further arguments go to `mllm train` (e.g. --deepspeed configs/deepspeed/zero3.json).
set -euo pipefail
: "${ENCODER:?set ENCODER to an encoder folder (an mllm pretrain export, a released OpenVision folder, CLIP or SigLIP)}"
: "${LLM:?set LLM to a local Hugging Face causal-LM folder}"
exec torchrun --nproc_per_node "${NGPU:-8}" -m mllm.cli train --config configs/llava15.yaml \
  --out "${OUT:-runs/llava15}" --data_root "${DATA_ROOT:-data}" --encoder.path "$ENCODER" --llm.path "$LLM" "$@"
