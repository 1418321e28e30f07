//! Service-to-service HTTP: one client per service, envelope-aware calls.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::Secret;
use crate::envelope::ApiError;

/// Builds the one HTTP client a service keeps in its state. Loopback and cluster calls are
/// short, so a dead peer is detected in well under a second. They go straight to the peer,
/// never through a proxy the environment names (`HTTP_PROXY`): a proxy would see the shared
/// secret, and an answer it made up (a 503 after forwarding) would be read as the peer's.
/// (Calls out of the deployment, a report's webhook, take [`outside_client`].)
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        // Only TLS backend initialisation can fail, and reqwest is built without TLS.
        .expect("reqwest client without TLS always builds")
}

/// A client for calls a user's tool makes, or that leave the deployment (a report fetched by
/// `stocknet report`, its webhook): through the proxy the environment names, as curl would.
pub fn outside_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .expect("reqwest client without TLS always builds")
}

/// Like [`http_client`], for calls to internal endpoints: every request carries `secret`.
pub fn internal_client(timeout: Duration, secret: &Secret) -> reqwest::Client {
    internal_client_carrying(timeout, secret, reqwest::header::HeaderMap::new())
}

/// Like [`internal_client`], with `headers` on every request too.
pub fn internal_client_carrying(
    timeout: Duration,
    secret: &Secret,
    mut headers: reqwest::header::HeaderMap,
) -> reqwest::Client {
    headers.insert(reqwest::header::AUTHORIZATION, secret.bearer());
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("reqwest client without TLS always builds")
}

/// Why a call to another service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// No answer: refused, reset or timed out. The peer may be dead. (Shared: a batch's
    /// failure is each of its calls'.)
    #[error("unreachable: {0}")]
    Unreachable(#[source] Arc<reqwest::Error>),
    /// The peer answered with an error envelope.
    #[error("{}: {}", .0.status, .0.message)]
    Api(ApiError),
    /// An error status whose body is not a StockNet envelope: something between the caller and
    /// the peer answered (a proxy, a sidecar), or a server that is not StockNet's, so it says
    /// nothing of what the peer did.
    #[error("{0} without an error envelope: {1}")]
    Status(StatusCode, String),
    /// The peer answered with something that is not a StockNet envelope.
    #[error("bad response: {0}")]
    Decode(String),
}

impl RemoteError {
    pub fn unreachable(error: reqwest::Error) -> Self {
        Self::Unreachable(Arc::new(error))
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api(error) => Some(error.status),
            _ => None,
        }
    }

    /// Whether the call never reached the peer (no connection was made), so nothing it asked
    /// for was done.
    pub fn never_sent(&self) -> bool {
        matches!(self, Self::Unreachable(e) if e.is_connect())
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: serde_json::Map<String, serde_json::Value>,
}

/// Sends a request and unwraps `{"data": T}`, or turns `{"error": ...}` into [`RemoteError::Api`].
/// A call made while serving a request carries that request's id.
pub async fn call<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, RemoteError> {
    let request = match crate::request_id::current() {
        Some(id) => request.header(crate::request_id::REQUEST_ID, id),
        None => request,
    };
    let response = request.send().await.map_err(RemoteError::unreachable)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(RemoteError::unreachable)?;
    decode(status, &bytes)
}

/// What an answer with `status` and the body `bytes` says: `{"data": T}`, `{"error": ...}`
/// as [`RemoteError::Api`], or another error body as [`RemoteError::Status`].
pub fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, RemoteError> {
    if status.is_success() {
        serde_json::from_slice::<DataEnvelope<T>>(bytes)
            .map(|envelope| envelope.data)
            .map_err(|e| RemoteError::Decode(e.to_string()))
    } else {
        let error = serde_json::from_slice::<ErrorEnvelope>(bytes)
            .ok()
            .and_then(|envelope| api_error(status, envelope.error));
        Err(match error {
            Some(error) => RemoteError::Api(error),
            None => {
                let text = String::from_utf8_lossy(bytes);
                let shown: String = text.chars().take(200).collect();
                RemoteError::Status(status, shown)
            }
        })
    }
}

/// The error an envelope's `error` object says, if it has a `message`.
fn api_error(
    status: StatusCode,
    error: serde_json::Map<String, serde_json::Value>,
) -> Option<ApiError> {
    error
        .get("message")?
        .is_string()
        .then(|| ApiError::from_error_object(status, error))
}

