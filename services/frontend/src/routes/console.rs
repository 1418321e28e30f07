//! The web console: one page (HTML and CSS, and its script as ES modules with no build step,
//! all embedded in the binary) on the public API's streams and endpoints, and `GET /cluster`
//! (routes/cluster.rs), which it polls for the replicas' and the catalog's health.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use stocknet_common::{ApiError, Path};

const PAGE: &str = include_str!("console/index.html");

/// The page's modules, by file name.
const MODULES: [(&str, &str); 6] = [
    ("app.js", include_str!("console/app.js")),
    ("live.js", include_str!("console/live.js")),
    ("rows.js", include_str!("console/rows.js")),
    ("charts.js", include_str!("console/charts.js")),
    ("order_form.js", include_str!("console/order_form.js")),
    ("account.js", include_str!("console/account.js")),
];

/// The web console: the market live, an order form, the user's account, and the cluster.
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

/// `GET /console/{file}`: one of the page's modules (not part of the API's document).
pub async fn module(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, text) = MODULES
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| ApiError::not_found(format!("No console file {file}")))?;
    Ok((
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        *text,
    )
        .into_response())
}
