//! The frontend's calls to the other services: the catalog (behind a breaker) and the order
//! group's leader (with retries that keep answers true).

pub mod breaker;
pub mod catalog;
pub mod leader;
pub mod order_group;
pub mod writes;

use axum::http::StatusCode;
use stocknet_common::ApiError;

/// Whether a backend's error answer is the client's to see as it is: a 4xx, except a 401,
/// which from an internal route only says that the backend did not take this frontend's
/// cluster secret (a misconfiguration, or a secret being rotated pod by pod), never that the
/// client's request was wrong. Such a backend is treated as one that cannot serve.
pub(crate) fn is_for_client(error: &ApiError) -> bool {
    error.status.is_client_error() && error.status != StatusCode::UNAUTHORIZED
}
