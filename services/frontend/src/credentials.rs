//! Knowing who calls: a verified `Authorization: Bearer` key, or nobody. The catalog keeps each
//! user's keys' credentials; a frontend keeps those of users seen lately and verifies keys
//! itself with one hash.
//!
//! A revoked key is refused at once: the catalog answers a revocation only after pushing it to
//! every frontend it reaches, a record fetched while a push forgot that user (or everyone) is
//! not kept (it may be from before the revocation), and a frontend trusts what it keeps only while it hears from the
//! catalog (its lease, as for cached lookups). One cut off from the catalog asks it again; if
//! it cannot, it goes on with what it keeps while its last word from the catalog is less than
//! [`CREDENTIAL_BOUND`] old, and answers 503 for keys after that: that bound is how long a
//! revoked key may still work there.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use lru::LruCache;
use stocknet_common::api_key::ApiKey;
use stocknet_common::auth::bearer_token;
use stocknet_common::paths;
use stocknet_common::wire::UserRecord;
use tokio::sync::watch;

use crate::upstream::catalog::{self, call_catalog, CatalogCall};
use crate::{AppState, FrontendError};

/// Users whose credentials a frontend keeps: a few hundred bytes each.
const CREDENTIALS_KEPT: usize = 100_000;

/// How long after it last heard from the catalog a frontend that cannot reach it goes on
/// accepting keys on the credentials it keeps.
pub const CREDENTIAL_BOUND: Duration = Duration::from_secs(30);

/// The credentials of users seen lately.
pub struct Credentials {
    kept: Mutex<Kept>,
    /// Counts what was forgotten, so that open streams check their keys again at once.
    forgotten: watch::Sender<u64>,
}

struct Kept {
    users: LruCache<u64, Arc<UserRecord>>,
    /// Counts forgetting, under the same lock: a record of a user fetched from the catalog
    /// while that user was forgotten (a revocation's push) may be from before it, and is not
    /// kept. Another user forgotten meanwhile spoils nothing.
    generation: u64,
    /// The generation at which each user was last forgotten, for those since `known_since`.
    forgotten_at: HashMap<u64, u64>,
    /// Fetches that started before this generation are not kept: everyone was forgotten then
    /// (a lapsed lease, a new catalog process), or `forgotten_at` grew too long and was let go.
    known_since: u64,
}

/// The most users `forgotten_at` tells apart.
const FORGOTTEN_KEPT: usize = 10_000;

impl Default for Credentials {
    fn default() -> Self {
        let size = NonZeroUsize::new(CREDENTIALS_KEPT).unwrap_or(NonZeroUsize::MIN);
        Self {
            kept: Mutex::new(Kept {
                users: LruCache::new(size),
                generation: 0,
                forgotten_at: HashMap::new(),
                known_since: 0,
            }),
            forgotten: watch::Sender::new(0),
        }
    }
}

impl Credentials {
    /// Changes each time credentials are forgotten (a key may have been revoked).
    pub(crate) fn forgotten(&self) -> watch::Receiver<u64> {
        self.forgotten.subscribe()
    }

    fn get(&self, user: u64) -> Option<Arc<UserRecord>> {
        self.kept().users.get(&user).cloned()
    }

    #[cfg(test)]
    pub(crate) fn keep(&self, user: UserRecord) -> Arc<UserRecord> {
        let user = Arc::new(user);
        self.kept().users.put(user.id, user.clone());
        user
    }

    /// What to pass to [`keep_fetched`](Self::keep_fetched) for a record asked for now.
    pub(crate) fn generation(&self) -> u64 {
        self.kept().generation
    }

    /// Keeps `user`, asked for from the catalog at `generation`, unless that user (or
    /// everyone) was forgotten since: then the record may predate a revocation already pushed
    /// here.
    pub(crate) fn keep_fetched(&self, user: UserRecord, generation: u64) -> Arc<UserRecord> {
        let user = Arc::new(user);
        let mut kept = self.kept();
        let forgotten_since = kept
            .forgotten_at
            .get(&user.id)
            .is_some_and(|&at| at > generation);
        if generation >= kept.known_since && !forgotten_since {
            kept.users.put(user.id, user.clone());
        }
        user
    }

    /// Forgets `users`' credentials: a key of theirs changed.
    pub(crate) fn forget(&self, users: &[u64]) {
        let mut kept = self.kept();
        kept.generation += 1;
        let generation = kept.generation;
        for &user in users {
            kept.users.pop(&user);
            kept.forgotten_at.insert(user, generation);
        }
        if kept.forgotten_at.len() > FORGOTTEN_KEPT {
            kept.forgotten_at.clear();
            kept.known_since = generation;
        }
        drop(kept);
        self.forgotten.send_modify(|count| *count += 1);
    }

