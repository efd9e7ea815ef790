#!/usr/bin/env bash
# The LLaVA-1.5 recipe (configs/llava15.yaml) on one node with torchrun; the HF Trainer handles DDP.
#   ENCODER=runs/pretrain/encoder LLM=/models/Meta-Llama-3-8B-Instruct NGPU=8 scripts/train_llava15.sh
# The LLM folder must hold a tokenizer with a chat template (Llama-3-Instruct, SmolLM-Instruct, ...).
set -euo pipefail
: "${ENCODER:?set ENCODER to an exported encoder folder (mllm pretrain writes one)}"
: "${LLM:?set LLM to a local Hugging Face causal-LM folder}"
exec torchrun --nproc_per_node "${NGPU:-8}" -m mllm.cli train --config configs/llava15.yaml \
  --out "${OUT:-runs/llava15}" --encoder.path "$ENCODER" --llm.path "$LLM" "$@"
