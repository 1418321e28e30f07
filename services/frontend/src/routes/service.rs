//! `GET /health` and `GET /metrics` of a frontend.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use stocknet_common::envelope::DataEnvelope;
use stocknet_common::{data, metrics};
use utoipa::ToSchema;

use crate::AppState;

/// `GET /health` of a frontend.
#[derive(Debug, Serialize, ToSchema)]
struct FrontendHealth {
    service: &'static str,
    /// The order leader this frontend sends orders to, once it has elected one.
    leader: Option<u32>,
    term: Option<u64>,
    cache: bool,
}

/// Liveness, and the order leader this frontend uses.
#[utoipa::path(get, path = "/health", operation_id = "get_health", tag = "service",
    responses((status = 200, body = DataEnvelope<FrontendHealth>)))]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let leader = state.inner.leaders.current();
    data(FrontendHealth {
        service: "frontend",
        leader: leader.as_ref().map(|l| l.id),
        term: leader.as_ref().map(|l| l.term),
        cache: state.inner.cache.enabled(),
    })
}

/// Prometheus metrics (OpenMetrics text): requests by route and status with their latency,
/// cache hits, misses and entries, orders placed, retries, leader changes followed.
#[utoipa::path(get, path = "/metrics", operation_id = "get_metrics", tag = "service",
    responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.inner.refresh_metrics();
    metrics::exposition(&state.inner.metrics.registry)
}
