//! The daily report over a day of 1,000,000 orders (12 stocks, 1,000 users; half market orders,
//! half limit orders around the price, so that about half of those cross): serving it from the
//! tallies the book keeps, and recomputing it from the order log file as `stocknet report
//! --log` does. `cargo bench -p stocknet-order --bench report`

use criterion::{criterion_group, criterion_main, Criterion};
use stocknet_common::clock::{day_of, DAY_MS};
use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::book::Book;
use stocknet_order::log::{read_entries, Line, OrderLog};

const ORDERS: u64 = 1_000_000;
/// 2026-11-29, 00:00 UTC.
const DAY_START: u64 = 20_786 * DAY_MS;

fn orders() -> impl Iterator<Item = Order> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (1..=ORDERS).map(move |number| {
        let side = if next(2) == 0 { Side::Buy } else { Side::Sell };
        let limit = (next(2) == 0).then(|| Price::from_cents(9_950 + next(100)));
        Order {
            number,
            term: 1,
            name: format!("Stock{}", next(12)),
            key: Some(format!("fe-1234-{number}")),
            user: Some(1 + next(1_000)),
            stamp: Stamp {
                // Spread over the day.
                time: DAY_START + number * (DAY_MS / ORDERS),
                quote: Some(Price::from_cents(10_000)),
                ..Stamp::default()
            },
            command: Command::Place {
                side,
                quantity: 1 + next(20) as u32,
                limit,
                options: None,
            },
        }
    })
}

fn report(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("orders-1.csv");
    let mut log = OrderLog::open(&path).expect("log");
    let mut book = Book::default();
    let mut batch = Vec::new();
    for order in orders() {
        book.apply(&order);
        batch.push(Line::alone(order));
        if batch.len() == 10_000 {
            log.append(&batch).expect("append");
            batch.clear();
        }
    }
    drop(log);
    let day = day_of(DAY_START);
    assert!(!book.daily_report(day).stocks.is_empty());

    let mut group = c.benchmark_group("daily report of 1M orders");
    group.sample_size(10);
    group.bench_function("serve from the tallies", |b| {
        b.iter(|| book.daily_report(day))
    });
    group.bench_function("recompute from the log file", |b| {
        b.iter(|| {
            let mut replayed = Book::default();
            read_entries(&path, |entry| {
                replayed.apply(&entry);
            })
            .expect("replay");
            replayed.daily_report(day)
        })
    });
    group.finish();
}

criterion_group!(benches, report);
criterion_main!(benches);
