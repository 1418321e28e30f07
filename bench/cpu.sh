#!/usr/bin/env bash
# CPU time per durable order, by process: a fresh `stocknet up --cache-size 12` per build and
# round, 32 clients (`stocknet load --p 1`, 8 s); each process's user + system time over the
# run (from /proc/PID/stat), divided by the orders acknowledged. Alternates the builds:
#   bench/cpu.sh ROUNDS /tmp/stocknet-before /tmp/stocknet-after
set -euo pipefail
rounds=$1; shift
dir="$(mktemp -d)"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
ticks=$(getconf CLK_TCK)
# "role ticks" for every child of `up`: its role is its subcommand (and node id).
cpu() {
  for child in $(pgrep -P "$1"); do
    role=$(tr '\0' ' ' <"/proc/$child/cmdline" | awk '{r=$2; for (i=3;i<=NF;i++) if ($i=="--node-id") r=r"-"$(i+1); print r}')
    awk -v r="$role" '{print r, $14 + $15}' "/proc/$child/stat"
  done
}
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    RUST_LOG=warn "$bin" up --data-dir "$dir/data" --frontend-port 38080 --catalog-port 38081 \
      --cache-size 12 --order-ports 38091,38092,38093 >"$dir/up.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "Ctrl-C stops everything" "$dir/up.log" && break; sleep 0.1; done
    cpu "$pid" | sort >"$dir/before"
    "$bin" load --frontend http://127.0.0.1:38080 --clients 32 --p 1 --duration 8s \
      --max-quantity 3 --json >"$dir/load.json"
    cpu "$pid" | sort >"$dir/after"
    orders=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; print(r["requests"]["order"]["ok"])' "$dir/load.json")
    echo "round $round $bin: $orders orders; CPU ms per 1,000 orders:"
    join "$dir/before" "$dir/after" | awk -v n="$orders" -v t="$ticks" \
      '{ms = ($3 - $2) * 1000 / t; total += ms; printf "  %-10s %6.0f\n", $1, ms * 1000 / n} END {printf "  %-10s %6.0f\n", "all", total * 1000 / n}'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
