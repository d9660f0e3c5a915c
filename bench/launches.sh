#!/usr/bin/env bash
# Kernel launches and GPU time per training step, counted by cubecl's own
# profiler: runs one configuration of bench/pipelines/speed.ft for N and for
# 3N steps with every kernel launch timed (CUBECL_DEBUG_OPTION=profile) and
# reports the difference per step, so loading, the first step's compilation
# and tuning, and the end of the run cancel out.
#
#   bench/launches.sh CONFIG [N]     (CONFIG = minilm_l6-full, …; N default 10)
#
# Environment: FTL, FTL_HOME (warm it first: a compilation in the window
# would be counted as time), FTL_DATA_PATH, OUT.
#
# Profiling waits for each kernel to finish, so the run itself is slower;
# the counts are exact and the times are the kernels' own. Prints one JSON
# line: launches per step, GPU milliseconds per step, the ten kernels with
# the most time and the ten launched most often; writes every kernel's
# launches and milliseconds per step to $OUT/kernels-CONFIG.json.
set -u
config=$1
n=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
work=$(mktemp -d)
for steps in "$n" $((3 * n)); do
  sed "s/steps = 200/steps = $steps/" "$here/pipelines/speed.ft" >"$work/speed.ft"
  CUBECL_DEBUG_LOG="$OUT/profile-$config-$steps.log" CUBECL_DEBUG_OPTION=profile \
    "$FTL" run "$work/speed.ft" --only "speed/$config" --output "$work/runs-$steps" --json --quiet \
    >"$OUT/launches-$config-$steps.json" 2>"$OUT/launches-$config-$steps.err" || exit 1
done
python3 - "$OUT" "$config" "$n" <<'EOF'
import json, re, sys, collections
out, config, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
units = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
line = re.compile(r"^\| ([0-9.]+)(ns|µs|us|ms|s) *\| (.+)$")
def read(steps):
    count, ms, per, launches = 0, 0.0, collections.Counter(), collections.Counter()
    for l in open(f"{out}/profile-{config}-{steps}.log", encoding="utf-8", errors="replace"):
        m = line.match(l.rstrip("\n"))
        if m:
            t, kernel = float(m.group(1)) * units[m.group(2)], m.group(3).strip()
            count += 1; ms += t; per[kernel] += t; launches[kernel] += 1
    return count, ms, per, launches
c1, t1, p1, l1 = read(n)
c3, t3, p3, l3 = read(3 * n)
steps = 2 * n
top = sorted(((k, (p3[k] - p1.get(k, 0)) / steps) for k in p3), key=lambda kv: -kv[1])[:10]
row = {"config": config, "steps": steps, "launches_per_step": round((c3 - c1) / steps, 1),
       "gpu_ms_per_step": round((t3 - t1) / steps, 3),
       "top": [{"kernel": k[:160], "ms_per_step": round(v, 3)} for k, v in top],
       "most_launched": [{"kernel": k[:160], "launches_per_step": round((v - l1.get(k, 0)) / steps, 1)}
                         for k, v in sorted(l3.items(), key=lambda kv: -(kv[1] - l1.get(kv[0], 0)))[:10]]}
print(json.dumps(row))
every = sorted(((k, round((l3[k] - l1.get(k, 0)) / steps, 1), round((p3[k] - p1.get(k, 0)) / steps, 4)) for k in l3),
               key=lambda r: -r[2])
json.dump([{"kernel": k, "launches_per_step": c, "ms_per_step": t} for k, c, t in every if c],
          open(f"{out}/kernels-{config}.json", "w"), indent=0)
with open(f"{out}/launches.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
EOF
