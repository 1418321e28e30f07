#!/usr/bin/env bash
# Cached lookups against the bare axum ceiling, for one or more builds, alternating: each round
# starts each build's `stocknet up --cache-size 12` and its `stocknet ceiling`, then runs wrk
# (2 threads, 32 connections, `GET /stocks/GameStart`) for 2 s on the frontend and 2 s on the
# ceiling, five times over, and prints the medians and their ratio (and each slice's). Slices
# this short, alternated, keep the machine's slow and fast phases out of the ratio.
#   bench/lookups.sh ROUNDS BUILD...   (e.g. bench/lookups.sh 3 /tmp/stocknet-before target/release/stocknet)
set -euo pipefail
rounds=$1; shift
cd "$(dirname "$0")/.."
source bench/common.sh
rate() { wrk -t2 -c32 -d2s "$1/stocks/GameStart" | awk '/Requests\/sec/ {print $2}'; }

for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    start_up 18080
    RUST_LOG=warn "$bin" ceiling --port 18099 >"$dir/ceiling.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18099/stocks/GameStart >/dev/null && break; sleep 0.1; done
    curl -sf http://127.0.0.1:18080/stocks/GameStart >/dev/null # fills the cache
    frontend=() ceiling=()
    for _ in 1 2 3 4 5; do
      frontend+=("$(rate http://127.0.0.1:18080)")
      ceiling+=("$(rate http://127.0.0.1:18099)")
    done
    python3 - "$round" "$bin" "${frontend[*]}" "${ceiling[*]}" <<'PY'
import statistics, sys
round_, build = sys.argv[1], sys.argv[2]
frontend = [float(x) for x in sys.argv[3].split()]
ceiling = [float(x) for x in sys.argv[4].split()]
f, c = statistics.median(frontend), statistics.median(ceiling)
slices = " ".join(f"{a / b:.2f}" for a, b in zip(frontend, ceiling))
print(f"round {round_} {build}: frontend {f:.0f}/s, ceiling {c:.0f}/s, "
      f"frontend / ceiling {f / c:.2f} (slices {slices})")
PY
    kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()
  done
done
