//! What the catalog's handlers share: its stores, the frontends it keeps fresh, and the
//! invalidation push that tells them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use stocknet_common::file::{self, FileFailure};
use stocknet_common::model::Stock;
use stocknet_common::paths;
use stocknet_common::wire::{AsOf, Invalidation, CACHE_LEASE, FRONTEND_PROCESS};
use stocknet_common::{internal_client, BaseUrl, Secret};
use tokio::sync::watch;

use crate::config::{Config, DEFAULT_CATALOG};
use crate::error::CatalogError;
use crate::metrics;
use crate::pushes::{boot_after, Delivery, Pushes, LEASE_MARGIN};
use crate::store::CatalogStore;
use crate::users::UserStore;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<CatalogStore>,
    pub users: Arc<UserStore>,
    pub frontends: Arc<Vec<BaseUrl>>,
    pub frontend_dns: Option<Arc<str>>,
    /// The frontends `frontend_dns` named when it last answered (none before it first has).
    pub resolved: Arc<Mutex<Option<Vec<BaseUrl>>>>,
    /// Carried by the invalidation push, and required of callers of the internal routes.
    pub secret: Secret,
    pub http: reqwest::Client,
    pub metrics: Arc<metrics::CatalogMetrics>,
    pub pushes: Arc<Pushes>,
    /// The newest leader term whose first apply has had every frontend drop every stock; the
    /// push at the start stands for the term the store held then. A take-over whose push was
    /// cut short (its call dropped) is pushed again when retried.
    pub pushed_term: Arc<AtomicU64>,
    /// The users' file takes one change at a time: the others wait for their turn here, not
    /// in a thread of the blocking pool each, which the trades' fsyncs need (a flood of new
    /// users would otherwise hold every thread).
    pub user_writes: Arc<tokio::sync::Semaphore>,
    /// Users' key changes under way, with their pushes.
    pub key_pushes: Arc<KeyPushes>,
}

/// Pushes of users' key changes under way: a change that finds nothing to do (a revocation
/// repeated) is answered only once the pushes of that user's changes before it are done, or a
/// frontend not told yet would still take the key after the answer.
#[derive(Default)]
pub struct KeyPushes {
    next: AtomicU64,
    pushing: Mutex<HashMap<u64, Vec<KeyPushPending>>>,
}

/// A key change under way (its id), and what ends when it is done.
type KeyPushPending = (u64, watch::Receiver<()>);

impl KeyPushes {
    fn pushing(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<KeyPushPending>>> {
        self.pushing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change of `user`'s keys is under way, with its push, until the guard is dropped.
    pub fn start(self: &Arc<Self>, user: u64) -> KeyPush {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, pending) = watch::channel(());
        self.pushing().entry(user).or_default().push((id, pending));
        KeyPush {
            pushes: self.clone(),
            user,
            id,
            _done: done,
        }
    }
}

/// A change of a user's keys under way ([`KeyPushes::start`]).
pub struct KeyPush {
    pushes: Arc<KeyPushes>,
    user: u64,
    id: u64,
    /// Dropped with the guard: what those waiting for it wait for.
    _done: watch::Sender<()>,
}

impl KeyPush {
    /// Waits until the changes of this user started before this one are done, pushes
    /// included (each push has its deadline).
    pub async fn after_earlier(&self) {
        let earlier: Vec<watch::Receiver<()>> = self
            .pushes
            .pushing()
            .get(&self.user)
            .into_iter()
            .flatten()
            .filter(|(id, _)| *id < self.id)
            .map(|(_, pending)| pending.clone())
            .collect();
        for mut pending in earlier {
            // Never sent to: it ends when the change's guard is dropped.
            let _ = pending.changed().await;
        }
    }
}

impl Drop for KeyPush {
    fn drop(&mut self) {
        let mut pushing = self.pushes.pushing();
        if let Some(changes) = pushing.get_mut(&self.user) {
            changes.retain(|(id, _)| *id != self.id);
            if changes.is_empty() {
                pushing.remove(&self.user);
            }
        }
    }
}

impl AppState {
    pub fn new(
        store: CatalogStore,
        users: UserStore,
        frontends: Vec<BaseUrl>,
        secret: Secret,
    ) -> Self {
        Self {
            pushed_term: Arc::new(AtomicU64::new(store.term())),
            store: Arc::new(store),
            users: Arc::new(users),
            frontends: Arc::new(frontends),
            frontend_dns: None,
            resolved: Arc::default(),
            http: internal_client(Duration::from_secs(2), &secret),
            secret,
            metrics: Arc::default(),
            pushes: Arc::default(),
            user_writes: Arc::new(tokio::sync::Semaphore::new(1)),
            key_pushes: Arc::default(),
        }
    }

