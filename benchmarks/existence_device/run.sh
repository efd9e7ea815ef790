#!/usr/bin/env bash
# Can the existence skill (POPE's "Is there a <shape> in the image?") be bought with more steps? Two runs for
# one GPU, every job at once (the models are tiny), each job cut at $LIMIT seconds (default 420); collect.py
# gathers the curves into one JSON.
#   long: after the caption stage, 5,000 steps of one-turn POPE questions (lr 1e-3 and 3e-3; one-object
#         images only) and 4,500 of the instruction mix, scored on the benchmarks as they train; beside
#         them six lm_existence_probe.py runs of 10,000 steps (object lists of 1-4, POPE's chat prompt).
#   warm: three LM warm-ups with half their documents repeats (1.5 epochs with the text POPE questions of
#         prepare.py, 1.5 without, 2.0 with), each followed by align + POPE questions and align + instructions.
# Needs runs/demo (`mllm demo`), existence_stage.py's data and caption stage (runs/existence/captions), and
# prepare.py's files; then
#   benchmarks/existence_device/run.sh long|warm OUT; python benchmarks/existence_device/collect.py OUT RESULT.json
set -uo pipefail
part=${1:?long or warm}; out=${2:?output folder}; limit=${LIMIT:-420}
here=$(dirname "$0"); world=runs/demo/world; device=${DEVICE:-cuda}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
train() {  # name config [overrides...]
  local name=$1 cfg=$2; shift 2
  timeout "$limit" python -m mllm.cli train --config "$here/base.yaml" --config "$here/$cfg" --out "$out/$name" "$@" \
    > "$out/$name.log" 2>&1
}
probe() {  # name [options...]
  local name=$1; shift
  timeout "$limit" python benchmarks/lm_existence_probe.py --world "$world" --device "$device" --steps 10000 \
    --eval_every 500 --context lists --max_objects 4 --out "$out/$name.json" "$@" > "$out/$name.log" 2>&1
}
warm() {  # name epochs conversations...
  local name=$1 epochs=$2; shift 2
  local convs; convs=$(printf '"%s",' "$@"); convs="[${convs%,}]"
  timeout "$limit" bash -c '
    python -m mllm.cli pretrain-lm --out "$0/$1/lm" --corpus "$3/text/corpus.txt" --conversations "$4" \
      --llm.tokenizer "$3/tokenizer" --llm.hidden_size 192 --llm.num_layers 3 --llm.num_heads 3 \
      --llm.num_kv_heads 3 --llm.intermediate_size 512 --batch_size 32 --lr 1e-3 --repeat_fraction 0.5 \
      --epochs "$2" --logging_steps 100 > "$0/$1.lm.log" 2>&1 || exit 1
    for v in existence instruct; do
      python -m mllm.cli train --config "$5/base.yaml" --config "$5/warm_$v.yaml" --out "$0/$1/$v" \
        --llm.path "$0/$1/lm/model" --llm.tokenizer "$0/$1/lm/model" > "$0/$1.$v.log" 2>&1 &
    done
    wait' "$out" "$name" "$epochs" "$world" "$convs" "$here"
}
if [ "$part" = long ]; then
  train long_single long_single.yaml & train long_instruct long_instruct.yaml &
  train long_single_lr3 long_single_lr3.yaml & train long_one_object long_one_object.yaml &
  probe probe_repeat --repeat_fraction 0.5 & probe probe_repeat_lr3 --repeat_fraction 0.5 --lr 3e-3 &
  probe probe_no_repeat --repeat_fraction 0 &
  probe probe_repeat_256x4 --repeat_fraction 0.5 --size '{"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 704}' &
  probe probe_captions_repeat --repeat_fraction 0.5 --context captions &
  probe probe_repeat_2x8 --repeat_fraction 0.5 --size '{"num_layers": 2, "num_heads": 8}' &
elif [ "$part" = warm ]; then
  warm warm_pope 1.5 "$world/text/reading.json" "$world/text/existence_text.json" &
  warm warm_plain 1.5 "$world/text/reading.json" &
  warm warm_pope_longer 2.0 "$world/text/reading.json" "$world/text/existence_text.json" &
else
  echo "unknown part $part: long or warm" >&2; exit 2
fi
wait
