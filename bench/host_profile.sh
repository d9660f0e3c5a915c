#!/usr/bin/env bash
# Where a training step's host time goes: runs one configuration of
# bench/pipelines/speed.ft (600 steps, so the window below is all training)
# and, from second 9 to 13, samples each of ftl's threads' CPU use every
# 0.25 s; with PERF set, also records a CPU profile of all threads with perf
# (4 s flat at 997 Hz, then 2 s with DWARF call graphs at 299 Hz) and
# reports it. Then stops the run.
#
#   bench/host_profile.sh CONFIG        (CONFIG = mpnet_base-full, …)
#
# Environment: FTL, FTL_HOME (warm it first: compilation in the window would
# be counted), FTL_DATA_PATH, OUT; PERF (optional) a perf binary, e.g.
# "env LD_LIBRARY_PATH=… /path/to/perf".
#
# Writes $OUT/threads-CONFIG.json (each thread's name and share of one core,
# per second) and, with PERF, comm-CONFIG.txt (samples per thread),
# flat-CONFIG.txt (self time by thread and symbol), calls-CONFIG.txt
# (inclusive time by thread and symbol, with callers).
set -u
config=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
work=$(mktemp -d)
sed "s/steps = 200/steps = 600/" "$here/pipelines/speed.ft" >"$work/speed.ft"
"$FTL" run "$work/speed.ft" --only "speed/$config" --output "$work/runs" --json --quiet \
  >"$OUT/host-$config.json" 2>"$OUT/host-$config.err" &
pid=$!
sleep 9
python3 - "$pid" "$OUT/threads-$config.json" <<'PY' &
import json, os, sys, time
pid, out = int(sys.argv[1]), sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
def read():
    r = {}
    for t in os.listdir(f"/proc/{pid}/task"):  # OSError once the run has ended
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        r[t] = (s[s.index("(") + 1:s.rindex(")")], (int(f[11]) + int(f[12])) / hz)
    return r
samples = []
end = time.time() + 4
while time.time() < end:
    try:
        samples.append((time.time(), read()))
    except OSError:
        break
    time.sleep(0.25)
if len(samples) < 2:
    sys.exit(f"the run (pid {pid}) ended before the sampling window; see host-*.err")
(t0, a), (t1, b) = samples[0], samples[-1]
threads = sorted(({"thread": a[k][0], "tid": k, "core_share": round((b[k][1] - a[k][1]) / (t1 - t0), 2)}
                  for k in a if k in b), key=lambda r: -r["core_share"])
json.dump({"seconds": round(t1 - t0, 2), "threads": threads}, open(out, "w"), indent=1)
PY
sampler=$!
if [ -n "${PERF:-}" ]; then
  $PERF record -F 997 -p "$pid" -o "$work/flat.data" -- sleep 4 >/dev/null 2>&1
  $PERF record -F 299 --call-graph dwarf,16384 -p "$pid" -o "$work/calls.data" -- sleep 2 >/dev/null 2>&1
fi
wait $sampler
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "${PERF:-}" ]; then
  $PERF report -i "$work/flat.data" --sort comm --stdio >"$OUT/comm-$config.txt" 2>&1
  $PERF report -i "$work/flat.data" --sort comm,dso,sym --no-children --stdio --percent-limit 0.3 >"$OUT/flat-$config.txt" 2>&1
  $PERF report -i "$work/calls.data" --children --sort comm,sym --stdio --percent-limit 1.5 \
    -g caller,0.5,callee,function,percent --max-stack 40 >"$OUT/calls-$config.txt" 2>&1
fi
rm -rf "$work"
[ -f "$OUT/threads-$config.json" ] || exit 1
cat "$OUT/threads-$config.json"
