//! `GET /audit`: the audit trail, which the leader's replica reads from the committed log. A
//! user sees their own commands; the deployment's operators, with its shared secret, see
//! everybody's.

use axum::extract::State;
use axum::http::HeaderMap;
use stocknet_common::client::call;
use stocknet_common::envelope::{DataEnvelope, ErrorEnvelope};
use stocknet_common::paths;
use stocknet_common::wire::{AuditPage, AuditQuery};
use stocknet_common::{data, Query};

use super::answers::{BadQuery, NeedsKey, NoLeader};
use crate::upstream::order_group;
use crate::{credentials, Answer, AppState, FrontendError};

/// Commands that reached the leader, refused ones included, newest first: who sent each
/// (`user`), when, under which `Idempotency-Key`, and its outcome. With a user's API key, that
/// user's commands only; with the deployment's shared secret (operators), everybody's.
#[utoipa::path(get, path = "/audit", operation_id = "list_audit_records", tag = "users",
    params(AuditQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<AuditPage>),
        BadQuery,
        NeedsKey,
        (status = 403, description = "Another user's commands", body = ErrorEnvelope),
        NoLeader,
    ))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(mut query): Query<AuditQuery>,
) -> Answer {
    if !state.inner.secret.admits(&headers) {
        match (credentials::caller(&state, &headers).await?, query.user) {
            (None, _) => {
                return Err(FrontendError::Unauthorized(
                    "The audit trail needs an API key (or the deployment's secret)",
                ))
            }
            (Some(user), Some(asked)) if asked != user => {
                return Err(FrontendError::Forbidden(
                    "A user sees only their own audit trail".into(),
                ))
            }
            (Some(user), _) => query.user = Some(user),
        }
    }
    let inner = &state.inner;
    let page: AuditPage = order_group::read(&state, |leader| {
        let request = paths::AUDIT
            .url(&leader.url, &[])
            .map(|url| inner.leader_read(url).query(&query));
        async move { call::<AuditPage>(request?).await }
    })
    .await?;
    Ok(data(page))
}
