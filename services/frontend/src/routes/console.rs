//! The web console: one page (HTML and CSS, and its script as ES modules with no build step,
//! all embedded in the binary) on the public API's streams and endpoints, and `GET /cluster`
//! (routes/cluster.rs), which it polls for the replicas' and the catalog's health.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use stocknet_common::{ApiError, Path};

const PAGE: &str = include_str!("console/index.html");

/// What the console may load and run: its own modules, its own styles (inline ones too), and
/// calls and streams to this frontend; nothing from elsewhere, and no page may frame it (one
/// that did could have the user click its order buttons).
const CONSOLE_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// An HTML page of this frontend's under `policy` (its Content-Security-Policy), not to be
/// framed, sniffed or named in a referrer.
pub(crate) fn page(policy: &'static str, html: &'static str) -> Response {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, policy),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, Html(html)).into_response()
}

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
pub async fn root() -> Response {
    page(CONSOLE_POLICY, PAGE)
}

/// The web console, as at `/`.
#[utoipa::path(get, path = "/console", operation_id = "get_console", tag = "service",
    responses((status = 200, description = "The web console (HTML)", content_type = "text/html")))]
pub async fn console() -> Response {
    page(CONSOLE_POLICY, PAGE)
}

/// `GET /console/{file}`: one of the page's modules (not part of the API's document).
pub async fn module(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, text) = MODULES
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| ApiError::not_found(format!("No console file {file}")))?;
    let headers = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    Ok((headers, *text).into_response())
}
