//! Calls to the catalog: each with a short deadline and through the breaker, and a probe that
//! keeps the breaker true when no lookup goes to the catalog (every stock cached).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::wire::{is_catching_up, CatalogHealth, PushMark, CACHE_LEASE};
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

/// How often price streams are caught up from the catalog's snapshot while its pushes do not
/// reach this frontend.
const UNREACHED_CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// What this frontend has of the catalog's invalidation pushes, and until when it trusts what
/// it cached (lookups, users' credentials): [`CACHE_LEASE`] after the last probe it sent whose
/// answer's [`PushMark`] it has every push through. A push it misses (refused, lost, or never
/// sent to it, e.g. while the catalog's DNS answer did not name it yet) stops renewals, so the
/// lease runs out, the cache is cleared, and the next probe starts again from its mark.
pub struct CatalogContact {
    origin: Instant,
    /// Milliseconds since `origin` until which the cache is trusted.
    trusted_until: AtomicU64,
    pushes: Mutex<PushesSeen>,
}

#[derive(Debug, Default)]
struct PushesSeen {
    /// The catalog process the pushes are from.
    boot: u64,
    /// Every push through this one has arrived.
    through: u64,
    /// Pushes that arrived while one before them had not.
    ahead: BTreeSet<u64>,
    /// Probes answered with a mark beyond `through`: (sent, sequence), each renewing the lease
    /// from when it was sent once every push through its sequence has arrived.
    waiting: VecDeque<(u64, u64)>,
}

impl From<PushMark> for PushesSeen {
    /// Counting from `mark` of its catalog process, as if every push before it had arrived.
    fn from(mark: PushMark) -> Self {
        Self {
            boot: mark.boot,
            through: mark.sequence,
            ..Self::default()
        }
    }
}

impl PushesSeen {
    /// Counts the pushes that arrived ahead and now follow on.
    fn take_ahead(&mut self) {
        while self.ahead.remove(&(self.through.saturating_add(1))) {
            self.through += 1;
        }
    }
}

/// The most probes kept waiting for pushes; older ones renew no further than newer ones.
const WAITING_KEPT: usize = 16;

/// The most pushes kept that arrived ahead of one missing (while probes that would start the
/// count again do not come, or are refused the lease). Forgetting one only makes this
/// frontend wait longer for its lease: never trust more.
const AHEAD_KEPT: usize = 4096;

impl Default for CatalogContact {
    fn default() -> Self {
        Self::counting_from(Instant::now())
    }
}

impl CatalogContact {
    /// No contact yet; times counted from `origin`, which is no later than any time given.
    fn counting_from(origin: Instant) -> Self {
        Self {
            origin,
            trusted_until: AtomicU64::new(0),
            pushes: Mutex::default(),
        }
    }

    /// Contact whose lease was last renewed by a probe sent `silence` ago (for tests of what
    /// depends on it).
    #[cfg(test)]
    pub fn silent_for(silence: Duration) -> Self {
        let sent = Instant::now()
            .checked_sub(silence)
            .unwrap_or_else(Instant::now);
        let contact = Self::counting_from(sent);
        contact.renew(sent);
        contact
    }

    /// Renews the lease as a probe sent now would (for tests of what depends on it).
    #[cfg(test)]
    pub fn renewed_now(&self) {
        self.renew(Instant::now());
    }

