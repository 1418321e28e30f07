//! Frontend gateway: the public REST API. Stock lookups go through an LRU cache that the
//! catalog keeps fresh by pushing invalidations; orders go to the order leader the replicas
//! elected (a frontend only finds it), with bounded retries under one idempotency key, so
//! that every answer is true.

pub mod cache;
mod config;
mod credentials;
mod error;
pub mod limits;
mod routes;
mod state;
pub mod streams;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use stocknet_common::connections::ConnectionCaps;
use stocknet_common::listeners;
use stocknet_common::metrics;
use stocknet_common::server::{self, ConnectionRules};

pub use config::Config;
pub use error::{Answer, FrontendError};
use routes::stocks::CachedLookupsFirst;
pub use state::AppState;

/// The OpenAPI 3.1 document of the public API (what `GET /openapi.json` serves).
pub fn openapi_document() -> serde_json::Value {
    routes::docs::complete(routes::public_api().split_for_parts().1)
}

/// The public API and the internal routes on one port.
pub fn router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = routes::public_routes(&state)
        .merge(routes::internal_routes(&state))
        .with_state(state);
    server::service_router(routes, &http)
}

/// The public API alone, for a frontend whose internal routes have a port of their own.
pub fn public_router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = routes::public_routes(&state).with_state(state);
    server::service_router(routes, &http)
}

/// The internal routes alone: the catalog's cache invalidation push.
pub fn internal_router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = routes::internal_routes(&state).with_state(state);
    server::service_router(routes, &http)
}

/// Serves on the configured address (and the internal routes' own port, if configured) in
/// the background until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<server::Running, server::BoxError> {
    let state = AppState::new(&config, config.secret.load()?);
    let (listener, addr) =
        listeners::listen(listeners::PUBLIC, SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, cache = !config.no_cache, cache_size = config.cache_size, "frontend listening");
    let finding = state.clone();
    tokio::spawn(async move {
        finding.inner.leaders.find_early().await;
        finding.inner.leaders.watch_leader().await;
    });
    tokio::spawn(upstream::catalog::watch(state.clone()));
    let inner = state.inner.clone();
    metrics::spawn_metrics_port(
        config.host,
        config.metrics.metrics_port,
        inner.metrics.registry.clone(),
        move || inner.refresh_metrics(),
    )
    .await?;
    let per_client = match config.limits.max_connections_per_client {
        0 => usize::MAX,
        cap => cap,
    };
    let total = config
        .max_connections
        .map(|total| usize::try_from(total).unwrap_or(usize::MAX));
    let rules = ConnectionRules {
        caps: ConnectionCaps::within_open_file_limit(total, per_client),
        idle_timeout: Some(Duration::from_secs(config.client_idle_seconds)),
    };
    tracing::info!(?rules, "client connections");
    let Some(internal_port) = config.internal_port else {
        return Ok(server::Running::spawn(addr, async move {
            let routes = CachedLookupsFirst::new(state.clone(), router(state));
            server::serve_with(listener, rules, routes, shutdown).await?;
            Ok(())
        }));
    };
    let (internal, internal_addr) = listeners::listen(
        listeners::INTERNAL,
        SocketAddr::new(config.host, internal_port),
    )
    .await?;
    tracing::info!(%internal_addr, "internal routes listening");
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|&stop| stop).await;
    };
    Ok(server::Running::spawn(addr, async move {
        tokio::try_join!(
            server::serve_with(
                listener,
                rules,
                CachedLookupsFirst::new(state.clone(), public_router(state.clone())),
                until_stopped(stopped.clone())
            ),
            server::serve(internal, internal_router(state), until_stopped(stopped)),
        )?;
        Ok(())
    }))
}

#[cfg(test)]
mod router_tests;