    /// Opens the store named by `config`, seeding it on first start.
    pub fn from_config(config: &Config) -> Result<Self, CatalogError> {
        let initial = match &config.initial_catalog {
            Some(path) => std::fs::read_to_string(path).map_err(|e| CatalogError::io(path, e))?,
            None => DEFAULT_CATALOG.to_owned(),
        };
        file::create_dir_durably(&config.data_dir)
            .map_err(|e| CatalogError::io(&config.data_dir, e))?;
        let store = CatalogStore::open(config.data_dir.join("catalog.csv"), &initial)?;
        let users = UserStore::open(config.data_dir.join("users.csv"))?;
        let secret = config.secret.load()?;
        let boot = next_boot(&config.data_dir.join("catalog.boot"))?;
        Ok(Self {
            frontend_dns: config.frontend_dns.as_deref().map(Arc::from),
            pushes: Arc::new(Pushes::named(boot)),
            ..Self::new(store, users, config.frontends.0.clone(), secret)
        })
    }

    /// Tells every frontend to drop `names` from its cache, and waits for the answers so
    /// that an acknowledged trade is never followed by a stale cached read.
    pub(crate) async fn invalidate(&self, names: Vec<String>) {
        if names.is_empty() {
            self.offer_trial();
            return;
        }
        // While the catalog is behind, its stocks may be older than those shown before a power
        // loss: dropped, not told (they would go back in time on the price streams).
        let told = match self.store.stocks_as_of(&names) {
            Some((applied, stocks)) => Invalidation {
                names,
                stocks,
                as_of: Some(self.as_of(applied)),
                ..Invalidation::default()
            },
            None => Invalidation {
                names,
                ..Invalidation::default()
            },
        };
        self.push(told).await;
    }

    /// With nothing to tell: a frontend refused the lease (pushes did not reach it) gets it
    /// back only from a push that reaches it, so when one is due a trial, an empty push goes
    /// out (at most one a lease), which nothing waits for.
    pub(crate) fn offer_trial(&self) {
        if self.pushes.claim_trial(Instant::now()) {
            let state = self.clone();
            tokio::spawn(async move { state.push(Invalidation::default()).await });
        }
    }

    fn resolved(&self) -> std::sync::MutexGuard<'_, Option<Vec<BaseUrl>>> {
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every frontend to drop every stock it cached, and with `all_users` every user's
    /// credentials, and waits for the answers.
    /// One part each [`STOCKS_PER_PUSH`] stocks, so that a large catalog's push stays far
    /// below a frontend's body limit.
    pub(crate) async fn invalidate_everything(&self, all_users: bool) {
        let snapshot = self.store.snapshot();
        // (Behind: names only, as in `invalidate`.)
        let as_of = (!snapshot.behind).then(|| self.as_of(snapshot.applied));
        let mut stocks: Vec<&[Stock]> = snapshot.stocks.chunks(STOCKS_PER_PUSH).collect();
        if stocks.is_empty() {
            stocks.push(&[]);
        }
        let parts = stocks
            .into_iter()
            .enumerate()
            .map(|(index, stocks)| Invalidation {
                names: stocks.iter().map(|s| s.name.clone()).collect(),
                stocks: if snapshot.behind {
                    Vec::new()
                } else {
                    stocks.to_vec()
                },
                all_users: all_users && index == 0,
                as_of,
                ..Invalidation::default()
            });
        self.push_parts(parts.collect()).await;
    }

    fn as_of(&self, applied: u64) -> AsOf {
        AsOf {
            boot: self.pushes.boot(),
            applied,
        }
    }

    /// Sends `body` to every frontend that may trust what it cached ([`Pushes`]), numbered,
    /// and waits for the answers (each within [`INVALIDATION_TIMEOUT`]). If a frontend
    /// answered and did not take it, waits until the lease of what that frontend cached has run
    /// out ([`PushMark`](stocknet_common::wire::PushMark)).
    pub(crate) async fn push(&self, body: Invalidation) {
        self.push_parts(vec![body]).await
    }

