#!/usr/bin/env bash
# Tensor operations registered with burn's fusion stream per training step,
# by kind: what bounds a step on the fused CUDA backend is host time per
# operation (BENCHMARKS.md, "Where the host time goes").
#
#   bench/op_count.sh build          makes the counting binary (on the build machine)
#   bench/op_count.sh CONFIG         runs it (on the GPU machine; CONFIG = mpnet_base-full, …)
#
# build: copies burn-fusion 0.21.0 from cargo's registry, applies
# bench/burn-fusion-op-count.patch (counts every registered operation by
# kind and output type, and prints the counts at every read of a float
# tensor) and builds ftl against it in target/op-count (Cargo.lock is put
# back afterwards). Writes target/op-count/release/ftl.
#
# CONFIG: environment FTL (the counting binary), FTL_HOME, FTL_DATA_PATH,
# OUT. Runs 60 steps of bench/pipelines/speed.ft; ftl reads its metrics
# every 25 steps, so the counts printed at steps 26 and 51 differ by 25
# whole steps. Prints one JSON line: operations per step and per kind.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ "${1:-}" = build ]; then
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/burn-fusion-0.21.0 | head -1)
  [ -d "$src" ] || { echo "burn-fusion 0.21.0 is not in cargo's registry: run cargo fetch" >&2; exit 1; }
  work="$root/target/op-count/burn-fusion-0.21.0"
  rm -rf "$work" && mkdir -p "$(dirname "$work")" && cp -r "$src" "$work"
  patch -d "$work" -p1 <"$here/burn-fusion-op-count.patch" >/dev/null || exit 1
  cp "$root/Cargo.lock" "$root/target/op-count/Cargo.lock.kept"
  (cd "$root" && CARGO_TARGET_DIR="$root/target/op-count" cargo build --release --features cuda \
    --config "patch.crates-io.burn-fusion.path=\"$work\"")
  status=$?
  cp "$root/target/op-count/Cargo.lock.kept" "$root/Cargo.lock"
  exit $status
fi
config=$1
mkdir -p "$OUT"
work=$(mktemp -d)
sed "s/steps = 200/steps = 60/" "$here/pipelines/speed.ft" >"$work/speed.ft"
"$FTL" run "$work/speed.ft" --only "speed/$config" --output "$work/runs" --json --quiet \
  >"$OUT/ops-$config.json" 2>"$work/err" || { tail -5 "$work/err" >&2; exit 1; }
grep -a '^\[opcount\]' "$work/err" >"$OUT/ops-$config.txt"
rm -rf "$work"
python3 - "$OUT/ops-$config.txt" "$config" <<'PY'
import json, sys
def counts(line):
    return {k: int(v) for k, v in (p.rsplit("=", 1) for p in line.split(" | ")[1:])}
lines = open(sys.argv[1]).read().splitlines()
# The last eight reads are the four metric windows (after steps 1, 26, 51
# and 60), two reads each (losses, then gradient norms); reads before them
# are loading's (QLoRA's packing reads).
if len(lines) < 8:
    sys.exit("fewer than four metric windows were read: no 25-step difference")
a, b = counts(lines[-6]), counts(lines[-4])
per = {k: (b.get(k, 0) - a.get(k, 0)) / 25 for k in b}
per = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
print(json.dumps({"config": sys.argv[2], "ops_per_step": round(sum(per.values()), 2), "by_kind": per}))
PY
