//! Catalog apply: persist a batch of committed trades (journal append + fdatasync; a snapshot
//! rewrite every 10,000 trades).
//! `cargo bench -p stocknet-catalog`

use criterion::{criterion_group, criterion_main, Criterion};
use stocknet_catalog::{CatalogStore, DEFAULT_CATALOG};
use stocknet_common::wire::{ApplyRequest, CatalogTrade};

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = CatalogStore::open(dir.path().join("catalog.csv"), DEFAULT_CATALOG).expect("open");
    let mut next = 0u64;
    for size in [1u64, 32] {
        c.bench_function(&format!("apply {size} trade(s)"), |b| {
            b.iter(|| {
                let trades = (0..size)
                    .map(|i| {
                        next += 1;
                        CatalogTrade {
                            number: next,
                            name: "GameStart".into(),
                            // Alternate so the quantity stays near 100.
                            delta: if i.is_multiple_of(2) { 1 } else { -1 },
                            price: None,
                            request_id: None,
                        }
                    })
                    .collect();
                store
                    .apply(&ApplyRequest {
                        term: 1,
                        trades,
                        leader_applied: None,
                    })
                    .expect("apply");
                store.sync();
            })
        });
    }
}

criterion_group!(benches, apply);
criterion_main!(benches);