    /// [`push`](Self::push) of `parts`, each numbered, in order to each frontend (one that
    /// does not take a part is sent no more of them), with one wait at the end: a frontend that
    /// failed costs the whole push one push's deadline and one lease, not one per part.
    async fn push_parts(&self, mut parts: Vec<Invalidation>) {
        let mut frontends: Vec<BaseUrl> = self.frontends.to_vec();
        let resolved = self.resolved().clone();
        // Before the frontends' name first answers, a frontend may hold a lease from a probe
        // the catalog process before this one answered, and nobody knows where it listens.
        let unresolved = self.frontend_dns.is_some() && resolved.is_none();
        frontends.extend(resolved.into_iter().flatten());
        let numbered = Instant::now();
        let (mark, plan, holders) = self.pushes.next(&frontends, numbered);
        for (index, part) in parts.iter_mut().enumerate() {
            part.mark = Some(if index == 0 {
                mark
            } else {
                self.pushes.next_part()
            });
        }
        let parts = Arc::new(parts);
        let calls = frontends.iter().zip(plan).map(|(frontend, plan)| {
            let parts = parts.clone();
            async move {
                match plan {
                    Delivery::Wait => self.deliver_all(frontend, &parts).await,
                    Delivery::Skip => Outcome::Skipped,
                    Delivery::Try => {
                        let (state, frontend) = (self.clone(), frontend.clone());
                        tokio::spawn(async move {
                            let tried = state.deliver_all(&frontend, &parts).await;
                            state.metrics.pushes.get_or_create(&tried.label()).inc();
                        });
                        Outcome::Skipped
                    }
                }
            }
        });
        let outcomes = join_all(calls).await;
        for outcome in &outcomes {
            self.metrics.pushes.get_or_create(&outcome.label()).inc();
        }
        let missed = self.pushes.missed(&holders, &frontends, Instant::now());
        if !missed.is_empty() {
            tracing::warn!(
                ?missed,
                "frontends that probe are not among those pushed to: waiting out their leases"
            );
        }
        if outcomes.contains(&Outcome::Failed) || !missed.is_empty() {
            // The frontend stops trusting what it cached a lease after the last probe it sent
            // before this push was numbered.
            tokio::time::sleep_until((numbered + CACHE_LEASE + LEASE_MARGIN).into()).await;
        }
        if unresolved {
            let ended = self.pushes.leases_from_before_start_end();
            tokio::time::sleep_until(ended.into()).await;
        }
    }

    /// Sends `parts` to `frontend` in order, as long as it takes them.
    async fn deliver_all(&self, frontend: &BaseUrl, parts: &[Invalidation]) -> Outcome {
        let mut outcome = Outcome::Taken;
        for part in parts {
            outcome = self.deliver(frontend, part).await;
            if outcome != Outcome::Taken {
                break;
            }
        }
        outcome
    }

    /// Sends `body` to `frontend` within [`INVALIDATION_TIMEOUT`], and notes in the pushes'
    /// ledger what became of it.
    async fn deliver(&self, frontend: &BaseUrl, body: &Invalidation) -> Outcome {
        let result = match paths::INVALIDATE.url(frontend, &[]) {
            Ok(url) => {
                let push = self.http.post(url).timeout(INVALIDATION_TIMEOUT);
                push.json(body).send().await
            }
            Err(e) => {
                tracing::warn!("invalidate at {frontend}: {e}");
                return Outcome::NotConnected;
            }
        };
        match result {
            Ok(answer) if answer.status().is_success() => {
                let process = answer.headers().get(FRONTEND_PROCESS);
                let process = process.and_then(|name| name.to_str().ok());
                self.pushes.taken(frontend, process);
                Outcome::Taken
            }
            // A frontend that answers and refuses (its secret is not this one's) keeps what it
            // cached until its lease runs out: that needs an operator.
            Ok(answer) => {
                tracing::warn!("invalidate at {frontend}: refused, {}", answer.status());
                self.pushes.failed(frontend, Instant::now());
                Outcome::Failed
            }
            // A frontend that is down has no cache to keep fresh; it starts empty. One that
            // still probes is cut off.
            Err(e) if e.is_connect() => {
                if (self.pushes).not_connected(frontend, Instant::now(), e.is_timeout()) {
                    tracing::warn!("invalidate at {frontend}: {e}, while it probes");
                    Outcome::Failed
                } else {
                    tracing::debug!("invalidate at {frontend}: {e}");
                    Outcome::NotConnected
                }
            }
            Err(e) => {
                tracing::warn!("invalidate at {frontend}: {e}");
                self.pushes.failed(frontend, Instant::now());
                Outcome::Failed
            }
        }
    }
}

/// What became of a push to one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Taken,
    /// Nothing listened at its address: no frontend there keeps a cache.
    NotConnected,
    /// Refused, or cut off after it connected: it may still trust what it cached.
    Failed,
    /// Not waited for: its process trusts nothing it cached (it has not probed within a lease,
    /// or its probes have been refused the lease for longer than one).
    Skipped,
}

