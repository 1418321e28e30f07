#!/usr/bin/env bash
# Durable orders through one frontend while a second frontend hangs (SIGSTOP), against the
# same cluster with both running: what a hung frontend costs trades through the catalog's
# invalidation pushes. Each round starts a fresh cluster (catalog pushing to both frontends,
# three order replicas, two frontends) per build, alternating, and runs `stocknet load` (market
# orders only) for 6 s with both frontends up, then for 6 s with the second one stopped.
#   bench/hung-frontend.sh ROUNDS /tmp/stocknet-before /tmp/stocknet-after
# CLIENTS (default 5) sets the orders' concurrency.
set -euo pipefail
rounds=$1; shift
clients=${CLIENTS:-5}
dir="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
url() { echo "http://127.0.0.1:$1"; }
orders_per_second() {
  "$1" load --frontend "$(url 18180)" --clients "$clients" --p 1 --duration 6s --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; o=r["requests"]["order"]; print(round(o["ok"]/r["seconds"]), o["p50_ms"])'
}
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"; mkdir -p "$dir/data"
    head -c 32 /dev/urandom | base64 >"$dir/secret"
    peers="1=$(url 18191),2=$(url 18192),3=$(url 18193)"
    common=(--secret-file "$dir/secret")
    RUST_LOG=warn "$bin" catalog --port 18181 --data-dir "$dir/data" \
      --frontends "$(url 18180),$(url 18182)" "${common[@]}" >"$dir/catalog.log" 2>&1 &
    pids=($!)
    for id in 1 2 3; do
      RUST_LOG=warn "$bin" order --port "1819$id" --node-id "$id" --peers "$peers" \
        --catalog-url "$(url 18181)" --data-dir "$dir/data" "${common[@]}" >"$dir/order$id.log" 2>&1 &
      pids+=($!)
    done
    for port in 18180 18182; do
      RUST_LOG=warn "$bin" frontend --port "$port" --catalog-url "$(url 18181)" \
        --order-replicas "$peers" "${common[@]}" >"$dir/frontend$port.log" 2>&1 &
      pids+=($!)
    done
    hung=${pids[5]}
    for _ in $(seq 1 300); do
      curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
        -d '{"name":"GameStart","quantity":1,"type":"buy"}' "$(url 18180)/orders" && break
      sleep 0.1
    done
    read -r both both_p50 < <(orders_per_second "$bin")
    kill -STOP "$hung"
    read -r stopped stopped_p50 < <(orders_per_second "$bin")
    echo "round $round $bin: both frontends up $both orders/s (p50 $both_p50 ms); one hung $stopped orders/s (p50 $stopped_p50 ms)"
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
  done
done
