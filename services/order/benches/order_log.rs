//! Order log hot paths: a durable append (write + fsync), a group of 32 written then fsync'd
//! once, and loading a large log from CSV. `cargo bench -p stocknet-order`

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

    let large = dir.path().join("large.csv");
    let mut big = OrderLog::open(&large).expect("open");
    let batch: Vec<Line> = (1..=100_000).map(|n| Line::alone(order(n))).collect();
    big.append(&batch).expect("append");
    drop(big);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("open a log of 100000 orders", |b| {
        b.iter_batched(
            || (),
            |()| black_box(OrderLog::open(&large).expect("open").last()),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, order_log);
criterion_main!(benches);
