#!/usr/bin/env bash
# Measures how long an order replica that missed N orders (default 100000) takes from restart
# to ready (it knows the leader) and to caught up (its log holds the leader's last order), and
# the resident memory of the other services after N orders. Starts its own cluster on
# 127.0.0.1 in a temp dir. With STOCKNET_BOOK_SNAPSHOT_EVERY below the entries it missed, the
# leader sends it a snapshot instead of the entries.
#   bench/resync.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
orders="${1:-100000}"
source bench/lib.sh

fe=28080 cat=28081 o1=28091 o2=28092 o3=28093
peers="1=http://127.0.0.1:$o1,2=http://127.0.0.1:$o2,3=http://127.0.0.1:$o3"
export RUST_LOG=warn
# Every service shares it; internal routes (a replica's /health) need it.
export STOCKNET_SECRET=resync-bench-secret
auth=(-H "Authorization: Bearer $STOCKNET_SECRET")
start_order() {
  "$bin" order --port "$2" --node-id "$1" --peers "$peers" \
    --catalog-url "http://127.0.0.1:$cat" --data-dir "$dir" >>"$dir/order-$1.log" 2>&1 &
  echo $!
}
wait_ready() {  # polls every 10 ms for at most 120 s
  local deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -sf "${auth[@]}" "$1" >/dev/null && return 0
    sleep 0.01
  done
  echo "timed out waiting for $1" >&2
  return 1
}

"$bin" catalog --port "$cat" --data-dir "$dir" --frontends "http://127.0.0.1:$fe" >>"$dir/catalog.log" 2>&1 &
pids+=($!)
replica1=$(start_order 1 $o1); pids+=("$replica1")
pids+=("$(start_order 2 $o2)" "$(start_order 3 $o3)")
"$bin" frontend --port "$fe" --catalog-url "http://127.0.0.1:$cat" --order-replicas "$peers" \
  >>"$dir/frontend.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$cat/health" "http://127.0.0.1:$o1/ready" "http://127.0.0.1:$o2/ready" \
           "http://127.0.0.1:$o3/ready" "http://127.0.0.1:$fe/health"; do
  wait_ready "$url"
done

kill -9 "$replica1"
echo "replica 1 killed; placing $orders orders without it"
per_client=$(( (orders + 31) / 32 ))
"$bin" load --frontend "http://127.0.0.1:$fe" --clients 32 --p 1 --iterations "$per_client" \
  --max-quantity 1 --json > "$dir/load.json"
last=$(curl -s "${auth[@]}" "http://127.0.0.1:$o3/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["last_transaction"])')
echo "leader's log ends at $last"
for pid in "${pids[@]}"; do
  [ "$pid" = "$replica1" ] && continue
  echo "pid $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -d' ' -f2-4)): $(grep VmRSS "/proc/$pid/status")"
done

start=$(date +%s.%N)
replica1=$(start_order 1 $o1); pids+=("$replica1")
wait_ready "http://127.0.0.1:$o1/ready"
ready=$(date +%s.%N)
holding() {
  curl -s "${auth[@]}" "http://127.0.0.1:$o1/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["last_transaction"])'
}
deadline=$((SECONDS + 120))
until [ "$(holding)" -ge "$last" ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.01; done
end=$(date +%s.%N)
echo "replica 1 restarted: ready in $(python3 -c "print(f'{$ready - $start:.3f}')") s, caught up in $(python3 -c "print(f'{$end - $start:.3f}')") s, holding $(holding) of $last orders"
echo "snapshots installed: $(curl -s "http://127.0.0.1:$o1/metrics" | grep '^stocknet_order_snapshots_installed_total' || echo none)"
echo "replica 1 after resync: $(grep VmRSS "/proc/$replica1/status")"
