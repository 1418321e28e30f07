//! Catalog service: stock lookups, ordered application of committed trades, and server-push
//! cache invalidation to every frontend before a change is acknowledged.

mod config;
pub mod error;
pub mod metrics;
mod pushes;
#[cfg(test)]
mod router_tests;
mod routes;
mod state;
pub mod store;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;

use axum::routing::{delete, get, post};
use axum::Router;
use stocknet_common::auth::internal_only;
use stocknet_common::listeners;
use stocknet_common::paths;
use stocknet_common::server;

use routes::{
    add_key, apply, create_user, health, list, lookup, metrics, revoke_key, snapshot, user,
};

pub use config::{Config, Frontends, DEFAULT_CATALOG};
pub use error::CatalogError;
pub use state::AppState;
pub use store::CatalogStore;
pub use users::UserStore;

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route(paths::SNAPSHOT.pattern(), get(snapshot))
        .route(paths::APPLY.pattern(), post(apply))
        .route(paths::USERS.pattern(), post(create_user))
        .route(paths::USER.pattern(), get(user))
        .route(paths::USER_KEYS.pattern(), post(add_key))
        .route(paths::USER_KEY.pattern(), delete(revoke_key));
    let internal = internal_only(internal, state.secret.clone());
    let http = state.metrics.http.clone();
    let routes = Router::new()
        .route(paths::HEALTH.pattern(), get(health))
        .route(paths::METRICS.pattern(), get(metrics))
        .route(paths::STOCKS.pattern(), get(list))
        .route(paths::STOCK.pattern(), get(lookup))
        .merge(internal)
        .with_state(state);
    server::service_router(routes, &http)
}

/// How long the catalog's first push, at its start, waits for the frontends' DNS name.
const FIRST_RESOLVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the configured address and serves in the background until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<server::Running, server::BoxError> {
    let state = AppState::from_config(&config)?;
    let (listener, addr) =
        listeners::listen(listeners::PUBLIC, SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, frontends = ?config.frontends, "catalog listening");
    // A crash may have come between writing a trade and invalidating it: frontends that
    // outlived this process drop everything they cached from it, and their users' credentials
    // too (a key revoked just before the crash may not have been pushed).
    let boot = state.clone();
    let dns = state.frontend_dns.clone();
    tokio::spawn(async move {
        if let Some(dns) = dns {
            // The first push goes to the frontends the name lists, if it answers soon.
            let _ = tokio::time::timeout(FIRST_RESOLVE, boot.resolve(&dns)).await;
            tokio::spawn(state::resolve_frontends(boot.clone(), dns));
        }
        boot.invalidate_everything(true).await
    });
    let scraped = state.clone();
    stocknet_common::metrics::spawn_metrics_port(
        config.host,
        config.metrics.metrics_port,
        state.metrics.registry.clone(),
        move || scraped.refresh_metrics(),
    )
    .await?;
    Ok(server::Running::spawn(addr, async move {
        server::serve(listener, router(state), shutdown).await?;
        Ok(())
    }))
}
