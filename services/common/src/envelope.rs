//! The one response shape of every StockNet endpoint: `{"data": ...}` on success,
//! `{"error": {"code", "message"}}` on failure, with the HTTP status equal to `code`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::log_budget::LineBudget;

/// The shape of every successful answer, for the API's description (handlers answer with
/// [`data`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataEnvelope<T> {
    pub data: T,
}

/// The shape of every error answer, for the API's description.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    #[schema(example = 404)]
    pub code: u16,
    #[schema(example = "Stock not found")]
    pub message: String,
    /// The request's `X-Request-Id`, which its log lines carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "6f1c0e2a9b3d4c5e-42")]
    pub request_id: Option<String>,
}

/// `{"data": value}` with status 200, serialized straight from `value` (its fields in their
/// declared order).
pub fn data<T: Serialize>(value: T) -> Response {
    match encode_data(&value) {
        Ok(body) => encoded(body),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `{"data": value}` encoded once, for an answer sent many times (by [`encoded`]).
pub fn encode_data<T: Serialize>(value: &T) -> serde_json::Result<Bytes> {
    serde_json::to_vec(&DataEnvelope { data: value }).map(Bytes::from)
}

/// An answer encoded before, as [`encode_data`] encodes it, with status 200.
pub fn encoded(body: Bytes) -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// Internal-error lines a process writes in a second at most: a fault that fails every request
/// (a broken disk, say) would otherwise write one a request.
static INTERNAL_ERROR_LINES: LineBudget = LineBudget::per_second(20);

/// An error already decided for the client: status and a message safe to show, and any
/// further fields of the error object (a refusal's `reason`, say).
/// Each crate's own error type converts into this once, in its `IntoResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// The error with one more field beside `code` and `message`.
    pub fn with(mut self, field: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.extra.insert(field.to_owned(), value);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A 500 whose cause is logged here (within [`INTERNAL_ERROR_LINES`]) and never shown to
    /// the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        if let Some(left_out) = INTERNAL_ERROR_LINES.take(std::time::Instant::now()) {
            tracing::error!(left_out, "internal error: {cause}");
        }
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
    }
}

/// What kind of failure an error is. Each crate's error type says which kind each of its
/// variants is ([`Classified`]), and the status code follows from the kind, here, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The request is malformed or asks for what cannot be (400).
    Input,
    /// No credentials where they are needed, or bad ones (401).
    Unauthenticated,
    /// Not this caller's to do (403).
    Forbidden,
    /// What it names does not exist (404).
    NotFound,
    /// It cannot be done in the state things are in (409).
    Conflict,
    /// An idempotency key sent again with a different request (422).
    KeyReused,
    /// Over a limit of this client's: not done, retry later (429).
    TooMany,
    /// Not done, and not to be done: retry later (503).
    Unavailable,
    /// May or may not have been done: no answer says (504).
    OutcomeUnknown,
    /// The service's own fault: logged, never shown (500).
    Internal,
}

impl Cause {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Input => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooMany => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl TryFrom<StatusCode> for Cause {
    type Error = StatusCode;

    /// The kind of an error another service answered with `status`.
    fn try_from(status: StatusCode) -> Result<Self, StatusCode> {
        [
            Self::Input,
            Self::Unauthenticated,
            Self::Forbidden,
            Self::NotFound,
            Self::Conflict,
            Self::KeyReused,
            Self::TooMany,
            Self::Unavailable,
            Self::OutcomeUnknown,
            Self::Internal,
        ]
        .into_iter()
        .find(|cause| cause.status() == status)
        .ok_or(status)
    }
}

/// An error type of a service: the kind of each of its errors, and the fields its envelope
/// carries beside `code` and `message` (its `Display`).
pub trait Classified: std::fmt::Display {
    fn cause(&self) -> Cause;

