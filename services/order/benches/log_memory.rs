//! The order log's memory as it grows: the resident set once 100,000 lines are written and
//! once `STOCKNET_BENCH_LINES` are (default 10,000,000), every line with an idempotency key
//! (as the frontend gives every order one) and in entries of 1 to 8 lines (as a leader
//! proposes the commands that arrive together); then what the index kept on disk costs a
//! leader: looking up a key no line has (every new order) and an old line's key; and how long
//! opening the log takes after a clean stop (its checkpoint) and with no index at all.
//! `cargo bench -p stocknet-order --bench log_memory`

use std::time::Instant;

use stocknet_order::log::{Line, OrderLog};

#[path = "common/measure.rs"]
mod measure;
use measure::{keyed_order, rss_kb};

fn line(number: u64, entry: u64) -> Line {
    Line {
        entry,
        order: keyed_order(number),
    }
}

/// Median and maximum of `samples` microseconds.
fn spread(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

fn main() {
    let lines: u64 = std::env::var("STOCKNET_BENCH_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = OrderLog::open(dir.path().join("orders-1.csv")).expect("open");
    let mut random: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let started = Instant::now();
    let (mut number, mut entry, mut first) = (1, 0, 0);
    while number <= lines {
        let size = 1 + next() % 8;
        let batch: Vec<Line> = (number..(number + size).min(lines + 1))
            .map(|n| line(n, entry))
            .collect();
        log.write(&batch).expect("write");
        let before = number;
        number += batch.len() as u64;
        entry += 1;
        if before <= 100_000 && number > 100_000 {
            first = rss_kb();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let last = rss_kb();
    let timed = |key: String| {
        let started = Instant::now();
        let found = log.number_for_key(&key).expect("lookup");
        (started.elapsed().as_secs_f64() * 1e6, found)
    };
    let (new_median, new_max) = spread(
        (0..10_000)
            .map(|n| timed(format!("fe-new-{n}")))
            .map(|(took, found)| {
                assert_eq!(found, None);
                took
            })
            .collect(),
    );
    let (old_median, old_max) = spread(
        (0..10_000)
            .map(|_| {
                let number = 1 + next() % lines;
                let (took, found) = timed(keyed_order(number).key.unwrap_or_default());
                assert_eq!(found, Some(number));
                took
            })
            .collect(),
    );
    println!(
        "log: RSS {first} kB after 100,000 lines, {last} kB after {lines} ({:.2}x); written at \
         {:.2} M lines/s; a key no line has: median {new_median:.1} µs, max {new_max:.1} µs; \
         an old line's key: median {old_median:.1} µs, max {old_max:.1} µs",
        last as f64 / first as f64,
        lines as f64 / seconds / 1e6,
    );
    let path = dir.path().join("orders-1.csv");
    log.checkpoint_keys().expect("checkpoint");
    drop(log);
    let opening = || {
        let started = Instant::now();
        let log = OrderLog::open(&path).expect("open");
        assert_eq!(log.last(), lines);
        started.elapsed().as_secs_f64()
    };
    let stopped = opening();
    std::fs::remove_dir_all(dir.path().join("orders-1.index")).expect("remove the index");
    let rebuilt = opening();
    println!(
        "opening it: after a clean stop {:.1} ms; without its index folder {:.2} s",
        stopped * 1e3,
        rebuilt,
    );
}
