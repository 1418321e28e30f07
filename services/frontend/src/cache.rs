//! The lookup cache: LRU (`lru` crate) of stocks, invalidated by the catalog's pushes. Each
//! stock is kept with its lookup answer, encoded once when cached: a hit copies no stock and
//! encodes nothing.
//!
//! A lookup that misses reads the catalog and then fills the cache. If an invalidation arrives
//! between the read and the fill, the value read may already be stale, so the fill is skipped:
//! every fill carries the invalidation epoch seen before the read, and only fills whose epoch
//! is still current are stored. The cache therefore never holds a value older than the newest
//! invalidation (read-your-writes, I7).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use stocknet_common::envelope::encode_data;
use stocknet_common::Stock;

pub struct StockCache {
    inner: Option<Mutex<Inner>>,
    hits: Counter,
    misses: Counter,
}

struct Inner {
    entries: LruCache<String, Arc<CachedStock>>,
    epoch: u64,
}

/// A stock as cached, with the body of its lookup's answer (`{"data": stock}`).
#[derive(Debug)]
pub struct CachedStock {
    pub stock: Stock,
    pub answer: Bytes,
}

/// Epoch of a cache miss, to be handed back to [`StockCache::fill`].
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

impl StockCache {
    /// A cache of `capacity` stocks, or no cache at all.
    pub fn new(capacity: Option<NonZeroUsize>) -> Self {
        Self {
            inner: capacity.map(|capacity| {
                Mutex::new(Inner {
                    entries: LruCache::new(capacity),
                    epoch: 0,
                })
            }),
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The cached stock, or the epoch to fill with after reading the catalog.
    pub fn get(&self, name: &str) -> Result<Arc<CachedStock>, Epoch> {
        let Some(inner) = &self.inner else {
            return Err(Epoch(0));
        };
        let mut inner = lock(inner);
        match inner.entries.get(name) {
            Some(stock) => {
                self.hits.inc();
                Ok(stock.clone())
            }
            None => {
                self.misses.inc();
                Err(Epoch(inner.epoch))
            }
        }
    }

    /// The cached stock, as [`StockCache::get`] but counted neither way: the caller counts the
    /// hit ([`StockCache::count_hit`]) if it answers with it, and a miss goes on to `get`.
    pub fn find(&self, name: &str) -> Option<Arc<CachedStock>> {
        Some(lock(self.inner.as_ref()?).entries.get(name)?.clone())
    }

    pub fn count_hit(&self) {
        self.hits.inc();
    }

    /// Stores `stock` unless an invalidation happened since `epoch` was taken; whether none
    /// did (always, without a cache): then `stock` is as new as anything pushed meanwhile.
    pub fn fill(&self, stock: Stock, epoch: Epoch) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        // Encoded outside the lock; a stock always encodes, and one that did not would only
        // go uncached.
        let Ok(answer) = encode_data(&stock) else {
            return lock(inner).epoch == epoch.0;
        };
        let cached = Arc::new(CachedStock { stock, answer });
        let mut inner = lock(inner);
        let current = inner.epoch == epoch.0;
        if current {
            inner.entries.put(cached.stock.name.clone(), cached);
        }
        current
    }

    /// Whether nothing was invalidated since `epoch` was handed out (always, with no cache:
    /// then nothing tells).
    pub fn is_current(&self, epoch: Epoch) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| lock(inner).epoch == epoch.0)
    }

    /// Drops `names`; fills of reads that started before this are skipped.
    pub fn invalidate<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut names = names.into_iter().peekable();
        // Nothing named, nothing stale: a bump would only make fills in flight go to waste.
        if names.peek().is_none() {
            return;
        }
        if let Some(inner) = &self.inner {
            let mut inner = lock(inner);
            inner.epoch += 1;
            for name in names {
                inner.entries.pop(name);
            }
        }
    }

    /// Drops everything; fills of reads that started before this are skipped.
    pub fn clear(&self) {
        if let Some(inner) = &self.inner {
            let mut inner = lock(inner);
            inner.epoch += 1;
            inner.entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |inner| lock(inner).entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered from the cache (the metric itself: clones share it).
    pub fn hits(&self) -> &Counter {
        &self.hits
    }

    /// Lookups that had to go to the catalog.
    pub fn misses(&self) -> &Counter {
        &self.misses
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // Every critical section is a single LRU operation; a poisoned lock is still consistent.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(name: &str, quantity: u64) -> Stock {
        Stock {
            name: name.into(),
            price: stocknet_common::Price::from_cents(100),
            quantity,
        }
    }

    fn cache(capacity: usize) -> StockCache {
        StockCache::new(NonZeroUsize::new(capacity))
    }

    #[test]
    fn evicts_least_recently_used() {
        let cache = cache(2);
        for name in ["a", "b"] {
            let epoch = cache.get(name).unwrap_err();
            cache.fill(stock(name, 1), epoch);
        }
        assert!(cache.get("a").is_ok()); // a is now more recent than b
        let epoch = cache.get("c").unwrap_err();
        cache.fill(stock("c", 1), epoch);
        assert!(cache.get("b").is_err(), "b was least recently used");
        assert!(cache.get("a").is_ok());
        assert!(cache.get("c").is_ok());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn invalidation_removes_entry() {
        let cache = cache(4);
        let epoch = cache.get("a").unwrap_err();
        cache.fill(stock("a", 100), epoch);
        cache.invalidate(["a"]);
        assert!(cache.get("a").is_err());
    }

    #[test]
    fn one_invalidation_removes_every_named_entry() {
        let cache = cache(4);
        for name in ["a", "b", "c"] {
            let epoch = cache.get(name).unwrap_err();
            cache.fill(stock(name, 1), epoch);
        }
        cache.invalidate(["a", "c"]);
        assert!(cache.get("a").is_err());
        assert!(cache.get("b").is_ok());
        assert!(cache.get("c").is_err());
    }

    #[test]
    fn fill_racing_an_invalidation_is_dropped() {
        let cache = cache(4);
        let epoch = cache.get("a").unwrap_err();
        // The catalog changed "a" and pushed an invalidation while our read was in flight.
        cache.invalidate(["a"]);
        cache.fill(stock("a", 100), epoch);
        assert!(cache.get("a").is_err(), "a possibly stale value was cached");
    }

    #[test]
    fn an_invalidation_naming_nothing_spoils_no_fill() {
        let cache = cache(4);
        let epoch = cache.get("a").unwrap_err();
        // A leader taking over records its term at the catalog with an empty apply, which
        // pushes an invalidation of no stock.
        cache.invalidate([]);
        cache.fill(stock("a", 100), epoch);
        assert_eq!(cache.get("a").unwrap().stock.quantity, 100);
    }

    #[tokio::test]
    async fn a_hit_answers_what_a_lookup_from_the_catalog_answers() {
        let cache = cache(1);
        let epoch = cache.get("a").unwrap_err();
        cache.fill(stock("a", 7), epoch);
        let from_catalog = stocknet_common::data(stock("a", 7)).into_body();
        let from_catalog = axum::body::to_bytes(from_catalog, 1 << 16).await.unwrap();
        assert_eq!(cache.get("a").unwrap().answer, from_catalog);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = StockCache::new(None);
        let epoch = cache.get("a").unwrap_err();
        cache.fill(stock("a", 1), epoch);
        assert!(cache.get("a").is_err());
        assert!(!cache.enabled());
    }
}
