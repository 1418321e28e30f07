//! `GET /book/{name}` and `GET /candles/{name}`.

use axum::extract::State;
use axum::http::Uri;
use stocknet_common::envelope::{DataEnvelope, ErrorEnvelope};
use stocknet_common::paths::{self, Route};
use stocknet_common::wire::{CandleQuery, Candles, Depth};
use stocknet_common::Path;

use super::answers::StockMarketRead;
use crate::routes::stocks::stock;
use crate::upstream::order_group;
use crate::{Answer, AppState};

/// A stock's book: the best price levels of each side, aggregated.
#[utoipa::path(get, path = "/book/{name}", operation_id = "get_order_book", tag = "market",
    params(
        ("name" = String, Path, description = "Stock name"),
        ("depth" = Option<usize>, Query, description = "Levels per side, 1–1000 (default 10)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = DataEnvelope<Depth>),
        (status = 400, description = "Bad depth, or an unknown parameter", body = ErrorEnvelope),
        StockMarketRead,
    ))]
pub(crate) async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    market_read(&state, paths::BOOK, &name, &uri).await
}

/// A stock's candles (OHLCV of its book trades) of one interval, oldest first, at most 1000 at
/// once (`next_from` then says where the next page starts); intervals without trades have
/// none. Kept per minute by every replica as trades happen.
#[utoipa::path(get, path = "/candles/{name}", operation_id = "get_candles", tag = "market",
    params(("name" = String, Path, description = "Stock name"), CandleQuery),
    responses(
        (status = 200, body = DataEnvelope<Candles>),
        (status = 400, description = "An unknown parameter, a bad interval or time", body = ErrorEnvelope),
        StockMarketRead,
    ))]
pub(crate) async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    market_read(&state, paths::CANDLES, &name, &uri).await
}

/// Forwards a read of a stock's market data to the order group's leader, once the catalog is
/// known to list the stock.
async fn market_read(state: &AppState, route: Route, name: &str, uri: &Uri) -> Answer {
    stock(state, name).await?;
    order_group::forward_read(state, route, &[name], uri.query()).await
}
