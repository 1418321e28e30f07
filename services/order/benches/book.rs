//! The matching engine alone: a stream of book commands for one stock (limit orders around
//! a price, so that about half cross; every fifth command a cancel, every tenth a modify)
//! applied to a book that starts empty. `cargo bench -p stocknet-order --bench book`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::book::Book;

const COMMANDS: u64 = 100_000;

/// xorshift64, so that every run applies the same commands.
fn commands() -> Vec<Order> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (1..=COMMANDS)
        .map(|number| {
            let command = match number % 10 {
                0 => Command::Modify {
                    target: number - 1 - next(50).min(number - 2),
                    quantity: Some(1 + next(20) as u32),
                    price: Some(Price::from_cents(9_950 + next(100))),
                },
                5 => Command::Cancel {
                    target: number - 1 - next(50).min(number - 2),
                },
                _ => Command::Place {
                    side: if next(2) == 0 { Side::Buy } else { Side::Sell },
                    quantity: 1 + next(20) as u32,
                    limit: Some(Price::from_cents(9_950 + next(100))),
                },
            };
            Order {
                number,
                term: 1,
                name: "GameStart".into(),
                key: None,
                user: None,
                stamp: Stamp::default(),
                command,
            }
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let commands = commands();
    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(COMMANDS));
    group.bench_function("apply 100k commands", |b| {
        b.iter_batched(
            Book::default,
            |mut book| {
                for command in &commands {
                    book.apply(command);
                }
                book
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
