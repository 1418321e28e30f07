//! The frontend's one error type, mapped once to the error envelope.

use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use stocknet_common::envelope::with_retry_after;
use stocknet_common::wire::IDEMPOTENCY_KEY;
use stocknet_common::{ApiError, Cause, Classified, RemoteError};

/// What a handler answers: a response, or the error's envelope.
pub type Answer = Result<Response, FrontendError>;

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
    /// The client's address has created as many users as it may for now.
    #[error("Too many new users from this address; retry later")]
    TooManyNewUsers { retry_after: Duration },
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
    /// A change to the catalog's users that may have been made: it was sent and no answer
    /// says how it went.
    #[error(
        "Outcome unknown: the catalog did not answer, so the change may or may not have been \
         made; GET /users/{{id}}/keys shows a user's keys"
    )]
    CatalogWriteUnknown(#[source] RemoteError),
}

impl Classified for FrontendError {
    fn cause(&self) -> Cause {
        match self {
            Self::BadRequest(_) => Cause::Input,
            Self::Unauthorized(_) => Cause::Unauthenticated,
            Self::Forbidden(_) => Cause::Forbidden,
            Self::TooManyNewUsers { .. } => Cause::TooMany,
            Self::StockNotFound => Cause::NotFound,
            Self::NoLeader | Self::CatalogUnavailable(_) | Self::CatalogDown { .. } => {
                Cause::Unavailable
            }
            Self::OutcomeUnknown { .. } | Self::CatalogWriteUnknown(_) => Cause::OutcomeUnknown,
            Self::Internal(_) => Cause::Internal,
            // (Answered as the backend answered: see `into_response`.)
            Self::Upstream(error) => Cause::try_from(error.status).unwrap_or(Cause::Internal),
        }
    }

    fn detail(&self, error: ApiError) -> ApiError {
        match self {
            Self::OutcomeUnknown { key } => error.with("idempotency_key", key),
            _ => error,
        }
    }
}

impl IntoResponse for FrontendError {
    fn into_response(self) -> Response {
        let error = match &self {
            // A backend's envelope, meant for the client as it is.
            Self::Upstream(error) => return error.clone().into_response(),
            Self::BadRequest(message) => {
                // Malformed requests never reach the leader, so no audit record holds them:
                // they are logged here and counted by route and status in the metrics.
                tracing::info!(%message, "refused a malformed request");
                ApiError::classified(&self)
            }
            Self::CatalogUnavailable(cause) => {
                tracing::warn!("catalog unavailable: {cause}");
                ApiError::classified(&self)
            }
            Self::CatalogWriteUnknown(cause) => {
                tracing::warn!("a change to the catalog's users without an answer: {cause}");
                ApiError::classified(&self)
            }
            Self::CatalogDown { retry_after } | Self::TooManyNewUsers { retry_after } => {
                return with_retry_after(ApiError::classified(&self), *retry_after);
            }
            _ => ApiError::classified(&self),
        };
        let mut response = error.into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::OutcomeUnknown { key } => {
                if let Ok(value) = HeaderValue::from_str(key) {
                    headers.insert(IDEMPOTENCY_KEY, value);
                }
            }
            _ => {}
        }
        response
    }
}
