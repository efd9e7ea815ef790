#!/usr/bin/env bash
# Sketch LMs that also read signs, and the VLMs they give at the demo's budget, as one call on a bare GPU
# machine, run from the repository root:
#   LIMIT=430 benchmarks/sketch_device/signs_device.sh lms|encoders OUT
# Lays the demo's world down (configs/demo.yaml's world: its held-out pairs are the current code's), then:
#   lms: at once, the demo's encoder pretraining and six fresh sketch LMs (sketch_lm.py --signs, the CPU's
#     reliable curriculum at lr 5e-4, LM_STEPS steps, checks every 250), each saved to /tmp/lm_NAME. As soon as
#     an LM whose name is in VLM_LMS and the encoder are both done, two VLMs train on it (gentle_demo_budget.yaml:
#     align 500 connector steps with the LM frozen, then 1,192 instruction steps at LM lr 1e-4, all eight
#     benchmarks scored at the end), one on the OV2 encoder and one on the random-init control.
#   encoders: which OV2 encoder reads: two sketch LMs (signs, reading questions 15% of the sketch steps, laid
#     out for a /32 and a /16 tower), and OV2 encoders with more tokens per object (Pico/16, 12 of 36 tokens
#     kept, 40k and 80k samples) or more pretraining (Pico/32, 160k samples); each VLM as in lms, and the
#     Pico/16 random-init control.
# Every job is cut at LIMIT seconds; every 30 s the logs are packed into OUT/logs.tgz (written aside, then
# renamed). Unpack it and give the folder to existence_device/collect.py. DEVICE=cpu LIMIT=60 LM_STEPS=20
# checks that every job starts.
set -uo pipefail
part=${1:?lms or encoders}; out=${2:?output folder}; here=$(dirname "$0"); world=runs/demo/world; logs=/tmp/signs_logs
mkdir -p "$out" /tmp/bin "$logs"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    exit 1
fi
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH TQDM_DISABLE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 here world logs out limit=${LIMIT:-430} device=${DEVICE:-cuda} steps=${LM_STEPS:-1500}
export vlm_lms=${VLM_LMS:-"r15_s0 r15_s1"}
[ -d "$world/stage_data" ] || python -m mllm.cli world --out "$world" --seed 0 --scale small --image_size 96 \
  --jpeg_quality 95 --describe_prob 1.0 > "$logs/world.log" 2>&1 || exit 1
{ python benchmarks/existence_stage.py --world "$world" --out "$world/stage_data/existence.json" &&
  python benchmarks/existence_device/prepare.py "$world"; } > "$logs/existence_data.log" 2>&1 || exit 1
pack() { tar czf "$out/.logs.tgz" -C "$logs" . && mv "$out/.logs.tgz" "$out/logs.tgz"; }
encoder() {  # name [mllm pretrain options...]: the encoder in /tmp/enc_NAME, then /tmp/enc_NAME.done
  local name=$1; shift
  python -m mllm.cli pretrain --config "$here/pretrain.yaml" --out "/tmp/enc_$name" --tokenizer "$world/tokenizer" \
    --data.shards "$world/shards" --num_workers 4 --device "$device" "$@" > "$logs/encoder_$name.log" 2>&1 &&
    touch "/tmp/enc_$name.done"
}
vlm() {  # name lm encoder random_init: one VLM once its encoder is done
  until [ -f "/tmp/enc_$3.done" ]; do sleep 5; done
  python -m mllm.cli train --config "$here/base.yaml" --config "$here/gentle_demo_budget.yaml" --out "/tmp/vlm_$1" \
    --data_root "$world" --encoder.path "/tmp/enc_$3/encoder" --encoder.random_init "$4" --llm.path "/tmp/lm_$2" \
    --llm.tokenizer "/tmp/lm_$2" > "$logs/vlm_$1.log" 2>&1
}
sketch_lm() {  # name seed [sketch_lm.py options...]
  local name=$1 seed=$2; shift 2
  python benchmarks/sketch_lm.py --init "$world/tokenizer" --fresh --world "$world" --device "$device" \
    --steps "$steps" --eval_every 250 --seed "$seed" --save "/tmp/lm_$name" --signs --sketch 0.5 --text 0 \
    --one_object_steps 750 --lr 5e-4 "$@" > "$logs/sketch_lm_$name.log" 2>&1
}
export -f encoder vlm sketch_lm
pids=()
run() { timeout "$limit" bash -c "$1" & pids+=($!); }
if [ "$part" = lms ]; then
  run 'encoder demo'
  lm() {  # name seed [sketch_lm.py options...]: the LM, then its two VLMs if its name is in VLM_LMS
    sketch_lm "$@" || return
    [[ " $vlm_lms " == *" $1 "* ]] || return 0
    vlm "$1_ov2" "$1" demo false & vlm "$1_random" "$1" demo true & wait
  }
  export -f lm
  for job in "r15_s0 0 --existence_weight 0.6 --reading_weight 0.15" \
             "r15_s1 1 --existence_weight 0.6 --reading_weight 0.15" \
             "r15_s2 2 --existence_weight 0.6 --reading_weight 0.15" \
             "r30_s0 0 --existence_weight 0.5 --reading_weight 0.3" \
             "r0_s0 0 --existence_weight 0.67" \
             "r15_s0_lr1e3 0 --existence_weight 0.6 --reading_weight 0.15 --lr 1e-3"; do
    run "lm $job"
  done
elif [ "$part" = encoders ]; then
  run 'encoder p16 --model.vit Pico/16'
  run 'encoder p16_80k --model.vit Pico/16 --samples 80000'
  run 'encoder p32_160k --samples 160000'
  reading="--existence_weight 0.6 --reading_weight 0.15"
  run "sketch_lm side3 0 $reading && vlm p32_160k side3 p32_160k false"
  run "sketch_lm side6 0 $reading --side 6 && { vlm p16_ov2 side6 p16 false & vlm p16_random side6 p16 true &
       vlm p16_80k side6 p16_80k false & wait; }"
else
  echo "unknown part $part: lms or encoders" >&2; exit 2
fi
while kill -0 "${pids[@]}" 2> /dev/null; do sleep 30; pack; done
wait
pack
for log in "$logs"/sketch_lm_*.log; do echo "$(basename "$log"): $(grep '^step' "$log" | tail -n 1)"; done
for log in "$logs"/vlm_*.log; do echo "$(basename "$log"): $(grep 'during_training' "$log" | tail -n 1)"; done
