#!/usr/bin/env bash
# Makes ftl's tuning table for the GPU at hand (see src/runtime/tuning).
#
#   FTL=… MODELS=… FTL_DATA_PATH=… OUT=… bash bench/tuning_tables.sh [CONFIG...]
#
# Runs bench/pipelines/tune.ft, one configuration at a time (default: all
# six; CONFIG = minilm_l6-full, mpnet_base-qlora, …), each with an FTL_HOME
# of its own ($OUT/homes/CONFIG, kept between calls: a configuration that
# finished there is not run again, one that was stopped goes on from what it
# had tuned) and ftl's shipped tuning off, so that cubecl tunes every
# kernel on this GPU. Then gathers
# the winners of all homes into $OUT/GPU.jsonl (GPU as ftl names its cache
# folder, e.g. nvidia-h200), ready for src/runtime/tuning/GPU.jsonl.
#
# MODELS is a folder holding both models (weights may be random:
# bench/random_model.py; tuning depends on shapes only). A home may be given
# compiled kernels beforehand (under cubecl/GPU/cuda): tuning then compiles
# only what is missing.
#
# KEEP_SHIPPED=1 leaves ftl's shipped table on: each run tunes only the keys
# the table lacks (after a change to the kernels a step runs), and the
# gathered table is the shipped one plus those keys.
set -u
here=$(cd "$(dirname "$0")" && pwd)
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(minilm_l6-full minilm_l6-lora minilm_l6-qlora mpnet_base-full mpnet_base-lora mpnet_base-qlora)
mkdir -p "$OUT/homes"
for config in "${configs[@]}"; do
  home=$OUT/homes/$config
  if [ -e "$home/tuned" ]; then
    echo "$config: tuned already"
    continue
  fi
  mkdir -p "$home"
  ln -sfn "$MODELS" "$home/models"
  start=$(date +%s)
  shipped=off
  [ "${KEEP_SHIPPED:-0}" = 1 ] && shipped=on
  FTL_HOME=$home FTL_SHIPPED_TUNING=$shipped "$FTL" run "$here/pipelines/tune.ft" --only "tune/$config" \
    --output "$OUT/runs" --json --quiet >"$OUT/$config.json" 2>"$OUT/$config.err"
  rc=$?
  echo "$config: rc $rc in $(($(date +%s) - start)) s"
  [ $rc -eq 0 ] && touch "$home/tuned"
done
gpu=$(basename "$(dirname "$(compgen -G "$OUT/homes/*/cubecl/*/autotune" | head -1)")")
python3 "$here/tuning_table.py" "$OUT"/homes/* >"$OUT/$gpu.jsonl"
echo "$OUT/$gpu.jsonl: $(wc -l <"$OUT/$gpu.jsonl") entries"
