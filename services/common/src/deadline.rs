//! A deadline for every request: one not answered within [`REQUEST_DEADLINE`] of when it
//! first had to wait is answered 408. The timer starts only then: most requests (a cached
//! lookup, a health check) are answered the first time they are polled, and arm none.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::Sleep;

use crate::envelope::ApiError;

/// How long a request may wait for its answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// `serving`, answered 408 if it has not answered within [`REQUEST_DEADLINE`] of when it first
/// had to wait (a service's future, as `ServiceBuilder::map_future` takes it).
pub fn within_deadline<F>(serving: F) -> WithinDeadline<F> {
    WithinDeadline {
        serving,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// A request being served, and its timer once it had to wait.
    pub struct WithinDeadline<F> {
        #[pin]
        serving: F,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, E> Future for WithinDeadline<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.serving.poll(context) {
            return Poll::Ready(answer);
        }
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(REQUEST_DEADLINE)));
        match timer.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(Ok(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("No answer within {} s", REQUEST_DEADLINE.as_secs()),
            )
            .into_response())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http;
    use axum::routing::get;
    use axum::Router;
    use tower::util::MapFutureLayer;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/now", get(|| async { "now" }))
            .route("/never", get(std::future::pending::<&'static str>))
            .layer(MapFutureLayer::new(within_deadline))
    }

    /// The status and body of `path`'s answer, if it came within a minute.
    async fn answer(path: &str) -> (StatusCode, String) {
        let request = http::Request::get(path).body(Body::empty()).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(60), app().oneshot(request))
            .await
            .expect("an answer within a minute")
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waits_past_its_deadline_is_answered_408() {
        // The clock is paused: it jumps to the next timer once nothing else can run.
        let (status, body) = answer("/never").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            body,
            r#"{"error":{"code":408,"message":"No answer within 30 s"}}"#
        );
        assert_eq!(answer("/now").await, (StatusCode::OK, "now".to_owned()));
    }
}
