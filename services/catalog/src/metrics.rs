//! The catalog's metrics: its registry (served at `GET /metrics`), the request metrics, and
//! what applying committed trades costs: batch size, journal fsync, invalidation push; its
//! position and term are read at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stocknet_common::metrics::{latency_histogram, size_histogram, HttpMetrics};

pub struct CatalogMetrics {
    pub registry: Arc<Registry>,
    pub http: HttpMetrics,
    pub apply_trades: Histogram,
    pub fsync_seconds: Histogram,
    pub invalidation_seconds: Histogram,
    pub pushes: Family<PushOutcome, Counter>,
    pub applied: Gauge,
    pub term: Gauge,
    pub behind: Gauge,
    pub users: Gauge,
}

impl CatalogMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stocknet_catalog");
        let http = HttpMetrics::register(&mut registry);
        let (apply_trades, fsync_seconds, invalidation_seconds) =
            (size_histogram(), latency_histogram(), latency_histogram());
        registry.register(
            "apply_trades",
            "Committed entries per apply request from the order leader",
            apply_trades.clone(),
        );
        registry.register(
            "fsync_seconds",
            "fdatasync of the journal after an apply",
            fsync_seconds.clone(),
        );
        registry.register(
            "invalidation_seconds",
            "Pushing one update's invalidations to every frontend",
            invalidation_seconds.clone(),
        );
        let pushes = Family::default();
        registry.register(
            "pushes",
            "Invalidation pushes to one frontend, by outcome: taken, not_connected (nothing listens), failed (refused or no answer in time), skipped (its process has not probed within a cache lease)",
            pushes.clone(),
        );
        let (applied, term, users) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("applied", "The last transaction applied", applied.clone());
        registry.register("term", "The order leaders' term last seen", term.clone());
        let behind = Gauge::default();
        registry.register(
            "behind",
            "1 while the catalog may lack trades it acknowledged before a power loss (lookups answer 503) until an order leader catches it up",
            behind.clone(),
        );
        registry.register("users", "Users registered", users.clone());
        Self {
            registry: Arc::new(registry),
            http,
            apply_trades,
            fsync_seconds,
            invalidation_seconds,
            pushes,
            applied,
            term,
            behind,
            users,
        }
    }
}

/// What became of one push to one frontend, as a metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushOutcome {
    pub outcome: &'static str,
}

impl Default for CatalogMetrics {
    fn default() -> Self {
        Self::new()
    }
}
