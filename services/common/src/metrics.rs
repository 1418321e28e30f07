//! Prometheus metrics with the `prometheus-client` crate: every service keeps a [`Registry`]
//! with its own metrics and the request metrics of [`HttpMetrics`], and serves it as
//! OpenMetrics text at `GET /metrics` (also on `--metrics-port`, which the operator opens to
//! Prometheus while NetworkPolicies keep the service's own port closed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::envelope::ApiError;

/// Content type of the exposition.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where a service also serves its metrics: every service takes this flag.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// A port of its own for `GET /metrics` (also served on the service's port), for a
    /// scraper that NetworkPolicies keep off the service's port.
    #[arg(long, env = "STOCKNET_METRICS_PORT")]
    pub metrics_port: Option<u16>,
}

/// Seconds buckets from 100 µs to about 6.5 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 17)
}

/// A latency histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Count buckets 1, 2, 4, … 16384 (batch sizes).
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route's pattern (`/stocks/{name}`), never the path: a label per stock name would
    /// grow without bound.
    route: String,
    status: u16,
}

/// Requests served, per route, method and status, and how long they took.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "Requests answered, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request (until its headers), by method, route and status",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// Middleware recording every request of the router it wraps (add it with `Router::layer`, so
/// that the matched route is known).
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `router` with its requests recorded in `metrics`.
pub fn tracked<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: &HttpMetrics,
) -> Router<S> {
    router.layer(axum::middleware::from_fn_with_state(metrics.clone(), track))
}

/// The text exposition of `registry`.
pub fn exposition(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS_TEXT)], text).into_response(),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// A router serving `GET /metrics` alone, from `registry` after `refresh` (which sets gauges
/// read at scrape time).
pub fn metrics_router(
    registry: Arc<Registry>,
    refresh: impl Fn() + Clone + Send + Sync + 'static,
) -> Router {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            refresh();
            std::future::ready(exposition(&registry))
        }),
    );
    crate::server::with_common_layers(router)
}

/// Binds `port` of `host`, if a port is given, and serves `metrics` there in the background
/// until the shutdown signal. A port that cannot be bound is an error at once.
pub async fn spawn_metrics_port(
    host: IpAddr,
    port: Option<u16>,
    metrics: Router,
) -> Result<(), crate::server::BoxError> {
    let Some(port) = port else {
        return Ok(());
    };
    let (listener, addr) = crate::server::bind(std::net::SocketAddr::new(host, port)).await?;
    tracing::info!(%addr, "metrics listening");
    tokio::spawn(async move {
        let served =
            crate::server::serve(listener, metrics, crate::server::shutdown_signal()).await;
        if let Err(e) = served {
            tracing::error!("metrics port: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_are_counted_by_route_pattern_and_status() {
        let mut registry = Registry::with_prefix("test");
        let http = HttpMetrics::register(&mut registry);
        let app = tracked(
            Router::new().route("/stocks/{name}", get(|| async { "ok" })),
            &http,
        );
        for uri in ["/stocks/A", "/stocks/B", "/nowhere"] {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let response = exposition(&registry);
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS_TEXT);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(
                r#"test_http_requests_total{method="GET",route="/stocks/{name}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("test_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
