//! One order replica: its log, its view of the term and leader, and — while it leads — the
//! sequencing of new orders (append + fsync, replicate to a majority, apply to the catalog).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use stocknet_common::client::{call, endpoint};
use stocknet_common::clock::now_millis;
use stocknet_common::wire::{
    is_term_jump, ApplyOutcome, ApplyRequest, AuditPage, CatalogTrade, Changed, Health,
    LeaderNotice, LogPosition, LogSlice, Merge, NewOrder, OrderChange, OrderView, Peer, Placed,
    PriceGuard, ReplicateRequest, Snapshot,
};
use stocknet_common::{file, Command, Order, Price, Rejection, RemoteError, Side, Stamp};
use tokio::sync::{watch, Notify};

use crate::audit::{self, AuditFilter};
use crate::book::Book;
use crate::book_store::BookStore;
use crate::error::OrderError;
use crate::log::OrderLog;
use crate::metrics::{FollowerLabels, ReplicaMetrics};

/// How often an idle leader runs a commit round: repairs lagging followers, catches the
/// catalog up after an outage, and notices a newer term.
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// How long the leader waits for the catalog to apply a batch: its fsync and its invalidation
/// push (at most 1 s per frontend) fit, and a round that waits on a hung catalog still ends
/// before a frontend's 2 s deadline for the leader takes the leader for hung.
const CATALOG_TIMEOUT: Duration = Duration::from_millis(1500);

/// Most orders sent in one replication, resync or catalog call.
pub const BATCH: usize = 10_000;

/// The committer's own bookkeeping: how far the log is fsync'd here, committed, and applied.
struct CommitState {
    synced: u64,
    committed: u64,
    catalog_applied: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct View {
    term: u64,
    leader: Option<u32>,
}

/// What only the leader of `term` keeps: the house as it will be once every order in its log
/// is applied (to refuse overdrafts before logging), the time of its last entry, and its
/// committer.
struct Leading {
    term: u64,
    house: HashMap<String, House>,
    /// Entries' times never go back along the log, whatever the clock does.
    last_time: u64,
    /// Wakes the committer when an order has been written.
    wake: Arc<Notify>,
    /// The committer's progress, which waiting orders watch.
    progress: watch::Receiver<Progress>,
    committer: tokio::task::JoinHandle<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.committer.abort();
    }
}

/// Counts a read among those waiting for a commit round, for as long as it waits.
struct ReadWaiting<'a>(&'a AtomicUsize);

impl<'a> ReadWaiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for ReadWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One stock as the leader projects it.
#[derive(Debug, Clone, Copy)]
struct House {
    quantity: u64,
    /// The catalog's price when this leader took over; the book's last trade supersedes it.
    price: Price,
}

/// A command to sequence, with who sends it and what it must be checked against.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The stock; `None` for a modify or cancel, which names its stock through its target.
    pub name: Option<String>,
    pub command: Command,
    pub key: Option<String>,
    pub user: Option<u64>,
    pub guard: Option<PriceGuard>,
}

/// Where the leader's committer is. Orders through `applied` are committed and applied to the
/// catalog: they can be acknowledged.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Commit rounds started (updated without waking anybody).
    started: u64,
    /// Commit rounds finished.
    round: u64,
    /// The last round whose replication a majority accepted in this leader's term (set as
    /// soon as it did, before the round applies to the catalog): this replica still led when
    /// that round began, and its book holds what the round committed.
    confirmed: u64,
    applied: u64,
    /// The last round's failure; it concerns the orders through `through`.
    failure: Option<RoundFailure>,
}

#[derive(Debug, Clone)]
struct RoundFailure {
    round: u64,
    through: u64,
    error: CommitError,
}

/// A commit round's error, kept to answer every order of the round with it.
#[derive(Debug, Clone, thiserror::Error)]
enum CommitError {
    #[error("no longer the leader")]
    NotLeader,
    #[error("could not replicate to a majority ({acks} of {needed} replicas)")]
    NoMajority { acks: usize, needed: usize },
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    #[error("catalog unavailable: {0}")]
    Catalog(String),
    #[error("{0}")]
    Internal(String),
}

