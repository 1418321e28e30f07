//! Prometheus metrics with the `prometheus-client` crate: every service keeps a [`Registry`]
//! with its own metrics and the request metrics of [`HttpMetrics`], and serves it as
//! OpenMetrics text at `GET /metrics` (also on `--metrics-port`, which the operator opens to
//! Prometheus while NetworkPolicies keep the service's own port closed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::env;
use crate::envelope::ApiError;

/// Content type of the exposition.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where a service also serves its metrics: every service takes this flag.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// A port of its own for `GET /metrics` (also served on the service's port), for a
    /// scraper that NetworkPolicies keep off the service's port.
    #[arg(long, env = env::METRICS_PORT)]
    pub metrics_port: Option<u16>,
}

/// A latency histogram: seconds, 100 µs doubling to about 6.5 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Count buckets 1, 2, 4, … 16384 (batch sizes).
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct RequestLabels {
    method: &'static str,
    /// The route's pattern (`/stocks/{name}`), never the path: a label per stock name would
    /// grow without bound.
    route: &'static str,
    status: u16,
}

thread_local! {
    /// Route patterns this thread has seen, kept for the life of the process: a router has a
    /// fixed few, and a `&'static str` label costs a request neither a copy nor a reference
    /// count on the route's shared string.
    static ROUTES: std::cell::RefCell<std::collections::HashSet<&'static str>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

fn route_label(path: Option<&MatchedPath>) -> &'static str {
    let Some(path) = path else {
        return "unmatched";
    };
    ROUTES.with(|routes| {
        let mut routes = routes.borrow_mut();
        if let Some(&known) = routes.get(path.as_str()) {
            return known;
        }
        let kept: &'static str = Box::leak(path.as_str().into());
        routes.insert(kept);
        kept
    })
}

/// Requests served, per route, method and status, and how long they took: one histogram,
/// whose `_count` is the number of requests. Each thread records into a shard of its own,
/// which nobody else touches until a scrape sums them: a shared histogram (prometheus-client's
/// takes a lock per observation, its family another) cost cached lookups about 5% on two cores.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    shards: Arc<Shards>,
}

#[derive(Debug)]
struct Shards {
    /// Tells this instance's shards apart in a thread's list.
    id: usize,
    all: std::sync::Mutex<Vec<Arc<Shard>>>,
}

/// One thread's counts; its lock is taken by that thread, and by scrapes.
#[derive(Debug, Default)]
struct Shard(std::sync::Mutex<std::collections::HashMap<RequestLabels, Cell>>);

impl Shard {
    fn observe(&self, labels: RequestLabels, seconds: f64) {
        let mut cells = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cell = cells.entry(labels).or_insert_with(|| Cell {
            buckets: vec![0; REQUEST_BUCKETS.len() + 1],
            ..Cell::default()
        });
        let bucket = REQUEST_BUCKETS.partition_point(|&bound| bound < seconds);
        cell.buckets[bucket] += 1;
        cell.count += 1;
        cell.sum += seconds;
    }
}

#[derive(Debug, Clone, Default)]
struct Cell {
    /// Per bucket of [`REQUEST_BUCKETS`], then the overflow.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// Upper bounds of the request histogram, in seconds: 100 µs doubling to about 6.5 s.
const REQUEST_BUCKETS: [f64; 17] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768, 6.5536,
];

thread_local! {
    /// This thread's shard of each `HttpMetrics` it recorded into, by id.
    static SHARDS: std::cell::RefCell<Vec<(usize, Arc<Shard>)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            shards: Arc::new(Shards {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                all: Default::default(),
            }),
        };
        registry.register(
            "http_request_duration_seconds",
            "Requests answered (count) and the time until their headers, by method, route and \
             status",
            metrics.clone(),
        );
        metrics
    }

    /// This thread's shard.
    fn shard(&self) -> Arc<Shard> {
        SHARDS.with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some((_, shard)) = mine.iter().find(|(id, _)| *id == self.shards.id) {
                return shard.clone();
            }
            let shard = Arc::new(Shard::default());
            let mut all = self.shards.all.lock().unwrap_or_else(|e| e.into_inner());
            all.push(shard.clone());
            mine.push((self.shards.id, shard.clone()));
            shard
        })
    }

    /// Records a request a service answered before routing (a fast path of its own): `route`
    /// is the pattern the router would have matched, so the request counts as if it had.
    pub fn record(
        &self,
        method: &axum::http::Method,
        route: &'static str,
        status: u16,
        started: Instant,
    ) {
        let labels = RequestLabels {
            method: method_label(method),
            route,
            status,
        };
        self.shard()
            .observe(labels, started.elapsed().as_secs_f64());
    }

    #[cfg(test)]
    fn observe(&self, labels: RequestLabels, seconds: f64) {
        self.shard().observe(labels, seconds);
    }

    /// Every thread's counts, summed.
    fn merged(&self) -> std::collections::BTreeMap<(String, &'static str, u16), Cell> {
        let mut merged = std::collections::BTreeMap::new();
        let all = self.shards.all.lock().unwrap_or_else(|e| e.into_inner());
        for shard in all.iter() {
            let cells = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (labels, cell) in cells.iter() {
                let key = (labels.route.to_owned(), labels.method, labels.status);
                let total: &mut Cell = merged.entry(key).or_insert_with(|| Cell {
                    buckets: vec![0; REQUEST_BUCKETS.len() + 1],
                    ..Cell::default()
                });
                for (sum, add) in total.buckets.iter_mut().zip(&cell.buckets) {
                    *sum += add;
                }
                total.count += cell.count;
                total.sum += cell.sum;
            }
        }
        merged
    }
}

