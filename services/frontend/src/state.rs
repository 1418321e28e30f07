//! What every handler shares: the cache, the upstream clients, the metrics.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stocknet_common::client::internal_client_carrying;
use stocknet_common::metrics::HttpMetrics;
use stocknet_common::wire::{AsOf, FRONTEND_PROCESS, READ_FROM_LEADER};
use stocknet_common::{BaseUrl, Secret, Stock};

use crate::cache::{Epoch, StockCache};
use crate::config::Config;
use crate::credentials;
use crate::limits;
use crate::streams;
use crate::upstream::breaker::Breaker;
use crate::upstream::leader::LeaderDiscovery;
use crate::upstream::writes::Writes;

#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) catalog_url: BaseUrl,
    pub(crate) cache: StockCache,
    pub(crate) leaders: LeaderDiscovery,
    pub(crate) http: reqwest::Client,
    pub(crate) writes: Writes,
    /// Prefix of the idempotency keys this frontend makes up for requests without one: random,
    /// so that no other frontend's or client's key is the same.
    key_prefix: String,
    /// This process's name, on its calls to the catalog and its answers to the catalog's
    /// pushes (`wire::FRONTEND_PROCESS`).
    pub(crate) process: HeaderValue,
    next_key: AtomicU64,
    /// What each made-up key is tagged under ([`Inner::next_write_key`]); never shown.
    pub(crate) key_salt: [u8; 16],
    pub(crate) orders_placed: Counter,
    pub(crate) order_retries: Counter,
    pub(crate) streams: streams::Streams,
    /// Carried by every call to the catalog and the replicas, and required of the catalog's
    /// invalidation push.
    pub(crate) secret: Secret,
    /// Fails calls to the catalog fast while it is unreachable.
    pub(crate) catalog_breaker: Breaker,
    /// When the catalog was last heard from: the cache is trusted only while that is recent.
    pub(crate) catalog_contact: crate::upstream::catalog::CatalogContact,
    /// Per-client rate and in-flight limits of the public API.
    pub(crate) limits: Arc<limits::Limits>,
    /// Default tolerance of an order's `expected_price`.
    pub(crate) price_tolerance_bps: u32,
    /// Default protection of a market order on the book.
    pub(crate) market_protection_bps: u32,
    /// The last value seen of every stock (read, or pushed with an invalidation), served
    /// marked stale while the catalog is unreachable. Bounded by the catalog's size.
    pub(crate) last_known: std::sync::Mutex<HashMap<String, LastKnown>>,
    /// Users' credentials, to verify their API keys.
    pub(crate) credentials: credentials::Credentials,
    pub(crate) metrics: Metrics,
}

/// The last value seen of a stock, and the newest catalog state a push said it of.
pub(crate) struct LastKnown {
    stock: Stock,
    as_of: Option<AsOf>,
}

/// The frontend's metrics: the registry `GET /metrics` serves and what is set at scrape time.
pub(crate) struct Metrics {
    pub(crate) registry: Arc<Registry>,
    pub(crate) http: HttpMetrics,
    pub(crate) cache_entries: Gauge,
}

impl Inner {
    /// An idempotency key for a write that came without one: this frontend's prefix, a count,
    /// and a tag of both under a salt only it knows, so that no client can foresee (and claim
    /// first, spoiling it) the key an anonymous client's write will go under.
    pub(crate) fn next_write_key(&self) -> String {
        let count = self
            .next_key
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{}-{count}", self.key_prefix);
        let tag = stocknet_common::api_key::tag(&self.key_salt, key.as_bytes());
        format!("{key}-{tag}")
    }

    /// Sets what is read at scrape time.
    pub(crate) fn refresh_metrics(&self) {
        let entries = i64::try_from(self.cache.len()).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(entries);
    }

    /// Notes what a push said of `stocks` as of catalog state `as_of`, as the last values
    /// seen, where that is not older than what was noted (a push that timed out and arrived
    /// late, a part of a push of every stock overtaken by a later push).
    pub(crate) fn remember_pushed(&self, stocks: &[Stock], as_of: Option<AsOf>) {
        let mut known = self.known();
        for stock in stocks {
            let noted = known.get(&stock.name).and_then(|last| last.as_of);
            if as_of.zip(noted).is_some_and(|(new, noted)| new <= noted) {
                continue;
            }
            let last = LastKnown {
                stock: stock.clone(),
                as_of: as_of.or(noted),
            };
            known.insert(stock.name.clone(), last);
        }
    }

