#!/usr/bin/env bash
# The sweep of run.sh as one call on a bare GPU machine, run from the repository root:
#   SEEDS="0 1" LIMIT=400 benchmarks/sketch_device/device_sweep.sh OUT
# Installs the wheels carried in .whl (the packages the machine's image lacks), lays the demo's world and its
# POPE questions down (seconds), then runs `run.sh sweep` once per seed, all at once, and every 30 s packs
# the logs into OUT/sweep_logs.tgz (written aside, then renamed), so that a call cut short still brings back
# what every job had printed. Unpack the archive and give its folders to existence_device/collect.py.
set -uo pipefail
out=${1:?output folder}; here=$(dirname "$0"); world=runs/demo/world; logs=/tmp/sweep
mkdir -p "$out" /tmp/bin "$logs"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    exit 1
fi
# run.sh calls `python`; a wrapper rather than a link, since a link to a virtual environment's interpreter
# loses the environment's packages.
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH TQDM_DISABLE=1
[ -d "$world/stage_data" ] || python -m mllm.cli world --out "$world" --seed 0 --scale small --image_size 96 \
  --jpeg_quality 95 --describe_prob 1.0 > "$out/world.log" 2>&1 || exit 1
bash "$here/run.sh" prepare "$logs" || exit 1
pack() { tar czf "$out/.sweep_logs.tgz" -C "$logs" . && mv "$out/.sweep_logs.tgz" "$out/sweep_logs.tgz"; }
pids=()
for seed in ${SEEDS:-0}; do
  SEED=$seed bash "$here/run.sh" sweep "$logs/seed$seed" & pids+=($!)
done
while kill -0 "${pids[@]}" 2> /dev/null; do sleep 30; pack; done
wait
pack
for log in "$logs"/seed*/sketch_lm_*.log; do echo "$log: $(grep '^step' "$log" | tail -n 1)"; done
