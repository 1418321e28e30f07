//! `/metrics` (Prometheus text) and `/healthz` of the operator.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use stocknet_common::server;

use crate::controller::Context;

pub fn router(context: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(context)
}

async fn metrics(State(context): State<Arc<Context>>) -> impl IntoResponse {
    let metrics = &context.metrics;
    let counters = [
        (
            "stocknet_operator_reconciliations_total",
            "Reconciliations started.",
            metrics.reconciliations.load(Ordering::Relaxed),
        ),
        (
            "stocknet_operator_reconcile_failures_total",
            "Reconciliations that failed and were requeued with backoff.",
            metrics.failures.load(Ordering::Relaxed),
        ),
        (
            "stocknet_operator_order_pods_deleted_total",
            "Order replica pods deleted by the health policy.",
            metrics.pods_deleted.load(Ordering::Relaxed),
        ),
    ];
    let text = server::counters_text(&counters);
    ([("content-type", server::PROMETHEUS_TEXT)], text)
}