    /// Notes `stock`, read from the catalog from `epoch` of the cache on, as the last value
    /// seen, unless a push invalidated since (its value is newer): checked under the same lock
    /// as a push notes its values, so neither can overwrite the other's newer one.
    pub(crate) fn remember_read(&self, stock: Stock, epoch: Epoch) {
        let mut known = self.known();
        if !self.cache.is_current(epoch) {
            return;
        }
        let as_of = known.get(&stock.name).and_then(|last| last.as_of);
        known.insert(stock.name.clone(), LastKnown { stock, as_of });
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, LastKnown>> {
        self.last_known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read for the leader's replica to serve only once it has confirmed that it leads
    /// (a read-index round): linearizable, never from a deposed or restarted leader's book.
    pub(crate) fn leader_read(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http.get(url).header(READ_FROM_LEADER, "1")
    }

    pub(crate) fn last_known(&self, name: &str) -> Option<Stock> {
        self.known().get(name).map(|last| last.stock.clone())
    }
}

impl AppState {
    pub fn new(config: &Config, secret: Secret) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // The clock and the process id make it unique where the kernel's random source fails.
        let process = stocknet_common::api_key::random_bytes::<8>()
            .map(|bytes| stocknet_common::api_key::to_hex(&bytes))
            .unwrap_or_else(|_| format!("{:x}-{started:x}", std::process::id()));
        let named = HeaderValue::from_str(&process).unwrap_or(HeaderValue::from_static("unnamed"));
        // Long enough for a leader that must first retry the catalog; health checks use less.
        // Its calls name this process: the catalog's probe notes it (wire::FRONTEND_PROCESS).
        let http = internal_client_carrying(
            Duration::from_secs(10),
            &secret,
            HeaderMap::from_iter([(HeaderName::from_static(FRONTEND_PROCESS), named.clone())]),
        );
        let cache = StockCache::new((!config.no_cache).then_some(config.cache_size));
        let leaders = LeaderDiscovery::new(config.order_replicas.clone(), http.clone());
        let (orders_placed, order_retries) = (Counter::default(), Counter::default());
        let mut registry = Registry::with_prefix("stocknet_frontend");
        let http_metrics = HttpMetrics::register(&mut registry);
        let cache_entries = Gauge::default();
        for (name, help, counter) in [
            (
                "cache_hits",
                "Lookups answered from the cache",
                cache.hits(),
            ),
            (
                "cache_misses",
                "Lookups that went to the catalog",
                cache.misses(),
            ),
            (
                "orders_placed",
                "Orders acknowledged to clients",
                &orders_placed,
            ),
            (
                "order_retries",
                "Order calls retried after a leader failure",
                &order_retries,
            ),
            (
                "leader_changes",
                "Order leaders this frontend started following",
                leaders.leader_changes(),
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "cache_entries",
            "Stocks in the cache",
            cache_entries.clone(),
        );
        let catalog_breaker = Breaker::default();
        catalog_breaker.register(&mut registry);
        Self {
            inner: Arc::new(Inner {
                catalog_url: config.catalog_url.clone(),
                cache,
                leaders,
                writes: Writes::new(http.clone()),
                http,
                key_prefix: format!("auto-{process}"),
                process: named,
                next_key: AtomicU64::new(1),
                key_salt: stocknet_common::api_key::random_bytes::<16>().unwrap_or_else(|e| {
                    tracing::warn!("no random source for the write keys' salt ({e}): the clock's stands in, and keys made up for anonymous writes can be foreseen");
                    started.to_le_bytes()
                }),
                orders_placed,
                order_retries,
                streams: streams::Streams::new(config.max_streams, config.max_streams_per_client),
                secret,
                catalog_breaker,
                catalog_contact: Default::default(),
                limits: Arc::new(limits::Limits::new(&config.limits)),
                price_tolerance_bps: config.price_tolerance_bps,
                market_protection_bps: config.market_protection_bps,
                last_known: std::sync::Mutex::default(),
                credentials: credentials::Credentials::default(),
                metrics: Metrics {
                    registry: Arc::new(registry),
                    http: http_metrics,
                    cache_entries,
                },
            }),
        }
    }
}
