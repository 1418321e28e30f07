//! The public API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types, and a page that renders it.

use std::sync::Arc;

use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "StockNet",
        description = "A fault-tolerant stock-trading back end: stock lookups, market and limit \
            orders on a replicated order book, trades. Every answer is `{\"data\": ...}` or \
            `{\"error\": {\"code\", \"message\"}}` with the HTTP status equal to `code`.",
    ),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "stocks", description = "The catalog of stocks"),
        (name = "users", description = "Users, their API keys and portfolios"),
        (name = "orders", description = "Market and limit orders, modify, cancel"),
        (name = "market", description = "Trades and order books"),
        (name = "service", description = "Health, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// `api_key`: a user's key as `Authorization: Bearer`. Orders may carry one (they then belong
/// to that user); a portfolio needs its user's.
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key from POST /users"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    axum::Json(document.as_ref().clone()).into_response()
}

/// Interactive documentation of this API (Swagger UI, loaded from a CDN by the browser).
#[utoipa::path(get, path = "/docs", tag = "service",
    responses((status = 200, description = "An HTML page", content_type = "text/html")))]
pub async fn docs_page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
