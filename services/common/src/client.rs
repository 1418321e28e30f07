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
