//! The frontend's hottest path: a cache hit (lock, LRU touch, clone). `cargo bench -p stocknet-frontend`

use std::hint::black_box;
use std::num::NonZeroUsize;

use criterion::{criterion_group, criterion_main, Criterion};
use stocknet_common::Stock;
use stocknet_frontend::cache::StockCache;

fn cache(c: &mut Criterion) {
    let cache = StockCache::new(NonZeroUsize::new(8));
    let names: Vec<String> = (0..8).map(|i| format!("Stock{i}")).collect();
    for name in &names {
        if let Err(epoch) = cache.get(name) {
            cache.fill(
                Stock {
                    name: name.clone(),
                    price: stocknet_common::Price::from_cents(1599),
                    quantity: 100,
                },
                epoch,
            );
        }
    }
    let mut next = 0;
    c.bench_function("cache hit", |b| {
        b.iter(|| {
            next = (next + 1) % names.len();
            black_box(cache.get(black_box(&names[next])).is_ok())
        })
    });
    c.bench_function("cache miss + fill", |b| {
        b.iter(|| {
            cache.invalidate(["Stock0"]);
            if let Err(epoch) = cache.get("Stock0") {
                cache.fill(
                    Stock {
                        name: "Stock0".into(),
                        price: stocknet_common::Price::from_cents(1599),
                        quantity: 100,
                    },
                    epoch,
                );
            }
        })
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);
