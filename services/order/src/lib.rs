//! Order service: one replica of the replicated order log. The replicas elect their leader
//! among themselves (openraft, see [`consensus`]); the leader sequences orders, commits them
//! on a majority, applies them to the catalog and answers.

pub mod archive;
pub mod audit;
pub mod book;
pub mod book_store;
pub mod candles;
pub mod catalog;
mod config;
pub mod consensus;
pub mod error;
pub mod feed;
pub mod log;
pub mod metrics;
pub mod portfolio;
pub mod replica;
pub mod report;
#[cfg(test)]
mod router_tests;
mod routes;
#[cfg(test)]
mod simulation;
pub mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::{middleware, Router};
use stocknet_common::auth::internal_only;
use stocknet_common::listeners;
use stocknet_common::paths;
use stocknet_common::{internal_client, server, Secret};

use book::InMemory;
use book_store::BookSettings;
use log::IndexLimits;
use routes::{
    add_learner, audit_trail, book, cancel_by_client_order_id, cancel_order, candles,
    change_voters, confirm_leader_reads, daily_report, feed, health, list_orders, lookup, members,
    metrics, modify_order, order_feed, orders_after, place, portfolio, ready, trades, write_batch,
};

pub use config::{node_id_from_hostname, Config};
pub use error::OrderError;
pub use replica::{Links, Replica};

#[derive(Clone)]
pub struct AppState {
    pub replica: Arc<Replica>,
    /// Required of every caller but health and readiness probes.
    pub secret: Secret,
}

impl AppState {
    /// Opens the replica's files and starts its part in the group.
    pub async fn start(config: &Config) -> Result<Self, OrderError> {
        let secret = config.secret.load()?;
        let links = Links::http(
            internal_client(Duration::from_secs(2), &secret),
            &config.catalog_url,
        );
        let replica = Replica::start(
            config.node_id()?,
            &config.data_dir,
            config.peers.clone(),
            links,
            BookSettings {
                snapshot_every: config.book_snapshot_every,
                in_memory: InMemory {
                    trades: config.trades_in_memory,
                    orders: config.orders_in_memory,
                },
            },
            IndexLimits {
                key_checkpoint_every: config.index_checkpoint_every,
                key_checkpoint_interval: Duration::from_secs(config.index_checkpoint_seconds),
                ..IndexLimits::default()
            },
        )
        .await?;
        Ok(Self { replica, secret })
    }
}

pub fn router(state: AppState) -> Router {
    // The reads a frontend forwards wait for a confirmation of leadership when they ask for it;
    // writes and the group's own calls never pass through that layer.
    let confirmed_reads = Router::new()
        .route(paths::ORDERS.pattern(), get(list_orders))
        .route(paths::ORDER.pattern(), get(lookup))
        .route(paths::TRADES.pattern(), get(trades))
        .route(paths::PORTFOLIO.pattern(), get(portfolio))
        .route(paths::AUDIT.pattern(), get(audit_trail))
        .route(paths::DAILY_REPORT.pattern(), get(daily_report))
        .route(paths::BOOK.pattern(), get(book))
        .route(paths::CANDLES.pattern(), get(candles))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            confirm_leader_reads,
        ));
    // Everything but the probes is for the frontends and the other replicas only.
    let internal = Router::new()
        .merge(confirmed_reads)
        .route(
            paths::ORDERS.pattern(),
            post(place).delete(cancel_by_client_order_id),
        )
        .route(
            paths::ORDER.pattern(),
            put(modify_order).delete(cancel_order),
        )
        .route(paths::ORDER_BATCH.pattern(), post(write_batch))
        .route(paths::FEED.pattern(), get(feed))
        .route(paths::ORDER_FEED.pattern(), get(order_feed))
        .route(paths::LOG_AFTER.pattern(), get(orders_after))
        .route(paths::MEMBERS.pattern(), get(members))
        .route(paths::LEARNERS.pattern(), post(add_learner))
        .route(paths::VOTERS.pattern(), put(change_voters))
        .merge(consensus::routes(
            state.replica.raft().clone(),
            state.replica.elections().clone(),
        ));
    let internal = internal_only(internal, state.secret.clone());
    let http = state.replica.metrics().http.clone();
    let routes = Router::new()
        .route(paths::HEALTH.pattern(), get(health))
        .route(paths::READY.pattern(), get(ready))
        .route(paths::METRICS.pattern(), get(metrics))
        .merge(internal)
        .with_state(state);
    server::service_router(routes, &http)
}

/// Starts the replica and serves on the configured address in the background until
/// `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<server::Running, server::BoxError> {
    let state = AppState::start(&config).await?;
    let (listener, addr) =
        listeners::listen(listeners::PUBLIC, SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, node_id = state.replica.health().node_id, "order replica listening");
    let replica = state.replica.clone();
    stocknet_common::metrics::spawn_metrics_port(
        config.host,
        config.metrics.metrics_port,
        replica.metrics().registry.clone(),
        move || replica.refresh_metrics(),
    )
    .await?;
    let watched = state.replica.clone();
    tokio::spawn(async move {
        if let Some(fault) = watched.consensus_fault().await {
            // As after a failed fsync: the files are sound and a new process recovers from
            // them, while this one would go on serving without taking part in the group.
            tracing::error!("consensus stopped: {fault}; exiting to recover");
            std::process::exit(70);
        }
    });
    let replica = state.replica.clone();
    Ok(server::Running::spawn(addr, async move {
        server::serve(listener, router(state), shutdown).await?;
        // Requests are answered: stop standing in elections and let consensus stop cleanly.
        replica.shutdown().await;
        Ok(())
    }))
}
