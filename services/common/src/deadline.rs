//! A deadline for every request: one not answered within [`REQUEST_DEADLINE`] of when it
//! first had to wait is answered 408 (`served.rs`).

use std::time::Duration;

use axum::http::StatusCode;

use crate::envelope::ApiError;

/// How long a request may wait for its answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The answer to a request that waited past its deadline (`served.rs` keeps the time).
pub(crate) fn timed_out() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!("No answer within {} s", REQUEST_DEADLINE.as_secs()),
    )
}
