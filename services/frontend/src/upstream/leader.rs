//! Finding the order leader. A replica that leads the highest term the live replicas know is
//! followed as it is (another frontend elected it), so that frontends do not unseat each
//! other's leader. Only when none does is one chosen: the highest-id replica that is live and
//! has finished its resync, under a term one above any term a replica has seen. One election
//! at a time; a request that saw the leader fail re-elects only if nobody has done so since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use futures::future::join_all;
use prometheus_client::metrics::counter::Counter;
use stocknet_common::client::{call, endpoint};
use stocknet_common::wire::{Health, LeaderNotice, Peer};

/// How long an early election waits for every replica to be ready.
const EARLY_ELECTION_WAIT: Duration = Duration::from_secs(30);

/// A replica that does not answer its health check within this is passed over.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub id: u32,
    pub url: String,
    /// Where orders are placed, parsed once per election rather than once per order.
    pub orders_url: reqwest::Url,
    pub term: u64,
}

pub struct Election {
    /// Replicas by descending id: the order in which they are preferred.
    replicas: Vec<Peer>,
    current: RwLock<Option<Leader>>,
    electing: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    elections: Counter,
    /// The highest term this frontend has seen or handed out. A failed election may have
    /// raised a replica's term while that replica was unreachable for the next one, so
    /// terms are chosen above this, not only above the live replicas' terms.
    highest_term: AtomicU64,
}

impl Election {
    pub fn new(mut replicas: Vec<Peer>, http: reqwest::Client) -> Self {
        replicas.sort_by_key(|replica| std::cmp::Reverse(replica.id));
        Self {
            replicas,
            current: RwLock::new(None),
            electing: tokio::sync::Mutex::new(()),
            http,
            elections: Default::default(),
            highest_term: Default::default(),
        }
    }

    /// The order replicas, by descending id.
    pub fn replicas(&self) -> &[Peer] {
        &self.replicas
    }

    pub fn current(&self) -> Option<Leader> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many elections have chosen a leader (the metric itself: clones share it).
    pub fn elections(&self) -> &Counter {
        &self.elections
    }

    /// The current leader, electing one if there is none.
    pub async fn leader(&self) -> Option<Leader> {
        match self.current() {
            Some(leader) => Some(leader),
            None => self.replace(None).await,
        }
    }

    /// Elects a new leader because `failed` did not answer, unless another request already
    /// replaced it.
    pub async fn replace(&self, failed: Option<&Leader>) -> Option<Leader> {
        let _one_at_a_time = self.electing.lock().await;
        let current = self.current();
        if current.is_some() && current.as_ref() != failed {
            return current;
        }
        let health = self.health().await;
        let elected = match self.leading(&health, failed) {
            Some(leader) => {
                tracing::info!(
                    leader = leader.id,
                    term = leader.term,
                    "following the order leader"
                );
                Some(leader)
            }
            None => self.elect(&health).await,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = elected.clone();
        if elected.is_none() {
            tracing::warn!("no order replica can lead");
        }
        elected
    }

    /// The replica that says it leads the highest term any live replica knows, unless it is
    /// the leader that just failed this frontend in that same term.
    fn leading(&self, health: &[Option<Health>], failed: Option<&Leader>) -> Option<Leader> {
        let highest = health.iter().flatten().map(|h| h.term).max()?;
        let (replica, health) = self
            .replicas
            .iter()
            .zip(health)
            .filter_map(|(replica, health)| Some((replica, health.as_ref()?)))
            .find(|(replica, h)| {
                h.leading && h.ready && h.term == highest && h.node_id == replica.id
            })?;
        if failed.is_some_and(|f| f.id == replica.id && f.term == health.term) {
            return None;
        }
        self.highest_term.fetch_max(health.term, Ordering::Relaxed);
        Some(Leader {
            id: replica.id,
            url: replica.url.clone(),
            orders_url: endpoint(&replica.url, &["orders"]).ok()?,
            term: health.term,
        })
    }

    /// Whether every replica answers that it is ready (resynced).
    pub async fn all_ready(&self) -> bool {
        self.health()
            .await
            .iter()
            .all(|health| matches!(health, Some(h) if h.ready))
    }

    /// Each replica's health, in preference order; `None` where it does not answer.
    async fn health(&self) -> Vec<Option<Health>> {
        join_all(self.replicas.iter().map(|replica| async move {
            let url = endpoint(&replica.url, &["health"]).ok()?;
            call::<Health>(self.http.get(url).timeout(HEALTH_TIMEOUT))
                .await
                .ok()
        }))
        .await
    }

    async fn elect(&self, health: &[Option<Health>]) -> Option<Leader> {
        let live_term = health.iter().flatten().map(|h| h.term).max()?;
        let mut term = live_term.max(self.highest_term.load(Ordering::Relaxed));
        for (replica, health) in self.replicas.iter().zip(health) {
            if !matches!(health, Some(h) if h.ready) {
                continue;
            }
            term += 1;
            self.highest_term.fetch_max(term, Ordering::Relaxed);
            let notice = LeaderNotice {
                term,
                leader: replica.id,
            };
            // The candidate takes over (catches up, reconciles) before it answers.
            let (Ok(url), Ok(orders_url)) = (
                endpoint(&replica.url, &["leader"]),
                endpoint(&replica.url, &["orders"]),
            ) else {
                continue;
            };
            match call::<Health>(self.http.post(url).json(&notice)).await {
                Ok(_) => {
                    // In the background: a hung replica must not hold up the orders waiting
                    // for this election.
                    tokio::spawn(notify_others(
                        self.http.clone(),
                        self.replicas.clone(),
                        replica.id,
                        notice,
                    ));
                    self.elections.inc();
                    tracing::info!(leader = replica.id, term, "order leader elected");
                    return Some(Leader {
                        id: replica.id,
                        url: replica.url.clone(),
                        orders_url,
                        term,
                    });
                }
                Err(e) => tracing::warn!(replica = replica.id, "cannot lead: {e}"),
            }
        }
        None
    }

    /// Finds or elects a leader as soon as the replicas are ready rather than at the first
    /// order, so that the replicas (and the StockNet's status) name one from the start. It
    /// waits for all of them (the highest id should lead), and for at most
    /// [`EARLY_ELECTION_WAIT`]: then a majority does.
    pub async fn elect_early(&self) {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        while self.current().is_none() {
            let waited = started.elapsed() > EARLY_ELECTION_WAIT;
            if (waited || self.all_ready().await) && self.leader().await.is_some() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Tells every replica but the new `leader` who leads now (they learn it from its first
/// replication too; this only makes it sooner).
async fn notify_others(
    http: reqwest::Client,
    replicas: Vec<Peer>,
    leader: u32,
    notice: LeaderNotice,
) {
    join_all(
        replicas
            .iter()
            .filter(|replica| replica.id != leader)
            .map(|replica| {
                let http = &http;
                async move {
                    let Ok(url) = endpoint(&replica.url, &["leader"]) else {
                        return;
                    };
                    let request = http.post(url).json(&notice).timeout(HEALTH_TIMEOUT);
                    if let Err(e) = call::<Health>(request).await {
                        tracing::debug!(replica = replica.id, "leader notice not delivered: {e}");
                    }
                }
            }),
    )
    .await;
}
