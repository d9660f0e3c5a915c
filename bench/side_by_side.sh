#!/usr/bin/env bash
# ftl and the PyTorch reference, side by side, on one GPU machine, in one go.
#
#   bench/side_by_side.sh CONFIG...      (CONFIG = minilm_l6-full, mpnet_base-qlora, …; default: all six)
#
# Environment:
#   FTL            the ftl binary (built with CUDA)
#   FTL_HOME       ftl's cache, holding both models under models/
#   FTL_DATA_PATH  a folder holding sst2/train.tsv and sst2/dev.tsv
#   REFERENCE      pytorch_reference.py (../shared/bench/pytorch_reference.py)
#   OUT            where results go
#   STEPS          optimizer steps per run (default 200, as bench/pipelines/speed.ft)
#   PIPELINE       ftl's side (default bench/pipelines/speed.ft; its sweep
#                  must name runs speed/CONFIG)
#   PRECISION      the reference's precision (default bf16)
#   SKIP_REFERENCE set to 1 to run ftl alone (a second, warm pass)
#   REFERENCE_MODES the reference's runs per configuration (default:
#                  "default pretokenize"): "default" tokenizes each batch as it
#                  is drawn (the reference's own default), "pretokenize" (its
#                  --pretokenize) tokenizes the whole set once before training,
#                  as ftl does: the like-for-like comparison
#   RANDOM_MODELS  models whose weights are random on both sides (default: both).
#                  Real weights only where the folder holds the f32 checkpoint:
#                  transformers loads an F16-stored one as f16 parameters, and
#                  the reference's full and LoRA runs then diverge to NaN.
#   REFERENCE_ARGS more arguments for every reference run, e.g. --compile
#   RUNS           where ftl's run folders go (default: a fresh temporary folder;
#                  a configuration run again replaces its earlier run there)
#
# Both sides train on SST-2 with batch 32 and at most 64 tokens. Per run it
# records samples/s after 20 warm-up steps, the peak of the framework's own
# allocator (PyTorch max_memory_allocated; ftl's sampled bytes in use), the
# process's peak device memory as NVML reports it (sampled every 100 ms), and
# the GPU's busy share during training as NVML reports it (both sides: how
# well the host keeps the GPU fed), the seconds from process start to the
# end of the first optimizer step,
# ftl's first and largest gradient norms (a sanity check on training), and
# ftl's memory estimate with its error against the measured peak.
# Models in RANDOM_MODELS use random weights on both sides (the reference's
# --random-init; for ftl a folder written by bench/random_model.py): speed and
# memory do not depend on the values.
set -u
steps=${STEPS:-200}
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(minilm_l6-full minilm_l6-lora minilm_l6-qlora mpnet_base-full mpnet_base-lora mpnet_base-qlora)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
runs=${RUNS:-$(mktemp -d)}

# NVML's GPU utilization (the share of time some kernel was running),
# sampled every 100 ms into file $1 until stopped.
gpu_busy_start() {
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null &
  busy_pid=$!
}

# Peak NVML memory (MiB) of process $1, sampled until it exits.
nvml_peak() {
  local pid=$1 max=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
      awk -F', *' -v p="$pid" '$1 == p { print $2 }')
    if [ -n "$v" ] && [ "$v" -gt "$max" ]; then max=$v; fi
    sleep 0.1
  done
  echo "$max"
}

for config in "${configs[@]}"; do
  model=${config%-*}
  method=${config##*-}
  case $model in
    minilm_l6) dir=$FTL_HOME/models/sentence-transformers--all-MiniLM-L6-v2 ;;
    mpnet_base) dir=$FTL_HOME/models/sentence-transformers--all-mpnet-base-v2 ;;
  esac
  random=
  case " ${RANDOM_MODELS:-minilm_l6 mpnet_base} " in *" $model "*) random=--random-init ;; esac

  # ftl (a finished run is kept, not retrained: clear it so a repeat measures)
  rm -rf "${runs:?}/speed/$config" "$runs/speed/.$config.partial"
  start=$(date +%s.%N)
  gpu_busy_start "$OUT/ftl-$config.busy"
  "$FTL" run "${PIPELINE:-$here/pipelines/speed.ft}" --only "speed/$config" --output "$runs" --json --quiet \
    >"$OUT/ftl-$config.json" 2>"$OUT/ftl-$config.err" &
  pid=$!
  ftl_nvml=$(nvml_peak $pid)
  wait $pid
  ftl_rc=$?
  kill $busy_pid 2>/dev/null
  ftl_wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  # Keep the run's metrics and summary beside the results (the run folder
  # itself stays in $runs, outside $OUT, and is replaced on the next pass).
  cp "$runs/speed/$config/metrics.jsonl" "$OUT/ftl-$config.metrics.jsonl" 2>/dev/null
  cp "$runs/speed/$config/summary.json" "$OUT/ftl-$config.summary.json" 2>/dev/null

  # PyTorch, once per mode
  ref_nvml=() ref_rc=()
  modes=${REFERENCE_MODES-default pretokenize}
  [ "${SKIP_REFERENCE:-0}" = 1 ] && modes=
  for mode in $modes; do
    case $mode in
      default) mode_args= suffix= ;;
      pretokenize) mode_args=--pretokenize suffix=-pretokenize ;;
      *) echo "unknown reference mode $mode" >&2; exit 2 ;;
    esac
    gpu_busy_start "$OUT/ref-$config$suffix.busy"
    python3 "$REFERENCE" --model-dir "$dir" --data-dir "$FTL_DATA_PATH/sst2" --methods "$method" \
      --steps "$steps" --precision "${PRECISION:-bf16}" $random $mode_args ${REFERENCE_ARGS:-} \
      --out "$OUT/ref-$config$suffix.json" >"$OUT/ref-$config$suffix.log" 2>&1 &
    pid=$!
    ref_nvml+=("$mode=$(nvml_peak $pid)")
    wait $pid
    ref_rc+=("$mode=$?")
    kill $busy_pid 2>/dev/null
  done

  python3 - "$OUT" "$config" "$ftl_nvml" "$ftl_rc" "$ftl_wall" "${ref_nvml[*]}" "${ref_rc[*]}" <<'EOF'
