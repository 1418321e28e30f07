//! Book snapshots of 1,000,000 resting orders (two sides that do not cross, over 12 stocks):
//! encoding, and recovery (reading the file and rebuilding the book with its price levels).
//! `cargo bench -p stocknet-order --bench book_snapshot`

use criterion::{criterion_group, criterion_main, Criterion};
use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::book::Book;
use stocknet_order::snapshot;

const RESTING: u64 = 1_000_000;

fn book() -> Book {
    let mut book = Book::default();
    for number in 1..=RESTING {
        let side = if number % 2 == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        // Buys at 90.00–99.99, sells at 100.00–109.99: nothing crosses, everything rests.
        let cents = match side {
            Side::Buy => 9_000 + number % 1_000,
            Side::Sell => 10_000 + number % 1_000,
        };
        book.apply(&Order {
            number,
            term: 1,
            name: format!("Stock{}", number % 12),
            key: None,
            user: None,
            stamp: Stamp::default(),
            command: Command::Place {
                side,
                quantity: 1 + (number % 10) as u32,
                limit: Some(Price::from_cents(cents)),
                options: None,
            },
        });
    }
    book
}

fn snapshots(c: &mut Criterion) {
    let book = book();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("book-1.snap");
    let mut group = c.benchmark_group("book snapshot, 1M resting orders");
    group.sample_size(10);
    group.bench_function("encode + write (fsync)", |b| {
        b.iter(|| {
            let bytes = snapshot::encode(&book).expect("encode");
            snapshot::write(&path, &bytes).expect("write");
        })
    });
    group.bench_function("read + decode (recovery)", |b| {
        b.iter(|| {
            let bytes = std::fs::read(&path).expect("read");
            let restored = snapshot::decode(&bytes).expect("decode");
            assert_eq!(restored.applied(), RESTING);
            restored
        })
    });
    group.finish();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("snapshot file: {:.1} MB", size as f64 / 1e6);
}

criterion_group!(benches, snapshots);
criterion_main!(benches);
