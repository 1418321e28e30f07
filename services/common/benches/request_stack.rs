//! What the stack every StockNet request goes through costs a cached lookup, without hyper and
//! the kernel: a bare router answering `GET /stocks/{name}` with fixed bytes, against the same
//! router with the services' layers (`server::service_router`: fallbacks and the request
//! histogram) and what every request gets around routing (`served::around_routes`: its id,
//! span, body limit and deadline). `cargo bench -p stocknet-common --bench request_stack`

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use stocknet_common::metrics::HttpMetrics;
use stocknet_common::server::{around_routes, service_router, with_common_layers};
use tower::{Service, ServiceExt};

const ANSWER: &[u8] = br#"{"data":{"name":"GameStart","price":15.99,"quantity":100}}"#;

async fn lookup(State(answer): State<Arc<Vec<u8>>>, Path(_name): Path<String>) -> Response {
    (
        [("content-type", "application/json")],
        answer.as_ref().clone(),
    )
        .into_response()
}

fn bare() -> Router {
    Router::new()
        .route("/stocks/{name}", get(lookup))
        .with_state(Arc::new(ANSWER.to_vec()))
}

/// `iters` lookups through `service`, one after another, on a current-thread runtime.
fn lookups<S>(runtime: &tokio::runtime::Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let request = Request::get("/stocks/GameStart")
                .body(Body::empty())
                .expect("a valid request");
            let answer = match service.clone().oneshot(request).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            };
            let body = axum::body::to_bytes(answer.into_body(), 1024).await;
            std::hint::black_box(body.expect("the whole answer"));
        }
        started.elapsed()
    })
}

fn request_stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let http = HttpMetrics::register(&mut prometheus_client::registry::Registry::default());
    let mut group = c.benchmark_group("a cached lookup's way");
    group.bench_function("a bare router", |b| {
        let service = bare();
        b.iter_custom(|iters| lookups(&runtime, &service, iters))
    });
    group.bench_function("around routing", |b| {
        let service = around_routes(with_common_layers(bare()));
        b.iter_custom(|iters| lookups(&runtime, &service, iters))
    });
    group.bench_function("around routing, with the request histogram", |b| {
        let service = around_routes(service_router(bare(), &http));
        b.iter_custom(|iters| lookups(&runtime, &service, iters))
    });
    group.finish();
}

criterion_group!(benches, request_stack);
criterion_main!(benches);
