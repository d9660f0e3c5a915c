#!/usr/bin/env bash
# Where a cold start goes: one configuration, ftl alone, five runs that
# differ only in what they find cached.
#
#   bench/cold_start.sh CONFIG        (CONFIG = minilm_l6-lora, mpnet_base-full, …)
#
#   r1-cold        nothing cached: NVRTC, the driver's compilation, and
#                  autotuning where ftl ships no tuning for this GPU
#   r2-driver      cubecl's PTX and autotune results kept, the driver's cache
#                  empty: what the driver's compilation of the used kernels costs
#   r3-nvrtc       autotune results and the driver's cache kept, the PTX
#                  removed: NVRTC for the kernels the tuned choices use
#   r4-warm        everything kept
#   r5-tune        the autotune results removed (r3's PTX kept): tuning again,
#                  compiling the candidates that r3 did not need (with ftl's
#                  shipped tuning for this GPU, the table is written again
#                  and nothing is tuned: use OWN_TUNING=1)
#
# Environment: FTL, FTL_DATA_PATH, OUT as for side_by_side.sh; MODELS, a
# folder holding both models (as FTL_HOME/models for side_by_side.sh);
# STEPS (default 30); LIMIT, seconds allowed per run (default 600);
# OWN_TUNING=1 to leave ftl's shipped tuning out (FTL_SHIPPED_TUNING=off):
# every run then tunes on this GPU as if ftl shipped none for it.
# Each run gets an empty FTL_HOME of its own at the start ($OUT/home, reused
# from run to run) and its own CUDA driver cache (CUDA_CACHE_PATH).
# Prints one JSON line per run: first-step seconds, the number of PTX
# entries in the cache, and the driver cache's size.
set -u
config=${1:?usage: bench/cold_start.sh CONFIG}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
home=$OUT/home driver=$OUT/driver
rm -rf "$home" "$driver"
mkdir -p "$home" "$driver"
ln -sfn "$MODELS" "$home/models"
export CUDA_CACHE_MAXSIZE=4294967295

run() { # name, driver cache folder
  local name=$1 s
  mkdir -p "$2"
  s=$(date +%s)
  CUDA_CACHE_PATH=$2 FTL_HOME=$home OUT=$OUT/$name \
    FTL_SHIPPED_TUNING=$([ "${OWN_TUNING:-0}" = 1 ] && echo off || echo on) STEPS=${STEPS:-30} SKIP_REFERENCE=1 \
    timeout "${LIMIT:-600}" bash "$here/side_by_side.sh" "$config" >"$OUT/$name.log" 2>&1
  local rc=$? wall=$(($(date +%s) - s))
  local ptx=$(cat "$home"/cubecl/*/cuda/*/ptx/toc.json.log 2>/dev/null | wc -l)
  local mb=$(du -sm "$2" | cut -f1)
  python3 - "$OUT/$name/side_by_side.jsonl" "$name" "$rc" "$wall" "$ptx" "$mb" <<'EOF'
import json, sys
path, name, rc, wall, ptx, mb = sys.argv[1:]
row = {"run": name, "timeout": int(rc) == 124, "wall_s": int(wall), "ptx_entries": int(ptx), "driver_cache_mb": int(mb)}
try:
    got = json.loads(open(path).read().strip().splitlines()[-1])
    row["ftl_rc"] = got.get("ftl_rc")
    row["first_step_s"] = got.get("ftl_first_step_s")
except Exception:
    row["first_step_s"] = None  # did not finish within LIMIT
print(json.dumps(row))
EOF
}

{
  run r1-cold "$driver/a"
  run r2-driver "$driver/b"
  rm -rf "$home"/cubecl/*/cuda
  run r3-nvrtc "$driver/a"
  run r4-warm "$driver/a"
  rm -rf "$home"/cubecl/*/autotune
  run r5-tune "$driver/a"
} | tee "$OUT/cold_start.jsonl"
