//! Request ids: every answer carries `X-Request-Id` (the caller's, if it sent a valid one,
//! else a new one), every line logged while serving the request carries it (`request_id`), and
//! calls to other services made while serving it pass it on, so one id finds a request's
//! lines in the frontend's, the order leader's and the catalog's logs.

use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::http::{self, HeaderName, HeaderValue};
use bytes::BytesMut;
use tokio::task::futures::TaskLocalFuture;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a caller.
const MAX_LEN: usize = 128;

tokio::task_local! {
    pub(crate) static CURRENT: HeaderValue;
}

/// The caller's id, if valid, else a new one.
pub(crate) fn adopt_or_make(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|id| is_valid(id))
        .cloned()
        .unwrap_or_else(new_id)
}

/// The id of the request this task serves, if it serves one.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Runs `serving` as the request with the id `id` (a new one if it is not a valid id): how a
/// batch's handler serves each call in it, so that its log lines and the log's entry carry
/// the call's own id.
pub fn serve_as<F: Future>(id: Option<&str>, serving: F) -> TaskLocalFuture<HeaderValue, F> {
    let id = id
        .and_then(|id| HeaderValue::from_str(id).ok())
        .filter(is_valid)
        .unwrap_or_else(new_id);
    CURRENT.scope(id, serving)
}

/// Runs `work` as a task of its own that goes on serving this request (its id, its span):
/// for work that must be done whole though the caller goes away (its connection closed, its
/// deadline passed), which drops the handler awaiting it.
pub fn spawn_whole<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let work = tracing::Instrument::in_current_span(work);
    match current() {
        Some(id) => tokio::spawn(CURRENT.scope(id, work)),
        None => tokio::spawn(work),
    }
}

/// Up to 128 letters, digits and `-_.:`: what fits a log line and a header as it is.
pub(crate) fn is_valid(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// `<random per process>-<count>`: unique without coordination, cheap per request (one
/// allocation, shared by its copies).
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        crate::api_key::random_bytes::<8>()
            .map(|bytes| crate::api_key::to_hex(&bytes))
            .unwrap_or_else(|_| format!("{:x}", std::process::id()))
    });
    let mut id = BytesMut::with_capacity(prefix.len() + 21);
    // Writing to memory cannot fail.
    let _ = write!(id, "{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    // Hex digits, a dash and decimal digits are always a valid header value.
    HeaderValue::from_maybe_shared(id.freeze()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    use super::*;

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
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