impl prometheus_client::encoding::EncodeMetric for HttpMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for ((route, method, status), cell) in self.merged() {
            let labels = [
                ("method", method.to_owned()),
                ("route", route),
                ("status", status.to_string()),
            ];
            let buckets: Vec<(f64, u64)> = REQUEST_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(cell.buckets)
                .collect();
            encoder
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    cell.sum, cell.count, &buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The label of a method: the standard ones by name, anything else as `other` (a label per
/// made-up method would grow without bound).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A tower layer recording every request of the router it wraps (add it with `Router::layer`,
/// so that the matched route is known). A hand-written service, not `middleware::from_fn`:
/// that one boxes every request's future, which cost cached lookups about 9%.
#[derive(Clone)]
pub struct TrackLayer(HttpMetrics);

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Track<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let route = route_label(request.extensions().get::<MatchedPath>());
        Tracked {
            inner: self.inner.call(request),
            // The calling thread's shard: no count on the metrics' shared state per request.
            record: Some((self.metrics.shard(), method, route, Instant::now())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, which records the request when its response is ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        record: Option<(Arc<Shard>, &'static str, &'static str, Instant)>,
    }
}

impl<F, E> std::future::Future for Tracked<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some((shard, method, route, started))) = (&result, this.record.take())
        {
            let labels = RequestLabels {
                method,
                route,
                status: response.status().as_u16(),
            };
            shard.observe(labels, started.elapsed().as_secs_f64());
        }
        std::task::Poll::Ready(result)
    }
}

/// `router` with its requests recorded in `metrics`.
pub(crate) fn tracked<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: &HttpMetrics,
) -> Router<S> {
    router.layer(TrackLayer(metrics.clone()))
}

/// The text exposition of `registry`.
pub fn exposition(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS_TEXT)], text).into_response(),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// A router serving `GET /metrics` alone, from `registry` after `refresh`.
fn scrape_router(
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

/// Binds `port` of `host`, if a port is given, and serves `GET /metrics` there from
/// `registry` after `refresh` (which sets gauges read at scrape time), in the background until
/// the shutdown signal. A port that cannot be bound is an error at once.
pub async fn spawn_metrics_port(
    host: IpAddr,
    port: Option<u16>,
    registry: Arc<Registry>,
    refresh: impl Fn() + Clone + Send + Sync + 'static,
) -> Result<(), crate::server::BoxError> {
    let Some(port) = port else {
        return Ok(());
    };
    let metrics = scrape_router(registry, refresh);
    let addr = std::net::SocketAddr::new(host, port);
    let (listener, addr) = crate::listeners::listen(crate::listeners::METRICS, addr).await?;
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
    use axum::extract::Request;
    use tower::ServiceExt;

    #[test]
    fn every_thread_s_shard_is_summed_when_scraped() {
        let http = HttpMetrics::register(&mut Registry::default());
        let labels = || RequestLabels {
            method: "GET",
            route: "unmatched",
            status: 200,
        };
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..1000 {
                        http.observe(labels(), if i % 2 == 0 { 0.00005 } else { 10.0 });
                    }
                });
            }
        });
        let merged = http.merged();
        let cell = &merged[&("unmatched".to_owned(), "GET", 200)];
        assert_eq!(cell.count, 4000);
        assert_eq!(cell.buckets[0], 2000, "under 100 µs");
        assert_eq!(
            cell.buckets[REQUEST_BUCKETS.len()],
            2000,
            "over the last bound"
        );
        assert_eq!(http.shards.all.lock().unwrap().len(), 4);
    }

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
                r#"test_http_request_duration_seconds_count{method="GET",route="/stocks/{name}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"} 1"#
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
