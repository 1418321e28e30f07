//! Request ids: every answer carries `X-Request-Id` (the caller's, if it sent a valid one,
//! else a new one), the request's log lines carry it (the trace span's `request_id`), and
//! calls to other services made while serving it pass it on, so one id finds a request's
//! lines in the frontend's, the order leader's and the catalog's logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a caller.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// Middleware (outside the trace layer, so its span sees the id): adopts or makes the id,
/// serves the request in its scope and answers with it.
pub async fn track(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|id| is_valid(id))
        .cloned()
        .unwrap_or_else(new_id);
    request.headers_mut().insert(REQUEST_ID, id.clone());
    let mut response = CURRENT.scope(id.clone(), next.run(request)).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The id of the request this task serves, if it serves one.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Up to 128 letters, digits and `-_.:`: what fits a log line and a header as it is.
fn is_valid(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// `<random per process>-<count>`: unique without coordination, cheap per request.
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        crate::api_key::random_bytes::<8>()
            .map(|bytes| crate::api_key::to_hex(&bytes))
            .unwrap_or_else(|_| format!("{:x}", std::process::id()))
    });
    let id = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    // Hex digits, a dash and decimal digits are always a valid header value.
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    /// A service that answers with the id its handler sees as current.
    fn app() -> Router {
        let handler = || async { current().map_or_else(String::new, |id| format!("{id:?}")) };
        Router::new()
            .route("/", get(handler))
            .layer(axum::middleware::from_fn(track))
    }

    async fn send(id: Option<&str>) -> (String, String) {
        let mut request = axum::http::Request::get("/");
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let answered = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (answered, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_carry_the_callers_valid_id_or_a_new_one_that_handlers_see() {
        let (answered, seen) = send(Some("trace-42:a.b_c")).await;
        assert_eq!(answered, "trace-42:a.b_c");
        assert_eq!(seen, "\"trace-42:a.b_c\"");

        let long = "x".repeat(MAX_LEN + 1);
        for bad in [
            Some("has space"),
            Some("semi;colon"),
            Some(long.as_str()),
            None,
        ] {
            let (answered, seen) = send(bad).await;
            assert_ne!(Some(answered.as_str()), bad);
            assert!(is_valid(&HeaderValue::from_str(&answered).unwrap()));
            assert_eq!(seen, format!("{answered:?}"));
        }
        assert_ne!(send(None).await.0, send(None).await.0);
    }

    #[tokio::test]
    async fn calls_made_while_serving_pass_the_id_on() {
        let echo = Router::new().route(
            "/",
            get(|headers: axum::http::HeaderMap| async move {
                let id = headers
                    .get(REQUEST_ID)
                    .map(|id| id.to_str().unwrap_or("").to_owned());
                crate::data(id)
            }),
        );
        let (listener, address) = crate::server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, echo).await });
        let url = format!("http://{address}/");
        let http = crate::http_client(std::time::Duration::from_secs(2));

        let id = HeaderValue::from_static("abc-1");
        let passed: Option<String> = CURRENT
            .scope(id, crate::call(http.get(&url)))
            .await
            .unwrap();
        assert_eq!(passed.as_deref(), Some("abc-1"));
        let outside: Option<String> = crate::call(http.get(&url)).await.unwrap();
        assert_eq!(outside, None);
        server.abort();
    }
}
