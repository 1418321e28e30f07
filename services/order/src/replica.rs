//! One order replica: its log, its view of the term and leader, and — while it leads — the
//! sequencing of new orders (append + fsync, replicate to a majority, apply to the catalog).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use stocknet_catalog::{ApplyOutcome, ApplyRequest, Snapshot, Trade};
use stocknet_common::client::{call, endpoint};
use stocknet_common::{Order, RemoteError, Side};
use tracing::Instrument;

use crate::error::OrderError;
use crate::log::OrderLog;

/// Most orders sent in one replication, resync or catalog call.
pub const BATCH: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    pub url: String,
}

/// Parses `ID=URL`.
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let (id, url) = text
        .split_once('=')
        .ok_or_else(|| format!("expected ID=URL, got {text:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("replica id {id:?}: {e}"))?;
    Ok(Peer {
        id,
        url: url.trim().trim_end_matches('/').to_owned(),
    })
}

/// A new order as the leader receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    pub name: String,
    pub quantity: u32,
    #[serde(rename = "type")]
    pub side: Side,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateRequest {
    pub term: u64,
    pub leader: u32,
    pub orders: Vec<Order>,
}

/// A follower's answer to replication: where its log ends now. Less than the last order sent
/// means it was behind and the leader must send from there.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReplicateReply {
    pub last: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LeaderNotice {
    pub term: u64,
    pub leader: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub node_id: u32,
    pub term: u64,
    pub leader: Option<u32>,
    pub ready: bool,
    pub last_transaction: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct View {
    term: u64,
    leader: Option<u32>,
}

/// What only the leader of `term` keeps: quantities as they will be once every order in its
/// log is applied, and how far the catalog has applied the log.
#[derive(Debug)]
struct Leading {
    term: u64,
    projected: HashMap<String, u64>,
    catalog_applied: u64,
}

pub struct Replica {
    id: u32,
    peers: Vec<Peer>,
    catalog_url: String,
    http: reqwest::Client,
    log: Arc<Mutex<OrderLog>>,
    term_path: PathBuf,
    view: Mutex<View>,
    ready: AtomicBool,
    /// Held for the whole of placing one order: orders are sequenced one at a time.
    leading: tokio::sync::Mutex<Option<Leading>>,
}

impl Replica {
    /// Opens the log and persisted term of replica `id` in `data_dir`. `peers` may include
    /// this replica; it is left out.
    pub fn open(
        id: u32,
        data_dir: &std::path::Path,
        peers: Vec<Peer>,
        catalog_url: String,
        http: reqwest::Client,
    ) -> Result<Self, OrderError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OrderError::io(data_dir, e))?;
        let log = OrderLog::open(data_dir.join(format!("orders-{id}.csv")))?;
        let term_path = data_dir.join(format!("term-{id}"));
        let term = match std::fs::read_to_string(&term_path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| OrderError::Corrupt(format!("{}: {e}", term_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(OrderError::io(&term_path, e)),
        };
        Ok(Self {
            id,
            peers: peers.into_iter().filter(|p| p.id != id).collect(),
            catalog_url,
            http,
            log: Arc::new(Mutex::new(log)),
            term_path,
            view: Mutex::new(View { term, leader: None }),
            ready: AtomicBool::new(false),
            leading: tokio::sync::Mutex::new(None),
        })
    }

    pub fn health(&self) -> Health {
        let view = *self.view();
        Health {
            node_id: self.id,
            term: view.term,
            leader: view.leader,
            ready: self.is_ready(),
            last_transaction: self.log().last(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn get(&self, number: u64) -> Option<Order> {
        self.log().get(number).cloned()
    }

    pub fn orders_after(&self, after: u64, limit: usize) -> Vec<Order> {
        self.log().after(after, limit.min(BATCH)).to_vec()
    }

    /// Boot resync: takes from every reachable peer the orders beyond this log's end, then
    /// reports ready. Unreachable peers are skipped: the first replica up has nobody to ask.
    pub async fn resync(&self) {
        self.pull_from_peers().await;
        self.ready.store(true, Ordering::Release);
        tracing::info!(last = self.log().last(), "resync done, ready");
    }

    /// Follower side of replication.
    pub async fn replicate(&self, request: ReplicateRequest) -> Result<ReplicateReply, OrderError> {
        self.observe_term(request.term, request.leader)?;
        match self.append(request.orders).await {
            Ok(_) | Err(OrderError::Gap { .. }) => Ok(ReplicateReply {
                last: self.log().last(),
            }),
            Err(e) => Err(e),
        }
    }

    /// A frontend names the leader of `term`. If that is this replica, it takes over before
    /// answering: catches up from peers, brings them up to its log, and brings the catalog up
    /// to date under the new term, which fences off the previous leader.
    pub async fn set_leader(self: &Arc<Self>, notice: LeaderNotice) -> Result<(), OrderError> {
        self.observe_term(notice.term, notice.leader)?;
        if notice.leader != self.id {
            return Ok(());
        }
        if !self.is_ready() {
            return Err(OrderError::NotReady);
        }
        let mut leading = self.leading.lock().await;
        if matches!(&*leading, Some(l) if l.term == notice.term) {
            return Ok(());
        }
        *leading = None;
        self.pull_from_peers().await;
        let last = self.log().last();
        if last > 0 {
            // Entries of earlier terms count as committed once a majority holds them.
            self.replicate_to_majority(notice.term, last).await?;
        }
        let snapshot: Snapshot = call(
            self.http
                .get(endpoint(&self.catalog_url, &["snapshot"]).map_err(OrderError::catalog)?),
        )
        .await
        .map_err(OrderError::catalog)?;
        if snapshot.applied > last {
            return Err(OrderError::CatalogUnavailable(format!(
                "catalog has applied order {} but this replica's log ends at {last}",
                snapshot.applied
            )));
        }
        let mut projected: HashMap<String, u64> = snapshot
            .stocks
            .into_iter()
            .map(|s| (s.name, s.quantity))
            .collect();
        for order in self.orders_between(snapshot.applied, last) {
            if let Some(quantity) = projected.get_mut(&order.name) {
                *quantity = quantity.saturating_add_signed(order.side.delta(order.quantity));
            }
        }
        let mut state = Leading {
            term: notice.term,
            projected,
            catalog_applied: snapshot.applied,
        };
        // Applies what is committed but not yet applied, and records the new term there.
        self.apply_to_catalog(&mut state, last).await?;
        tracing::info!(term = notice.term, last, "leading");
        *leading = Some(state);
        Ok(())
    }

    /// Leader side: sequences one order and answers only once it is durable on a majority and
    /// applied to the catalog (which has invalidated the frontends' caches by then).
    pub async fn place(
        self: &Arc<Self>,
        order: NewOrder,
        key: Option<String>,
    ) -> Result<u64, OrderError> {
        if order.quantity == 0 {
            return Err(OrderError::InsufficientQuantity);
        }
        let mut guard = self.leading.lock().await;
        let term = self.view().term;
        let leading = match guard.as_mut() {
            Some(leading) if leading.term == term => leading,
            _ => {
                *guard = None;
                return Err(OrderError::NotLeader);
            }
        };
        let known = key.as_deref().and_then(|k| self.log().number_for_key(k));
        let number = match known {
            // A retry of an order already in the log: finish committing it, never re-execute.
            Some(number) => number,
            None => {
                let current = *leading
                    .projected
                    .get(&order.name)
                    .ok_or(OrderError::StockNotFound)?;
                let updated = match order.side {
                    Side::Buy => current
                        .checked_sub(u64::from(order.quantity))
                        .ok_or(OrderError::InsufficientQuantity)?,
                    Side::Sell => current
                        .checked_add(u64::from(order.quantity))
                        .ok_or(OrderError::QuantityOverflow)?,
                };
                let number = self.log().last() + 1;
                let entry = Order {
                    number,
                    term,
                    name: order.name.clone(),
                    side: order.side,
                    quantity: order.quantity,
                    key,
                };
                self.append(vec![entry]).await?;
                // The order is in the log now and will be applied eventually, committed by this
                // leader or a later one, so the projection must count it either way.
                leading.projected.insert(order.name, updated);
                number
            }
        };
        async {
            self.replicate_to_majority(term, number).await?;
            self.apply_to_catalog(leading, number).await
        }
        .instrument(tracing::info_span!("commit", number))
        .await?;
        Ok(number)
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        // Appends change the log only after their write succeeded, so it stays consistent
        // even if a thread panicked while holding the lock.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn orders_between(&self, after: u64, through: u64) -> Vec<Order> {
        let log = self.log();
        let count = usize::try_from(through.saturating_sub(after)).unwrap_or(usize::MAX);
        log.after(after, count).to_vec()
    }

    /// Refuses an older term; adopts (and persists) a newer one.
    fn observe_term(&self, term: u64, leader: u32) -> Result<(), OrderError> {
        let mut view = self.view();
        if term < view.term {
            return Err(OrderError::StaleTerm {
                term,
                current: view.term,
            });
        }
        if term > view.term {
            let tmp = self.term_path.with_extension("tmp");
            let io = |e| OrderError::io(&self.term_path, e);
            std::fs::write(&tmp, term.to_string()).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &self.term_path).map_err(io)?;
            view.term = term;
        }
        view.leader = Some(leader);
        Ok(())
    }

    async fn append(&self, orders: Vec<Order>) -> Result<usize, OrderError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&orders)
        })
        .await
        .map_err(OrderError::task)?
    }

    async fn pull_from_peers(&self) {
        for peer in &self.peers {
            loop {
                let after = self.log().last();
                let url = match endpoint(&peer.url, &["orders", "logs", &after.to_string()]) {
                    Ok(url) => url,
                    Err(e) => {
                        tracing::warn!(peer = peer.id, "bad peer url: {e}");
                        break;
                    }
                };
                match call::<Vec<Order>>(self.http.get(url)).await {
                    Ok(orders) if orders.is_empty() => break,
                    Ok(orders) => {
                        if let Err(e) = self.append(orders).await {
                            tracing::warn!(peer = peer.id, "resync append failed: {e}");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::info!(peer = peer.id, "resync: peer unavailable: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Sends the log through `number` to every follower and returns once a majority of the
    /// cluster (this replica included) holds it durably. Slower followers finish in the
    /// background.
    async fn replicate_to_majority(
        self: &Arc<Self>,
        term: u64,
        number: u64,
    ) -> Result<(), OrderError> {
        let cluster_size = self.peers.len() + 1;
        let needed = cluster_size / 2 + 1;
        let mut acks = 1;
        let mut pending: FuturesUnordered<_> = self
            .peers
            .iter()
            .cloned()
            .map(|peer| {
                let replica = self.clone();
                tokio::spawn(async move { replica.push_to(&peer, term, number).await })
            })
            .collect();
        while acks < needed {
            match pending.next().await {
                Some(Ok(Ok(()))) => acks += 1,
                Some(Ok(Err(e))) => tracing::warn!("replication failed: {e}"),
                Some(Err(e)) => tracing::error!("replication task failed: {e}"),
                None => return Err(OrderError::NoMajority { acks, needed }),
            }
        }
        Ok(())
    }

    /// Brings one follower's log up to `number`, starting from where it says it ends.
    async fn push_to(&self, peer: &Peer, term: u64, number: u64) -> Result<(), OrderError> {
        let peer_error = |e: RemoteError| match e.status() {
            Some(axum::http::StatusCode::CONFLICT) => OrderError::NotLeader,
            _ => OrderError::PeerUnavailable(format!("replica {}: {e}", peer.id)),
        };
        let url = endpoint(&peer.url, &["replicate"]).map_err(peer_error)?;
        let mut after = number - 1;
        loop {
            let orders = self.orders_between(after, number.min(after + BATCH as u64));
            let request = ReplicateRequest {
                term,
                leader: self.id,
                orders,
            };
            let reply: ReplicateReply = call(self.http.post(url.clone()).json(&request))
                .await
                .map_err(peer_error)?;
            if reply.last >= number {
                return Ok(());
            }
            if reply.last == after {
                // It took none of what directly follows its log: give up rather than spin.
                return Err(OrderError::Gap { last: reply.last });
            }
            // Either it took a batch, or it is behind what was sent: go on from its end.
            after = reply.last;
        }
    }

    /// Applies the log through `number` to the catalog, in order, under the leader's term.
    async fn apply_to_catalog(&self, leading: &mut Leading, number: u64) -> Result<(), OrderError> {
        let url = endpoint(&self.catalog_url, &["apply"]).map_err(OrderError::catalog)?;
        let mut delay = Duration::from_millis(20);
        let (mut sent, mut failures) = (false, 0);
        // Sent at least once even when there is nothing to apply: that records the term.
        while leading.catalog_applied < number || !sent {
            sent = true;
            let trades: Vec<Trade> = self
                .orders_between(leading.catalog_applied, number)
                .into_iter()
                .take(BATCH)
                .map(|o| Trade {
                    number: o.number,
                    name: o.name,
                    delta: o.side.delta(o.quantity),
                })
                .collect();
            let request = ApplyRequest {
                term: leading.term,
                trades,
            };
            match call::<ApplyOutcome>(self.http.post(url.clone()).json(&request)).await {
                Ok(outcome) => {
                    leading.catalog_applied = outcome.applied;
                    continue;
                }
                Err(RemoteError::Api { status, message })
                    if status == axum::http::StatusCode::CONFLICT =>
                {
                    // Out of step with the catalog: a newer leader, or a different position.
                    let snapshot: Snapshot = call(self.http.get(
                        endpoint(&self.catalog_url, &["snapshot"]).map_err(OrderError::catalog)?,
                    ))
                    .await
                    .map_err(OrderError::catalog)?;
                    if snapshot.term > leading.term {
                        return Err(OrderError::NotLeader);
                    }
                    if snapshot.applied == leading.catalog_applied {
                        return Err(OrderError::CatalogUnavailable(message));
                    }
                    leading.catalog_applied = snapshot.applied;
                }
                Err(e) if failures < 8 => {
                    failures += 1;
                    tracing::warn!("catalog apply failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(OrderError::catalog(e)),
            }
        }
        Ok(())
    }
}
