//! What several handlers take from a request's path, query and headers, checked one way
//! everywhere: the user a path names (whose own key must open it), an order's number and a
//! key's id, and writes that take no parameters or no body.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use stocknet_common::envelope::parse_json_object;

use crate::credentials::caller;
use crate::{AppState, FrontendError};

/// A write that takes no query parameter: any is a 400, since one ignored (a misspelt option,
/// say `?dry_run=true`) would carry the write out as it was not meant.
pub(crate) struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = FrontendError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.uri.query().filter(|query| !query.is_empty()) {
            None => Ok(Self),
            Some(query) => {
                let first = query.split(['&', '=']).next().unwrap_or(query);
                Err(FrontendError::BadRequest(format!(
                    "Unknown parameter: {first} (this operation takes none)"
                )))
            }
        }
    }
}

/// Refuses a body that is not empty or `{}`: `why` says what takes none.
pub(crate) fn refuse_a_body(body: &[u8], why: &str) -> Result<(), FrontendError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    match fields.keys().next() {
        Some(field) => Err(FrontendError::BadRequest(format!(
            "Unknown field: {field} ({why})"
        ))),
        None => Ok(()),
    }
}

/// The caller, who must be the user the path's `{id}` names: 400 for an id that is not a
/// number, 401 without a key, 403 with another user's.
pub(crate) struct OwnUser(pub u64);

impl FromRequestParts<AppState> for OwnUser {
    type Rejection = FrontendError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let id: u64 = number_in_path(parts, state, "id", "User id must be a number").await?;
        match caller(state, &parts.headers).await? {
            None => Err(FrontendError::Unauthorized(
                "This needs its user's API key (Authorization: Bearer)",
            )),
            Some(user) if user != id => Err(FrontendError::Forbidden(
                "Only the user's own key may do this".into(),
            )),
            Some(user) => Ok(Self(user)),
        }
    }
}

/// A number the path names, as an extractor: its parameter, and the 400's message when the
/// text there is not such a number.
macro_rules! path_number {
    ($(#[$doc:meta])* $name:ident($number:ty), $param:literal, $refusal:literal) => {
        $(#[$doc])*
        pub(crate) struct $name(pub $number);

        impl FromRequestParts<AppState> for $name {
            type Rejection = FrontendError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                number_in_path(parts, state, $param, $refusal).await.map(Self)
            }
        }
    };
}

path_number!(
    /// The path's `{number}`: a transaction number.
    OrderNumber(u64), "number", "Order number must be a number"
);
path_number!(
    /// The path's `{key_id}`: one of a user's keys.
    KeyId(u32), "key_id", "Key id must be a number"
);

/// The path parameter `name` as a number; `refusal` (400) when it is not one.
async fn number_in_path<N: std::str::FromStr>(
    parts: &mut Parts,
    state: &AppState,
    name: &str,
    refusal: &str,
) -> Result<N, FrontendError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|rejection| FrontendError::BadRequest(rejection.body_text()))?;
    let (_, text) = params
        .iter()
        .find(|(param, _)| *param == name)
        .ok_or_else(|| FrontendError::Internal(format!("the route has no {{{name}}}")))?;
    text.parse()
        .map_err(|_| FrontendError::BadRequest(refusal.to_owned()))
}