/// One answer of a batch ([`crate::wire::BatchAnswer`]) as [`call`] would have given it.
pub fn batch_answer<T>(answer: crate::wire::BatchAnswer<T>) -> Result<T, RemoteError> {
    let status = StatusCode::from_u16(answer.status)
        .map_err(|_| RemoteError::Decode(format!("status {} in a batch", answer.status)))?;
    match (answer.data, answer.error) {
        (Some(data), None) if status.is_success() => Ok(data),
        (None, Some(error)) if !status.is_success() => Err(RemoteError::Api(
            api_error(status, error)
                .ok_or_else(|| RemoteError::Decode("an error without a message".into()))?,
        )),
        _ => Err(RemoteError::Decode(format!(
            "a batch's answer with status {status} is neither data nor an error"
        ))),
    }
}

/// Where another service answers: an absolute `http` or `https` URL that takes a path. It is
/// checked once, when a flag or a peer list is read, so that a bad one stops the process with
/// a clear error instead of failing every call, and no call parses it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// As given, without a trailing `/`: what logs, the group's membership and answers show.
    text: String,
    url: reqwest::Url,
}

impl BaseUrl {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// This base with `segments` appended as percent-encoded path segments.
    pub fn join(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.url.clone();
        // A base always takes a path: parsing refused any that does not.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

impl std::str::FromStr for BaseUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?} is not an http or https URL"));
        }
        if url.cannot_be_a_base() || !url.has_host() {
            return Err(format!("{text:?} names no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: a base URL has no query or fragment"));
        }
        Ok(Self {
            text: text.to_owned(),
            url,
        })
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(text: &str) -> BaseUrl {
        text.parse().unwrap()
    }

    /// A batch's answer says what the call on its own would have: its data, or its error
    /// with every field; an answer that is neither is not taken for either.
    #[test]
    fn a_batch_answer_gives_the_data_or_the_error_a_single_call_would() {
        let refused = ApiError::new(StatusCode::CONFLICT, "Not enough stock")
            .with("reason", "insufficient_quantity")
            .with("transaction_number", 7);
        let answer = crate::wire::BatchAnswer::<u64> {
            index: 0,
            status: 409,
            data: None,
            error: Some(refused.clone().into_error_object()),
        };
        match batch_answer(answer) {
            Err(RemoteError::Api(error)) => assert_eq!(error, refused),
            other => panic!("{other:?}"),
        }
        let placed = crate::wire::BatchAnswer {
            index: 1,
            status: 200,
            data: Some(7_u64),
            error: None,
        };
        assert_eq!(batch_answer(placed).ok(), Some(7));
        for (status, data, error) in [
            (200, None, Some(serde_json::Map::new())),
            (409, Some(7), None),
            (200, None, None),
            (99, Some(7), None),
        ] {
            let answer = crate::wire::BatchAnswer {
                index: 2,
                status,
                data,
                error,
            };
            assert!(
                matches!(batch_answer(answer), Err(RemoteError::Decode(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn a_base_takes_percent_encoded_segments_after_its_own_path() {
        let url = base("http://127.0.0.1:1/").join(&["stocks", "a b/c"]);
        assert_eq!(url.as_str(), "http://127.0.0.1:1/stocks/a%20b%2Fc");
        assert_eq!(
            base("http://127.0.0.1:1").join(&["health"]).as_str(),
            "http://127.0.0.1:1/health"
        );
        let prefixed = base(" https://example.test/api/ ");
        assert_eq!(prefixed.as_str(), "https://example.test/api");
        assert_eq!(
            prefixed.join(&["health"]).as_str(),
            "https://example.test/api/health"
        );
    }

    #[test]
    fn what_cannot_be_a_base_is_refused_with_the_reason() {
        for (text, reason) in [
            ("not a url", "is not a URL"),
            ("127.0.0.1:8081", "is not a URL"),
            ("localhost:8081", "is not an http or https URL"),
            ("ftp://host/", "is not an http or https URL"),
            ("http://", "is not a URL"),
            ("http://host/?a=1", "no query or fragment"),
            ("http://host/#top", "no query or fragment"),
        ] {
            let refused = text.parse::<BaseUrl>().unwrap_err();
            assert!(refused.contains(reason), "{text}: {refused}");
        }
    }
}
