#!/usr/bin/env bash
# Durable orders while idle subscribers hold WebSocket streams: what streams that are sent
# nothing cost everybody's trading. Each round starts a fresh `stocknet up --cache-size 12` per
# build, alternating, opens STREAMS streams of PATH that nothing is sent on
# (bench/idle_streams.py), and runs `stocknet load` (32 clients, p = 1, 8 s); it prints orders/s,
# p50 and p99, and each process's CPU time (user + system, /proc/PID/stat) per 1,000 orders.
#   bench/idle-streams.sh ROUNDS STREAMS PATH /tmp/stocknet-before /tmp/stocknet-after
# PATH /ws/orders: streams of one user who places no order, while the load places market
# orders. PATH /ws/book/Tesla: the book of a stock the load does not trade, while it places
# limit orders (half of them trade) in three others; PATH /ws/book/GameStart: the book of one of
# those three. READ=1: the streams read (and drop) what they are sent, as subscribers that keep
# up. STREAMS 0 measures the same without streams; the frontend keeps 1,000 open at most.
set -euo pipefail
rounds=$1; streams=$2; path=$3; shift 3
flags=()
case "$path" in
  /ws/book/Tesla | /ws/book/GameStart) flags=(--limit --stocks GameStart,FishCo,BoarCo) ;;
  /ws/orders) ;;
  *) echo "PATH: /ws/orders, /ws/book/Tesla or /ws/book/GameStart" >&2; exit 2 ;;
esac
dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
source bench/cpu.sh
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    RUST_LOG=warn "$bin" up --data-dir "$dir/data" --frontend-port 18080 --catalog-port 18081 \
      --cache-size 12 --order-ports 18091,18092,18093 >"$dir/up.log" 2>&1 &
    up=$!
    pids=("$up")
    for _ in $(seq 1 600); do grep -q "Ctrl-C stops everything" "$dir/up.log" && break; sleep 0.1; done
    if [ "$streams" -gt 0 ]; then
      python3 bench/idle_streams.py http://127.0.0.1:18080 "$streams" "$path" ${READ:+--read} \
        >"$dir/streams.log" 2>&1 &
      pids+=($!)
      for _ in $(seq 1 600); do grep -q "^open" "$dir/streams.log" && break; sleep 0.1; done
      grep -q "^open" "$dir/streams.log" || { cat "$dir/streams.log"; exit 1; }
    fi
    cpu "$up" >"$dir/before"
    "$bin" load --frontend http://127.0.0.1:18080 --clients 32 --p 1 --duration 8s \
      --max-quantity 3 "${flags[@]}" --json >"$dir/orders.json"
    cpu "$up" >"$dir/after"
    read -r acknowledged orders p50 p99 < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; o=r["requests"]["order"]; print(o["ok"], round(o["ok"]/r["seconds"]), o["p50_ms"], o["p99_ms"])' "$dir/orders.json")
    per_order=$(join "$dir/before" "$dir/after" | awk -v n="$acknowledged" -v t="$ticks" \
      '{ms = ($3 - $2) * 1000 / t; all += ms; printf "%s %.0f, ", $1, ms * 1000 / n} END {printf "all %.0f", all * 1000 / n}')
    echo "round $round $bin, $streams idle streams of $path: orders $orders/s, p50 $p50 ms, p99 $p99 ms (CPU ms per 1,000: $per_order)"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
  done
done
