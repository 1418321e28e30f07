# Sourced by the bench scripts (through lib.sh, or directly by those given builds to compare),
# from the repository root: a temporary directory $dir, cleanup on exit of $dir and of every
# process whose pid is in $pids, wrk, and `start_up` of the build in $bin.
dir="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "== installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi

# start_up FRONTEND_PORT: `stocknet up` on ports FRONTEND_PORT and the next one (catalog) and
# FRONTEND_PORT+11..13 (order replicas), with a cache as large as the catalog (12 stocks), so
# lookups measure the hit path (the default 8 leaves a third of random lookups missing).
# Returns once `up` reports every service ready (at most 60 s). The scripts use ports below
# 32768, outside Linux's ephemeral range: a client's own port, or a connection to itself left in
# TIME_WAIT, can otherwise hold the port `up` is to listen on.
start_up() {
  local fe=$1
  RUST_LOG=warn "$bin" up --data-dir "$dir/data" --frontend-port "$fe" --catalog-port $((fe + 1)) \
    --cache-size 12 --order-ports $((fe + 11)),$((fe + 12)),$((fe + 13)) >"$dir/up.log" 2>&1 &
  pids+=($!)
  local deadline=$((SECONDS + 60))
  until grep -qs "Ctrl-C stops everything" "$dir/up.log"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "stocknet up did not get ready; its log:" >&2
      tail -20 "$dir/up.log" >&2
      return 1
    fi
    sleep 0.1
  done
}