    /// `error` with the fields this error adds (a refusal's reason, a leader hint).
    fn detail(&self, error: ApiError) -> ApiError {
        error
    }
}

impl ApiError {
    /// The envelope of `error`: its kind's status and its message, or for an internal error a
    /// bare 500 with the cause logged.
    pub fn classified(error: &impl Classified) -> Self {
        match error.cause() {
            Cause::Internal => Self::internal(error),
            cause => error.detail(Self::new(cause.status(), error.to_string())),
        }
    }
}

impl ApiError {
    /// The envelope's `error` object: `code`, `message`, the further fields, and the id of the
    /// request being served (see [`crate::request_id`]), so that a client's report of an
    /// error finds its log lines.
    pub fn into_error_object(self) -> serde_json::Map<String, serde_json::Value> {
        let mut error = self.extra;
        error.insert("code".into(), self.status.as_u16().into());
        error.insert("message".into(), self.message.into());
        if let Some(id) = crate::request_id::current() {
            if let Ok(id) = id.to_str() {
                error.insert("request_id".into(), id.into());
            }
        }
        error
    }

    /// The error an envelope's `error` object under `status` says (the inverse of
    /// [`ApiError::into_error_object`], but for the request id, which stays a further field).
    pub fn from_error_object(
        status: StatusCode,
        mut error: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        error.remove("code");
        let message = match error.remove("message") {
            Some(serde_json::Value::String(message)) => message,
            _ => String::new(),
        };
        Self {
            status,
            message,
            extra: error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let error = self.into_error_object();
        (status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            // Oversized bodies keep their 413; every other rejection is the client's bad JSON.
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// `axum::extract::Path` whose rejection (e.g. a segment that is not UTF-8) is an envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejection is an envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The raw request body (`axum::body::Bytes`) whose rejection, e.g. 413 for a body over
/// the limit, is an envelope. (A peer's bulk transfer, a consensus append or a snapshot's
/// chunk, takes as long as its sender's own deadline allows.)
#[derive(Debug)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::body::Bytes::from_request(request, state).await?))
    }
}

/// A client's request body, as [`RawBody`], which must arrive whole within [`BODY_DEADLINE`],
/// or the answer is 408 before the handler does anything.
#[derive(Debug)]
pub struct ClientBody(pub axum::body::Bytes);

/// How long a client's request body may take to arrive. A client that trickles its body in
/// would otherwise spend the request's own deadline (30 s, `deadline.rs`) before a write even
/// starts, and that deadline's 408 could then cut the write off after the leader logged it:
/// a 408 that says "not executed" about a command that commits.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

impl<S: Send + Sync> FromRequest<S> for ClientBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // A body declared too large is refused before any of it is waited for.
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > crate::server::BODY_LIMIT as u64) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "The body is larger than {} bytes: nothing was done",
                    crate::server::BODY_LIMIT
                ),
            ));
        }
        let reading = axum::body::Bytes::from_request(request, state);
        match tokio::time::timeout(BODY_DEADLINE, reading).await {
            Ok(body) => Ok(Self(body?)),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "The body did not arrive within {} s: nothing was done",
                    BODY_DEADLINE.as_secs()
                ),
            )),
        }
    }
}

/// `axum::Json`, except that a rejected body answers with the error envelope.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A count a query may give (`limit`, `depth`): `default` when absent, else it must be in
/// 1..=`max`, or the answer is a 400 naming `parameter`.
pub fn bounded(
    parameter: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(value) if (1..=max).contains(&value) => Ok(value),
        Some(_) => Err(ApiError::bad_request(format!(
            "{parameter} must be between 1 and {max}"
        ))),
    }
}

/// `error` as a response that tells the client when to try again (`Retry-After`, whole
/// seconds, at least 1).
pub fn with_retry_after(error: ApiError, wait: std::time::Duration) -> Response {
    let mut response = error.into_response();
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(seconds),
    );
    response
}

/// Fallback for unknown routes.
pub async fn route_not_found() -> ApiError {
    ApiError::not_found("No such route")
}

/// Fallback for a known route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

