#!/usr/bin/env bash
# The sketch recipe on a GPU: an LM that reads scene sketches (sketch_lm.py), frozen while the LayerNorm
# connector aligns, then the instruction stage with the LM frozen or trained gently. Every job at once (the
# models are tiny), each cut at $LIMIT seconds; collect.py gathers the logs into one JSON.
#   main: frozen / gentle on the demo encoder, frozen on the random encoder, frozen on a 4x-pretrained
#         encoder, and a fresh LM taught sketches from scratch (2,500 steps) then frozen.
#   more: gentle at the demo's budget (OV2 and random encoder), gentle on the random encoder, and 6,000
#         instruction steps at LM learning rate 1e-4 and 3e-4.
#   sweep: eight fresh sketch LMs (2,500 steps) around the CPU's best curriculum ("best": half of each batch
#         repeats, POPE questions two thirds of the sketch steps, the first 750 steps' questions about
#         one-object scenes; sketch_one_object_cpu.json, where it took off at 1,000-1,250 steps for the
#         seeds tried but one): best, then one change each (sign words sketched too, 0, 400 and 1,500
#         one-object steps, learning rate 5e-4, LM size, batch 64). The take-off step varies with the seed:
#         SEED=1 (2, ...) reruns the sweep with another one, and device_sweep.sh runs several seeds in one
#         call of a bare machine.
# Needs runs/demo (`mllm demo`: world and encoder) and runs/sketch_lm (sketch_lm.py; sweep needs neither
# the LM nor the encoder); then
#   benchmarks/sketch_device/run.sh main|more|sweep|prepare OUT
#   python benchmarks/existence_device/collect.py --device "one H200" RESULT.json OUT_MAIN OUT_MORE
set -uo pipefail
part=${1:?main, more, sweep or prepare}; out=${2:?output folder}; limit=${LIMIT:-440}
here=$(dirname "$0"); world=runs/demo/world; device=${DEVICE:-cuda}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export here out world device
mkdir -p "$out"
[ -f "$world/stage_data/existence_single.json" ] || {
  python benchmarks/existence_stage.py --world "$world" --out "$world/stage_data/existence.json" &&
  python benchmarks/existence_device/prepare.py "$world"; } > "$out/existence_data.log" 2>&1 ||
  { echo "the POPE data could not be prepared: see $out/existence_data.log" >&2; exit 1; }
[ "$part" = prepare ] && exit 0  # the data alone, before several sweeps share it
train() {  # name config [overrides...]
  local name=$1 cfg=$2; shift 2
  python -m mllm.cli train --config "$here/base.yaml" --config "$here/$cfg" --out "$out/runs/$name" "$@" \
    > "$out/$name.log" 2>&1
}
export -f train
if [ "$part" = main ]; then
  timeout "$limit" bash -c 'train demo_enc frozen.yaml' &
  timeout "$limit" bash -c 'train random_enc frozen.yaml --encoder.random_init true' &
  timeout "$limit" bash -c 'train demo_enc_lm gentle.yaml' &
  timeout "$limit" bash -c 'python -m mllm.cli pretrain --config "$here/pretrain.yaml" --out "$out/runs/enc4x" \
    --tokenizer "$world/tokenizer" --data.shards "$world/shards" --samples "${SAMPLES:-160000}" --num_workers 6 \
    --device "$device" > "$out/enc4x_pretrain.log" 2>&1 &&
    train enc4x_vlm frozen.yaml --encoder.path "$out/runs/enc4x/encoder"' &
  timeout "$limit" bash -c 'python benchmarks/sketch_lm.py --init "$world/tokenizer" --fresh --world "$world" \
    --device "$device" --steps "${LM_STEPS:-2500}" --eval_every 250 --save "$out/runs/lm_fresh" \
    > "$out/sketch_lm_fresh.log" 2>&1 &&
    train fresh_vlm frozen.yaml --llm.path "$out/runs/lm_fresh" --llm.tokenizer "$out/runs/lm_fresh"' &
elif [ "$part" = more ]; then
  timeout "$limit" bash -c 'train budget_ov2 gentle_demo_budget.yaml' &
  timeout "$limit" bash -c 'train budget_random gentle_demo_budget.yaml --encoder.random_init true' &
  timeout "$limit" bash -c 'train random_lm gentle.yaml --encoder.random_init true' &
  timeout "$limit" bash -c 'train long_lm3e4 gentle_long_3e-4.yaml' &
  timeout "$limit" bash -c 'train long_lm1e4 gentle_long_1e-4.yaml' &
elif [ "$part" = sweep ]; then
  fresh() {  # name [sketch_lm.py options...]
    local name=$1; shift
    python benchmarks/sketch_lm.py --init "$world/tokenizer" --fresh --world "$world" --device "$device" \
      --steps "${LM_STEPS:-2500}" --eval_every 250 --seed "${SEED:-0}" "$@" > "$out/sketch_lm_$name.log" 2>&1
  }
  export -f fresh
  best="--sketch 0.5 --text 0 --existence_weight 0.67 --one_object_steps 750"
  export best
  timeout "$limit" bash -c 'fresh best $best' &
  timeout "$limit" bash -c 'fresh best_signs $best --signs' &
  timeout "$limit" bash -c 'fresh best_one_object_400 $best --one_object_steps 400' &
  timeout "$limit" bash -c 'fresh best_one_object_1500 $best --one_object_steps 1500' &
  timeout "$limit" bash -c 'fresh best_lr_5e-4 $best --lr 5e-4' &
  timeout "$limit" bash -c 'fresh best_256x4 $best --size "{\"hidden_size\": 256, \"num_layers\": 4, \"num_heads\": 4, \"intermediate_size\": 704}"' &
  timeout "$limit" bash -c 'fresh best_no_one_object $best --one_object_steps 0' &
  timeout "$limit" bash -c 'fresh best_batch_64 $best --batch 64' &
else
  echo "unknown part $part: main, more, sweep or prepare" >&2; exit 2
fi
wait
