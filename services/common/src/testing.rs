//! What the services' router tests share (the `testing` feature, which their dev-dependencies
//! turn on): a request through a router, without a socket, and its answer as JSON.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

/// Sends `request` through `app` and returns the status and the JSON body.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("a router answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the whole body");
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}