    /// When (milliseconds since `origin`) the probe that last renewed the lease was sent.
    #[cfg(test)]
    fn renewed_by(&self) -> u64 {
        self.trusted_until.load(Ordering::Acquire) - lease_ms()
    }

    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, PushesSeen> {
        self.pushes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renew(&self, sent: Instant) {
        self.renew_at(self.millis(sent));
    }

    fn renew_at(&self, sent_ms: u64) {
        let until = sent_ms.saturating_add(lease_ms());
        self.trusted_until.fetch_max(until, Ordering::AcqRel);
    }

    /// A push has arrived (after what it invalidates was dropped). One from a new catalog
    /// process, whose pushes before it this frontend may have missed, calls `forget` (drop
    /// everything cached). One from an older process (it timed out while this one hung, and
    /// arrived late) counts for nothing.
    pub fn pushed(&self, mark: PushMark, forget: impl FnOnce()) {
        let mut seen = self.seen();
        if mark.boot < seen.boot {
            return;
        }
        if mark.boot > seen.boot {
            forget();
            *seen = PushesSeen::from(mark);
            return;
        }
        if mark.sequence > seen.through {
            if seen.ahead.len() == AHEAD_KEPT {
                seen.ahead.pop_last();
            }
            seen.ahead.insert(mark.sequence);
        }
        seen.take_ahead();
        let mut renewed = None;
        while let Some(&(sent, sequence)) = seen.waiting.front() {
            if sequence > seen.through {
                break;
            }
            renewed = Some(sent);
            seen.waiting.pop_front();
        }
        if let Some(sent) = renewed {
            self.renew_at(sent);
        }
    }

    /// A probe sent at `sent` was answered with `health`. Where everything cached must go
    /// first (a new catalog process, or a push missed and the lease run out), calls `forget`
    /// before it renews the lease. Renews nothing where the catalog refused the lease (its
    /// pushes do not reach this frontend).
    pub fn probed(&self, sent: Instant, health: CatalogHealth, forget: impl FnOnce()) {
        if !health.lease {
            tracing::debug!("the catalog's pushes do not reach this frontend: no cache lease");
            return;
        }
        let mark = health.pushes;
        let mut seen = self.seen();
        if mark.boot != seen.boot {
            forget();
            *seen = PushesSeen::from(mark);
            self.renew(sent);
            return;
        }
        if mark.sequence <= seen.through {
            self.renew(sent);
            return;
        }
        if !self.recent() {
            // A push this frontend has not got may never come: start again from this mark,
            // with nothing cached from before it.
            forget();
            seen.through = mark.sequence;
            seen.ahead = seen.ahead.split_off(&(mark.sequence.saturating_add(1)));
            seen.take_ahead();
            seen.waiting.clear();
            self.renew(sent);
            return;
        }
        if seen.waiting.len() == WAITING_KEPT {
            seen.waiting.pop_front();
        }
        let sent = self.millis(sent);
        seen.waiting.push_back((sent, mark.sequence));
    }

    /// Whether cached lookups and credentials can be trusted now.
    pub fn recent(&self) -> bool {
        self.millis(Instant::now()) < self.trusted_until.load(Ordering::Acquire)
    }

    /// How long since the probe that last renewed the lease was sent.
    pub fn silence(&self) -> Duration {
        let renewed = self
            .trusted_until
            .load(Ordering::Acquire)
            .saturating_sub(lease_ms());
        Duration::from_millis(self.millis(Instant::now()).saturating_sub(renewed))
    }
}

fn lease_ms() -> u64 {
    u64::try_from(CACHE_LEASE.as_millis()).unwrap_or(u64::MAX)
}

/// Clears what this frontend cached from the catalog: lookups and users' credentials.
pub(crate) fn forget_cached(state: &AppState) {
    state.inner.cache.clear();
    state.inner.credentials.clear();
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
    through_breaker(state, request, true).await
}

/// [`call_catalog`] for a change to the users' file a client asked for, whose failures do not
/// count against the breaker: the catalog takes those changes one at a time, each with an
/// fsync, and answers 503 to one that waited too long for its turn, so a burst of them (any
/// address may register users) would open the breaker for every order of this frontend. A
/// catalog in trouble opens it all the same, by the probe.
pub(crate) async fn call_catalog_for_users<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: reqwest::RequestBuilder,
) -> Result<T, CatalogCall> {
    through_breaker(state, request, false).await
}

