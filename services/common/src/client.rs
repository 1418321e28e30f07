//! Service-to-service HTTP: one client per service, envelope-aware calls.

use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::Secret;
use crate::envelope::ApiError;

/// Builds the one HTTP client a service keeps in its state. Loopback and cluster calls are
/// short, so a dead peer is detected in well under a second.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        // Only TLS backend initialisation can fail, and reqwest is built without TLS.
        .expect("reqwest client without TLS always builds")
}

/// Like [`http_client`], for calls to internal endpoints: every request carries `secret`.
pub fn internal_client(timeout: Duration, secret: &Secret) -> reqwest::Client {
    let headers =
        reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, secret.bearer())]);
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("reqwest client without TLS always builds")
}

/// Why a call to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer: refused, reset or timed out. The peer may be dead.
    #[error("unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The peer answered with an error envelope.
    #[error("{}: {}", .0.status, .0.message)]
    Api(ApiError),
    /// The peer answered with something that is not a StockNet envelope.
    #[error("bad response: {0}")]
    Decode(String),
}

impl RemoteError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api(error) => Some(error.status),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// Sends a request and unwraps `{"data": T}`, or turns `{"error": ...}` into [`RemoteError::Api`].
/// A call made while serving a request carries that request's id.
pub async fn call<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, RemoteError> {
    let request = match crate::request_id::current() {
        Some(id) => request.header(crate::request_id::REQUEST_ID, id),
        None => request,
    };
    let response = request.send().await.map_err(RemoteError::Unreachable)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(RemoteError::Unreachable)?;
    if status.is_success() {
        serde_json::from_slice::<DataEnvelope<T>>(&bytes)
            .map(|envelope| envelope.data)
            .map_err(|e| RemoteError::Decode(e.to_string()))
    } else {
        let error = match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(ErrorEnvelope { error }) => {
                let mut extra = error.extra;
                extra.remove("code");
                ApiError {
                    status,
                    message: error.message,
                    extra,
                }
            }
            Err(_) => ApiError::new(status, String::from_utf8_lossy(&bytes)),
        };
        Err(RemoteError::Api(error))
    }
}

/// `base` with `segments` appended as percent-encoded path segments.
pub fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, RemoteError> {
    let mut url =
        reqwest::Url::parse(base).map_err(|e| RemoteError::Decode(format!("{base}: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| RemoteError::Decode(format!("{base} cannot take a path")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_encodes_segments() {
        let url = endpoint("http://127.0.0.1:1/", &["stocks", "a b/c"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/stocks/a%20b%2Fc");
        let url = endpoint("http://127.0.0.1:1", &["health"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/health");
    }
}
