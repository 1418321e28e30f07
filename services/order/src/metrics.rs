//! The replica's metrics: its registry (served at `GET /metrics`), the request metrics, and
//! what the commit path records: round latency and size, fsync latency, catalog application,
//! takeovers; the log's positions and each follower's lag are read at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stocknet_common::metrics::{latency_histogram, size_histogram, HttpMetrics};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub follower: u32,
}

/// Snapshots sent to and installed from other replicas (`consensus/transfer.rs`).
#[derive(Clone, Default)]
pub struct SnapshotCounters {
    pub sent: Counter,
    pub installed: Counter,
}

pub struct ReplicaMetrics {
    pub registry: Arc<Registry>,
    pub http: HttpMetrics,
    pub commit_round_seconds: Histogram,
    pub commit_round_entries: Histogram,
    pub fsync_seconds: Histogram,
    pub catalog_apply_seconds: Histogram,
    pub takeovers: Counter,
    pub handovers: Counter,
    pub expiry_entries: Counter,
    pub snapshots: SnapshotCounters,
    pub term: Gauge,
    pub last_entry: Gauge,
    pub committed: Gauge,
    pub applied: Gauge,
    pub ready: Gauge,
    pub leading: Gauge,
    /// While leading: entries the leader holds that a follower was not seen to hold.
    pub replication_lag: Family<FollowerLabels, Gauge>,
}

impl ReplicaMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stocknet_order");
        let http = HttpMetrics::register(&mut registry);
        let metrics = Self {
            http,
            commit_round_seconds: latency_histogram(),
            commit_round_entries: size_histogram(),
            fsync_seconds: latency_histogram(),
            catalog_apply_seconds: latency_histogram(),
            takeovers: Counter::default(),
            handovers: Counter::default(),
            expiry_entries: Counter::default(),
            snapshots: SnapshotCounters::default(),
            term: Gauge::default(),
            last_entry: Gauge::default(),
            committed: Gauge::default(),
            applied: Gauge::default(),
            ready: Gauge::default(),
            leading: Gauge::default(),
            replication_lag: Family::default(),
            registry: Arc::new(Registry::default()),
        };
        for (name, help, histogram) in [
            (
                "commit_round_seconds",
                "Commands on the leader from proposal to applied: fsync and replication to a majority, book",
                &metrics.commit_round_seconds,
            ),
            (
                "commit_round_entries",
                "Committed entries the leader applied to the catalog in one round (group commit)",
                &metrics.commit_round_entries,
            ),
            (
                "fsync_seconds",
                "fdatasync of the order log (one for every append waiting)",
                &metrics.fsync_seconds,
            ),
            (
                "catalog_apply_seconds",
                "Applying committed entries to the catalog (its fsync and invalidations included)",
                &metrics.catalog_apply_seconds,
            ),
        ] {
            registry.register(name, help, histogram.clone());
        }
        for (name, help, counter) in [
            (
                "takeovers",
                "Terms this replica took over as leader (the catalog brought up to date)",
                &metrics.takeovers,
            ),
            (
                "handovers",
                "Times this replica, leading, handed the leadership to a higher-id voter",
                &metrics.handovers,
            ),
            (
                "expiry_entries",
                "Expiry entries this replica, leading, wrote to expire day and gtd orders",
                &metrics.expiry_entries,
            ),
            (
                "snapshots_sent",
                "Snapshots this replica assembled for a replica lacking entries its log no longer offers",
                &metrics.snapshots.sent,
            ),
            (
                "snapshots_installed",
                "Snapshots this replica installed: a book, archived records and log lines from the leader",
                &metrics.snapshots.installed,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        for (name, help, gauge) in [
            (
                "term",
                "The highest term this replica has seen",
                &metrics.term,
            ),
            (
                "last_entry",
                "The last entry of the log",
                &metrics.last_entry,
            ),
            (
                "committed",
                "How far this replica knows the log to be committed (what it has applied)",
                &metrics.committed,
            ),
            (
                "applied",
                "The last entry this replica's book has applied",
                &metrics.applied,
            ),
            (
                "ready",
                "1 while this replica is ready: it knows its term's leader and has caught up with it",
                &metrics.ready,
            ),
            (
                "leading",
                "1 while this replica leads and takes commands (it has taken over its term)",
                &metrics.leading,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "replication_lag_entries",
            "While leading: entries a follower was not yet seen to hold",
            metrics.replication_lag.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        Self::new()
    }
}