import json, sys
out, config, ftl_nvml, ftl_rc, ftl_wall, ref_nvml, ref_rc = sys.argv[1:]
ref_nvml = dict(kv.split("=") for kv in ref_nvml.split())
ref_rc = dict(kv.split("=") for kv in ref_rc.split())
row = {"config": config, "ftl_rc": int(ftl_rc), "ftl_nvml_mib": int(ftl_nvml), "ftl_wall_s": float(ftl_wall)}
def busy(name):
    """Mean NVML utilization (%) over the samples where the GPU was in use at
    all: the training, not the loading or tokenizing before it. Well under
    100 means the host does not keep the GPU fed."""
    try:
        values = [int(l) for l in open(f"{out}/{name}.busy") if l.strip().isdigit()]
    except OSError:
        return None
    used = [v for v in values if v > 0]
    return round(sum(used) / len(used), 1) if used else None
row["ftl_gpu_busy_pct"] = busy(f"ftl-{config}")
try:
    summary = json.loads(open(f"{out}/ftl-{config}.json").read().strip().splitlines()[-1])
    steps = [json.loads(l) for l in open(f"{out}/ftl-{config}.metrics.jsonl")]
    later = [s for s in steps if s["step"] > 20]
    secs = sum(32 / s["samples_per_s"] for s in later)
    t = summary["timing"]
    row.update(ftl_samples_per_s=round(32 * len(later) / secs, 1),
               ftl_peak_alloc_mib=round((summary["peak_memory_bytes"] or 0) / 2**20, 1),
               # The estimator's prediction (`ftl estimate`), and how far the
               # sampled peak is from it.
               ftl_estimate_mib=round(summary["estimated_memory_bytes"] / 2**20, 1),
               ftl_first_step_s=round(t["load"] + t["warmup"], 2),
               ftl_final_loss=steps[-1].get("loss"),
               # A training that goes wrong shows here first: LoRA and QLoRA
               # start near the same norm.
               ftl_first_grad_norm=steps[0].get("grad_norm"),
               ftl_max_grad_norm=max(s.get("grad_norm") or 0 for s in steps))
    if row["ftl_peak_alloc_mib"]:
        row["ftl_estimate_error"] = round(row["ftl_estimate_mib"] / row["ftl_peak_alloc_mib"] - 1, 3)
except Exception as e:
    row["ftl_error"] = repr(e)
# One set of columns per reference mode: ref_* (default), ref_pretokenize_*.
for mode in ref_rc:
    p = "ref" if mode == "default" else f"ref_{mode}"
    suffix = "" if mode == "default" else f"-{mode}"
    row[f"{p}_rc"] = int(ref_rc[mode])
    row[f"{p}_nvml_mib"] = int(ref_nvml[mode])
    row[f"{p}_gpu_busy_pct"] = busy(f"ref-{config}{suffix}")
    try:
        ref = json.load(open(f"{out}/ref-{config}{suffix}.json"))
        ref = ref[0] if isinstance(ref, list) else ref
        row.update({f"{p}_samples_per_s": ref.get("samples_per_s"), f"{p}_peak_alloc_mib": ref.get("peak_mib"),
                    f"{p}_first_step_s": ref.get("first_step_s")})
    except Exception as e:
        row[f"{p}_error"] = repr(e)
        continue
    if "ftl_samples_per_s" in row and row.get(f"{p}_samples_per_s"):
        row[f"{p}_speed_ratio"] = round(row["ftl_samples_per_s"] / row[f"{p}_samples_per_s"], 3)
    if row.get("ftl_peak_alloc_mib") and row.get(f"{p}_peak_alloc_mib"):
        row[f"{p}_alloc_ratio"] = round(row["ftl_peak_alloc_mib"] / row[f"{p}_peak_alloc_mib"], 3)
    if row["ftl_nvml_mib"] and row[f"{p}_nvml_mib"]:
        row[f"{p}_nvml_ratio"] = round(row["ftl_nvml_mib"] / row[f"{p}_nvml_mib"], 3)
print(json.dumps(row), flush=True)
with open(f"{out}/side_by_side.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
EOF
done
