//! One order replica: its log and book under the group's consensus (see [`crate::consensus`]),
//! what it serves to anyone (reads, health, membership) and, while it leads, the API's writes
//! ([`commands`]), the term's sequencer and proposer ([`sequencer`]) and the catalog applier
//! ([`catalog_applier`]).

mod catalog_applier;
mod commands;
mod sequencer;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use openraft::error::Fatal;
use openraft::network::RaftNetworkFactory;
use openraft::ServerState;
use stocknet_common::file::FileFailure;
use stocknet_common::wire::{
    AuditPage, Health, LogSlice, Members, NewLearner, OrderUpdatePage, OrderView, Peer, Voters,
};
use stocknet_common::{file, BaseUrl, Command, Order};

use crate::archive::Archive;
use crate::audit::{self, AuditFilter};
use crate::book::Book;
use crate::book_store::{BookSettings, BookStore};
use crate::catalog::{Catalog, HttpCatalog};
use crate::consensus::{
    self, handover, members, BootFloor, ElectionTransport, Elections, HttpElections, HttpNetwork,
    Lease, LogStore, Outgoing, Raft, SharedReads, StateMachine, TypeConfig,
};
use crate::error::OrderError;
use crate::log::{IndexLimits, OrderLog};
use crate::metrics::{FollowerLabels, ReplicaMetrics};
pub use commands::Caller;
use sequencer::{led_term, Sequencer};

/// Most entries sent in one catalog call or one log page; in this crate's tests a few, so
/// that the simulation crosses batches with a few dozen orders.
pub const BATCH: usize = if cfg!(test) { 16 } else { 4096 };

/// How a replica reaches the others and the catalog: over HTTP in a real run
/// ([`Links::http`]), in memory in the simulation tests.
pub struct Links<N, E> {
    pub network: N,
    pub elections: E,
    pub catalog: Arc<dyn Catalog>,
}

impl Links<HttpNetwork, HttpElections> {
    /// Over HTTP with `http` (which carries the cluster secret), the catalog at `catalog_url`.
    pub fn http(http: reqwest::Client, catalog_url: &BaseUrl) -> Self {
        Self {
            network: HttpNetwork::new(http.clone()),
            elections: HttpElections::new(http.clone()),
            catalog: HttpCatalog::new(http, catalog_url),
        }
    }
}

pub struct Replica {
    id: u32,
    catalog: Arc<dyn Catalog>,
    log: Arc<Mutex<OrderLog>>,
    /// The book as of the committed log, which only grows (the group's state machine).
    book: Arc<BookStore>,
    raft: Raft,
    reads: SharedReads,
    elections: Arc<Elections>,
    /// The sequencer of the term this replica leads, once it has taken it over. Its lock is
    /// held only to replace it or to copy its handles.
    leading: Mutex<Option<Sequencer>>,
    /// The term this replica last completed a takeover in: it takes commands while it leads
    /// that term.
    leading_term: AtomicU64,
    /// The log's last transaction when it was last read, for health while the log is busy.
    last_transaction_seen: AtomicU64,
    /// Set while the leader cannot apply committed entries to the catalog: new commands are
    /// refused before they are proposed (503, not executed) rather than committed and left
    /// waiting on the catalog with an unknown outcome.
    catalog_failing: AtomicBool,
    /// The term in which the catalog answered that a newer leader has taken over (0: none):
    /// this replica, deposed and not told yet (cut off from the group, not from the catalog),
    /// answers commands of that term "not the leader", so that frontends look for the new one
    /// instead of taking the catalog for down.
    catalog_fenced: AtomicU64,
    metrics: ReplicaMetrics,
    /// The task that stands for election when the leader is lost.
    standing: tokio::task::JoinHandle<()>,
    /// The task that, leading, hands the leadership over (`handover.rs`).
    handing_over: tokio::task::JoinHandle<()>,
    /// Places for clients' reads of the book on the blocking pool ([`Replica::read_off_runtime`]).
    book_reads: Arc<tokio::sync::Semaphore>,
}

/// The replica, as the handover task sees it while the replica leads.
struct Leading(Weak<Replica>);

impl handover::Leader for Leading {
    fn drained(&self, catalog: bool) -> bool {
        self.0
            .upgrade()
            .is_some_and(|replica| replica.drained(catalog))
    }

    fn catalog_failing(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|replica| replica.catalog_failing())
    }
}

