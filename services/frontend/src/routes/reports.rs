//! `GET /reports/daily`.

use axum::extract::State;
use axum::http::Uri;
use stocknet_common::envelope::{DataEnvelope, ErrorEnvelope};
use stocknet_common::paths;
use stocknet_common::wire::DailyReport;

use super::answers::NoLeader;
use crate::upstream::order_group;
use crate::{Answer, AppState};

/// One UTC day of the market, from the committed log: per stock the executions, volume bought
/// and sold, VWAP, open/high/low/close and refused commands by reason; the top users by volume.
#[utoipa::path(get, path = "/reports/daily", operation_id = "get_daily_report", tag = "market",
    params(("date" = Option<String>, Query, description = "YYYY-MM-DD (UTC); today when absent", format = Date,
        pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$")),
    responses(
        (status = 200, body = DataEnvelope<DailyReport>),
        (status = 400, description = "Unknown parameter or a date that is not YYYY-MM-DD", body = ErrorEnvelope),
        NoLeader,
    ))]
pub(crate) async fn daily_report(State(state): State<AppState>, uri: Uri) -> Answer {
    order_group::forward_read(&state, paths::DAILY_REPORT, &[], uri.query()).await
}
