#!/usr/bin/env bash
# What readers of old orders cost everybody's trading when the archive is not in the page
# cache: alternating builds, each on a fresh `stocknet up` keeping 1,000 orders and trades in
# memory; limit orders fill the archive, then wrk places market orders at 5 connections for
# 8 s while bench/old_orders.py reads random archived orders and the page cache is dropped
# every half second (as memory pressure or a slow disk would leave it). Needs root (it writes
# /proc/sys/vm/drop_caches). Prints orders/s, p50 and p99 of the orders, and the reads done.
#   bench/cold-reads.sh ROUNDS BIN...
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
source bench/common.sh
export STOCKNET_ORDERS_IN_MEMORY=1000 STOCKNET_TRADES_IN_MEMORY=1000
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    start_up 18080
    "$bin" load --frontend http://127.0.0.1:18080 --clients 32 --p 1 --limit --duration 6s \
      --json >"$dir/fill.json"
    placed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["requests"]["order"]["ok"])' "$dir/fill.json")
    sync
    python3 bench/old_orders.py http://127.0.0.1:18080 "$((placed / 2))" 12 >"$dir/reads" &
    reader=$!
    ( for _ in $(seq 1 24); do echo 1 >/proc/sys/vm/drop_caches; sleep 0.5; done ) &
    dropper=$!
    out=$(wrk -t2 -c5 -d8s --latency -s bench/market-orders.lua http://127.0.0.1:18080)
    wait "$reader" "$dropper"
    echo "round $round $(basename "$bin"): $(echo "$out" | awk '/Requests\/sec/ {r = $2} / 50%/ {p = $2} / 99%/ {q = $2} END {print r " orders/s, p50 " p ", p99 " q}'), $(cat "$dir/reads") of ${placed} entries"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done
