#!/usr/bin/env bash
# What one cached lookup costs the frontend and the bare axum ceiling: CPU time per request
# (user and system, from /proc) and context switches per request, while wrk (2 threads, 32
# connections, `GET /stocks/GameStart`) runs 4 s against each, alternating, ROUNDS times, on
# a fresh `stocknet up --cache-size 12`. Throughput ratios (bench/lookups.sh) move with the
# machine's phase; these say where the difference goes.
#   bench/lookup-cpu.sh ROUNDS BUILD   (e.g. bench/lookup-cpu.sh 3 target/release/stocknet)
set -euo pipefail
rounds=$1 bin=$2
cd "$(dirname "$0")/.."
source bench/common.sh
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
# measure PID PORT: requests/s, CPU µs per request, context switches per request
measure() {
  local t0 s0 out t1 s1
  t0=$(ticks "$1"); s0=$(switches "$1")
  out=$(wrk -t2 -c32 -d4s "http://127.0.0.1:$2/stocks/GameStart")
  t1=$(ticks "$1"); s1=$(switches "$1")
  echo "$out" | awk -v t="$((t1 - t0))" -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" \
    '/Requests\/sec/ {n = $2 * 4; printf "%.0f/s, %.2f µs CPU, %.3f switches", $2, t / hz / n * 1e6, s / n}'
}
for round in $(seq 1 "$rounds"); do
  rm -rf "$dir/data"
  start_up 18080
  RUST_LOG=warn "$bin" ceiling --port 18099 >"$dir/ceiling.log" 2>&1 &
  ceiling=$!
  pids+=("$ceiling")
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18099/stocks/GameStart >/dev/null && break; sleep 0.1; done
  curl -sf http://127.0.0.1:18080/stocks/GameStart >/dev/null # fills the cache
  frontend=$(pgrep -f "$bin frontend --port 18080" | head -1)
  echo "round $round: frontend $(measure "$frontend" 18080); ceiling $(measure "$ceiling" 18099)"
  echo "round $round: frontend $(measure "$frontend" 18080); ceiling $(measure "$ceiling" 18099)"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()
done
