//! The frontend's one error type, mapped once to the error envelope.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use stocknet_common::envelope::with_retry_after;
use stocknet_common::wire::IDEMPOTENCY_KEY;
use stocknet_common::{ApiError, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Stock not found")]
    StockNotFound,
    #[error("No order leader available")]
    NoLeader,
    #[error("Catalog unavailable")]
    CatalogUnavailable(#[source] RemoteError),
    /// No API key where one is needed, or one that is malformed, unknown or wrong.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// Logged here, never shown to the client.
    #[error("{0}")]
    Internal(String),
    /// The catalog's breaker is open: fail at once, and say when to try again.
    #[error("Catalog unavailable; retry later")]
    CatalogDown { retry_after: Duration },
    /// An error envelope from a backend service that is meant for the client as it is.
    #[error("{}", .0.message)]
    Upstream(ApiError),
    /// A write that may have executed: no answer says. A retry with `key` executes it at most
    /// once and answers how it went.
    #[error(
        "Outcome unknown: the command may or may not have executed. Retry it with \
         Idempotency-Key {key} (it executes at most once), or GET /orders?key={key}"
    )]
    OutcomeUnknown { key: String },
}

impl IntoResponse for FrontendError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(message) => {
                // Malformed requests never reach the leader, so no audit record holds them:
                // they are logged here and counted by route and status in the metrics.
                tracing::info!(%message, "refused a malformed request");
                StatusCode::BAD_REQUEST
            }
            Self::StockNotFound => StatusCode::NOT_FOUND,
            Self::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
            Self::CatalogUnavailable(cause) => {
                tracing::warn!("catalog unavailable: {cause}");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(error) => return error.clone().into_response(),
            Self::Unauthorized(_) => {
                let mut response =
                    ApiError::new(StatusCode::UNAUTHORIZED, self.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Internal(cause) => return ApiError::internal(cause).into_response(),
            Self::CatalogDown { retry_after } => {
                let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string());
                return with_retry_after(error, *retry_after);
            }
            Self::OutcomeUnknown { key } => {
                let error = ApiError::new(StatusCode::GATEWAY_TIMEOUT, self.to_string())
                    .with("idempotency_key", key);
                let mut response = error.into_response();
                if let Ok(value) = HeaderValue::from_str(key) {
                    response.headers_mut().insert(IDEMPOTENCY_KEY, value);
                }
                return response;
            }
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}
