//! Knowing who calls: a verified `Authorization: Bearer` key, or nobody. The catalog keeps each
//! user's credential; a frontend fetches it once per user (it never changes) and verifies keys
//! itself with one hash.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use axum::http::{header, HeaderMap, StatusCode};
use lru::LruCache;
use stocknet_common::api_key::{ApiKey, Credential};
use stocknet_common::paths;
use stocknet_common::wire::UserRecord;

use crate::upstream::catalog::{self, call_catalog, CatalogCall};
use crate::{AppState, FrontendError};

/// Users whose credentials a frontend keeps: about 200 bytes each.
const CREDENTIALS_KEPT: usize = 100_000;

/// The credentials of users seen lately.
pub struct Credentials(Mutex<LruCache<u64, Credential>>);

impl Default for Credentials {
    fn default() -> Self {
        let size = NonZeroUsize::new(CREDENTIALS_KEPT).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(LruCache::new(size)))
    }
}

impl Credentials {
    fn get(&self, user: u64) -> Option<Credential> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(&user).copied()
    }

    pub(crate) fn keep(&self, user: u64, credential: Credential) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.put(user, credential);
    }
}

/// Who sends a request: the user whose API key it carries, verified, or `None` without an
/// `Authorization` header. A key that is malformed, unknown or wrong is refused (401).
pub(crate) async fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<u64>, FrontendError> {
    match bearer(headers)? {
        Some(key) => verify(state, &key).await.map(Some),
        None => Ok(None),
    }
}

/// The API key `headers` carry, not verified yet; `None` without an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<ApiKey>, FrontendError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .and_then(ApiKey::parse)
        .map(Some)
        .ok_or(FrontendError::Unauthorized(
            "Authorization must be `Bearer <API key>` with a key from POST /users",
        ))
}

/// The user `key` acts for, if it is theirs (401 if not).
pub(crate) async fn verify(state: &AppState, key: &ApiKey) -> Result<u64, FrontendError> {
    let credential = credential(state, key.user()).await?;
    if credential.verifies(key) {
        Ok(key.user())
    } else {
        Err(FrontendError::Unauthorized("Invalid API key"))
    }
}

async fn credential(state: &AppState, user: u64) -> Result<Credential, FrontendError> {
    let inner = &state.inner;
    if let Some(credential) = inner.credentials.get(user) {
        return Ok(credential);
    }
    let url = paths::USER
        .url(&inner.catalog_url, &[&user.to_string()])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = inner.http.get(url).timeout(catalog::READ_TIMEOUT);
    match call_catalog::<UserRecord>(state, request).await {
        Ok(record) => {
            inner.credentials.keep(user, record.credential);
            Ok(record.credential)
        }
        Err(CatalogCall::Answered(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(FrontendError::Unauthorized("Invalid API key"))
        }
        Err(failure) => Err(failure.into()),
    }
}
