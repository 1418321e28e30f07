//! The public API's handlers, one file per resource, and the internal invalidation push.

pub(crate) mod answers;
pub(crate) mod audit;
pub(crate) mod book;
pub(crate) mod cluster;
pub(crate) mod console;
pub mod docs;
mod extract;
mod invalidation;
pub(crate) mod orders;
pub(crate) mod reports;
pub(crate) mod service;
pub(crate) mod stocks;
pub(crate) mod trades;
pub(crate) mod users;

use axum::routing::{get, post};
use axum::{middleware, Router};
use stocknet_common::auth::internal_only;
use stocknet_common::paths;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{limits, streams, AppState};

/// The public API: every route registered here is described in the OpenAPI document by the
/// same call, so the two cannot drift apart.
pub(crate) fn public_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(service::health))
        .routes(routes!(service::metrics))
        .routes(routes!(stocks::lookup))
        .routes(routes!(stocks::list_stocks))
        .routes(routes!(
            orders::place_order,
            orders::list_orders,
            orders::cancel_by_client_order_id
        ))
        .routes(routes!(
            orders::query_order,
            orders::modify_order,
            orders::cancel_order
        ))
        .routes(routes!(trades::list_trades))
        .routes(routes!(book::book))
        .routes(routes!(book::candles))
        .routes(routes!(reports::daily_report))
        .routes(routes!(users::create_user))
        .routes(routes!(users::get_user))
        .routes(routes!(users::list_keys, users::create_key))
        .routes(routes!(users::revoke_key))
        .routes(routes!(users::portfolio))
        .routes(routes!(audit::audit))
        .routes(routes!(streams::trades))
        .routes(routes!(streams::prices))
        .routes(routes!(streams::book))
        .routes(routes!(streams::candles))
        .routes(routes!(streams::orders::orders))
        .routes(routes!(docs::document))
        .routes(routes!(docs::docs_page))
        .routes(routes!(console::root))
        .routes(routes!(console::console))
        .routes(routes!(cluster::cluster))
}

pub(crate) fn public_routes(state: &AppState) -> Router<AppState> {
    let public = Router::from(public_api())
        // The docs page's own files: not part of the API's document.
        .route("/docs/swagger-ui.css", get(docs::swagger_ui_css))
        .route("/docs/swagger-ui-bundle.js", get(docs::swagger_ui_js))
        .route("/docs/init.js", get(docs::docs_init))
        // The console's modules: not part of the API's document either.
        .route("/console/{file}", get(console::module));
    // Only when configured: the layer costs cached lookups about 9% even when it lets
    // everything through (bench/ab.sh, 3 rounds).
    if !state.inner.limits.enabled() {
        return public;
    }
    public.route_layer(middleware::from_fn_with_state(state.clone(), limits::limit))
}

/// Not part of the public API, and only for callers with the shared secret.
pub(crate) fn internal_routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(
            paths::INVALIDATE.pattern(),
            post(invalidation::invalidate_many),
        )
        .route(
            paths::INVALIDATE_ONE.pattern(),
            post(invalidation::invalidate),
        );
    internal_only(routes, state.inner.secret.clone())
}
