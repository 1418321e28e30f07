# Sourced by the bench scripts that count each process's CPU time (ab.sh, idle-streams.sh):
# `cpu PID` prints "role ticks" for each child of the `stocknet up` at PID, its role being its
# subcommand (and node id) and its ticks its user + system time from /proc/PID/stat, in
# $ticks per second.
ticks=$(getconf CLK_TCK)
cpu() {
  for child in $(pgrep -P "$1"); do
    role=$(tr '\0' ' ' <"/proc/$child/cmdline" |
      awk '{r=$2; for (i=3;i<=NF;i++) if ($i=="--node-id") r=r"-"$(i+1); print r}')
    awk -v r="$role" '{print r, $14 + $15}' "/proc/$child/stat"
  done | sort
}
