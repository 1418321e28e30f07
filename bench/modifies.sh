#!/usr/bin/env bash
# Modifies of resting limit orders (PUT /orders/{number}), alternating builds: on a fresh
# `stocknet up` each, 400 limit sells of GameStart far above its price (they never trade), then
# wrk re-prices them for 8 s at CONNS connections (bench/modifies.lua, two threads, each its own
# 200 orders). Prints modifies/s, p50, non-2xx answers and each process's CPU per 1,000 modifies.
#   bench/modifies.sh ROUNDS BIN... (CONNS, default 32, sets wrk's connections)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
conns=${CONNS:-32}
source bench/common.sh
source bench/cpu.sh
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    start_up 18080
    numbers=()
    for _ in $(seq 1 400); do
      numbers+=("$(curl -sf -H 'Content-Type: application/json' \
        -d '{"name":"GameStart","quantity":1,"type":"sell","price":2000}' \
        http://127.0.0.1:18080/orders | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["transaction_number"])')")
    done
    cpu "${pids[-1]}" >"$dir/before"
    out=$(ORDERS="${numbers[*]}" wrk -t2 -c"$conns" -d8s --latency -s bench/modifies.lua http://127.0.0.1:18080)
    cpu "${pids[-1]}" >"$dir/after"
    rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    per=$(join "$dir/before" "$dir/after" | awk -v n="$(echo "$rate * 8" | bc)" -v t="$ticks" \
      '{ms = ($3 - $2) * 1000 / t; all += ms; printf "%s %.0f, ", $1, ms * 1000 / n} END {printf "all %.0f", all * 1000 / n}')
    echo "round $round $(basename "$bin"): $(echo "$out" | awk '/Requests\/sec/ {r = $2} / 50%/ {p = $2} /Non-2xx/ {e = $NF} END {print r " modifies/s, p50 " p ", non-2xx " (e ? e : 0)}') (CPU ms per 1,000: $per)"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done
