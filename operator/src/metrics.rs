//! `/metrics` (OpenMetrics text, prometheus-client) and `/healthz` of the operator.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::controller::Context;

pub fn router(context: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(context)
}

async fn metrics(State(context): State<Arc<Context>>) -> Response {
    stocknet_common::metrics::exposition(&context.metrics.registry)
}

#[cfg(test)]
mod tests {
    use crate::controller::Metrics;

    /// The dashboard's operator panels and the alerts use metrics the operator exports.
    #[test]
    fn the_dashboard_and_the_alerts_use_only_metrics_the_operator_exports() {
        let metrics = Metrics::default();
        // A family shows once it has a series: one StockNet's.
        let one = vec![
            ("object_namespace".into(), "shop".into()),
            ("stocknet".into(), "demo".into()),
        ];
        metrics.report_success.get_or_create(&one).set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        let dashboard = include_str!("../../charts/stocknet/dashboards/stocknet.json");
        let alerts = include_str!("../../charts/stocknet/rules/alerts.yaml");
        let used: Vec<&str> = [dashboard, alerts]
            .iter()
            .flat_map(|source| source.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|word| word.starts_with("stocknet_operator_"))
            .collect();
        assert!(used.len() >= 4, "{used:?}");
        for name in used {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} is not exported:\n{text}"
            );
        }
    }
}
