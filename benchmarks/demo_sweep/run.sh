#!/usr/bin/env bash
# Demo variants side by side: every YAML here runs as `mllm demo` at once (one GPU is plenty: the models are
# tiny), then collect.py gathers headline scores, chance levels, stage losses and timings into one JSON.
#   benchmarks/demo_sweep/run.sh /tmp/sweep benchmarks/results/demo_sweep.json
# The files differ from configs/demo.yaml of their day only where their names say: w1 the small world,
# w2 the medium world (20k images) with Pico/16, w3 connector LR 5e-3 in the instruct stage, w4 instruct LR
# 2e-3, w5 Pico/32, w6 keep ratio 1.0, w7 fewer pretraining samples for more instruct steps.
set -euo pipefail
out=${1:?output folder}; result=${2:?result json}
here=$(dirname "$0")
export OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
for cfg in "$here"/w*.yaml; do
  name=$(basename "$cfg" .yaml)
  python -m mllm.cli demo --config "$cfg" --out "$out/$name" > "$out/$name.log" 2>&1 &
done
wait
python "$here/collect.py" "$out" "$result"
