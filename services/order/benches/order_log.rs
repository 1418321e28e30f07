//! Order log hot paths: a durable append (write + fsync), a group of 32 written then fsync'd
//! once, reading an old order (one no longer kept in memory), and opening a large log (its
//! index from the CSV, its key tables kept or built).
//! `cargo bench -p stocknet-order --bench order_log`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use stocknet_order::log::{Line, OrderLog};

#[path = "common/measure.rs"]
mod measure;
use measure::keyed_order as order;

fn order_log(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = OrderLog::open(dir.path().join("append.csv")).expect("open");
    c.bench_function("append 1 order + fsync", |b| {
        b.iter(|| {
            let next = log.last() + 1;
            log.append(&[Line::alone(order(next))]).expect("append");
        })
    });
    c.bench_function("write 32 orders + one fsync (group commit)", |b| {
        b.iter(|| {
            for _ in 0..32 {
                let next = log.last() + 1;
                log.write(&[Line::alone(order(next))]).expect("write");
            }
            let (file, path) = log.sync_handle().expect("handle");
            stocknet_common::file::sync_data_or_exit(&file, &path);
        })
    });

    // Two logs of 100,000 orders: one whose replica stopped cleanly (its key tables
    // checkpointed), one whose replica crashed before any checkpoint (they are built again).
    let batch: Vec<Line> = (1..=100_000).map(|n| Line::alone(order(n))).collect();
    let stopped = dir.path().join("stopped.csv");
    let mut log = OrderLog::open(&stopped).expect("open");
    log.append(&batch).expect("append");
    log.checkpoint_keys().expect("checkpoint");
    // Numbers spread over the log, so each lookup parses a different part of its checkpoint's
    // stride, as lookups of resting orders do.
    let mut number = 0;
    c.bench_function("get an old order (of 100000)", |b| {
        b.iter(|| {
            number = (number + 7_919) % 90_000 + 1;
            black_box(log.get(number).expect("get"))
        })
    });
    drop(log);
    let crashed = dir.path().join("crashed.csv");
    OrderLog::open(&crashed)
        .expect("open")
        .append(&batch)
        .expect("append");
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for (name, path) in [("stopped", &stopped), ("crashed", &crashed)] {
        group.bench_function(format!("open a log of 100000 orders ({name})"), |b| {
            b.iter_batched(
                || (),
                |()| black_box(OrderLog::open(path).expect("open").last()),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, order_log);
criterion_main!(benches);
