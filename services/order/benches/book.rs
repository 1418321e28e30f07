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
use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::book::Book;

/// Commands in one run of each mix.
const COMMANDS: u64 = 1_000_000;
/// The exchange-core mix's book: resting orders it stays near, price levels each side.
const RESTING: usize = 10_000;
const LEVELS: u64 = 20;
const CENTER: u64 = 10_000;

struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn side(&mut self) -> Side {
        if self.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }
}

fn entry(number: u64, command: Command) -> Order {
    Order {
        number,
        term: 1,
        name: "GameStart".into(),
        key: None,
        // Buyers and sellers are different users, so that no order meets one of its own
        // user's: the mix trades as exchange-core's, which has no self-trade prevention.
        user: Some(match command {
            Command::Place {
                side: Side::Sell, ..
            } => 50 + number % 50,
            _ => number % 50,
        }),
        stamp: Stamp::default(),
        command,
    }
}

/// A price on `side`'s own half of the book: bids below the centre, asks above.
fn resting_price(random: &mut Random, side: Side) -> Price {
    let offset = 1 + random.below(LEVELS);
    Price::from_cents(match side {
        Side::Buy => CENTER - offset,
        Side::Sell => CENTER + offset,
    })
}

/// An open order of `open`, picked at random (closed ones are dropped from it on the way).
fn pick(open: &mut Vec<u64>, random: &mut Random, book: &Book) -> Option<(u64, Side)> {
    loop {
        if open.is_empty() {
            return None;
        }
        let index = random.below(open.len() as u64) as usize;
        match book.order(open[index]) {
            Some(order) if order.is_open() => return Some((order.number, order.side)),
            _ => {
                open.swap_remove(index);
            }
        }
    }
}

/// The exchange-core mix, generated against a book of its own so that moves and cancels name
/// open orders.
fn exchange_core_mix() -> Vec<Order> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut book = Book::default();
    let mut open: Vec<u64> = Vec::new();
    let mut commands = Vec::with_capacity(COMMANDS as usize);
    for number in 1..=COMMANDS {
        let roll = random.below(100);
        let command = match roll {
            0..82 if open.len() > RESTING / 10 => {
                let (target, side) = pick(&mut open, &mut random, &book).expect("open orders");
                Command::Modify {
                    target,
                    quantity: None,
                    price: Some(resting_price(&mut random, side)),
                }
            }
            82..97 if open.len() > RESTING => {
                let (target, _) = pick(&mut open, &mut random, &book).expect("open orders");
                Command::Cancel { target }
            }
            97.. => {
                let side = random.side();
                let through = match side {
                    Side::Buy => CENTER + LEVELS,
                    Side::Sell => CENTER - LEVELS,
                };
                Command::Place {
                    side,
                    quantity: 1 + random.below(400) as u32,
                    limit: Some(Price::from_cents(through)),
                    options: None,
                }
            }
            _ => {
                let side = random.side();
                open.push(number);
                Command::Place {
                    side,
                    quantity: 1 + random.below(100) as u32,
                    limit: Some(resting_price(&mut random, side)),
                    options: None,
                }
            }
        };
        let order = entry(number, command);
        book.apply(&order);
        commands.push(order);
    }
    commands
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
