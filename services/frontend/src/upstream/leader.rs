//! Finding the order leader. The replicas elect their leader among themselves; a frontend
//! only asks them, and follows the replica that says it leads (and has taken over) in the
//! highest term any live replica knows. It never changes a term, so any number of frontends
//! leave the group's terms alone. One search at a time; a request that saw the leader fail
//! searches again only if nobody has done so since.

use std::sync::RwLock;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use stocknet_common::client::{call, endpoint};
use stocknet_common::wire::{Health, Peer};

/// How long the first search waits for the group to have a leader.
const FIRST_SEARCH_WAIT: Duration = Duration::from_secs(30);

/// A replica that does not answer its health check within this is passed over.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub id: u32,
    pub url: String,
    /// Where orders are placed, parsed once per leader rather than once per order.
    pub orders_url: reqwest::Url,
    pub term: u64,
}

pub struct LeaderDiscovery {
    /// Replicas by descending id, as `GET /cluster` lists them.
    replicas: Vec<Peer>,
    current: RwLock<Option<Leader>>,
    searching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    leader_changes: Counter,
}

impl LeaderDiscovery {
    pub fn new(mut replicas: Vec<Peer>, http: reqwest::Client) -> Self {
        replicas.sort_by_key(|replica| std::cmp::Reverse(replica.id));
        Self {
            replicas,
            current: RwLock::new(None),
            searching: tokio::sync::Mutex::new(()),
            http,
            leader_changes: Default::default(),
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

    /// How many times this frontend started following another leader (the metric itself:
    /// clones share it).
    pub fn leader_changes(&self) -> &Counter {
        &self.leader_changes
    }

    /// The current leader, searching for one if there is none.
    pub async fn leader(&self) -> Option<Leader> {
        match self.current() {
            Some(leader) => Some(leader),
            None => self.replace(None).await,
        }
    }

    /// Searches for the leader again because `failed` did not answer as one, unless another
    /// request already did.
    pub async fn replace(&self, failed: Option<&Leader>) -> Option<Leader> {
        let _one_at_a_time = self.searching.lock().await;
        let current = self.current();
        if current.is_some() && current.as_ref() != failed {
            return current;
        }
        let found = self.search(failed).await;
        self.follow(found.clone());
        found
    }

    /// A leader other than `current`, in a newer term, if the replicas name one now: the
    /// group replaced a leader that stopped answering (a hung one) while a call to it waits.
    pub async fn newer_than(&self, current: &Leader) -> Option<Leader> {
        let found = self.search(Some(current)).await?;
        if found.term <= current.term {
            return None;
        }
        let _one_at_a_time = self.searching.lock().await;
        if self.current().as_ref() == Some(current) {
            self.follow(Some(found.clone()));
        }
        Some(found)
    }

    fn follow(&self, found: Option<Leader>) {
        match &found {
            Some(leader) => {
                self.leader_changes.inc();
                tracing::info!(
                    leader = leader.id,
                    term = leader.term,
                    "following the order leader"
                );
            }
            None => tracing::warn!("no order replica leads now"),
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = found;
    }

    /// The replica that says it leads (and has taken over) in the highest term the replicas
    /// report, unless it is the leader that just failed this frontend in that same term. The
    /// answer comes as soon as a majority has answered and one of them leads a term none of
    /// them is past, so a hung replica's health check is not waited for; otherwise once every
    /// replica answered or timed out.
    async fn search(&self, failed: Option<&Leader>) -> Option<Leader> {
        let majority = self.replicas.len() / 2 + 1;
        let mut checks: FuturesUnordered<_> = self
            .replicas
            .iter()
            .map(|replica| async move {
                let url = endpoint(&replica.url, &["health"]).ok()?;
                let health = call::<Health>(self.http.get(url).timeout(HEALTH_TIMEOUT))
                    .await
                    .ok()?;
                (health.node_id == replica.id).then_some((replica, health))
            })
            .collect();
        let mut answered: Vec<(&Peer, Health)> = Vec::new();
        while let Some(check) = checks.next().await {
            answered.extend(check);
            if answered.len() < majority {
                continue;
            }
            let highest = answered.iter().map(|(_, h)| h.term).max();
            let leading = answered.iter().find(|(replica, h)| {
                h.leading
                    && Some(h.term) == highest
                    && !failed.is_some_and(|f| f.id == replica.id && f.term == h.term)
            });
            if let Some((replica, health)) = leading {
                return Some(Leader {
                    id: replica.id,
                    url: replica.url.clone(),
                    orders_url: endpoint(&replica.url, &["orders"]).ok()?,
                    term: health.term,
                });
            }
        }
        None
    }

    /// Finds the leader as soon as the group has one rather than at the first order, so that
    /// `GET /cluster` names it from the start. Gives up after [`FIRST_SEARCH_WAIT`]: the first
    /// request then searches again.
    pub async fn find_early(&self) {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        while self.current().is_none() && started.elapsed() < FIRST_SEARCH_WAIT {
            if self.leader().await.is_some() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