/// Parses a body the lenient way clients send it (no content-type check), for handlers
/// that validate field by field to give precise messages.
/// A field given twice (`{"quantity":-5,"quantity":1}`) is refused: parsers disagree on which
/// one wins, so accepting it would let a proxy and this service read different orders. So is
/// a number a double cannot hold exactly (`0.99999999999999999` would be read as 1).
pub fn parse_json_object(
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let fields = match serde_json::from_slice::<Body>(bytes) {
        Ok(Body::Object(fields)) => fields,
        Ok(Body::Other) => return Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(e) => return Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
    };
    if let Some(number) = imprecise_number(bytes) {
        // Cut short: a body may be megabytes of digits.
        let shown: String = number.chars().take(40).collect();
        let cut = if shown.len() < number.len() {
            "…"
        } else {
            ""
        };
        return Err(ApiError::bad_request(format!(
            "Invalid JSON body: {shown}{cut} has more than {EXACT_DIGITS} significant digits: it would be read as another number"
        )));
    }
    Ok(fields)
}

/// Significant digits every decimal number keeps through a double (`f64::DIGITS`): with at
/// most this many, a number is read as exactly what it says.
const EXACT_DIGITS: usize = f64::DIGITS as usize;

/// The first number of `json` (valid JSON) with more significant digits than
/// [`EXACT_DIGITS`], from its first non-zero digit to its last.
fn imprecise_number(json: &[u8]) -> Option<&str> {
    let (mut in_string, mut escaped) = (false, false);
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        at += 1;
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte == b'-' || byte.is_ascii_digit() {
            let start = at - 1;
            while json
                .get(at)
                .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            {
                at += 1;
            }
            let number = &json[start..at];
            let mantissa = number.split(|b| matches!(b, b'e' | b'E')).next()?;
            let digits = mantissa.iter().filter(|b| b.is_ascii_digit());
            // Places of the first and the last non-zero digit among the digits.
            let non_zero = digits.enumerate().filter(|&(_, &d)| d != b'0');
            let (first, last) =
                non_zero.fold((None, 0), |(first, _), (at, _)| (first.or(Some(at)), at));
            let significant = first.map_or(0, |first| last - first + 1);
            if significant > EXACT_DIGITS {
                return std::str::from_utf8(number).ok();
            }
        }
    }
    None
}

/// A JSON body, read once: an object whose top-level keys are all different, or another
/// value (which a body must not be).
enum Body {
    Object(serde_json::Map<String, serde_json::Value>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Body;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Body, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((key, value)) = access.next_entry::<String, serde_json::Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "field `{key}` appears more than once"
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(Body::Object(map))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Body, A::Error> {
                while access.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Body::Other)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
                Ok(Body::Other)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
                Ok(Body::Other)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
                Ok(Body::Other)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
                Ok(Body::Other)
            }

            fn visit_str<E>(self, _: &str) -> Result<Body, E> {
                Ok(Body::Other)
            }

