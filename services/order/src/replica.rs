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
use crate::log::{Merge, OrderLog};

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

/// Leader → follower: `orders` follow order `prev` of term `prev_term` in the leader's log.
/// The answer is the follower's [`Merge`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateRequest {
    pub term: u64,
    pub leader: u32,
    pub prev: u64,
    pub prev_term: u64,
    pub orders: Vec<Order>,
}

/// Names the leader of a term: sent by a frontend to every replica, and by the new leader
/// to its peers as the first step of taking over (`POST /prepare`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LeaderNotice {
    pub term: u64,
    pub leader: u32,
}

/// Where a replica's log ends: how logs are compared when a new leader takes over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// Compared first: a log whose last order has a higher term is the more up to date.
    pub last_term: u64,
    pub last: u64,
}

/// A page of a replica's log, for a replica catching up from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSlice {
    /// Term of the order the page follows; `None` when this log is shorter than that.
    pub prev_term: Option<u64>,
    /// Where this log ends.
    pub last: u64,
    pub orders: Vec<Order>,
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
    /// Highest order known to be durable on a majority.
    committed: u64,
    catalog_applied: u64,
}

pub struct Replica {
    id: u32,
    peers: Vec<Peer>,
    catalog_url: String,
    http: reqwest::Client,
    log: Arc<Mutex<OrderLog>>,
    /// `term-<id>`: the highest term seen and the leader this replica accepted in it.
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
        let view = match std::fs::read_to_string(&term_path) {
            Ok(text) => parse_view(&text)
                .map_err(|e| OrderError::Corrupt(format!("{}: {e}", term_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => View::default(),
            Err(e) => return Err(OrderError::io(&term_path, e)),
        };
        Ok(Self {
            id,
            peers: peers.into_iter().filter(|p| p.id != id).collect(),
            catalog_url,
            http,
            log: Arc::new(Mutex::new(log)),
            term_path,
            view: Mutex::new(view),
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

    pub fn slice_after(&self, after: u64, limit: usize) -> LogSlice {
        let log = self.log();
        LogSlice {
            prev_term: log.term_at(after),
            last: log.last(),
            orders: log.after(after, limit.min(BATCH)).to_vec(),
        }
    }

    fn position(&self) -> LogPosition {
        let log = self.log();
        LogPosition {
            last_term: log.last_term(),
            last: log.last(),
        }
    }

    /// Boot resync: catches up from the leader the peers name, if there is one, dropping any
    /// orders of this log the leader does not have, then reports ready. With no leader (the
    /// whole cluster starting), the next leader's takeover reconciles the logs instead.
    pub async fn resync(&self) {
        if let Some(leader) = self.find_leader().await {
            if let Err(e) = self.pull_from(&leader).await {
                tracing::warn!(leader = leader.id, "resync from the leader failed: {e}");
            }
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!(last = self.log().last(), "resync done, ready");
    }

    /// The peer that leads the highest term any peer reports, if it says so itself; its term
    /// is adopted, so this replica refuses older leaders from now on.
    async fn find_leader(&self) -> Option<Peer> {
        let reports = futures::future::join_all(self.peers.iter().map(|peer| async move {
            let url = endpoint(&peer.url, &["health"]).ok()?;
            call::<Health>(self.http.get(url)).await.ok()
        }))
        .await;
        let leader = reports
            .into_iter()
            .flatten()
            .filter(|h| h.leader == Some(h.node_id))
            .max_by_key(|h| h.term)?;
        self.observe_term(leader.term, leader.node_id).ok()?;
        self.peers.iter().find(|p| p.id == leader.node_id).cloned()
    }

    /// Follower side of replication.
    pub async fn replicate(&self, request: ReplicateRequest) -> Result<Merge, OrderError> {
        self.observe_term(request.term, request.leader)?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            lock(&log).merge(request.prev, request.prev_term, &request.orders)
        })
        .await
        .map_err(OrderError::task)?
    }

    /// A would-be leader of `notice.term` asks where this log ends. Answering is a promise:
    /// this replica accepts no other leader in that term and refuses all older ones.
    pub fn prepare(&self, notice: LeaderNotice) -> Result<LogPosition, OrderError> {
        self.observe_term(notice.term, notice.leader)?;
        Ok(self.position())
    }

    /// A frontend names the leader of `term`. If that is this replica, it takes over before
    /// answering: a majority promises to follow it, it adopts the most up-to-date of their
    /// logs, brings a majority to that log and the catalog up to date under the new term.
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
        let term = notice.term;
        let best = self.prepare_majority(notice).await?;
        if best.1 > self.position() {
            self.pull_from(&best.0).await?;
        }
        if self.view().term != term {
            return Err(OrderError::NotLeader);
        }
        let snapshot: Snapshot = call(
            self.http
                .get(endpoint(&self.catalog_url, &["snapshot"]).map_err(OrderError::catalog)?),
        )
        .await
        .map_err(OrderError::catalog)?;
        let last = self.log().last();
        if snapshot.applied > last {
            return Err(OrderError::CatalogUnavailable(format!(
                "catalog has applied order {} but this replica's log ends at {last}",
                snapshot.applied
            )));
        }
        self.restamp_after(snapshot.applied, term).await?;
        if last > 0 {
            self.replicate_to_majority(term, last).await?;
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
            term,
            projected,
            committed: last,
            catalog_applied: snapshot.applied,
        };
        // Applies what is committed but not yet applied, and records the new term there.
        self.apply_to_catalog(&mut state, last).await?;
        tracing::info!(term, last, "leading");
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
            leading.committed = leading.committed.max(number);
            self.apply_to_catalog(leading, number).await
        }
        .instrument(tracing::info_span!("commit", number))
        .await?;
        Ok(number)
    }

    /// The leader's periodic round, between orders: brings every follower up to the end of
    /// the log (repairing any that diverged or missed orders) and applies to the catalog what
    /// is committed but unapplied (after a catalog outage). A replica that learned of a newer
    /// term stops leading here.
    pub async fn heartbeat(self: &Arc<Self>) {
        let term = {
            let Ok(mut guard) = self.leading.try_lock() else {
                // An order is being placed, which replicates anyway.
                return;
            };
            let Some(leading) = guard.as_mut() else {
                return;
            };
            if leading.term != self.view().term {
                tracing::info!(
                    term = leading.term,
                    "a newer term exists; no longer leading"
                );
                *guard = None;
                return;
            }
            if leading.catalog_applied < leading.committed {
                let committed = leading.committed;
                if let Err(e) = self.apply_to_catalog(leading, committed).await {
                    tracing::warn!("catalog catch-up failed: {e}");
                }
            }
            leading.term
        };
        let last = self.log().last();
        if last == 0 {
            return;
        }
        futures::future::join_all(self.peers.iter().map(|peer| async move {
            if let Err(e) = self.push_to(peer, term, last).await {
                tracing::debug!(peer = peer.id, "heartbeat: {e}");
            }
        }))
        .await;
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        lock(&self.log)
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn orders_between(&self, after: u64, through: u64) -> Vec<Order> {
        let log = self.log();
        let count = usize::try_from(through.saturating_sub(after)).unwrap_or(usize::MAX);
        log.after(after, count).to_vec()
    }

    /// Refuses an older term, and a second leader in the current one; adopts (and persists)
    /// a newer term with its leader.
    fn observe_term(&self, term: u64, leader: u32) -> Result<(), OrderError> {
        let mut view = self.view();
        if term < view.term {
            return Err(OrderError::StaleTerm {
                term,
                current: view.term,
            });
        }
        if term == view.term {
            match view.leader {
                Some(current) if current == leader => return Ok(()),
                Some(current) => return Err(OrderError::LeaderTaken { term, current }),
                None => {}
            }
        }
        self.persist_view(
            &mut view,
            View {
                term,
                leader: Some(leader),
            },
        )
    }

    /// Adopts a newer term learned from a peer that refused this replica as a stale leader;
    /// the leader of that term is not known here.
    fn learn_term(&self, term: u64) -> Result<(), OrderError> {
        let mut view = self.view();
        if term <= view.term {
            return Ok(());
        }
        tracing::info!(term, "a peer knows a newer term");
        self.persist_view(&mut view, View { term, leader: None })
    }

    fn persist_view(&self, view: &mut View, next: View) -> Result<(), OrderError> {
        let tmp = self.term_path.with_extension("tmp");
        let io = |e| OrderError::io(&self.term_path, e);
        let text = match next.leader {
            Some(leader) => format!("{} {leader}\n", next.term),
            None => format!("{}\n", next.term),
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.term_path).map_err(io)?;
        *view = next;
        Ok(())
    }

    async fn append(&self, orders: Vec<Order>) -> Result<(), OrderError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || lock(&log).append(&orders))
            .await
            .map_err(OrderError::task)?
    }

    /// First step of a takeover: every peer is asked to promise to follow this replica in
    /// `notice.term`. Fails unless a majority (this replica included) promises; otherwise
    /// returns the peer with the most up-to-date log among them.
    async fn prepare_majority(
        &self,
        notice: LeaderNotice,
    ) -> Result<(Peer, LogPosition), OrderError> {
        let replies = futures::future::join_all(self.peers.iter().map(|peer| async move {
            let url = endpoint(&peer.url, &["prepare"]).ok()?;
            match call::<LogPosition>(self.http.post(url).json(&notice)).await {
                Ok(position) => Some((peer.clone(), position)),
                Err(e) => {
                    tracing::info!(peer = peer.id, "no promise for term {}: {e}", notice.term);
                    None
                }
            }
        }))
        .await;
        let promises: Vec<(Peer, LogPosition)> = replies.into_iter().flatten().collect();
        let needed = self.majority();
        if promises.len() + 1 < needed {
            return Err(OrderError::NoMajority {
                acks: promises.len() + 1,
                needed,
            });
        }
        let own = (
            Peer {
                id: self.id,
                url: String::new(),
            },
            self.position(),
        );
        Ok(promises.into_iter().fold(own, |best, candidate| {
            if candidate.1 > best.1 {
                candidate
            } else {
                best
            }
        }))
    }

    /// Makes this log equal to `source`'s: finds the last order both hold with the same term,
    /// drops everything after it here and copies the rest from `source`.
    async fn pull_from(&self, source: &Peer) -> Result<(), OrderError> {
        let unavailable =
            |e: RemoteError| OrderError::PeerUnavailable(format!("replica {}: {e}", source.id));
        let mut after = self.log().last();
        loop {
            let url = endpoint(&source.url, &["orders", "logs", &after.to_string()])
                .map_err(unavailable)?;
            let slice: LogSlice = call(self.http.get(url)).await.map_err(unavailable)?;
            let Some(prev_term) = slice.prev_term else {
                after = slice.last.min(after.saturating_sub(1));
                continue;
            };
            let log = self.log.clone();
            let done = slice.orders.is_empty();
            let merged = tokio::task::spawn_blocking(move || {
                let mut log = lock(&log);
                let merged = log.merge(after, prev_term, &slice.orders)?;
                if done && merged == (Merge::Matched { through: after }) && log.last() > after {
                    // The source's log ends here: what this one holds beyond was never committed.
                    log.replace_after(after, &[])?;
                }
                Ok::<_, OrderError>(merged)
            })
            .await
            .map_err(OrderError::task)??;
            match merged {
                Merge::Matched { .. } if done => return Ok(()),
                Merge::Matched { through } => after = through,
                Merge::Mismatch { retry_after } => after = retry_after.min(after.saturating_sub(1)),
            }
        }
    }

    /// Rewrites the orders after `applied` under `term`. They came from earlier leaders and
    /// may or may not be committed; once they carry the new leader's term, a majority holding
    /// them makes them committed in the sense Raft's log comparison relies on, so no later
    /// leader can adopt a log without them.
    async fn restamp_after(&self, applied: u64, term: u64) -> Result<(), OrderError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = lock(&log);
            let suffix = log.after(applied, usize::MAX);
            if suffix.iter().all(|o| o.term == term) {
                return Ok(());
            }
            let restamped: Vec<Order> =
                suffix.iter().map(|o| Order { term, ..o.clone() }).collect();
            log.replace_after(applied, &restamped)
        })
        .await
        .map_err(OrderError::task)?
    }

    fn majority(&self) -> usize {
        let cluster_size = self.peers.len() + 1;
        cluster_size / 2 + 1
    }

    /// Sends the log through `number` to every follower and returns once a majority of the
    /// cluster (this replica included) holds it durably. Slower followers finish in the
    /// background.
    async fn replicate_to_majority(
        self: &Arc<Self>,
        term: u64,
        number: u64,
    ) -> Result<(), OrderError> {
        let needed = self.majority();
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

    /// Brings one follower's log to match this one through `number`: starts just before
    /// `number` and steps back past whatever the follower lacks or holds differently.
    async fn push_to(&self, peer: &Peer, term: u64, number: u64) -> Result<(), OrderError> {
        let url = endpoint(&peer.url, &["replicate"]).map_err(|e| self.peer_error(peer, e))?;
        let mut after = number - 1;
        loop {
            let request = {
                let log = self.log();
                let limit = usize::try_from(number - after).unwrap_or(BATCH).min(BATCH);
                ReplicateRequest {
                    term,
                    leader: self.id,
                    prev: after,
                    prev_term: log
                        .term_at(after)
                        .ok_or(OrderError::Gap { last: log.last() })?,
                    orders: log.after(after, limit).to_vec(),
                }
            };
            let reply: Merge = match call(self.http.post(url.clone()).json(&request)).await {
                Ok(reply) => reply,
                Err(e) if e.status() == Some(axum::http::StatusCode::CONFLICT) => {
                    // Refused as a stale leader: learn the newer term, so this replica stops
                    // leading and the next election goes above it.
                    self.learn_peer_term(peer).await;
                    return Err(OrderError::NotLeader);
                }
                Err(e) => return Err(self.peer_error(peer, e)),
            };
            match reply {
                Merge::Matched { through } if through >= number => return Ok(()),
                Merge::Matched { through } => after = through,
                // Order `after` is never 0 here: every log matches on the empty prefix.
                Merge::Mismatch { retry_after } => after = retry_after.min(after - 1),
            }
        }
    }

    fn peer_error(&self, peer: &Peer, error: RemoteError) -> OrderError {
        OrderError::PeerUnavailable(format!("replica {}: {error}", peer.id))
    }

    async fn learn_peer_term(&self, peer: &Peer) {
        let Ok(url) = endpoint(&peer.url, &["health"]) else {
            return;
        };
        if let Ok(health) = call::<Health>(self.http.get(url)).await {
            if let Err(e) = self.learn_term(health.term) {
                tracing::warn!("cannot record term {}: {e}", health.term);
            }
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

fn lock(log: &Mutex<OrderLog>) -> MutexGuard<'_, OrderLog> {
    // The log changes its memory only after the file write succeeded, so it stays
    // consistent even if a thread panicked while holding the lock.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses `term-<id>`: `TERM LEADER`, or just `TERM` when no leader was accepted.
fn parse_view(text: &str) -> Result<View, String> {
    let mut fields = text.split_whitespace();
    let term = fields
        .next()
        .unwrap_or("0")
        .parse()
        .map_err(|e| format!("term: {e}"))?;
    let leader = fields
        .next()
        .map(|l| l.parse().map_err(|e| format!("leader: {e}")))
        .transpose()?;
    Ok(View { term, leader })
}
