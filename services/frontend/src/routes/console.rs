//! The web console: one page (HTML, CSS and a dependency-free script, embedded in the binary)
//! on the public API's streams and endpoints, and `GET /cluster` (routes/cluster.rs), which it
//! polls for the replicas' and the catalog's health.

use axum::response::Html;

const PAGE: &str = include_str!("console.html");

/// The web console: the market live, an order form, and the cluster.
#[utoipa::path(get, path = "/", operation_id = "get_console_index", tag = "service",
    responses((status = 200, description = "The web console (HTML)", content_type = "text/html")))]
pub async fn root() -> Html<&'static str> {
    Html(PAGE)
}

/// The web console, as at `/`.
#[utoipa::path(get, path = "/console", operation_id = "get_console", tag = "service",
    responses((status = 200, description = "The web console (HTML)", content_type = "text/html")))]
pub async fn console() -> Html<&'static str> {
    Html(PAGE)
}