async fn through_breaker<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: reqwest::RequestBuilder,
    failures_count: bool,
) -> Result<T, CatalogCall> {
    let breaker = &state.inner.catalog_breaker;
    breaker.admit().map_err(CatalogCall::Refused)?;
    match call::<T>(request).await {
        Ok(value) => {
            breaker.succeeded();
            Ok(value)
        }
        Err(e) if is_failure(&e) => {
            if failures_count {
                breaker.failed(Instant::now());
            }
            Err(CatalogCall::Failed(e))
        }
        Err(e) => {
            breaker.succeeded();
            Err(CatalogCall::Answered(e))
        }
    }
}

/// Whether an error means the catalog is in trouble: no answer, or a 5xx (not one that it is
/// catching up after a power loss: orders, which catch it up, must go on meanwhile).
fn is_failure(error: &RemoteError) -> bool {
    match error {
        RemoteError::Unreachable(_) => true,
        RemoteError::Api(error) => error.status.is_server_error() && !is_catching_up(error),
        RemoteError::Status(status, _) => status.is_server_error(),
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
    let mut caught_up: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let probe = inner.http.get(url.clone()).timeout(PROBE_TIMEOUT);
        let sent = Instant::now();
        match call::<CatalogHealth>(probe).await {
            Err(e) if is_failure(&e) => {
                tracing::debug!("catalog probe failed: {e}");
                inner.catalog_breaker.failed(Instant::now());
            }
            Err(e) => {
                tracing::warn!("catalog probe: {e}");
                inner.catalog_breaker.succeeded();
            }
            Ok(health) => {
                inner.catalog_breaker.succeeded();
                let mut forgot = false;
                let forget = || {
                    forget_cached(&state);
                    forgot = true;
                };
                // Pushes do not reach this frontend while the catalog refuses it the lease:
                // its price streams are caught up from the catalog's snapshot meanwhile.
                let unreached = !health.lease;
                inner.catalog_contact.probed(sent, health, forget);
                let due = caught_up.is_none_or(|at| at.elapsed() >= UNREACHED_CATCH_UP_EVERY);
                if forgot || (unreached && due) {
                    caught_up = Some(Instant::now());
                    tokio::spawn(crate::streams::catch_up_prices(state.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn mark(boot: u64, sequence: u64) -> PushMark {
        PushMark { boot, sequence }
    }

    /// The catalog's answer to a probe, with its mark, granting the lease.
    fn answer(boot: u64, sequence: u64) -> CatalogHealth {
        CatalogHealth {
            service: "catalog".into(),
            applied: 0,
            term: 0,
            pushes: mark(boot, sequence),
            lease: true,
            behind: false,
        }
    }

    /// Contact counting from a minute ago, so that the tests' earlier probes are after it.
    fn contact() -> CatalogContact {
        CatalogContact::counting_from(Instant::now() - Duration::from_secs(60))
    }

    #[test]
    fn a_probe_renews_the_lease_once_every_push_it_counted_has_arrived() {
        let contact = contact();
        let forgot = Cell::new(0);
        let forget = || forgot.set(forgot.get() + 1);
        let (first, second) = (Instant::now() - Duration::from_millis(500), Instant::now());
        // The first word from a catalog process: nothing cached before it is trusted.
        contact.probed(first, answer(1, 0), forget);
        assert_eq!(forgot.get(), 1);
        assert_eq!(contact.renewed_by(), contact.millis(first));
        assert!(contact.recent());
        // Two pushes counted that have not arrived: no renewal until both have.
        contact.probed(second, answer(1, 2), forget);
        assert_eq!(contact.renewed_by(), contact.millis(first));
        contact.pushed(mark(1, 2), forget);
        assert_eq!(
            contact.renewed_by(),
            contact.millis(first),
            "push 1 is missing"
        );
        contact.pushed(mark(1, 1), forget);
        assert_eq!(contact.renewed_by(), contact.millis(second));
        // A probe whose pushes have all arrived renews at once.
        let third = Instant::now();
        contact.probed(third, answer(1, 2), forget);
        assert_eq!(contact.renewed_by(), contact.millis(third));
        assert_eq!(forgot.get(), 1, "nothing was missed");
    }

    #[test]
    fn a_missed_push_lets_the_lease_run_out_and_the_next_probe_starts_again() {
        let contact = contact();
        let forgot = Cell::new(0);
        let forget = || forgot.set(forgot.get() + 1);
        contact.probed(
            Instant::now() - Duration::from_secs(2),
            answer(1, 0),
            forget,
        );
        assert!(!contact.recent());
        // Push 1 never comes; push 2 does.
        contact.pushed(mark(1, 2), forget);
        assert!(!contact.recent());
        assert_eq!(forgot.get(), 1);
        let now = Instant::now();
        contact.probed(now, answer(1, 2), forget);
        assert_eq!(forgot.get(), 2, "what was cached may be older than push 1");
        assert_eq!(contact.renewed_by(), contact.millis(now));
        // Counting goes on from there.
        let later = Instant::now();
        contact.probed(later, answer(1, 3), forget);
        assert_eq!(contact.renewed_by(), contact.millis(now));
        contact.pushed(mark(1, 3), forget);
        assert_eq!(contact.renewed_by(), contact.millis(later));
        assert_eq!(forgot.get(), 2);
    }

    #[test]
    fn pushes_kept_ahead_of_a_missing_one_are_bounded_and_the_lease_waits_for_it() {
        let contact = contact();
        let forget = || {};
        let sent = Instant::now();
        contact.probed(sent, answer(1, 0), forget);
        // Push 1 is missing; many after it arrive.
        let last = AHEAD_KEPT as u64 + 100;
        for sequence in 2..=last {
            contact.pushed(mark(1, sequence), forget);
        }
        assert_eq!(contact.seen().ahead.len(), AHEAD_KEPT);
        let later = sent + Duration::from_millis(1);
        contact.probed(later, answer(1, last), forget);
        contact.pushed(mark(1, 1), forget);
        // Pushes forgotten count as missing: the later probe renews nothing.
        assert_ne!(contact.renewed_by(), contact.millis(later));
    }

    #[test]
    fn a_push_from_a_new_catalog_process_drops_everything_cached() {
        let contact = contact();
        let forgot = Cell::new(0);
        let forget = || forgot.set(forgot.get() + 1);
        let sent = Instant::now();
        contact.probed(sent, answer(1, 4), forget);
        contact.pushed(mark(1, 5), forget);
        assert_eq!(forgot.get(), 1);
        contact.pushed(mark(2, 1), forget);
        assert_eq!(forgot.get(), 2);
        assert_eq!(
            contact.renewed_by(),
            contact.millis(sent),
            "a push renews nothing"
        );
        contact.pushed(mark(2, 2), forget);
        assert_eq!(forgot.get(), 2);
        // A push of the process before, which timed out while this frontend hung and arrives
        // now, changes nothing.
        contact.pushed(mark(1, 6), forget);
        assert_eq!(forgot.get(), 2);
        let sent = Instant::now();
        contact.probed(sent, answer(2, 2), forget);
        assert_eq!(
            contact.renewed_by(),
            contact.millis(sent),
            "still counting process 2's"
        );
    }

    #[test]
    fn an_answer_that_refuses_the_lease_renews_nothing() {
        let contact = contact();
        let forgot = Cell::new(0);
        let forget = || forgot.set(forgot.get() + 1);
        let first = Instant::now() - Duration::from_millis(500);
        contact.probed(first, answer(1, 0), forget);
        let refused = CatalogHealth {
            lease: false,
            ..answer(1, 0)
        };
        contact.probed(Instant::now(), refused.clone(), forget);
        assert_eq!(contact.renewed_by(), contact.millis(first));
        // Not even from a new catalog process.
        contact.probed(
            Instant::now(),
            CatalogHealth {
                pushes: mark(2, 0),
                ..refused
            },
            forget,
        );
        assert_eq!(contact.renewed_by(), contact.millis(first));
        assert_eq!(forgot.get(), 1);
    }
}
