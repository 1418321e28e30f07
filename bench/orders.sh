#!/usr/bin/env bash
# Durable orders, several runs for medians: each run starts a fresh `stocknet up` and places
# orders with `stocknet load` (p = 1) at 5 and at 32 clients, then stops it. Prints every run
# and the medians. The data directory comes from mktemp, so TMPDIR=/dev/shm puts every log
# on tmpfs, where fsync costs nothing: the same path without the disk.
# Further arguments go to `stocknet load` (e.g. --limit for limit orders on the book).
#   bench/orders.sh [runs, default 5] [seconds per measurement, default 8] [load flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}" seconds="${2:-8}"
shift $(($# < 2 ? $# : 2))
load_flags=("$@")
source bench/lib.sh

for run in $(seq 1 "$runs"); do
  start_up 18080
  for clients in 5 32; do
    "$bin" load --frontend http://127.0.0.1:18080 --clients "$clients" --p 1 \
      --duration "${seconds}s" --max-quantity 3 "${load_flags[@]}" --json \
      >"$dir/run-$run-$clients.json"
  done
  kill "${pids[@]}"
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
  rm -rf "$dir/data"
done
python3 - "$dir" "$runs" <<'PY'
import json, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
for clients in (5, 32):
    rows = []
    for run in range(1, runs + 1):
        r = json.load(open(f"{d}/run-{run}-{clients}.json"))["runs"][0]
        s, v = r["requests"]["order"], r["verification"]
        assert v["mismatched"] == 0 and v["unreadable"] == 0, f"verification failed: {v}"
        # Refused orders (409: a market buy of a stock the house has run out of) cost no
        # commit round; the acknowledged rate counts only the orders that executed.
        rows.append((s["per_second"], s["p50_ms"], s["p99_ms"], s["ok"] / r["seconds"]))
    runs_text = ", ".join(f"{t:.0f}/s ({ok:.0f}/s acknowledged) p50 {p50:.2f}"
                          for t, p50, _, ok in rows)
    print(f"{clients} clients: {runs_text}")
    print(f"{clients} clients, median: {statistics.median(r[0] for r in rows):.0f}/s, "
          f"acknowledged {statistics.median(r[3] for r in rows):.0f}/s, "
          f"p50 {statistics.median(r[1] for r in rows):.2f} ms, "
          f"p99 {statistics.median(r[2] for r in rows):.2f} ms")
PY
