#!/usr/bin/env bash
# House orders beside book orders on the same stocks: what the quote's wait for the book costs
# (docs/ARCHITECTURE.md, "Placing an order"). Alternating builds, each round on a fresh
# `stocknet up`: 16 clients place market orders against the house and 16 place limit orders
# within 1% of the price (`--limit`: about half cross the book), at once, for 8 s. Prints each
# kind's acknowledged orders per second and p50. STOCKS (comma-separated) trades only those,
# e.g. STOCKS=GameStart for one busy stock.
#   bench/mixed.sh ROUNDS /tmp/stocknet-before /tmp/stocknet-after
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
source bench/common.sh
summary='import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; o=r["requests"]["order"]; print("%d/s, p50 %s ms" % (o["ok"] / r["seconds"], o["p50_ms"]))'
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/data"
    start_up 18080
    load=("$bin" load --frontend http://127.0.0.1:18080 --clients 16 --p 1 --duration 8s
      --max-quantity 3 --json)
    [ -n "${STOCKS:-}" ] && load+=(--stocks "$STOCKS")
    "${load[@]}" >"$dir/house.json" &
    house=$!
    "${load[@]}" --limit >"$dir/book.json"
    wait "$house"
    echo "round $round $bin: house orders $(python3 -c "$summary" "$dir/house.json"); book orders $(python3 -c "$summary" "$dir/book.json")"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done
