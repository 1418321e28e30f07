//! What every request gets around routing, in one service: its id (the caller's valid one or a
//! new one: in scope while it is served, so that log lines and calls to other services carry
//! it, and on its answer), its trace span, the body limit, and a deadline. One service with one
//! future around the router's: as a stack of layers (tower-http's trace layer among them),
//! each wrapped the router's future again and moved it, which cost cached lookups about a
//! tenth of their rate (docs/BENCHMARKS.md, "A request's way around routing").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::deadline::{timed_out, REQUEST_DEADLINE};
use crate::log_budget::LineBudget;
use crate::request_id::{self, REQUEST_ID};
use crate::server::BODY_LIMIT;

/// `router` with what every request gets around routing. Around the router, this runs once
/// per request; as route layers it would be cloned with the route's service for every
/// request.
pub fn around_routes<S>(router: S) -> AroundRoutes<S> {
    AroundRoutes {
        router,
        body_limit: DefaultBodyLimit::max(BODY_LIMIT),
    }
}

#[derive(Debug, Clone)]
pub struct AroundRoutes<S> {
    router: S,
    body_limit: DefaultBodyLimit,
}

impl<S> Service<Request> for AroundRoutes<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Serving<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let id = request_id::adopt_or_make(request.headers());
        let span = request_span(&request, &id);
        let started = (!span.is_disabled()).then(Instant::now);
        // The limit goes to requests with a body: on one without (every GET), its request
        // extension would cost two allocations and limit nothing.
        let answer = if request.body().is_end_stream() {
            self.router.call(request)
        } else {
            self.body_limit.layer(&mut self.router).call(request)
        };
        Serving {
            answer: Some(answer),
            id,
            span,
            started,
            deadline: None,
        }
    }
}

/// The span of one request (debug level: at the default level it costs nothing; the
/// request's id reaches every log line through `server::WithRequestId` instead).
fn request_span(request: &Request, id: &HeaderValue) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        version = ?request.version(),
        request_id = %id.to_str().unwrap_or_default(),
    )
}

pin_project_lite::pin_project! {
    /// A request being served: answered 408 if it has not answered within
    /// [`REQUEST_DEADLINE`] of when it first had to wait. The timer starts only then: most
    /// requests (a cached lookup, a health check) are answered the first time they are
    /// polled, and arm none.
    pub struct Serving<F> {
        // The router's future, until it is dropped in the request's scope: once answered (or
        // answered 408), or when the client goes away first.
        #[pin]
        answer: Option<F>,
        id: HeaderValue,
        span: tracing::Span,
        // When it came, if its span is logged (for the answer's line).
        started: Option<Instant>,
        deadline: Option<Pin<Box<Sleep>>>,
    }

    impl<F> PinnedDrop for Serving<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut answer = this.answer;
            if answer.is_some() {
                request_id::CURRENT.sync_scope(this.id.clone(), || answer.set(None));
            }
        }
    }
}

impl<F> Future for Serving<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let (mut answer, deadline, started) = (this.answer, this.deadline, *this.started);
        // The 408's envelope and the answer's line carry the id too: made in its scope.
        let mut response =
            std::task::ready!(request_id::CURRENT.sync_scope(this.id.clone(), || {
                let serving = answer
                    .as_mut()
                    .as_pin_mut()
                    .expect("polled after its answer");
                let response = match serving.poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        let deadline = deadline
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(REQUEST_DEADLINE)));
                        std::task::ready!(deadline.as_mut().poll(cx));
                        timed_out().into_response()
                    }
                };
                answer.set(None);
                log_answer(response.status(), started);
                Poll::Ready(response)
            }));
        response.headers_mut().insert(REQUEST_ID, this.id.clone());
        Poll::Ready(Ok(response))
    }
}

/// A line for a server error (its request's id is added to every line written while it is
/// served; at debug its span says more), within [`SERVER_ERROR_LINES`], and at debug one for
/// every answer.
fn log_answer(status: StatusCode, started: Option<Instant>) {
    let latency_ms = started.map(|started| started.elapsed().as_secs_f64() * 1000.0);
    if status.is_server_error() {
        if let Some(left_out) = SERVER_ERROR_LINES.take(Instant::now()) {
            tracing::warn!(
                status = status.as_u16(),
                latency_ms,
                left_out,
                "answered with a server error"
            );
        }
    } else if latency_ms.is_some() {
        tracing::debug!(status = status.as_u16(), latency_ms, "answered");
    }
}