impl From<OrderError> for CommitError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::NotLeader => Self::NotLeader,
            OrderError::NoMajority { acks, needed } => Self::NoMajority { acks, needed },
            OrderError::PeerUnavailable(m) => Self::Unavailable(m),
            OrderError::CatalogUnavailable(m) => Self::Catalog(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

pub struct Replica {
    id: u32,
    peers: Vec<Peer>,
    catalog_url: String,
    http: reqwest::Client,
    log: Arc<Mutex<OrderLog>>,
    /// The book as of the log's committed prefix, which only grows (locked before the log
    /// when both are held), and its snapshots.
    book: Arc<BookStore>,
    /// How far this replica knows the log to be committed: as leader, what a majority holds;
    /// as follower, what the leader last said.
    committed: Arc<AtomicU64>,
    /// `term-<id>`: the highest term seen and the leader this replica accepted in it.
    term_path: PathBuf,
    view: Mutex<View>,
    ready: AtomicBool,
    /// Held while an order is checked and written (which numbers it), not while it commits.
    leading: tokio::sync::Mutex<Option<Leading>>,
    /// Per follower, the last order it was seen to hold in agreement with this log: where the
    /// next replication starts (Raft's nextIndex). Only a hint: the `prev_term` check decides.
    follower_matched: Mutex<HashMap<u32, u64>>,
    /// Followers the last replication failed to reach, so that a follower that is down is
    /// logged once, not at every round.
    unreachable: Mutex<HashSet<u32>>,
    /// One replication to a follower at a time: a round that finds one still running (a long
    /// catch-up, say) waits for it and continues from where it got, instead of sending the
    /// same orders again alongside it.
    follower_streams: HashMap<u32, Arc<tokio::sync::Mutex<()>>>,
    /// Set while the leader's committer cannot apply committed entries to the catalog: new
    /// commands are refused before they are written (503, not executed) rather than written
    /// and left waiting on the catalog with an unknown outcome.
    catalog_failing: AtomicBool,
    /// The term this replica last completed a takeover in: it leads while that is its term.
    leading_term: AtomicU64,
    /// Reads waiting in [`confirm_leadership`](Self::confirm_leadership) for a round.
    reads_waiting: AtomicUsize,
    metrics: ReplicaMetrics,
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
        snapshot_every: u64,
    ) -> Result<Self, OrderError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OrderError::io(data_dir, e))?;
        let log = OrderLog::open(data_dir.join(format!("orders-{id}.csv")))?;
        // The snapshot holds committed entries only, so the commit point starts there.
        let book = BookStore::open(
            data_dir.join(format!("book-{id}.snap")),
            snapshot_every,
            log.last(),
        );
        let snapshot_applied = book.lock().applied();
        let term_path = data_dir.join(format!("term-{id}"));
        let view = match std::fs::read_to_string(&term_path) {
            Ok(text) => parse_view(&text)
                .map_err(|e| OrderError::Corrupt(format!("{}: {e}", term_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => View::default(),
            Err(e) => return Err(OrderError::io(&term_path, e)),
        };
        let peers: Vec<Peer> = peers.into_iter().filter(|p| p.id != id).collect();
        Ok(Self {
            id,
            follower_streams: peers.iter().map(|p| (p.id, Arc::default())).collect(),
            peers,
            catalog_url,
            http,
            log: Arc::new(Mutex::new(log)),
            committed: Arc::new(AtomicU64::new(snapshot_applied)),
            book: Arc::new(book),
            term_path,
            view: Mutex::new(view),
            ready: AtomicBool::new(false),
            leading: tokio::sync::Mutex::new(None),
            follower_matched: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashSet::new()),
            catalog_failing: AtomicBool::new(false),
            leading_term: AtomicU64::new(0),
            reads_waiting: AtomicUsize::new(0),
            metrics: ReplicaMetrics::new(),
        })
    }

    pub fn health(&self) -> Health {
        let view = *self.view();
        // One lock at a time: temporaries in a struct expression live to its end, and holding
        // the log while taking the book inverts the book-then-log order `BookStore::advance`
        // keeps (a deadlock the chaos test hit).
        let last_transaction = self.log().last();
        let applied = self.book().applied();
        Health {
            node_id: self.id,
            term: view.term,
            leader: view.leader,
            ready: self.is_ready(),
            last_transaction,
            applied,
            leading: view.leader == Some(self.id)
                && self.leading_term.load(Ordering::Acquire) == view.term,
        }
    }

    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    /// Sets the gauges read at scrape time: the log's positions, readiness and, while this
    /// replica leads, each follower's lag.
    pub fn refresh_metrics(&self) {
        let health = self.health();
        let metrics = &self.metrics;
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics.term.set(gauge(health.term));
        metrics.last_entry.set(gauge(health.last_transaction));
        metrics
            .committed
            .set(gauge(self.committed.load(Ordering::Acquire)));
        metrics.applied.set(gauge(health.applied));
        metrics.ready.set(i64::from(health.ready));
        metrics.replication_lag.clear();
        if health.leader == Some(self.id) {
            let matched = self.matched();
            for peer in &self.peers {
                let held = matched.get(&peer.id).copied().unwrap_or(0);
                let lag = health.last_transaction.saturating_sub(held);
                metrics
                    .replication_lag
                    .get_or_create(&FollowerLabels { follower: peer.id })
                    .set(gauge(lag));
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn get(&self, number: u64) -> Result<Option<Order>, OrderError> {
        self.log().get(number)
    }

    pub fn slice_after(&self, after: u64, limit: usize) -> Result<LogSlice, OrderError> {
        let log = self.log();
        Ok(LogSlice {
            prev_term: log.term_at(after),
            last: log.last(),
            committed: self.committed.load(Ordering::Acquire),
            orders: log.after(after, limit.min(BATCH))?,
        })
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
        let orders = request.orders;
        let merged = tokio::task::spawn_blocking(move || {
            lock(&log).merge(request.prev, request.prev_term, &orders)
        })
        .await
        .map_err(OrderError::task)??;
        if let Merge::Matched { through } = merged {
            // Only where this log matches the leader's: a suffix beyond it may be stale.
            let known = request.committed.min(through);
            if self.committed.fetch_max(known, Ordering::AcqRel) < known {
                // The book follows after the answer: the leader's commit round waits for this
                // replica's log, not for its book. Entries through `known` are committed, so
                // no later merge can change them meanwhile.
                let (log, book) = (self.log.clone(), self.book.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = book.advance(&log, known) {
                        tracing::error!("applying the committed log to the book: {e}");
                    }
                });
            }
        }
        Ok(merged)
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
        self.committed.fetch_max(last, Ordering::AcqRel);
        self.advance_book(last).await?;
        let mut house: HashMap<String, House> = snapshot
            .stocks
            .into_iter()
            .map(|s| {
                let stock = House {
                    quantity: s.quantity,
                    price: s.price,
                };
                (s.name, stock)
            })
            .collect();
        for order in self.orders_between(snapshot.applied, last)? {
            if let (Some(stock), Some((side, count))) = (house.get_mut(&order.name), order.market())
            {
                stock.quantity = stock.quantity.saturating_add_signed(side.delta(count));
            }
        }
        let last_time = self.get(last)?.map_or(0, |entry| entry.stamp.time);
        // Applies what is committed but not yet applied, and records the new term there.
        let mut catalog_applied = snapshot.applied;
        self.apply_to_catalog(term, &mut catalog_applied, last)
            .await?;
        tracing::info!(term, last, "leading");
        let wake = Arc::new(Notify::new());
        let (progress, watched) = watch::channel(Progress {
            applied: last,
            ..Progress::default()
        });
        let committer = tokio::spawn(self.clone().commit_loop(term, wake.clone(), progress, last));
        self.metrics.takeovers.inc();
        self.leading_term.store(term, Ordering::Release);
        *leading = Some(Leading {
            term,
            house,
            last_time,
            wake,
            progress: watched,
            committer,
        });
        Ok(())
    }

    /// Leader side: places a new order (see [`submit`](Self::submit)) for `user`, or for
    /// nobody. An order the leader refuses is logged too, and answered with its refusal.
    pub async fn place(
        self: &Arc<Self>,
        order: NewOrder,
        key: Option<String>,
        user: Option<u64>,
    ) -> Result<Placed, OrderError> {
        if order.quantity == 0 {
            return Err(OrderError::InvalidChange(
                "quantity must be a positive integer",
            ));
        }
        let command = Command::Place {
            side: order.side,
            quantity: order.quantity,
            limit: order.price,
        };
        let number = self
            .submit(Submission {
                name: Some(order.name),
                command,
                key,
                user,
                guard: order.guard,
            })
            .await?;
        let entry = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
        if let Some(rejection) = entry.stamp.rejected {
            return Err(OrderError::Rejected {
                rejection,
                quote: entry.stamp.quote,
                number,
            });
        }
        let view = self.order_view(number)?;
        Ok(Placed {
            transaction_number: number,
            status: view.status,
            filled_quantity: view.filled_quantity,
            remaining_quantity: view.remaining_quantity,
            fills: view.fills,
        })
    }

    /// Leader side: changes the quantity and/or price of open limit order `target`.
    pub async fn modify(
        self: &Arc<Self>,
        target: u64,
        change: OrderChange,
        key: Option<String>,
        user: Option<u64>,
    ) -> Result<Changed, OrderError> {
        if change.quantity == Some(0) {
            return Err(OrderError::InvalidChange(
                "quantity must be a positive integer",
            ));
        }
        if change.quantity.is_none() && change.price.is_none() {
            return Err(OrderError::InvalidChange(
                "give a new quantity, a new price or both",
            ));
        }
        let command = Command::Modify {
            target,
            quantity: change.quantity,
            price: change.price,
        };
        self.change(target, command, key, user).await
    }

    /// Leader side: cancels open limit order `target`.
    pub async fn cancel(
        self: &Arc<Self>,
        target: u64,
        key: Option<String>,
        user: Option<u64>,
    ) -> Result<Changed, OrderError> {
        self.change(target, Command::Cancel { target }, key, user)
            .await
    }

    async fn change(
        self: &Arc<Self>,
        target: u64,
        command: Command,
        key: Option<String>,
        user: Option<u64>,
    ) -> Result<Changed, OrderError> {
        let number = self
            .submit(Submission {
                name: None,
                command,
                key,
                user,
                guard: None,
            })
            .await?;
        if let Some(refusal) = self.book().refusal(number) {
            return Err(OrderError::Refused(refusal));
        }
        Ok(Changed {
            transaction_number: number,
            order: self.order_view(target)?,
        })
    }

    /// The public view of order `number`, from the log and the book.
    pub fn order_view(&self, number: u64) -> Result<OrderView, OrderError> {
        let book = self.book();
        // An entry past the book is not known to be committed yet: it may never be.
        if number > book.applied() {
            return Err(OrderError::OrderNotFound);
        }
        let entry = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
        match book.view(&entry) {
            Some(view) => Ok(view),
            None if matches!(entry.command, Command::Place { .. }) => Err(OrderError::NotReady),
            None => Err(OrderError::NotAnOrder(number)),
        }
    }

    /// The order placed under idempotency key `key` (as logged) and its user, once committed
    /// and applied here; `None` for a modify's or cancel's key.
    pub fn placed_under(&self, key: &str) -> Result<Option<(OrderView, Option<u64>)>, OrderError> {
        let Some(number) = self.log().number_for_key(key)? else {
            return Ok(None);
        };
        let user = self.get(number)?.and_then(|entry| entry.user);
        match self.order_view(number) {
            Ok(view) => Ok(Some((view, user))),
            Err(OrderError::OrderNotFound | OrderError::NotAnOrder(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The market events of the entries this replica's book applied lately.
    pub fn feed(&self) -> &crate::feed::Feed {
        self.book.feed()
    }

    /// A page of the audit trail (see [`audit::page`]), read off the async threads.
    pub async fn audit(
        &self,
        filter: AuditFilter,
        before: u64,
        limit: usize,
    ) -> Result<AuditPage, OrderError> {
        let (log, book) = (self.log.clone(), self.book.clone());
        tokio::task::spawn_blocking(move || audit::page(&log, &book, &filter, before, limit))
            .await
            .map_err(OrderError::task)?
    }

    /// Leader side: confirms that this replica still leads and that its book holds every entry
    /// written before the call (Raft's read index): it waits for a commit round that began
    /// after the call and that a majority accepted in this leader's term. A read served after
    /// it sees every order acknowledged before it arrived, by any frontend (I12). Concurrent
    /// reads share rounds, as orders do.
    pub async fn confirm_leadership(&self) -> Result<(), OrderError> {
        let (wake, mut progress) = {
            let leading = self.leading.lock().await;
            match leading.as_ref() {
                Some(leading) if leading.term == self.view().term => {
                    (leading.wake.clone(), leading.progress.clone())
                }
                _ => return Err(OrderError::NotLeader),
            }
        };
        let _waiting = ReadWaiting::new(&self.reads_waiting);
        let read_index = self.log().last();
        let needed = progress.borrow().started + 1;
        wake.notify_one();
        loop {
            {
                let now = progress.borrow_and_update();
                if now.confirmed >= needed {
                    break;
                }
                if now.round >= needed {
                    // That round did not reach a majority in this term: perhaps deposed.
                    return Err(OrderError::NotLeader);
                }
            }
            if progress.changed().await.is_err() {
                return Err(OrderError::NotLeader);
            }
        }
        if self.book().applied() < read_index {
            return Err(OrderError::NotReady);
        }
        Ok(())
    }

    /// Runs `read` on the book (as of the committed log this replica has applied).
    pub fn read_book<T>(&self, read: impl FnOnce(&Book) -> T) -> T {
        read(&self.book())
    }

    /// Leader side: checks and writes one command, then waits until a commit round has made
    /// it durable on a majority, applied it to the book and to the catalog (which has
    /// invalidated the frontends' caches by then). Commands that arrive while a round runs
    /// share the next one: one fsync, one replication and one catalog update for all of them
    /// (group commit). A new order the checks refuse is written as a refusal, which changes
    /// nothing but is committed like the rest.
    async fn submit(self: &Arc<Self>, submission: Submission) -> Result<u64, OrderError> {
        let Submission {
            name,
            command,
            key,
            user,
            guard: price_guard,
        } = submission;
        let (number, wake, mut progress) = {
            let mut guard = self.leading.lock().await;
            let term = self.view().term;
            let leading = match guard.as_mut() {
                Some(leading) if leading.term == term => leading,
                _ => {
                    *guard = None;
                    return Err(OrderError::NotLeader);
                }
            };
            let known = match key.as_deref() {
                Some(key) => self.log().number_for_key(key)?,
                None => None,
            };
            let number = match known {
                // A retry of a command already in the log: see it committed, never re-execute.
                // The key must come back with the same request, not a different one.
                Some(number) => {
                    let logged = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
                    let same_stock = name.as_ref().is_none_or(|name| *name == logged.name);
                    if logged.command != command || !same_stock || logged.user != user {
                        return Err(OrderError::KeyReused);
                    }
                    number
                }
                None => {
                    if self.catalog_failing.load(Ordering::Acquire) {
                        return Err(OrderError::CatalogUnavailable(
                            "the leader cannot apply orders to the catalog now".into(),
                        ));
                    }
                    let name = match name {
                        Some(name) => name,
                        None => self.target_stock(&command, user)?,
                    };
                    let house = *leading.house.get(&name).ok_or(OrderError::StockNotFound)?;
                    let quote = self.book().last_price(&name).unwrap_or(house.price);
                    let (updated, rejected) = match project(&command, house.quantity) {
                        _ if price_guard.is_some_and(|g| !g.admits(quote)) => {
                            (house.quantity, Some(Rejection::PriceMoved))
                        }
                        Ok(updated) => (updated, None),
                        Err(rejection) => (house.quantity, Some(rejection)),
                    };
                    let time = leading.last_time.max(now_millis());
                    let mut log = self.log();
                    let number = log.last() + 1;
                    log.write(&[Order {
                        number,
                        term,
                        name: name.clone(),
                        key,
                        user,
                        stamp: Stamp {
                            time,
                            quote: Some(quote),
                            rejected,
                        },
                        command,
                    }])?;
                    // The order is in the log now and will be applied eventually, committed by
                    // this leader or a later one, so the projection must count it either way.
                    leading.last_time = time;
                    leading.house.insert(
                        name,
                        House {
                            quantity: updated,
                            ..house
                        },
                    );
                    number
                }
            };
            (number, leading.wake.clone(), leading.progress.clone())
        };
        let waiting_since = progress.borrow().round;
        wake.notify_one();
        loop {
            {
                let now = progress.borrow_and_update();
                if now.applied >= number {
                    return Ok(number);
                }
                if let Some(failure) = &now.failure {
                    // A round that ended after this order was written and covered it. The
                    // entry is in the log and may still be committed, by this leader or the
                    // next: only a retry under its key can say.
                    if failure.round > waiting_since && failure.through >= number {
                        return Err(OrderError::OutcomeUnknown {
                            cause: failure.error.to_string(),
                            catalog: matches!(failure.error, CommitError::Catalog(_)),
                        });
                    }
                }
            }
            if progress.changed().await.is_err() {
                return Err(OrderError::OutcomeUnknown {
                    cause: "this replica stopped leading".into(),
                    catalog: false,
                });
            }
        }
    }

    /// The leader's committer, one per term. Each round makes the log durable here, brings a
    /// majority to its end (and every reachable follower, repairing any that lag or diverged),
    /// and applies what is committed to the catalog. Rounds run when an order is written and
    /// every [`HEARTBEAT`] when idle, which also catches the catalog up after an outage.
    async fn commit_loop(
        self: Arc<Self>,
        term: u64,
        wake: Arc<Notify>,
        progress: watch::Sender<Progress>,
        committed: u64,
    ) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = CommitState {
            synced: committed,
            committed,
            catalog_applied: committed,
        };
        // The takeover applied everything committed to the catalog.
        self.catalog_failing.store(false, Ordering::Release);
        loop {
            tokio::select! {
                () = wake.notified() => {}
                _ = ticks.tick() => {}
            }
            if self.view().term != term {
                tracing::info!(term, "a newer term exists; no longer leading");
                return;
            }
            progress.send_if_modified(|now| {
                now.started += 1;
                false
            });
            let through = self.log().last();
            let result = self
                .commit_round(term, through, &mut state, &progress)
                .await;
            if let Err(e) = &result {
                tracing::warn!(term, through, "commit round failed: {e}");
            }
            progress.send_modify(|now| {
                now.round += 1;
                now.applied = state.catalog_applied;
                now.failure = result.err().map(|error| RoundFailure {
                    round: now.round,
                    through,
                    error: error.into(),
                });
            });
        }
    }

    async fn commit_round(
        self: &Arc<Self>,
        term: u64,
        through: u64,
        state: &mut CommitState,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), OrderError> {
        let started = Instant::now();
        let fresh = through.saturating_sub(state.committed);
        // Every round replicates, an empty log too (a heartbeat), so that a round confirms
        // this replica's leadership for reads.
        {
            // This replica's fsync and the followers' run at once; the orders are committed
            // once both this replica and enough followers for a majority hold them durably.
            let sync = async {
                if through > state.synced {
                    let (file, path) = self.log().sync_handle()?;
                    let fsync_seconds = self.metrics.fsync_seconds.clone();
                    tokio::task::spawn_blocking(move || {
                        let syncing = Instant::now();
                        file::sync_data_or_exit(&file, &path);
                        fsync_seconds.observe(syncing.elapsed().as_secs_f64());
                    })
                    .await
                    .map_err(OrderError::task)?;
                }
                Ok::<_, OrderError>(())
            };
            let (synced, replicated) =
                tokio::join!(sync, self.replicate_to_majority(term, through));
            synced?;
            state.synced = through;
            replicated?;
            state.committed = state.committed.max(through);
            self.committed.fetch_max(state.committed, Ordering::AcqRel);
            self.advance_book(state.committed).await?;
            // Reads waiting for this round need not wait for the catalog too; without any, the
            // orders waiting for the round's end are not woken for nothing.
            let wake_reads = self.reads_waiting.load(Ordering::Acquire) > 0;
            progress.send_if_modified(|now| {
                now.confirmed = now.started;
                wake_reads
            });
        }
        if state.catalog_applied < state.committed {
            let applying = Instant::now();
            let applied = self
                .apply_to_catalog(term, &mut state.catalog_applied, state.committed)
                .await;
            self.catalog_failing
                .store(applied.is_err(), Ordering::Release);
            applied?;
            self.metrics
                .catalog_apply_seconds
                .observe(applying.elapsed().as_secs_f64());
        }
        if fresh > 0 {
            let metrics = &self.metrics;
            metrics
                .commit_round_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.commit_round_entries.observe(fresh as f64);
        }
        Ok(())
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        lock(&self.log)
    }

    /// The stock of a modify's or cancel's target, an entry of the log. A user's order only
    /// its owner (`user`) may change; an anonymous one anybody may. Whether the target is an
    /// open limit order the book decides when it applies the command, so that a refused
    /// command is in the log (the audit trail) like any other.
    fn target_stock(&self, command: &Command, user: Option<u64>) -> Result<String, OrderError> {
        let (Command::Modify { target, .. } | Command::Cancel { target }) = *command else {
            return Err(OrderError::Task("a new order names its own stock".into()));
        };
        let entry = self.get(target)?.ok_or(OrderError::OrderNotFound)?;
        if entry.user.is_some() && entry.user != user {
            return Err(OrderError::NotOwner(target));
        }
        Ok(entry.name)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock()
    }

    /// Applies the committed log through `through` to the book (off the async threads: a
    /// replica that rebuilds its book reads its whole log).
    async fn advance_book(&self, through: u64) -> Result<(), OrderError> {
        let (book, log) = (self.book.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || book.advance(&log, through))
            .await
            .map_err(OrderError::task)?
    }

    fn matched(&self) -> MutexGuard<'_, HashMap<u32, u64>> {
        self.follower_matched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn orders_between(&self, after: u64, through: u64) -> Result<Vec<Order>, OrderError> {
        let count = usize::try_from(through.saturating_sub(after)).unwrap_or(usize::MAX);
        self.log().after(after, count)
    }

    /// Refuses an older term, and a second leader in the current one; adopts (and persists)
    /// a newer term with its leader.
    fn observe_term(&self, term: u64, leader: u32) -> Result<(), OrderError> {
        let mut view = self.view();
        if is_term_jump(view.term, term) {
            tracing::warn!(
                term,
                leader,
                current = view.term,
                "refused a term no election produces"
            );
            return Err(OrderError::TermJump {
                term,
                current: view.term,
            });
        }
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
        if is_term_jump(view.term, term) {
            tracing::warn!(
                term,
                current = view.term,
                "a peer reports a term no election produces"
            );
            return Ok(());
        }
        tracing::info!(term, "a peer knows a newer term");
        self.persist_view(&mut view, View { term, leader: None })
    }

    fn persist_view(&self, view: &mut View, next: View) -> Result<(), OrderError> {
        let text = match next.leader {
            Some(leader) => format!("{} {leader}\n", next.term),
            None => format!("{}\n", next.term),
        };
        file::replace_atomically(&self.term_path, |f| f.write_all(text.as_bytes()))
            .map_err(|e| OrderError::io(&self.term_path, e))?;
        *view = next;
        Ok(())
    }

    /// First step of a takeover: every peer is asked to promise to follow this replica in
    /// `notice.term`. Fails unless a majority (this replica included) promises; otherwise
    /// returns the peer with the most up-to-date log among them.
    async fn prepare_majority(
        &self,
        notice: LeaderNotice,
    ) -> Result<(Peer, LogPosition), OrderError> {
        // A majority of promises is enough (any two majorities share a replica, so the best
        // log among them holds every committed entry); a hung peer is not waited for.
        let needed = self.majority();
        let mut replies: FuturesUnordered<_> = self
            .peers
            .iter()
            .map(|peer| async move {
                let url = endpoint(&peer.url, &["prepare"]).ok()?;
                match call::<LogPosition>(self.http.post(url).json(&notice)).await {
                    Ok(position) => Some((peer.clone(), position)),
                    Err(e) => {
                        tracing::info!(peer = peer.id, "no promise for term {}: {e}", notice.term);
                        None
                    }
                }
            })
            .collect();
        let mut promises: Vec<(Peer, LogPosition)> = Vec::new();
        while promises.len() + 1 < needed {
            match replies.next().await {
                Some(Some(promise)) => promises.push(promise),
                Some(None) => {}
                None => {
                    return Err(OrderError::NoMajority {
                        acks: promises.len() + 1,
                        needed,
                    })
                }
            }
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
            let source_committed = slice.committed;
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
                Merge::Matched { through } if done => {
                    // This log equals the source's now, so the source's commit point holds here.
                    let known = source_committed.min(through);
                    self.committed.fetch_max(known, Ordering::AcqRel);
                    return self.advance_book(known).await;
                }
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
            let suffix = log.after(applied, usize::MAX)?;
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

    /// Sends the log through `number` to every follower and returns once enough of them hold
    /// it durably to make a majority with this replica, whose own fsync is the caller's to
    /// ensure. Slower followers finish in the background.
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
                tokio::spawn(async move {
                    // Every peer has a stream: both come from the same list in `open`.
                    let stream = replica.follower_streams[&peer.id].clone();
                    let _streaming = stream.lock().await;
                    let pushed = replica.push_to(&peer, term, number).await;
                    replica.note_reachability(&peer, &pushed);
                    pushed
                })
            })
            .collect();
        while acks < needed {
            match pending.next().await {
                Some(Ok(Ok(()))) => acks += 1,
                Some(Ok(Err(_))) => {}
                Some(Err(e)) => tracing::error!("replication task failed: {e}"),
                None => return Err(OrderError::NoMajority { acks, needed }),
            }
        }
        Ok(())
    }

    /// Brings one follower's log to match this one through `number`: starts where the
    /// follower matched last time (just before `number` for one not yet heard from) and steps
    /// back past whatever the follower lacks or holds differently.
    async fn push_to(&self, peer: &Peer, term: u64, number: u64) -> Result<(), OrderError> {
        let url = endpoint(&peer.url, &["replicate"]).map_err(|e| self.peer_error(peer, e))?;
        // Number 0 (an empty log) is a heartbeat: the empty prefix, which every log matches.
        let mut after = self
            .matched()
            .get(&peer.id)
            .map_or(number.saturating_sub(1), |&matched| {
                matched.min(number.saturating_sub(1))
            });
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
                    orders: log.after(after, limit)?,
                    committed: self.committed.load(Ordering::Acquire),
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
            if let Merge::Matched { through } = reply {
                self.matched().insert(peer.id, through);
            }
            match reply {
                Merge::Matched { through } if through >= number => return Ok(()),
                Merge::Matched { through } => after = through,
                // Order `after` is never 0 here: every log matches on the empty prefix.
                Merge::Mismatch { retry_after } => after = retry_after.min(after - 1),
            }
        }
    }

    fn note_reachability(&self, peer: &Peer, pushed: &Result<(), OrderError>) {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        match pushed {
            Ok(()) if unreachable.remove(&peer.id) => {
                tracing::info!(replica = peer.id, "replication reaches the follower again");
            }
            Err(e) if unreachable.insert(peer.id) => tracing::warn!("replication failed: {e}"),
            _ => {}
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
    async fn apply_to_catalog(
        &self,
        term: u64,
        catalog_applied: &mut u64,
        number: u64,
    ) -> Result<(), OrderError> {
        let url = endpoint(&self.catalog_url, &["apply"]).map_err(OrderError::catalog)?;
        let (mut sent, mut retried) = (false, false);
        // Sent at least once even when there is nothing to apply: that records the term.
        while *catalog_applied < number || !sent {
            sent = true;
            let through = number.min(*catalog_applied + BATCH as u64);
            let orders = self.orders_between(*catalog_applied, through)?;
            let trades: Vec<CatalogTrade> = {
                let book = self.book();
                orders
                    .into_iter()
                    .map(|o| CatalogTrade {
                        number: o.number,
                        delta: o.market().map_or(0, |(side, count)| side.delta(count)),
                        price: book.entry_price(o.number),
                        name: o.name,
                    })
                    .collect()
            };
            let request = ApplyRequest { term, trades };
            let apply = self.http.post(url.clone()).timeout(CATALOG_TIMEOUT);
            match call::<ApplyOutcome>(apply.json(&request)).await {
                Ok(outcome) => {
                    *catalog_applied = outcome.applied;
                    continue;
                }
                Err(RemoteError::Api(error))
                    if error.status == axum::http::StatusCode::CONFLICT =>
                {
                    // Out of step with the catalog: a newer leader, or a different position.
                    let snapshot: Snapshot = call(self.http.get(
                        endpoint(&self.catalog_url, &["snapshot"]).map_err(OrderError::catalog)?,
                    ))
                    .await
                    .map_err(OrderError::catalog)?;
                    if snapshot.term > term {
                        return Err(OrderError::NotLeader);
                    }
                    if snapshot.applied == *catalog_applied {
                        return Err(OrderError::CatalogUnavailable(error.message));
                    }
                    *catalog_applied = snapshot.applied;
                }
                // One quick retry rides over a dropped connection; a catalog that is down or
                // hung fails the round (its entries answer "outcome unknown" at once, and new
                // orders are refused until the catalog is back), and the next round, a
                // heartbeat later, tries again.
                Err(e) if !retried && !is_timeout(&e) => {
                    retried = true;
                    tracing::warn!("catalog apply failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(OrderError::catalog(e)),
            }
        }
        Ok(())
    }
}

/// Whether a call got no answer in time: a hung peer, not worth an immediate retry.
fn is_timeout(error: &RemoteError) -> bool {
    matches!(error, RemoteError::Unreachable(e) if e.is_timeout())
}

/// The house quantity after `command`, or why the leader refuses it: a market buy takes
/// shares out of the house, a market sell puts them in; the book, not the house, takes the
/// other side of everything else.
fn project(command: &Command, quantity: u64) -> Result<u64, Rejection> {
    match *command {
        Command::Place {
            side: Side::Buy,
            quantity: count,
            limit: None,
        } => quantity
            .checked_sub(u64::from(count))
            .ok_or(Rejection::InsufficientQuantity),
        Command::Place {
            side: Side::Sell,
            quantity: count,
            limit: None,
        } => quantity
            .checked_add(u64::from(count))
            .ok_or(Rejection::QuantityOverflow),
        _ => Ok(quantity),
    }
}

fn lock(log: &Mutex<OrderLog>) -> MutexGuard<'_, OrderLog> {
    // The log changes its memory only after the file write succeeded, so it stays
    // consistent even if a thread panicked while holding the lock.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the term of replica `id` in `data_dir` to `term`, with no leader accepted in it: how
/// an operator recovers a replica that accepted a bogus term. The replica must be stopped.
pub fn reset_term(data_dir: &std::path::Path, id: u32, term: u64) -> Result<(), OrderError> {
    let path = data_dir.join(format!("term-{id}"));
    if !path.exists() {
        return Err(OrderError::Config(format!(
            "{} does not exist",
            path.display()
        )));
    }
    file::replace_atomically(&path, |f| f.write_all(format!("{term}\n").as_bytes()))
        .map_err(|e| OrderError::io(&path, e))
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
