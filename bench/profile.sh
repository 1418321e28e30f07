#!/usr/bin/env bash
# Where the CPU goes under load: starts `stocknet up` (cache of 12) on 127.0.0.1, runs
# `stocknet load` for 12 s, records a system-wide perf profile for 6 s in the middle, and prints
# the share of samples per process (load client, frontend, catalog, order replicas), the idle and
# iowait share, and the top symbols. Needs perf (Debian: linux-perf).
# Further arguments go to `stocknet load` (e.g. --limit).
#   bench/profile.sh [P, default 0] [CLIENTS, default 32] [load flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
p="${1:-0}" clients="${2:-32}"
shift $(($# < 2 ? $# : 2))
load_flags=("$@")
command -v perf >/dev/null || { echo "perf not found (Debian package linux-perf)" >&2; exit 1; }
source bench/lib.sh

start_up 18080
"$bin" load --frontend http://127.0.0.1:18080 --clients "$clients" --p "$p" --duration 12s \
  --max-quantity 3 "${load_flags[@]}" --json >"$dir/load.json" &
load=$!
sleep 3
head -1 /proc/stat >"$dir/stat0"
ps -eLo pid,tid,args >"$dir/threads"
perf record -a -g -F 999 -o "$dir/perf.data" -- sleep 6 >/dev/null 2>&1
head -1 /proc/stat >"$dir/stat1"
wait "$load"
perf report -i "$dir/perf.data" --no-children --sort pid --stdio -g none 2>/dev/null >"$dir/by-thread"
perf report -i "$dir/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
  | awk '/%/ && n++ < 25' >"$dir/symbols"
python3 - "$dir" <<'PY'
import collections, json, os, re, sys
d = sys.argv[1]
run = json.load(open(os.path.join(d, "load.json")))["runs"][0]
for kind, s in run["requests"].items():
    print(f"{kind}: {s['per_second']:.0f}/s p50 {s['p50_ms']:.3f} ms p99 {s['p99_ms']:.3f} ms")
before = list(map(int, open(os.path.join(d, "stat0")).read().split()[1:]))
after = list(map(int, open(os.path.join(d, "stat1")).read().split()[1:]))
delta = [b - a for a, b in zip(before, after)]
print(f"cpu idle {100 * delta[3] / sum(delta):.0f}%, iowait {100 * delta[4] / sum(delta):.0f}%")
names = {}
for line in open(os.path.join(d, "threads")):
    fields = line.split(None, 2)
    if len(fields) < 3 or not fields[1].isdigit():
        continue
    args = fields[2].split()
    stocknet = args[0].endswith("/stocknet") and len(args) > 1
    name = args[1] if stocknet else os.path.basename(args[0])
    if stocknet and name == "order":
        name += " " + args[args.index("--port") + 1] if "--port" in args else ""
    names[int(fields[1])] = name
share = collections.Counter()
for line in open(os.path.join(d, "by-thread")):
    m = re.match(r"\s*([\d.]+)%\s+(\d+):", line)
    if m:
        share[names.get(int(m.group(2)), "other (idle, kernel threads)")] += float(m.group(1))
print("samples per process:")
for name, pct in share.most_common():
    print(f"  {pct:6.2f}%  {name}")
PY
echo "top symbols:"
cut -c1-120 "$dir/symbols"
