//! One HTTP/1.1 keep-alive connection per load session, on hyper's client connection API.
//!
//! The load client shares the machine with the services it measures, so its cost per request
//! is taken from them: a general-purpose client (reqwest: a pool checkout, URL parsing,
//! redirect and timeout layers per request) spent more CPU per lookup than the frontend
//! answering it. A session only ever talks to one address, one request at a time.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a session's requests go: a plain-HTTP base URL taken apart once.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to, also sent as the `Host` header.
    authority: String,
    /// Path prefix of the base URL, without a trailing slash.
    base_path: String,
}

impl Target {
    /// Parses an `http://host[:port][/prefix]` base URL.
    pub fn parse(base: &str) -> Result<Self, String> {
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| format!("{base:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{base:?}: the load client speaks plain http:// only"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{base:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// A session's connection, opened on first use and again after any failure.
pub struct Connection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Sent with every request: a user's API key.
    authorization: Option<HeaderValue>,
}

/// A request that got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

impl Connection {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            sender: None,
            authorization: None,
        }
    }

    /// The same connection, sending `Authorization: Bearer <api_key>` with every request.
    pub fn with_api_key(self, api_key: &str) -> Result<Self, ConnectionError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|e| ConnectionError::Request(e.into()))?;
        value.set_sensitive(true);
        Ok(Self {
            authorization: Some(value),
            ..self
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), ConnectionError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ConnectionError> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// Sends one request and reads the whole answer. On any failure the connection is dropped;
    /// the next request opens a new one.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ConnectionError> {
        let exchange = async {
            let sender = match &mut self.sender {
                Some(sender) if !sender.is_closed() => sender,
                _ => self.sender.insert(connect(&self.target.authority).await?),
            };
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.target.base_path))
                .header(HOST, &self.target.authority);
            if body.is_some() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            if let Some(value) = &self.authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok((status, bytes))
        };
        let result = match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ConnectionError::Timeout),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, ConnectionError> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection until the sender is dropped or the server closes it.
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_explain() {
        let target = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (target.authority.as_str(), target.base_path.as_str()),
            ("127.0.0.1:8080", "")
        );
        let target = Target::parse("http://localhost/api").unwrap();
        assert_eq!(
            (target.authority.as_str(), target.base_path.as_str()),
            ("localhost:80", "/api")
        );
        assert!(Target::parse("https://example.com")
            .unwrap_err()
            .contains("plain http"));
        assert!(Target::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn requests_share_one_connection_and_a_failed_one_is_replaced() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let app = axum::Router::new()
            .route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body }),
            )
            .route(
                "/missing",
                axum::routing::get(|| async { StatusCode::NOT_FOUND }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                // The second connection is closed unanswered, as by a server that crashed.
                if counter.fetch_add(1, Ordering::SeqCst) == 1 {
                    drop(stream);
                    continue;
                }
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        tower::ServiceExt::oneshot(app.clone(), request)
                    });
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                });
            }
        });
        let mut connection = Connection::new(Target::parse(&format!("http://{addr}")).unwrap());
        let (status, body) = connection
            .post_json("/echo", br#"{"a":1}"#.to_vec())
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &br#"{"a":1}"#[..]));
        let (status, _) = connection.get("/missing").await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );

        connection.sender = None; // as after a failure: the next request connects again
        assert!(connection.get("/missing").await.is_err());
        assert!(
            connection.sender.is_none(),
            "a failed connection is dropped"
        );
        let (status, _) = connection.get("/missing").await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        server.abort();
    }
}
