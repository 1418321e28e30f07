#!/usr/bin/env bash
# Side-by-side throughput on this machine, fixed parameters: StockNet's frontend (cached
# lookups, durable orders) against a bare axum handler serving the same JSON (the ceiling),
# measured with `stocknet load` and with wrk. Everything runs on 127.0.0.1.
#   bench/compare.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
source bench/lib.sh

fe=18080 ceiling=18099
RUST_LOG=warn "$bin" ceiling --port $ceiling >"$dir/ceiling.log" 2>&1 &
pids+=($!)
start_up $fe
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$ceiling/stocks/GameStart" >/dev/null && break; sleep 0.1; done

summary() {  # file, request type
  python3 - "$1" "$2" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
s = run["requests"][sys.argv[2]]
v = run["verification"]
verified = v["mismatched"] == 0 and v["unreadable"] == 0
print(f"{s['per_second']:.0f}/s p50 {s['p50_ms']:.3f} ms p99 {s['p99_ms']:.3f} ms "
      f"errors {s['errors']} verified {verified}")
PY
}
rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["requests"]["lookup"]["per_second"])' "$1"; }

echo "== stocknet load, lookups only (p = 0), 32 clients, ${seconds}s"
"$bin" load --frontend "http://127.0.0.1:$fe" --clients 32 --p 0 --duration "${seconds}s" --json >"$dir/fe.json"
"$bin" load --frontend "http://127.0.0.1:$ceiling" --clients 32 --p 0 --duration "${seconds}s" \
  --stocks GameStart,FishCo,BoarCo,MenhirCo --json >"$dir/ceiling.json"
echo "frontend (cached): $(summary "$dir/fe.json" lookup)"
echo "bare axum ceiling: $(summary "$dir/ceiling.json" lookup)"
python3 -c "print(f'frontend / ceiling: {$(rate "$dir/fe.json") / $(rate "$dir/ceiling.json"):.0%}')"

echo "== wrk, GET /stocks/GameStart, 2 threads, 32 connections, ${seconds}s"
for target in "frontend http://127.0.0.1:$fe" "ceiling http://127.0.0.1:$ceiling"; do
  set -- $target
  printf '%-9s ' "$1"
  wrk -t2 -c32 -d"${seconds}s" --latency "$2/stocks/GameStart" | awk '/Requests\/sec/ {rps=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} END {print rps " req/s, p50 " p50 ", p99 " p99}'
done

echo "== stocknet load, durable orders (p = 1), ${seconds}s"
for clients in 5 32; do
  "$bin" load --frontend "http://127.0.0.1:$fe" --clients $clients --p 1 --duration "${seconds}s" \
    --max-quantity 3 --json >"$dir/orders-$clients.json"
  echo "$clients clients: $(summary "$dir/orders-$clients.json" order)"
done
