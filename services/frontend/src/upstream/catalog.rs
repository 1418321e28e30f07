//! Calls to the catalog: each with a short deadline and through the breaker, and a probe that
//! keeps the breaker true when no lookup goes to the catalog (every stock cached).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::RemoteError;

use crate::{AppState, FrontendError};

/// Deadline of a read from the catalog (a lookup, a listing, a user's credential): a catalog
/// that hangs costs a lookup no more than this before its last value is served stale.
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Deadline of a write to the catalog (a new user: an fsync there).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Deadline of the catalog's snapshot (every stock), which a price stream starts with.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Deadline of the catalog's health probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How long cached lookups are trusted after this frontend last heard from the catalog. Below
/// the catalog's deadline for an invalidation push (1 s): a frontend that was paused (SIGSTOP)
/// or cut off long enough for a push to fail stops trusting its cache before the trade that push
/// was for can have been acknowledged, and clears it when it hears from the catalog again.
const CACHE_LEASE: Duration = Duration::from_millis(900);

/// When this frontend last heard from the catalog: a probe or a read answered, or a push.
pub struct CatalogContact {
    origin: Instant,
    /// Milliseconds since `origin`.
    last: AtomicU64,
}

impl Default for CatalogContact {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl CatalogContact {
    /// Contact that was last heard `silence` ago (for tests of what depends on it).
    #[cfg(test)]
    pub fn silent_for(silence: Duration) -> Self {
        Self {
            origin: Instant::now()
                .checked_sub(silence)
                .unwrap_or_else(Instant::now),
            last: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes contact now; whether the silence before it outlasted the lease (then pushes may
    /// have been missed, and the cache must go).
    pub fn heard(&self) -> bool {
        let now = self.now();
        let before = self.last.swap(now, Ordering::AcqRel);
        now.saturating_sub(before) > lease_ms()
    }

    /// Whether cached lookups can be trusted: the catalog was heard from within the lease.
    pub fn recent(&self) -> bool {
        self.silence_ms() <= lease_ms()
    }

    /// How long since this frontend last heard from the catalog.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(self.silence_ms())
    }

    fn silence_ms(&self) -> u64 {
        self.now().saturating_sub(self.last.load(Ordering::Acquire))
    }
}

fn lease_ms() -> u64 {
    u64::try_from(CACHE_LEASE.as_millis()).unwrap_or(u64::MAX)
}

/// Notes contact with the catalog, clearing the cache and the credentials kept if the
/// silence before was too long.
pub(crate) fn heard_from_catalog(state: &AppState) {
    let inner = &state.inner;
    if inner.catalog_contact.heard() {
        inner.cache.clear();
        inner.credentials.clear();
    }
}

/// Why a call to the catalog failed.
pub(crate) enum CatalogCall {
    /// The breaker is open: not even tried.
    Refused(Duration),
    /// No answer in time, or a 5xx: the catalog is in trouble.
    Failed(RemoteError),
    /// An answer that is an error (a 4xx, or a body that is not what was asked for): the
    /// catalog is there.
    Answered(RemoteError),
}

impl From<CatalogCall> for FrontendError {
    fn from(failure: CatalogCall) -> Self {
        match failure {
            CatalogCall::Refused(retry_after) => Self::CatalogDown { retry_after },
            CatalogCall::Failed(e) | CatalogCall::Answered(e) => Self::CatalogUnavailable(e),
        }
    }
}

/// Calls the catalog through its breaker. Only a missing answer or a 5xx counts against it.
pub(crate) async fn call_catalog<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: reqwest::RequestBuilder,
) -> Result<T, CatalogCall> {
    let breaker = &state.inner.catalog_breaker;
    breaker.admit().map_err(CatalogCall::Refused)?;
    match call::<T>(request).await {
        Ok(value) => {
            breaker.succeeded();
            heard_from_catalog(state);
            Ok(value)
        }
        Err(e) if is_failure(&e) => {
            breaker.failed(Instant::now());
            Err(CatalogCall::Failed(e))
        }
        Err(e) => {
            breaker.succeeded();
            Err(CatalogCall::Answered(e))
        }
    }
}

/// Whether an error means the catalog is in trouble: no answer, or a 5xx.
fn is_failure(error: &RemoteError) -> bool {
    match error {
        RemoteError::Unreachable(_) => true,
        RemoteError::Api(error) => error.status.is_server_error(),
        RemoteError::Decode(_) => false,
    }
}

/// Probes the catalog's health every [`PROBE_EVERY`](super::breaker::PROBE_EVERY), whatever
/// the breaker's state: a hung catalog opens the breaker even while every lookup is a cache
/// hit (so orders fail fast instead of waiting on the leader), and an open breaker closes as
/// soon as the catalog answers again, without waiting for a lookup to try.
pub async fn watch(state: AppState) {
    let inner = &state.inner;
    let url = match paths::HEALTH.url(&inner.catalog_url, &[]) {
        Ok(url) => url,
        Err(e) => {
            tracing::error!("no catalog probes: {e}");
            return;
        }
    };
    let mut ticks = tokio::time::interval(super::breaker::PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let probe = inner.http.get(url.clone()).timeout(PROBE_TIMEOUT);
        match call::<serde_json::Value>(probe).await {
            Err(e) if is_failure(&e) => {
                tracing::debug!("catalog probe failed: {e}");
                inner.catalog_breaker.failed(Instant::now());
            }
            _ => {
                inner.catalog_breaker.succeeded();
                heard_from_catalog(&state);
            }
        }
    }
}
