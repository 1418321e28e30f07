//! What the services' router tests share (the `testing` feature, which their dev-dependencies
//! turn on): a request through a router, without a socket, and its answer as JSON; requests
//! from another service, which carry the shared secret; an order update.

use axum::body::{Body, Bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Request, StatusCode};
use std::convert::Infallible;

use axum::response::Response;
use serde_json::Value;
use tower::{Service, ServiceExt};

/// Sends `request` through `app` (a router, or one with [`crate::server::around_routes`]) and
/// returns the status and the JSON body.
pub async fn send<S>(app: &S, request: Request<Body>) -> (StatusCode, Value)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    let (status, _, body) = send_raw(app, request).await;
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// Like [`send`], with the headers and the body as it came.
pub async fn send_raw<S>(app: &S, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("a router answers");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the whole body");
    (parts.status, parts.headers, body)
}

/// Asserts that `app` answers each of `requests` with `status` (a failure names the request
/// by its place in the list, its method and URI, and shows the answer).
pub async fn assert_each_answered<S>(
    app: &S,
    requests: impl IntoIterator<Item = Request<Body>>,
    status: StatusCode,
) where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    for (place, request) in requests.into_iter().enumerate() {
        let asked = format!("request {place}, {} {}", request.method(), request.uri());
        let (answered, body) = send(app, request).await;
        assert_eq!(answered, status, "{asked}: {body}");
    }
}

/// The shared secret the services' router tests run with.
pub const SECRET: &str = "router-test-secret";

/// `GET uri` from another service: it carries [`SECRET`].
pub fn insider_get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(AUTHORIZATION, format!("Bearer {SECRET}"))
        .body(Body::empty())
        .expect("a request")
}

/// `POST uri` with the JSON `body`, from another service: it carries [`SECRET`].
pub fn insider_post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {SECRET}"))
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

/// The update of entry `entry` for `user`: an order of one share of `A` accepted.
pub fn order_update(entry: u64, user: u64) -> crate::wire::OrderUpdate {
    use crate::wire::{OrderEvent, OrderUpdate, OrderView};
    OrderUpdate {
        entry,
        time: String::new(),
        user,
        event: OrderEvent::Accepted,
        order: OrderView {
            remaining_quantity: 1,
            ..OrderView::new(entry, "A".into(), crate::Side::Buy, 1, crate::Status::Open)
        },
        fills: Vec::new(),
        reason: None,
    }
}
