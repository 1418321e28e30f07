//! `GET /trades`.

use axum::extract::State;
use axum::http::Uri;
use stocknet_common::envelope::DataEnvelope;
use stocknet_common::paths;
use stocknet_common::wire::Trade;

use super::answers::{BadQuery, NoLeader};
use crate::upstream::order_group;
use crate::{Answer, AppState};

/// Trades after a trade id, oldest first.
#[utoipa::path(get, path = "/trades", operation_id = "list_trades", tag = "market",
    params(
        ("name" = Option<String>, Query, description = "Only this stock's"),
        ("after" = Option<u64>, Query, description = "Trade id to start after (default 0)"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = DataEnvelope<Vec<Trade>>),
        BadQuery,
        NoLeader,
    ))]
pub(crate) async fn list_trades(State(state): State<AppState>, uri: Uri) -> Answer {
    order_group::forward_read(&state, paths::TRADES, &[], uri.query()).await
}
