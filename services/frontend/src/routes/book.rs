//! `GET /book/{name}`.

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use stocknet_common::envelope::{DataEnvelope, ErrorEnvelope};
use stocknet_common::paths;
use stocknet_common::wire::Depth;
use stocknet_common::Path;

use crate::routes::stocks::stock;
use crate::upstream::order_group;
use crate::{AppState, FrontendError};

/// A stock's book: the best price levels of each side, aggregated.
#[utoipa::path(get, path = "/book/{name}", operation_id = "get_order_book", tag = "market",
    params(
        ("name" = String, Path, description = "Stock name"),
        ("depth" = Option<usize>, Query, description = "Levels per side, 1–1000 (default 10)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = DataEnvelope<Depth>),
        (status = 400, description = "Bad depth", body = ErrorEnvelope),
        (status = 404, description = "Stock not found", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
pub(crate) async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, FrontendError> {
    stock(&state, &name).await?.into_stock();
    order_group::forward_read(&state, paths::BOOK, &[&name], uri.query()).await
}