/// Clients' reads of the book that run at once: more would only queue for the book's lock,
/// which the applier needs too.
const BOOK_READS_AT_ONCE: usize = 2;

impl Replica {
    /// Opens the log, book (kept as `book` says) and vote of replica `id` in `data_dir` and
    /// starts its part in the
    /// group founded by `peers` (or, not among them, waits to be added to the group), and the
    /// task that takes over when it is elected. It reaches the other replicas through
    /// `network` and `elections` and, leading, applies the log to `catalog`.
    pub async fn start(
        id: u32,
        data_dir: &std::path::Path,
        peers: Vec<Peer>,
        links: Links<
            impl RaftNetworkFactory<TypeConfig, Network: Clone + Sync>,
            impl ElectionTransport,
        >,
        book: BookSettings,
        index: IndexLimits,
    ) -> Result<Arc<Self>, OrderError> {
        // New: its name on disk before anything in it is acknowledged.
        file::create_dir_durably(data_dir).map_err(|e| OrderError::io(data_dir, e))?;
        let metrics = ReplicaMetrics::new();
        let log = OrderLog::open_with(data_dir.join(format!("orders-{id}.csv")), index)?;
        let settings = book;
        let book = Arc::new(BookStore::open(
            data_dir.join(format!("book-{id}.snap")),
            Archive::open(data_dir, id)?,
            settings,
            log.last(),
        ));
        let log = Arc::new(Mutex::new(log));
        let store = LogStore::open(
            u64::from(id),
            log.clone(),
            data_dir.join(format!("term-{id}")),
            Some(metrics.fsync_seconds.clone()),
        )?;
        let founding = members::founding(&data_dir.join(format!("founders-{id}")), id, &peers)?;
        let machine =
            StateMachine::open(book.clone(), &store, founding, metrics.snapshots.clone())?;
        let config = consensus::config(settings.snapshot_every)?;
        let lease = Lease::new();
        let boot_floor = BootFloor::of(&store, u64::from(id))
            .await
            .map_err(|e| OrderError::Task(format!("the vote could not be read: {e}")))?;
        let raft = Raft::new(
            u64::from(id),
            Arc::new(config),
            Outgoing::new(links.network, lease.clone(), store.durable()),
            store.clone(),
            machine,
        )
        .await
        .map_err(|e| OrderError::Task(format!("consensus did not start: {e}")))?;
        let elections = Elections::new(raft.clone(), u64::from(id), links.catalog.clone());
        let standing = tokio::spawn(
            elections
                .clone()
                .stand_when_leader_lost(links.elections.clone()),
        );
        let steering = {
            let (raft, elections) = (raft.clone(), elections.clone());
            let handovers = metrics.handovers.clone();
            move |replica: &Weak<Self>| {
                let leader = Leading(replica.clone());
                tokio::spawn(handover::steer(
                    raft,
                    elections,
                    leader,
                    links.elections,
                    handovers,
                ))
            }
        };
        let replica = Arc::new_cyclic(|replica| Self {
            handing_over: steering(replica),
            id,
            catalog: links.catalog,
            log,
            book,
            reads: SharedReads::start(raft.clone(), lease, boot_floor),
            elections: elections.clone(),
            raft: raft.clone(),
            leading: Mutex::new(None),
            leading_term: AtomicU64::new(0),
            last_transaction_seen: AtomicU64::new(0),
            catalog_failing: AtomicBool::new(false),
            catalog_fenced: AtomicU64::new(0),
            metrics,
            standing,
            book_reads: Arc::new(tokio::sync::Semaphore::new(BOOK_READS_AT_ONCE)),
        });
        replica.last_transaction();
        tokio::spawn(replica.clone().follow_leadership());
        Ok(replica)
    }

