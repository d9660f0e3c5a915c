#!/usr/bin/env python3
"""Gathers cubecl's autotune results into one ftl tuning table.

    python3 bench/tuning_table.py HOME... > src/runtime/tuning/GPU.jsonl

Reads every autotune table under HOME/cubecl/*/autotune/ (as ftl's runs left
them) and writes one JSON line per tuned key: the cubecl table it belongs to,
cubecl's key (with its checksum) and the winner (its index and timing only;
the losers' timings are dropped). A key tuned in two homes keeps the first
home's winner; how many disagreed is printed on stderr. Lines are sorted, so
the same results give the same file.
"""
import glob
import json
import os
import sys

entries = {}
disagreed = 0
for home in sys.argv[1:]:
    pattern = os.path.join(home, "cubecl", "*", "autotune", "*", "device-*", "*.json.log")
    for path in sorted(glob.glob(pattern)):
        table = os.path.basename(path)[: -len(".json.log")]
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # an unfinished last line
                value = entry["value"]
                best = value["fastest_index"]
                winner = [
                    r
                    for r in value.get("results", [])
                    if r.get("outcome", {}).get("Ok", {}).get("index") == best
                ]
                key = (table, json.dumps(entry["key"]["key"], sort_keys=True))
                row = {
                    "table": table,
                    "key": entry["key"],
                    "value": {"fastest_index": best, "results": winner},
                }
                if key in entries:
                    if entries[key]["value"]["fastest_index"] != best:
                        disagreed += 1
                    continue
                entries[key] = row

for key in sorted(entries):
    print(json.dumps(entries[key], separators=(",", ":")))
tables = sorted({t for t, _ in entries})
print(
    f"{len(entries)} entries in {len(tables)} tables; {disagreed} keys tuned twice with different winners",
    file=sys.stderr,
)
