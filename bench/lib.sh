# Sourced by the bench scripts, from the repository root: a release build in $bin, and what
# common.sh gives (a temporary directory, cleanup, wrk, `start_up`).
source bench/common.sh
cargo build --release --quiet
bin="$PWD/target/release/stocknet"
