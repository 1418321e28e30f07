//! Bringing a replica that lacks 100,000 entries (one order each, half of them trading) up to
//! date: by a snapshot (`consensus/transfer.rs`), as the leader assembles it (its state machine
//! waits meanwhile), and read in chunks into an empty replica's file and installed there; and
//! by the entries, as openraft sends them without snapshots: appended 256 at a time, each
//! batch fsync'd, then applied.
//! `cargo bench -p stocknet-order --bench snapshot_transfer`

use std::path::Path;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::archive::Archive;
use stocknet_order::book_store::{BookSettings, BookStore};
use stocknet_order::consensus::transfer::{self, SnapshotData};
use stocknet_order::consensus::LogStore;
use stocknet_order::log::{Line, OrderLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENTRIES: u64 = 100_000;

/// Entries the leader sends in one append (openraft's `max_payload_entries` here).
const BATCH: usize = 256;

fn lines() -> Vec<Line> {
    (1..=ENTRIES)
        .map(|number| {
            let side = if number % 2 == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            Line {
                entry: number - 1,
                order: Order {
                    number,
                    term: 1,
                    name: format!("Stock{}", number % 12),
                    key: Some(format!("key-{number}")),
                    user: None,
                    stamp: Stamp::default(),
                    command: Command::Place {
                        side,
                        quantity: 1 + (number % 10) as u32,
                        limit: Some(Price::from_cents(9_950 + number % 100)),
                        options: None,
                    },
                },
            }
        })
        .collect()
}

/// An empty replica's log, book and store in `dir`.
fn replica(dir: &Path) -> Replica {
    let log = OrderLog::open(dir.join("orders-1.csv")).expect("log");
    let archive = Archive::open(dir, 1).expect("archive");
    let book = BookStore::open(
        dir.join("book-1.snap"),
        archive,
        BookSettings::default(),
        log.last(),
    );
    let log = Arc::new(Mutex::new(log));
    let store = LogStore::open(1, log.clone(), dir.join("term-1"), None).expect("store");
    (log, Arc::new(book), store)
}

type Replica = (Arc<Mutex<OrderLog>>, Arc<BookStore>, LogStore);

/// An empty replica in a directory of its own.
fn empty_replica() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().expect("temp dir");
    let replica = replica(dir.path());
    (dir, replica)
}

/// Appends `lines` to `log` `BATCH` at a time, each batch fsync'd, and applies them to `book`.
fn append_and_apply(log: &Mutex<OrderLog>, book: &BookStore, lines: &[Line]) {
    for batch in lines.chunks(BATCH) {
        log.lock().unwrap().append(batch).expect("append");
        let orders: Vec<Order> = batch.iter().map(|line| line.order.clone()).collect();
        book.apply(&orders).expect("apply");
    }
}

fn catch_up(c: &mut Criterion) {
    let lines = lines();
    let (_leader, (log, book, _store)) = empty_replica();
    append_and_apply(&log, &book, &lines);
    let mut group = c.benchmark_group("a replica 100,000 entries behind");
    group.sample_size(10);
    group.bench_function("leader: assemble the snapshot", |b| {
        b.iter(|| transfer::assemble(&book, &log).expect("assemble"))
    });
    group.bench_function("leader sends, follower receives and installs", |b| {
        b.iter_batched(
            empty_replica,
            |(dir, (_, follower, store))| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    let (mut sent, _) = transfer::assemble(&book, &log).expect("assemble");
                    let path = dir.path().join("snapshot-1.received");
                    let mut received = SnapshotData::receiving(path).expect("receive");
                    // In chunks of 1 MiB, as openraft sends it.
                    let mut chunk = vec![0; 1024 * 1024];
                    loop {
                        let read = sent.read(&mut chunk).await.expect("read");
                        if read == 0 {
                            break;
                        }
                        received.write_all(&chunk[..read]).await.expect("write");
                    }
                    transfer::install(&received, &follower, &store, Some(ENTRIES - 1))
                        .expect("install");
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("follower: append and apply the entries", |b| {
        b.iter_batched(
            empty_replica,
            |(dir, (log, book, _))| {
                append_and_apply(&log, &book, &lines);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, catch_up);
criterion_main!(benches);
