//! The matching engine alone, on two command mixes for one stock, each generated the same way
//! every run (xorshift64):
//! - `exchange-core mix`: exchange-core's published benchmark mix for one order book, 82% moves
//!   (an open order's new price), 9% new limit orders, 6% cancels and 3% orders that sweep the
//!   opposite side (limit orders priced through the book: the book's market orders trade with
//!   the house, not the book), over a book kept near 10,000 resting orders on 40 levels;
//! - `half crossing`: limit orders around a price so that about half cross, every fifth command
//!   a cancel, every tenth a modify, on a book that starts empty.
//!
//! Then the exchange-core mix once more, one command at a time, for a latency histogram
//! (hdrhistogram: p50, p99, p99.9; the clock read costs some 20 ns of each).
//! `cargo bench -p stocknet-order --bench book`

use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use hdrhistogram::Histogram;
use stocknet_common::{Command, Order, Price};
use stocknet_order::book::Book;

#[path = "common/mix.rs"]
mod mix;

use mix::{entry, Mix, Random};

/// Commands in one run of each mix.
const COMMANDS: u64 = 1_000_000;

/// The exchange-core mix, generated against a book of its own.
fn exchange_core_mix() -> Vec<Order> {
    let mut book = Book::default();
    let mut mix = Mix::new();
    (0..COMMANDS)
        .map(|_| {
            let order = mix.next(&book);
            book.apply(&order);
            order
        })
        .collect()
}

fn half_crossing() -> Vec<Order> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    (1..=COMMANDS)
        .map(|number| {
            let command = match number % 10 {
                0 => Command::Modify {
                    target: number - 1 - random.below(50).min(number - 2),
                    quantity: Some(1 + random.below(20) as u32),
                    price: Some(Price::from_cents(9_950 + random.below(100))),
                },
                5 => Command::Cancel {
                    target: number - 1 - random.below(50).min(number - 2),
                },
                _ => Command::Place {
                    side: random.side(),
                    quantity: 1 + random.below(20) as u32,
                    limit: Some(Price::from_cents(9_950 + random.below(100))),
                    options: None,
                },
            };
            entry(number, command)
        })
        .collect()
}

fn throughput(c: &mut Criterion, name: &str, commands: &[Order]) {
    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_batched(
            Book::default,
            |mut book| {
                for command in commands {
                    book.apply(command);
                }
                book
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Each command of `commands` timed alone; prints the percentiles.
fn latency(commands: &[Order]) {
    let mut book = Book::default();
    let mut nanos = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    for command in commands {
        let started = Instant::now();
        book.apply(command);
        let elapsed = started.elapsed().as_nanos() as u64;
        nanos.record(elapsed.max(1)).expect("in bounds");
    }
    println!(
        "book/exchange-core mix, per command: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns \
         ({} trades, {} orders resting at the end)",
        nanos.value_at_quantile(0.5),
        nanos.value_at_quantile(0.99),
        nanos.value_at_quantile(0.999),
        nanos.max(),
        book.trades(None, 0, usize::MAX).len(),
        book.depth("GameStart", usize::MAX)
            .bids
            .iter()
            .chain(&book.depth("GameStart", usize::MAX).asks)
            .map(|level| level.orders)
            .sum::<usize>(),
    );
}

fn main() {
    let mix = exchange_core_mix();
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion, "exchange-core mix", &mix);
    throughput(&mut criterion, "half crossing", &half_crossing());
    latency(&mix);
    criterion.final_summary();
}
