#!/usr/bin/env bash
# Two ftl binaries on one configuration, ftl alone, taking turns: how an A/B
# speed comparison between two builds is measured on the GPU machine.
#
#   bench/alternate.sh CONFIG FTL_A FTL_B [ROUNDS]     (CONFIG = mpnet_base-full, …; ROUNDS default 3)
#
# Environment: FTL_HOME (holding the models under models/), FTL_DATA_PATH,
# OUT; STEPS (default 200). Anything else bench/side_by_side.sh reads.
#
# Each binary keeps its own cache folder ($OUT/home-a, $OUT/home-b, the
# models linked from FTL_HOME), so neither runs with kernels the other
# compiled or tuned. Each first runs a 30-step warm-up (its first step
# compiles and tunes; not counted). Then ROUNDS rounds of one run each, the
# order turning every round (A B, B A, A B, …): runs of one binary in one
# machine session spread by up to 29% (BENCHMARKS.md), and the first or
# second place in a pair has moved a result more than the binary did, so
# that place is given to each binary alike. Prints every run and each
# binary's median samples/s and the ratio of the medians (B / A); writes the
# runs to $OUT/alternate.jsonl.
set -u
if [ $# -lt 3 ]; then
  echo "usage: bench/alternate.sh CONFIG FTL_A FTL_B [ROUNDS]" >&2
  exit 2
fi
config=$1 bin_a=$2 bin_b=$3 rounds=${4:-3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
: >"$OUT/alternate.jsonl"

# One run of binary $1 (a or b), labelled $2, with $3 steps.
run() {
  local which=$1 label=$2 steps=$3 bin home out
  if [ "$which" = a ]; then bin=$bin_a; else bin=$bin_b; fi
  home=$OUT/home-$which
  mkdir -p "$home"
  [ -e "$home/models" ] || ln -s "$FTL_HOME/models" "$home/models"
  out=$OUT/runs/$label-$which
  rm -rf "$out"
  FTL=$bin FTL_HOME=$home OUT=$out STEPS=$steps SKIP_REFERENCE=1 \
    bash "$here/side_by_side.sh" "$config" >/dev/null 2>&1
  python3 - "$out/side_by_side.jsonl" "$which" "$label" "$OUT/alternate.jsonl" <<'EOF'
import json, sys
path, which, label, log = sys.argv[1:]
try:
    row = json.loads(open(path).readline())
except (OSError, ValueError) as e:
    row = {"ftl_error": f"no result: {e}"}
row.update(binary=which, run=label)
busy = row.get("ftl_gpu_busy_pct")
print(f"{label:>8} {which}: {row.get('ftl_samples_per_s')} samples/s, first step {row.get('ftl_first_step_s')} s, "
      f"first norm {row.get('ftl_first_grad_norm')}" + (f", GPU busy {busy}%" if busy is not None else "")
      + (f", {row['ftl_error']}" if "ftl_error" in row else ""), flush=True)
with open(log, "a") as f:
    f.write(json.dumps(row) + "\n")
EOF
}

run a warm-up 30
run b warm-up 30
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for which in $order; do
    run "$which" "round-$round" "${STEPS:-200}"
  done
done

python3 - "$OUT/alternate.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
medians = {}
for which in "ab":
    speeds = [r["ftl_samples_per_s"] for r in rows
              if r["binary"] == which and r["run"] != "warm-up" and r.get("ftl_samples_per_s")]
    if speeds:
        medians[which] = statistics.median(speeds)
        print(f"{which}: median {medians[which]:.1f} samples/s over {len(speeds)} runs ({', '.join(f'{s:.1f}' for s in speeds)})")
    else:
        print(f"{which}: no run gave a speed")
if len(medians) == 2:
    print(f"b / a: {medians['b'] / medians['a']:.3f}")
else:
    sys.exit(1)
EOF