/// Server-error lines a process writes in a second at most. An outage under load answers
/// thousands of them a second (each counted in the request metrics by route and status): a
/// line apiece would flood the log and its disk. The first line after a second that left
/// some out says how many (`left_out`).
static SERVER_ERROR_LINES: LineBudget = LineBudget::per_second(20);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Body;
    use axum::http;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::request_id::current;

    fn app() -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone
    {
        // Answers with the id its handler sees as current.
        let handler = || async { current().map_or_else(String::new, |id| format!("{id:?}")) };
        around_routes(
            Router::new()
                .route("/", get(handler))
                .route("/never", get(std::future::pending::<&'static str>))
                .route(
                    "/body",
                    post(|body: axum::body::Bytes| async move { body.len().to_string() }),
                ),
        )
    }

    /// The status, the answer's id and the body of `request`'s answer, if it came within a
    /// minute.
    async fn send(request: http::Request<Body>) -> (StatusCode, String, String) {
        let response = tokio::time::timeout(Duration::from_secs(60), app().oneshot(request))
            .await
            .expect("an answer within a minute")
            .unwrap();
        let status = response.status();
        let id = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, id, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_with(id: Option<&str>) -> (String, String) {
        let mut request = http::Request::get("/");
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        let (status, answered, seen) = send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        (answered, seen)
    }

    #[tokio::test]
    async fn answers_carry_the_callers_valid_id_or_a_new_one_that_handlers_see() {
        let (answered, seen) = get_with(Some("trace-42:a.b_c")).await;
        assert_eq!(answered, "trace-42:a.b_c");
        assert_eq!(seen, "\"trace-42:a.b_c\"");

        let long = "x".repeat(129);
        for bad in [
            Some("has space"),
            Some("semi;colon"),
            Some(long.as_str()),
            None,
        ] {
            let (answered, seen) = get_with(bad).await;
            assert_ne!(Some(answered.as_str()), bad);
            assert!(request_id::is_valid(
                &HeaderValue::from_str(&answered).unwrap()
            ));
            assert_eq!(seen, format!("{answered:?}"));
        }
        assert_ne!(get_with(None).await.0, get_with(None).await.0);
    }

    /// A handler dropped before it answers, its client gone, is dropped in its request's scope:
    /// what its drop logs or sends carries the id.
    #[tokio::test]
    async fn a_handler_dropped_before_its_answer_is_dropped_with_its_request_id() {
        type Seen = Arc<Mutex<Option<Option<HeaderValue>>>>;
        struct Guard(Seen);
        impl Drop for Guard {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(current());
            }
        }
        let seen: Seen = Arc::default();
        let recorded = seen.clone();
        let handler = move || {
            let guard = Guard(recorded.clone());
            async move {
                let _guard = guard;
                std::future::pending::<&'static str>().await
            }
        };
        let mut service = around_routes(Router::new().route("/", get(handler)));
        let request = http::Request::get("/")
            .header(REQUEST_ID, "gone-1")
            .body(Body::empty())
            .unwrap();
        let mut serving = Box::pin(service.call(request));
        let polled = serving
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
        assert!(polled.is_pending());
        drop(serving);
        let expected = Some(Some(HeaderValue::from_static("gone-1")));
        assert_eq!(*seen.lock().unwrap(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waits_past_its_deadline_is_answered_408_with_its_id() {
        // The clock is paused: it jumps to the next timer once nothing else can run.
        let request = http::Request::get("/never")
            .header(REQUEST_ID, "waiting-1")
            .body(Body::empty())
            .unwrap();
        let (status, id, body) = send(request).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(id, "waiting-1");
        assert_eq!(
            body,
            r#"{"error":{"code":408,"message":"No answer within 30 s","request_id":"waiting-1"}}"#
        );
    }

    /// The limit is the services' own, not axum's default (2 MiB).
    #[tokio::test]
    async fn bodies_up_to_the_limit_are_taken_and_larger_ones_refused() {
        for (size, status) in [
            (BODY_LIMIT, StatusCode::OK),
            (BODY_LIMIT + 1, StatusCode::PAYLOAD_TOO_LARGE),
        ] {
            let request = http::Request::post("/body")
                .body(Body::from(vec![b'x'; size]))
                .unwrap();
            assert_eq!(send(request).await.0, status, "{size} bytes");
        }
    }
}