    pub(crate) fn clear(&self) {
        let mut kept = self.kept();
        kept.generation += 1;
        kept.known_since = kept.generation;
        kept.forgotten_at.clear();
        kept.users.clear();
        drop(kept);
        self.forgotten.send_modify(|count| *count += 1);
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Who sends a request: the user whose API key it carries, verified, or `None` without an
/// `Authorization` header. A key that is malformed, unknown, wrong or revoked is refused (401).
pub(crate) async fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<u64>, FrontendError> {
    match bearer(headers)? {
        Some(key) => verify(state, &key).await.map(Some),
        None => Ok(None),
    }
}

/// Header `name` of a request, if it has one; `Err` if it has two that differ, which a header
/// that names one thing (a key, a credential) must not: which of them would count is not
/// for a parser to decide. (A proxy may repeat a header as it was.)
pub(crate) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a header::HeaderValue>, FrontendError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.any(|value| Some(value) != first) {
        return Err(FrontendError::BadRequest(format!(
            "more than one {name} header"
        )));
    }
    Ok(first)
}

/// The API key `headers` carry, not verified yet; `None` without an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<ApiKey>, FrontendError> {
    let Some(value) = single_header(headers, header::AUTHORIZATION.as_str())? else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .and_then(ApiKey::parse)
        .map(Some)
        .ok_or(FrontendError::Unauthorized(
            "Authorization must be `Bearer <API key>` with a key from POST /users",
        ))
}

/// The user `key` acts for, if it is one of theirs and not revoked (401 if not).
pub(crate) async fn verify(state: &AppState, key: &ApiKey) -> Result<u64, FrontendError> {
    if user(state, key.user()).await?.admits(key) {
        Ok(key.user())
    } else {
        Err(FrontendError::Unauthorized("Invalid API key"))
    }
}

/// User `id` with their keys' credentials, if this frontend keeps them and may trust them
/// now: checking a key of theirs asks the catalog nothing.
pub(crate) fn kept(state: &AppState, id: u64) -> Option<Arc<UserRecord>> {
    let inner = &state.inner;
    // The lease first: one renewed after a lapse forgets what was kept before it is renewed,
    // so a record read before the check could be one the renewal forgot.
    if !inner.catalog_contact.recent() {
        return None;
    }
    inner.credentials.get(id)
}

/// User `id` with their keys' credentials: kept, or from the catalog.
pub(crate) async fn user(state: &AppState, id: u64) -> Result<Arc<UserRecord>, FrontendError> {
    let inner = &state.inner;
    if let Some(user) = kept(state, id) {
        return Ok(user);
    }
    let url = paths::USER
        .url(&inner.catalog_url, &[&id.to_string()])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = inner.http.get(url).timeout(catalog::READ_TIMEOUT);
    let generation = inner.credentials.generation();
    match call_catalog::<UserRecord>(state, request).await {
        Ok(user) => Ok(inner.credentials.keep_fetched(user, generation)),
        Err(CatalogCall::Answered(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(FrontendError::Unauthorized("Invalid API key"))
        }
        // A catalog out of reach: what is kept now was true when the catalog was last heard
        // from, since every change before that was pushed (and a push that came during the
        // call forgot it). A catalog that answered with an error is in reach: no record.
        Err(failure @ (CatalogCall::Failed(_) | CatalogCall::Refused(_))) => {
            match inner.credentials.get(id) {
                Some(user) if inner.catalog_contact.silence() < CREDENTIAL_BOUND => Ok(user),
                _ => Err(failure.into()),
            }
        }
        Err(failure) => Err(failure.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> UserRecord {
        UserRecord {
            id,
            created: 0,
            display_name: None,
            keys: Vec::new(),
        }
    }

    /// A record fetched while its user was forgotten is not kept; one of another user is: a
    /// client that keeps changing its own keys does not stop this frontend from keeping
    /// everybody else's.
    #[test]
    fn a_fetch_is_spoiled_only_by_its_own_user_forgotten_or_by_everyone_forgotten() {
        let credentials = Credentials::default();
        let at = credentials.generation();
        credentials.forget(&[1]);
        credentials.keep_fetched(record(1), at);
        credentials.keep_fetched(record(2), at);
        assert!(
            credentials.get(1).is_none(),
            "fetched across its own forgetting"
        );
        assert!(credentials.get(2).is_some());
        let at = credentials.generation();
        credentials.clear();
        credentials.keep_fetched(record(3), at);
        assert!(
            credentials.get(3).is_none(),
            "fetched across everyone forgotten"
        );
        // Past what it tells apart, it keeps nothing fetched before.
        let at = credentials.generation();
        for user in 100..100 + FORGOTTEN_KEPT as u64 + 1 {
            credentials.forget(&[user]);
        }
        credentials.keep_fetched(record(4), at);
        assert!(credentials.get(4).is_none());
        let at = credentials.generation();
        credentials.keep_fetched(record(4), at);
        assert!(credentials.get(4).is_some());
    }
}
