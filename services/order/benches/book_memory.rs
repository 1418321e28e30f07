//! The book's memory as its log grows: the resident set once 100,000 orders of the `book`
//! bench's exchange-core mix (a steady book of about 10,000 open orders; 88% of the commands
//! are moves and cancels) have been placed, and once `STOCKNET_BENCH_ORDERS` have (default
//! 10,000,000), for a book that keeps the newest 100,000 trades and orders in memory and the
//! rest in its archive, and for one that keeps everything in memory. Each book runs in a
//! process of its own (this program again), so that one's memory is not counted in the
//! other's.
//! `cargo bench -p stocknet-order --bench book_memory`

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use stocknet_order::archive::Archive;
use stocknet_order::book::{Book, InMemory};
use stocknet_order::book_store::{ORDERS_IN_MEMORY, TRADES_IN_MEMORY};

#[path = "common/measure.rs"]
mod measure;
#[path = "common/mix.rs"]
mod mix;
use measure::rss_kb;

/// Which book a child process runs: `archive` or `memory`.
const RUN: &str = "STOCKNET_BENCH_BOOK";
const ORDERS: &str = "STOCKNET_BENCH_ORDERS";

fn run(kind: &str, orders: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut book = match kind {
        "archive" => {
            let archive = Arc::new(Archive::open(dir.path(), 1).expect("archive"));
            let in_memory = InMemory {
                trades: TRADES_IN_MEMORY,
                orders: ORDERS_IN_MEMORY,
            };
            Book::default().with_archive(archive, in_memory)
        }
        _ => Book::default(),
    };
    let mut mix = mix::Mix::new();
    let started = Instant::now();
    let (mut placed, mut commands, mut first) = (0, 0, None);
    while placed < orders {
        let order = mix.next(&book);
        book.apply(&order);
        commands += 1;
        if matches!(order.command, stocknet_common::Command::Place { .. }) {
            placed += 1;
            if placed == 100_000 {
                first = Some(rss_kb());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let first = first.unwrap_or(0);
    let last = rss_kb();
    // Orders placed long ago, read with their fills as `GET /orders/{n}` reads them.
    let mut random = mix::Random(0x2545_f491_4f6c_dd1d);
    let mut took: Vec<f64> = Vec::new();
    while took.len() < 1_000 {
        let number = 1 + random.below(commands / 2);
        let started = Instant::now();
        if let Some(order) = book.order(number) {
            std::hint::black_box(book.limit_view(&order));
            took.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    took.sort_by(f64::total_cmp);
    println!(
        "{kind}: RSS {first} kB after 100,000 orders, {last} kB after {orders} ({:.2}x); \
         {commands} commands at {:.2} M/s; archived: {:?}; an order of the older half with \
         its fills: median {:.1} µs, max {:.1} µs",
        last as f64 / first.max(1) as f64,
        commands as f64 / seconds / 1e6,
        book.archived(),
        took[took.len() / 2],
        took[took.len() - 1],
    );
}

fn main() {
    let orders = std::env::var(ORDERS)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    if let Ok(kind) = std::env::var(RUN) {
        return run(&kind, orders);
    }
    let me = std::env::current_exe().expect("this program");
    for kind in ["archive", "memory"] {
        let status = Command::new(&me)
            .env(RUN, kind)
            .env(ORDERS, orders.to_string())
            .status()
            .expect("a run");
        assert!(status.success(), "{kind}: {status}");
    }
}
