#!/usr/bin/env bash
# A/B of two builds: alternating, each round on a fresh `stocknet up --cache-size 12`, durable
# orders (32 clients, p = 1, 8 s; acknowledged per second, and each process's CPU time, user +
# system from /proc/PID/stat, per 1,000 of them; orders per commit round, from the replicas'
# metrics) and cached lookups (32 clients, p = 0, 5 s).
# Build each commit and copy its target/release/stocknet somewhere first:
#   bench/ab.sh ROUNDS /tmp/stocknet-before /tmp/stocknet-after
# A build may be followed by `:` and more flags for the orders' load, e.g. authenticated
# orders: bench/ab.sh 3 /tmp/stocknet /tmp/stocknet:--users=8
# CLIENTS (default 32) sets the orders' concurrency, e.g. CLIENTS=5 bench/ab.sh 3 A B.
# WRK=1 places the orders with wrk instead (market orders of one share, buys and sells
# alternating, as bench/etcd.sh does: orders only, no lookup or read beside them), and also
# prints how many appends the followers answered per commit round.
set -euo pipefail
rounds=$1; shift
clients=${CLIENTS:-32}
dir="$(mktemp -d)"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
source bench/cpu.sh
# "acknowledged per-second p50-ms": durable orders placed for 8 s, by `stocknet load` or wrk.
place_orders() {
  local bin=$1 flags=$2
  if [ -n "${WRK:-}" ]; then
    wrk -t"$((clients < 2 ? 1 : 2))" -c"$clients" -d8s --latency -s bench/market-orders.lua \
      http://127.0.0.1:18080 | awk '
      / requests in / {n = $1}
      /Non-2xx/ {bad = $NF}
      /Requests\/sec/ {rps = $2}
      / 50%/ {p = $2; if (p ~ /us$/) {sub(/us/, "", p); p /= 1000} else if (p ~ /ms$/) {sub(/ms/, "", p)} else {sub(/s/, "", p); p *= 1000}}
      END {printf "%d %.0f %.3f\n", n - bad, rps, p}'
  else
    # shellcheck disable=SC2086 # the flags are words
    "$bin" load --frontend http://127.0.0.1:18080 --clients "$clients" --p 1 --duration 8s \
      --max-quantity 3 $flags --json >"$dir/orders.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; o=r["requests"]["order"]; print(o["ok"], round(o["ok"]/r["seconds"]), o["p50_ms"])' "$dir/orders.json"
  fi
}
# The appends the replicas answered (`POST /raft/append`).
appends() {
  for port in 18091 18092 18093; do
    curl -s "http://127.0.0.1:$port/metrics" |
      grep -E '^stocknet_order_http_request_duration_seconds_count\{.*route="/raft/append"' || true
  done | awk '{s += $NF} END {print s + 0}'
}
# "orders rounds": the orders the group's leaders committed, and in how many commit rounds.
commit_rounds() {
  for port in 18091 18092 18093; do
    curl -s "http://127.0.0.1:$port/metrics" | grep -E '^stocknet_order_commit_round_entries_(sum|count) '
  done | awk '/_sum/ {s += $2} /_count/ {c += $2} END {print s + 0, c + 0}'
}
for round in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    bin=${spec%%:*}
    flags=
    [ "$spec" != "$bin" ] && flags=${spec#*:}
    rm -rf "$dir/data"
    RUST_LOG=warn "$bin" up --data-dir "$dir/data" --frontend-port 18080 --catalog-port 18081 \
      --cache-size 12 --order-ports 18091,18092,18093 >"$dir/up.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "Ctrl-C stops everything" "$dir/up.log" && break; sleep 0.1; done
    cpu "$pid" >"$dir/before"
    rounds_before=$(commit_rounds) appends_before=$(appends)
    read -r acknowledged orders p50 < <(place_orders "$bin" "$flags")
    cpu "$pid" >"$dir/after"
    per_round=$(printf '%s %s\n%s %s\n' "$rounds_before" "$appends_before" "$(commit_rounds)" "$(appends)" |
      awk 'NR == 1 {s = $1; c = $2; a = $3} NR == 2 {r = ($2 - c) > 0 ? $2 - c : 1; printf "%.1f orders per commit round, %.2f appends the followers answered per round", ($1 - s) / r, ($3 - a) / r}')
    per_order=$(join "$dir/before" "$dir/after" | awk -v n="$acknowledged" -v t="$ticks" \
      '{ms = ($3 - $2) * 1000 / t; all += ms; printf "%s %.0f, ", $1, ms * 1000 / n} END {printf "all %.0f", all * 1000 / n}')
    lookups=$("$bin" load --frontend http://127.0.0.1:18080 --clients 32 --p 0 --duration 5s \
      --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(round(r["requests"]["lookup"]["per_second"]))')
    echo "round $round $spec: orders $orders/s, p50 $p50 ms, $per_round (CPU ms per 1,000: $per_order), lookups $lookups/s"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