impl Outcome {
    /// As the `outcome` label of the pushes counted.
    fn label(self) -> metrics::PushOutcome {
        let outcome = match self {
            Outcome::Taken => "taken",
            Outcome::NotConnected => "not_connected",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        };
        metrics::PushOutcome { outcome }
    }
}

/// The most stocks one push names (with their values, about 80 bytes each): a frontend takes
/// a body of 4 MiB at most.
pub(crate) const STOCKS_PER_PUSH: usize = 10_000;

/// How often the frontends' DNS name is resolved again: a new frontend is pushed to within
/// this of its name listing it (and, before, pushes wait out its lease: [`Pushes::missed`]).
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Resolves the frontends' DNS name `dns` every [`RESOLVE_EVERY`] into what pushes go to, one
/// lookup at a time, off the pushes' path: a resolver that hangs holds one thread of the
/// blocking pool and no push, and pushes go on to the frontends it named last.
pub async fn resolve_frontends(state: AppState, dns: Arc<str>) {
    let mut ticks = tokio::time::interval(RESOLVE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        state.resolve(&dns).await;
    }
}

impl AppState {
    /// Resolves `dns` into the frontends pushes go to; if it fails, they stay those it named
    /// last.
    pub async fn resolve(&self, dns: &str) {
        match tokio::net::lookup_host(dns).await {
            // An address always makes a base URL.
            Ok(addrs) => {
                let found: Vec<BaseUrl> = addrs
                    .filter_map(|addr| format!("http://{addr}").parse().ok())
                    .collect();
                let before = self.resolved().replace(found.clone());
                // A frontend at a new address may be one refused the lease while it was not
                // listed: a push that reaches it gives the lease back, so one goes out now
                // (empty, waited for by nobody), not only with the next write.
                let new = |address: &BaseUrl| before.as_ref().is_none_or(|b| !b.contains(address));
                if before.is_some() && found.iter().any(new) {
                    let state = self.clone();
                    tokio::spawn(async move { state.push(Invalidation::default()).await });
                }
            }
            Err(e) => tracing::warn!("resolving frontends at {dns}: {e}; the last ones found"),
        }
    }
}

/// How long an invalidation push waits for a frontend: below the leader's deadline for the
/// catalog's answer (1.5 s), so that a hung frontend slows trades without failing them.
const INVALIDATION_TIMEOUT: Duration = Duration::from_secs(1);

impl AppState {
    /// Sets the gauges read at scrape time.
    pub(crate) fn refresh_metrics(&self) {
        let snapshot = self.store.snapshot();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics.applied.set(gauge(snapshot.applied));
        self.metrics.term.set(gauge(snapshot.term));
        self.metrics.behind.set(i64::from(snapshot.behind));
        self.metrics.users.set(gauge(self.users.count() as u64));
    }
}

/// The name of this catalog process, after the last one's, kept in `path` ([`boot_after`]).
fn next_boot(path: &std::path::Path) -> Result<u64, CatalogError> {
    let previous = match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| CatalogError::Corrupt(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(CatalogError::io(path, e)),
    };
    let boot = boot_after(previous, std::time::SystemTime::now());
    file::replace_atomically(path, |file| writeln!(file, "{boot}"))
        .map_err(|e| CatalogError::io(path, e))?;
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A change that made nothing waits for the user's changes numbered before it, and for no
    /// other user's.
    #[tokio::test]
    async fn a_change_waits_for_the_same_users_changes_before_it() {
        let pushes = Arc::new(KeyPushes::default());
        let first = pushes.start(7);
        let _other_user = pushes.start(8);
        let second = pushes.start(7);
        let _later = pushes.start(7);
        let mut waiting = tokio::spawn(async move { second.after_earlier().await });
        let held = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await;
        assert!(
            held.is_err(),
            "answered while the first change's push was on its way"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("done once the first change is")
            .unwrap();
        assert_eq!(pushes.pushing().get(&7).map(Vec::len), Some(1));
    }
}