            fn visit_unit<E>(self) -> Result<Body, E> {
                Ok(Body::Other)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Deserializes a typed value from an already-checked JSON value, mapping failure to 400.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("no such thing")]
        Missing,
        #[error("disk on fire")]
        Disk,
    }

    impl Classified for Failure {
        fn cause(&self) -> Cause {
            match self {
                Self::Missing => Cause::NotFound,
                Self::Disk => Cause::Internal,
            }
        }

        fn detail(&self, error: ApiError) -> ApiError {
            error.with("reason", "missing")
        }
    }

    #[test]
    fn the_status_follows_from_the_cause_and_an_internal_cause_is_not_shown() {
        let missing = ApiError::classified(&Failure::Missing);
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.message, "no such thing");
        assert_eq!(missing.extra.get("reason"), Some(&json!("missing")));
        let disk = ApiError::classified(&Failure::Disk);
        assert_eq!(disk.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(disk.message, "Internal error");
        assert!(disk.extra.is_empty(), "{disk:?}");
        for status in [400, 401, 403, 404, 409, 422, 500, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Cause::try_from(status).map(Cause::status), Ok(status));
        }
        assert!(Cause::try_from(StatusCode::IM_A_TEAPOT).is_err());
    }
    use axum::body::to_bytes;

    /// A body that never comes (a client trickling it, or stalled) is answered 408 at the
    /// body's deadline, before the handler could start anything.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        struct Stalled;
        impl axum::body::HttpBody for Stalled {
            type Data = axum::body::Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>>
            {
                std::task::Poll::Pending
            }
        }
        let request = axum::http::Request::post("/orders")
            .body(axum::body::Body::new(Stalled))
            .unwrap();
        let started = tokio::time::Instant::now();
        let read = ClientBody::from_request(request, &()).await;
        assert_eq!(started.elapsed(), BODY_DEADLINE);
        let refused = read.expect_err("no body in time");
        assert_eq!(refused.status, StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn error_envelope_carries_status_as_code() {
        let response = ApiError::not_found("Stock not found").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = to_bytes(response.into_body(), 1024).await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            json!({"error": {"code": 404, "message": "Stock not found"}})
        );
    }

    #[test]
    fn bounded_counts_and_retry_after() {
        assert_eq!(bounded("limit", None, 100, 1000), Ok(100));
        assert_eq!(bounded("limit", Some(1000), 100, 1000), Ok(1000));
        for bad in [0, 1001] {
            let error = bounded("depth", Some(bad), 10, 1000).unwrap_err();
            assert_eq!(error.message, "depth must be between 1 and 1000");
        }
        let response = with_retry_after(
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down"),
            std::time::Duration::from_millis(1200),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "2");
    }

    #[test]
    fn non_object_bodies_are_refused() {
        for body in [
            r#"[1,{"a":[2]}]"#,
            r#""text""#,
            "12",
            "-1",
            "1.5",
            "true",
            "null",
        ] {
            let refused = parse_json_object(body.as_bytes()).unwrap_err();
            assert_eq!(
                (refused.status, refused.message.as_str()),
                (
                    StatusCode::BAD_REQUEST,
                    "Request body must be a JSON object"
                ),
                "{body}"
            );
        }
        assert_eq!(
            parse_json_object(b"[1,2] x").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_json_object(b"{not json").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(parse_json_object(br#"{"a":1}"#).is_ok());
        // Numbers a double reads as what they say, and numbers inside strings, pass; a
        // number with more significant digits would be read as another.
        let exact = br#"{"a":[1.000000000000000000,100000000000000000000,-0.0000123456789012345e-3],"b":"0.99999999999999999\"1234567890123456"}"#;
        assert!(parse_json_object(exact).is_ok());
        for (body, number) in [
            (r#"{"quantity":0.99999999999999999}"#, "0.99999999999999999"),
            (
                r#"{"a":{"b":[1,4294967295.0000001]}}"#,
                "4294967295.0000001",
            ),
            (
                r#"{"price":-10.0000000000000001e2}"#,
                "-10.0000000000000001e2",
            ),
            (
                &format!(r#"{{"quantity":{}}}"#, "1".repeat(100)),
                &format!("{}…", "1".repeat(40)),
            ),
        ] {
            let refused = parse_json_object(body.as_bytes()).unwrap_err();
            assert_eq!(
                refused.message,
                format!("Invalid JSON body: {number} has more than 15 significant digits: it would be read as another number"),
            );
        }
        let twice = parse_json_object(br#"{"quantity":-5,"quantity":1}"#).unwrap_err();
        assert_eq!(twice.status, StatusCode::BAD_REQUEST);
        assert!(
            twice.message.contains("`quantity` appears more than once"),
            "{twice:?}"
        );
        // Only the top level matters: nested objects are values, not fields.
        assert!(parse_json_object(br#"{"a":{"b":1},"c":{"b":2}}"#).is_ok());
    }
}