    /// Stops this replica's part in the group: it stands in no more elections and its
    /// consensus stops (which ends its other tasks). Its files stay as they are.
    pub async fn shutdown(&self) {
        self.standing.abort();
        self.handing_over.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("consensus did not stop cleanly: {e}");
        }
        *self.leading() = None;
        let log = self.log.clone();
        let checkpoint = tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .checkpoint_keys()
        });
        match checkpoint.await.map_err(OrderError::task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => tracing::warn!("the key index will be built again: {e}"),
        }
    }

    /// The group's consensus, for the routes the other replicas call.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This replica's side of elections, for the routes the other replicas call.
    pub fn elections(&self) -> &Arc<Elections> {
        &self.elections
    }

    /// Waits until this replica's consensus core stops on a fault (a storage error, a panic)
    /// and returns it; `None` once the core stopped because it was shut down.
    pub async fn consensus_fault(&self) -> Option<Fatal<u64>> {
        let mut metrics = self.raft.metrics();
        loop {
            match &metrics.borrow_and_update().running_state {
                Err(Fatal::Stopped) => return None,
                Err(fault) => return Some(fault.clone()),
                Ok(()) => {}
            }
            metrics.changed().await.ok()?;
        }
    }

    pub fn health(&self) -> Health {
        let (term, leader, state) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.current_leader, m.state)
        };
        let ready = self.is_ready();
        // One lock at a time: the book is never locked while the log is held. A long log
        // operation (a snapshot's lines installed) holds the log for as long as it takes:
        // health answers at once meanwhile, with the last transaction seen before it, so that
        // liveness probes do not restart a replica that is busy catching up. (What the book
        // applied is in the log: no less.)
        let applied = self.book().applied();
        let last_transaction = match self.log.try_lock() {
            Ok(log) => self.saw_last_transaction(log.last()),
            Err(std::sync::TryLockError::Poisoned(log)) => {
                self.saw_last_transaction(log.into_inner().last())
            }
            Err(std::sync::TryLockError::WouldBlock) => self
                .last_transaction_seen
                .load(Ordering::Relaxed)
                .max(applied),
        };
        Health {
            node_id: self.id,
            term,
            leader: leader.and_then(|l| u32::try_from(l).ok()),
            ready,
            last_transaction,
            applied,
            // (Not once the catalog said a newer leader took over: frontends that follow this
            // replica check its health every second and move on.)
            leading: state == ServerState::Leader
                && self.leading_term.load(Ordering::Acquire) == term
                && self.catalog_fenced.load(Ordering::Acquire) != term,
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
        metrics.committed.set(gauge(health.applied));
        metrics.applied.set(gauge(health.applied));
        metrics.ready.set(i64::from(health.ready));
        metrics.leading.set(i64::from(health.leading));
        metrics.replication_lag.clear();
        let replication = self.raft.metrics().borrow().replication.clone();
        for (follower, matched) in replication.into_iter().flatten() {
            let (Ok(follower), true) = (u32::try_from(follower), follower != u64::from(self.id))
            else {
                continue;
            };
            let held = match matched {
                None => 0,
                Some(id) => {
                    let log = self.log();
                    // A lag that cannot be read is not reported.
                    let Ok(next) = log.first_line(id.index + 1) else {
                        continue;
                    };
                    next.map_or(log.last(), |next| next - 1)
                }
            };
            metrics
                .replication_lag
                .get_or_create(&FollowerLabels { follower })
                .set(gauge(health.last_transaction.saturating_sub(held)));
        }
    }

    /// Whether this replica takes part in the group and is caught up: it knows its term's
    /// leader, and, following, has applied through the commit point that leader first sent it,
    /// or, leading, is past its boot floor (a replica back from a restart is not ready while it
    /// holds an old book).
    pub fn is_ready(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let caught_up = (m.state == ServerState::Leader && self.reads.past_boot_floor(&m))
            || self.elections.catch_up.reached(
                m.current_term,
                m.last_applied.map_or(0, |applied| applied.index),
            );
        // A core that stopped keeps the last leader it knew: it takes no part any more.
        m.running_state.is_ok() && m.current_leader.is_some() && caught_up
    }

    pub fn get(&self, number: u64) -> Result<Option<Order>, OrderError> {
        self.log().get(number)
    }

    /// A page of this replica's log (committed or not) after number `after`.
    pub fn slice_after(&self, after: u64, limit: usize) -> Result<LogSlice, OrderError> {
        let committed = self.book().applied();
        let log = self.log();
        Ok(LogSlice {
            prev_term: log.term_at(after),
            last: log.last(),
            committed,
            orders: log.after(after, limit.min(BATCH))?,
        })
    }

    /// The public view of order `number`, from the log and the book.
    pub fn order_view(&self, number: u64) -> Result<OrderView, OrderError> {
        // An entry past the book is not known to be committed yet: it may never be. (The log
        // is read between two looks at the book, never while the book is held.)
        if number > self.book().applied() {
            return Err(OrderError::OrderNotFound);
        }
        let entry = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
        self.book.read(|book| match book.view(&entry) {
            Some(view) => Ok(view),
            None if matches!(entry.command, Command::Place { .. } | Command::Sweep { .. }) => {
                Err(OrderError::NotReady)
            }
            None => Err(OrderError::NotAnOrder(number)),
        })?
    }

    /// The order placed under idempotency key `key` (as logged) and its user, once committed
    /// and applied here; `None` for a modify's or cancel's key.
    pub async fn placed_under(
        &self,
        key: &str,
    ) -> Result<Option<(OrderView, Option<u64>)>, OrderError> {
        let still = || OrderError::OutcomeUnknown {
            cause: "a command under this key is still being decided".into(),
            catalog: false,
        };
        let mut logged = self.log().number_for_key(key)?;
        if logged.is_none() {
            // Not in the leader's log: never committed, and never will be once the leader has
            // committed in its term, unless it is queued here still.
            if self.in_flight(key).await? {
                return Err(still());
            }
            // Not queued now: it may have been written (and decided) since the first look.
            logged = self.log().number_for_key(key)?;
        }
        let Some(number) = logged else {
            return Ok(None);
        };
        // Written, and not applied yet: it may or may not commit. (Once applied it stays, if
        // the key still names it after: the entry was not replaced between the two looks.)
        let applied = self.book().applied();
        if number > applied || self.log().number_for_key(key)? != Some(number) {
            return Err(still());
        }
        let user = self.get(number)?.and_then(|entry| entry.user);
        match self.order_view(number) {
            Ok(view) => Ok(Some((view, user))),
            Err(OrderError::OrderNotFound | OrderError::NotAnOrder(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether this replica, leading, has a command under `key` held or in flight with its
    /// outcome not known yet. Without a sequencer of the term it leads (not leading, or not taken
    /// over yet), nothing of its own is: a sequencer's commands go with its term.
    async fn in_flight(&self, key: &str) -> Result<bool, OrderError> {
        let term = self.leader_term();
        let requests = match self.leading().as_ref() {
            Some(sequencer) if Some(sequencer.term) == term => sequencer.requests.clone(),
            _ => return Ok(false),
        };
        let (reply, pending) = tokio::sync::oneshot::channel();
        let asked = sequencer::Request::Pending {
            key: key.to_owned(),
            reply,
        };
        requests.send(asked).map_err(|_| OrderError::NotReady)?;
        pending.await.map_err(|_| OrderError::NotReady)
    }

    /// Whether the leader's last catalog round failed (new commands are refused meanwhile).
    pub fn catalog_failing(&self) -> bool {
        self.catalog_failing.load(Ordering::Acquire)
    }

    /// The market events of the entries this replica's book applied lately.
    pub fn feed(&self) -> &crate::feed::Feed {
        self.book.feed()
    }

    /// User `user`'s order updates (everybody's without one) of the entries after `after`,
    /// waiting up to `wait` for one. A position past the end of the log is refused as no
    /// entry of it (the updates up to it would otherwise be skipped without a word) only by a
    /// leader the group still follows: a follower's log, or that of a leader cut off from a
    /// group that has moved on, may lack entries the leader committed, which only it can tell.
    pub async fn order_updates(
        &self,
        user: Option<u64>,
        after: u64,
        wait: Duration,
    ) -> Result<OrderUpdatePage, OrderError> {
        if after > self.last_transaction() {
            if !self.health().leading {
                return Err(self.not_leader());
            }
            self.confirm_leadership().await?;
            // (Its log may have grown while the group was asked.)
            let last = self.last_transaction();
            if after > last {
                return Err(OrderError::PastTheLog { after, last });
            }
        }
        Ok(self
            .feed()
            .updates()
            .wait_for_updates(user, after, wait)
            .await)
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

    /// Confirms that this replica leads and that its book holds every entry committed before
    /// the call (on its lease, or by openraft's read index; see [`SharedReads`]). A read
    /// served after it sees every order acknowledged before it arrived, by any frontend (I12).
    /// None while a handover runs: the leader stops renewing its lease then, and may vote.
    pub async fn confirm_leadership(&self) -> Result<(), OrderError> {
        self.not_handing_over()?;
        if self.reads.confirm().await {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Runs `read` on the book (as of the committed log this replica has applied).
    pub fn read_book<T>(&self, read: impl Fn(&Book) -> T) -> Result<T, OrderError> {
        self.book.read(read)
    }

    /// Runs `read` of the book (a client's) on the blocking pool, [`BOOK_READS_AT_ONCE`] at
    /// most. Such a read may wait for archived records from disk (with the book's lock let go:
    /// [`BookStore::read`](crate::book_store::BookStore::read)): on the async workers (one,
    /// under `stocknet up`) it would hold up this replica's consensus traffic on the same
    /// threads (heartbeats, appends), and with it a leader's lease, so that a few slow reads
    /// could cost an election.
    pub async fn read_book_off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl Fn(&Book) -> T + Send + 'static,
    ) -> Result<T, OrderError> {
        self.read_off_runtime(move |replica| replica.read_book(read))
            .await
    }

    /// Runs `read` (a client's read of the book, the log or the archive) on the blocking pool,
    /// [`BOOK_READS_AT_ONCE`] at most: see [`Replica::read_book_off_runtime`].
    pub async fn read_off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Replica) -> Result<T, OrderError> + Send + 'static,
    ) -> Result<T, OrderError> {
        // The place goes with the read, not with the request: a request dropped (its deadline)
        // leaves the read running, and its place taken, until it ends.
        let replica = self.clone();
        stocknet_common::file::in_turn(&self.book_reads, move || read(&replica))
            .await
            .map_err(OrderError::Task)?
    }

    /// The book with its archive, for reads in several holds of its lock.
    pub fn book_store(&self) -> &BookStore {
        &self.book
    }

    /// The group's membership as this replica knows it.
    pub fn members(&self) -> Members {
        members::members(&self.raft.metrics().borrow())
    }

    /// Adds `learner` to the group (see [`members`]); only the leader can.
    pub async fn add_learner(&self, learner: NewLearner) -> Result<(), OrderError> {
        self.not_handing_over()?;
        self.leader_step(members::add_learner(&self.raft, learner).await)
    }

    /// Makes `voters` the group's voters (see [`members`]); only the leader can.
    pub async fn change_voters(&self, voters: Voters) -> Result<(), OrderError> {
        self.not_handing_over()?;
        self.leader_step(members::change_voters(&self.raft, voters).await)
    }

    /// Refuses what a leader handing over does not take (see [`handover`]).
    fn not_handing_over(&self) -> Result<(), OrderError> {
        match self.elections.handing_to() {
            Some(to) => Err(OrderError::HandingOver(
                u32::try_from(to).unwrap_or(u32::MAX),
            )),
            None => Ok(()),
        }
    }

    fn leader_step(&self, step: Result<(), OrderError>) -> Result<(), OrderError> {
        match step {
            Err(OrderError::NotLeader { .. }) => Err(self.not_leader()),
            other => other,
        }
    }

    /// "Not the leader", naming the leader this replica follows in its term, if any.
    pub(crate) fn not_leader(&self) -> OrderError {
        let metrics = self.raft.server_metrics().borrow().clone();
        let leader = metrics
            .current_leader
            .filter(|&leader| leader != u64::from(self.id))
            .and_then(|leader| u32::try_from(leader).ok())
            .map(|leader| (leader, metrics.vote.leader_id.term));
        OrderError::NotLeader { leader }
    }

    /// This replica's term while the consensus layer says it leads.
    fn leader_term(&self) -> Option<u64> {
        led_term(&self.raft.server_metrics().borrow())
    }

    fn leading(&self) -> MutexGuard<'_, Option<Sequencer>> {
        self.leading.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log, for a test to hold as a long log operation does.
    #[cfg(test)]
    pub(crate) fn order_log(&self) -> &Arc<Mutex<OrderLog>> {
        &self.log
    }

    /// The log's last transaction, waiting for the log if it is busy.
    pub fn last_transaction(&self) -> u64 {
        self.saw_last_transaction(self.log().last())
    }

    fn saw_last_transaction(&self, last: u64) -> u64 {
        self.last_transaction_seen.store(last, Ordering::Relaxed);
        last
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock()
    }

    fn orders_between(&self, after: u64, through: u64) -> Result<Vec<Order>, OrderError> {
        let count = usize::try_from(through.saturating_sub(after)).unwrap_or(usize::MAX);
        self.log().after(after, count)
    }
}

/// Sets the term of replica `id` in `data_dir` to `term`, with no vote cast in it: how an
/// operator recovers a replica that accepted a bogus term. The replica must be stopped.
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
