#!/usr/bin/env bash
# OpenVision 2 ViT-L/14 on ReCap-DataComp-1B, the paper's two phases as two commands, under torchrun on a
# multi-node GPU cluster (configs/pretrain_ov2_l14.yaml has the schedule and its sources). Run the same
# command on every node, each with its NODE_RANK; OUT must be on a filesystem all nodes share (every rank
# writes its part of a checkpoint, and phase 2 reads phase 1's export).
#
#   Phase 1, 84 px, 12.81B samples, global batch 32,768 (writes $OUT/phase1, its encoder in phase1/encoder):
#     NNODES=8 NODE_RANK=0 MASTER_ADDR=node0 DATA='/data/recap-datacomp-1b/{00000..99999}.tar' \
#       TOKENIZER=/models/bert-base-uncased-bos-eos OUT=/shared/runs/ov2-l14 scripts/pretrain_ov2_l14.sh phase1
#   Phase 2, 224 px, 1.02B samples, global batch 16,384, from phase 1's weights (writes $OUT/phase2):
#     NNODES=8 NODE_RANK=0 MASTER_ADDR=node0 DATA='/data/recap-datacomp-1b/{00000..99999}.tar' \
#       TOKENIZER=/models/bert-base-uncased-bos-eos OUT=/shared/runs/ov2-l14 scripts/pretrain_ov2_l14.sh phase2
#
# Variables: NNODES (default 1), NODE_RANK (0), NPROC_PER_NODE (8), MASTER_ADDR (localhost), MASTER_PORT
# (29500), DATA and TOKENIZER (required), OUT (runs/ov2-l14). The per-process batch is the phase's global
# batch over NNODES x NPROC_PER_NODE processes. Rerunning a command after a failure or preemption resumes
# from its latest checkpoint. Further arguments go to `mllm pretrain`, e.g. --strategy fsdp.
set -euo pipefail
phase="${1:?usage: $0 phase1|phase2 [mllm pretrain options]}"
shift
: "${DATA:?set DATA to the ReCap-DataComp-1B webdataset shards, e.g. '/data/recap-datacomp-1b/{00000..99999}.tar'}"
: "${TOKENIZER:?set TOKENIZER to a tokenizer folder with bos and eos tokens (BERT-uncased WordPiece as the paper)}"
out="${OUT:-runs/ov2-l14}"
nnodes="${NNODES:-1}"
nproc="${NPROC_PER_NODE:-8}"
case "$phase" in
  phase1) global=32768; args=(--out "$out/phase1") ;;
  phase2) global=16384; args=(--out "$out/phase2" --init "$out/phase1") ;;
  *) echo "unknown phase '$phase': use phase1 or phase2" >&2; exit 2 ;;
esac
world=$((nnodes * nproc))
if (( global % world )); then
  echo "the global batch $global does not split over $world processes" >&2
  exit 2
fi
exec torchrun --nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
  --master_addr "${MASTER_ADDR:-localhost}" --master_port "${MASTER_PORT:-29500}" \
  -m mllm.cli pretrain --config configs/pretrain_ov2_l14.yaml --config "configs/pretrain_ov2_l14_$phase.yaml" \
  "${args[@]}" --batch_size $((global / world)) --data.shards "$DATA" --tokenizer "$TOKENIZER" "$@"
