#!/usr/bin/env bash
# Compiles the CUDA kernels of several configurations of bench/pipelines/speed.ft
# at once: one process per configuration, each with its own kernel cache
# ($HOMES/CONFIG, the models linked from $FTL_HOME/models), 3 steps each.
# cubecl compiles one kernel at a time in a process, so configurations
# compiled side by side take about as long as the slowest one alone.
# The autotune results are removed afterwards: on a GPU without shipped
# tuning (src/runtime/tuning) they were timed with several processes sharing
# the GPU. The next run of each configuration tunes again from the compiled
# kernels (seconds, not minutes), or takes the shipped tuning again.
#
#   bench/warm_caches.sh CONFIG...   (default: all six)
#
# Environment: FTL, FTL_HOME (holds models/), FTL_DATA_PATH, OUT,
#              HOMES (default $FTL_HOME/per-config), LIMIT (seconds, default 900)
# Then, per configuration: FTL_HOME=$HOMES/CONFIG bench/side_by_side.sh CONFIG
set -u
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(minilm_l6-full minilm_l6-lora minilm_l6-qlora mpnet_base-full mpnet_base-lora mpnet_base-qlora)
here=$(cd "$(dirname "$0")" && pwd)
homes=${HOMES:-$FTL_HOME/per-config}
mkdir -p "$OUT" "$homes"
work=$(mktemp -d)
sed 's/steps = 200/steps = 3/' "$here/pipelines/speed.ft" >"$work/warm.ft"
for config in "${configs[@]}"; do
  mkdir -p "$homes/$config"
  ln -sfn "$FTL_HOME/models" "$homes/$config/models"
  (
    start=$(date +%s)
    FTL_HOME=$homes/$config timeout "${LIMIT:-900}" "$FTL" run "$work/warm.ft" --only "speed/$config" \
      --output "$work/runs" --json --quiet >"$OUT/warm-$config.json" 2>"$OUT/warm-$config.err"
    echo "$config rc=$? $(($(date +%s) - start)) s" | tee -a "$OUT/warm.txt"
  ) &
done
wait
for config in "${configs[@]}"; do rm -rf "$homes/$config"/cubecl/*/autotune; done
