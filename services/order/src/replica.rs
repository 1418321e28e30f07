//! One order replica: its log and book under the group's consensus (see [`crate::consensus`]),
//! and — while it leads — the sequencing of new commands (checked against the house and the
//! price guard, then proposed) and their application to the catalog.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::error::ClientWriteError;
use openraft::network::RaftNetworkFactory;
use openraft::ServerState;
use stocknet_common::clock::now_millis;
use stocknet_common::file::FileFailure;
use stocknet_common::model::{check_client_order_id, ANONYMOUS_CLIENT_ORDER_ID};
use stocknet_common::wire::{
    ApplyRequest, AuditPage, CatalogTrade, Changed, Health, LogSlice, Members, NewLearner,
    NewOrder, OrderChange, OrderView, Peer, Placed, PriceGuard, Voters,
};
use stocknet_common::{
    file, request_id, Command, Order, OrderOptions, Price, Rejection, RemoteError, Side, Stamp,
};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::archive::Archive;
use crate::audit::{self, AuditFilter};
use crate::book::Book;
use crate::book_store::{BookSettings, BookStore};
use crate::catalog::{Catalog, HttpCatalog};
use crate::consensus::{
    self, handover, members, Elections, HttpNetwork, HttpPreVote, Lease, LogStore, Outgoing,
    PreVoteTransport, Raft, SharedReads, StateMachine, TypeConfig,
};
use crate::error::OrderError;
use crate::log::{IndexLimits, OrderLog};
use crate::metrics::{FollowerLabels, ReplicaMetrics};

/// How often the leader's catalog applier looks for committed entries the catalog lacks
/// when nothing wakes it: after a catalog outage, the catalog catches up within this.
pub const CATALOG_RETRY: Duration = Duration::from_millis(300);

/// Most entries sent in one catalog call or one log page.
pub const BATCH: usize = 4096;

/// How often the leader looks for open orders whose expiry has come: an order expires this
/// long after its time at most (by the leader's clock), plus a commit round.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);

/// Entries a leader has proposed and not yet seen applied. Commands that arrive meanwhile wait
/// and are proposed together as the next entry: openraft 0.9 writes a leader's entries one at a
/// time, each with its own fsync, so one command per entry would cap orders at one per fsync.
/// One measured best (durable orders at 32 clients: 4.6k/s against 3.7–3.9k/s with 2, 4 or 8
/// in flight): every entry costs a replication call and an fsync on each replica, and fewer,
/// fuller entries cost less.
const PROPOSALS_IN_FLIGHT: usize = 1;

/// How often the proposer yields, once an entry can be proposed, before it closes the entry.
const GATHER_YIELDS: usize = 2;

/// A command to propose, and where its number (or why it has none) goes once it is applied.
type Pending = (Order, oneshot::Sender<Result<u64, String>>);

/// A proposed command's outcome as its retries learn it: `None` until known, then its number,
/// or `None` within if it may or may not have executed.
type Outcome = Option<Option<u64>>;

/// What only the leader keeps, for its term: the house as it will be once every command it
/// proposed is applied (to refuse overdrafts before proposing), the time of its last entry,
/// the commands proposed under a key and not yet applied, and its catalog applier.
struct Leading {
    house: HashMap<String, House>,
    /// Entries' times never go back along the log, whatever the clock does.
    last_time: u64,
    /// Key → the command proposed under it, and its outcome once known: a retry that arrives
    /// meanwhile waits for the first.
    in_flight: HashMap<String, (Order, watch::Receiver<Outcome>)>,
    /// The commands to propose, in the order the house projection counted them.
    proposals: mpsc::UnboundedSender<Pending>,
    proposer: tokio::task::JoinHandle<()>,
    applier: tokio::task::JoinHandle<()>,
    expirer: tokio::task::JoinHandle<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.expirer.abort();
        self.applier.abort();
        self.proposer.abort();
    }
}

/// The leader's sequencer for one term: the task that owns [`Leading`] and checks and
/// proposes commands one at a time, in the order they reach it. Nothing else touches the
/// leader's state, so no lock guards it and none is taken with another's.
struct Sequencer {
    term: u64,
    requests: mpsc::UnboundedSender<Request>,
    /// The catalog applier's progress, which waiting commands watch.
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        // Ends the task, which drops the leader's state (and stops its tasks).
        self.task.abort();
    }
}

/// What the sequencer is asked.
enum Request {
    /// Check and propose `submission`, which came with the request id `request_id`.
    Propose {
        submission: Submission,
        request_id: Option<String>,
        reply: oneshot::Sender<Result<Proposed, OrderError>>,
    },
    /// The command proposed under `key` has its outcome: a retry under it no longer waits.
    Finished { key: String },
}

/// One stock as the leader projects it.
#[derive(Debug, Clone, Copy)]
struct House {
    quantity: u64,
    /// The catalog's price when this leader took over; the book's last trade supersedes it.
    price: Price,
}

/// How a replica reaches the others and the catalog: over HTTP in a real run
/// ([`Links::http`]), in memory in the simulation tests.
pub struct Links<N, P> {
    pub network: N,
    pub pre_votes: P,
    pub catalog: Arc<dyn Catalog>,
}

impl Links<HttpNetwork, HttpPreVote> {
    /// Over HTTP with `http` (which carries the cluster secret), the catalog at `catalog_url`.
    pub fn http(http: reqwest::Client, catalog_url: &str) -> Self {
        Self {
            network: HttpNetwork::new(http.clone()),
            pre_votes: HttpPreVote::new(http.clone()),
            catalog: HttpCatalog::new(http, catalog_url),
        }
    }
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

/// Where the leader's catalog applier is: entries through `applied` are in the catalog, so
/// commands through it can be acknowledged.
#[derive(Debug, Clone, Default)]
struct Progress {
    round: u64,
    applied: u64,
    /// The last round's failure, which concerns the entries through `through`.
    failure: Option<RoundFailure>,
}

#[derive(Debug, Clone)]
struct RoundFailure {
    round: u64,
    through: u64,
    cause: String,
}

/// How a command got into the log: found there (a retry), proposed by another request under
/// the same key (still in flight), or proposed now.
enum Proposed {
    Logged(u64),
    InFlight(watch::Receiver<Outcome>),
    Now {
        answer: oneshot::Receiver<Result<u64, String>>,
        key: Option<(String, watch::Sender<Outcome>)>,
        proposed: Instant,
    },
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
    /// Set while the leader cannot apply committed entries to the catalog: new commands are
    /// refused before they are proposed (503, not executed) rather than committed and left
    /// waiting on the catalog with an unknown outcome.
    catalog_failing: AtomicBool,
    metrics: ReplicaMetrics,
    /// The task that stands for election when the leader is lost.
    standing: tokio::task::JoinHandle<()>,
    /// The task that, leading, hands the leadership to a higher-id voter.
    handing_over: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Opens the log, book (kept as `book` says) and vote of replica `id` in `data_dir` and
    /// starts its part in the
    /// group founded by `peers` (or, not among them, waits to be added to the group), and the
    /// task that takes over when it is elected. It reaches the other replicas through
    /// `network` and `pre_votes` and, leading, applies the log to `catalog`.
    pub async fn start(
        id: u32,
        data_dir: &std::path::Path,
        peers: Vec<Peer>,
        links: Links<impl RaftNetworkFactory<TypeConfig>, impl PreVoteTransport>,
        book: BookSettings,
        index: IndexLimits,
    ) -> Result<Arc<Self>, OrderError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OrderError::io(data_dir, e))?;
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
        // A replica not among the founding members joins as the leader adds it.
        let founding = if peers.iter().any(|p| p.id == id) {
            consensus::initial_membership(&peers)
        } else {
            members::joining()
        };
        let machine =
            StateMachine::open(book.clone(), &store, founding, metrics.snapshots.clone())?;
        let config = consensus::config(settings.snapshot_every)?;
        let lease = Lease::new();
        let raft = Raft::new(
            u64::from(id),
            Arc::new(config),
            Outgoing::new(links.network, lease.clone(), store.durable()),
            store.clone(),
            machine,
        )
        .await
        .map_err(|e| OrderError::Task(format!("consensus did not start: {e}")))?;
        let elections = Elections::new(raft.clone(), store, u64::from(id));
        let standing = tokio::spawn(elections.clone().stand_when_leader_lost(links.pre_votes));
        let (handover_raft, handover_elections) = (raft.clone(), elections.clone());
        let handovers = metrics.handovers.clone();
        let handing_over = move |replica: &std::sync::Weak<Self>| {
            let replica = replica.clone();
            let drained = move || {
                let replica = replica.upgrade();
                async move {
                    match replica {
                        Some(replica) => replica.drained().await,
                        None => false,
                    }
                }
            };
            tokio::spawn(handover::prefer_highest(
                handover_raft,
                handover_elections,
                drained,
                handovers,
            ))
        };
        let replica = Arc::new_cyclic(|replica| Self {
            handing_over: handing_over(replica),
            id,
            catalog: links.catalog,
            log,
            book,
            reads: SharedReads::start(raft.clone(), lease),
            elections: elections.clone(),
            raft: raft.clone(),
            leading: Mutex::new(None),
            leading_term: AtomicU64::new(0),
            catalog_failing: AtomicBool::new(false),
            metrics,
            standing,
        });
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

    pub fn health(&self) -> Health {
        let (term, leader, state) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.current_leader, m.state)
        };
        // One lock at a time: the book is never locked while the log is held.
        let last_transaction = self.log().last();
        let applied = self.book().applied();
        Health {
            node_id: self.id,
            term,
            leader: leader.and_then(|l| u32::try_from(l).ok()),
            ready: leader.is_some(),
            last_transaction,
            applied,
            leading: state == ServerState::Leader
                && self.leading_term.load(Ordering::Acquire) == term,
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

    /// Whether this replica knows a leader (its own term has one).
    pub fn is_ready(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
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
        // A market order on the book is priced like a limit order for these checks.
        let priced = order
            .price
            .or(order.protection_bps.map(|_| Price::from_cents(1)));
        match order.protection_bps {
            Some(_) if order.price.is_some() => Err("a market order on the book has no price"),
            Some(_) => order.terms.check_market(),
            None => order.terms.check(order.price, order.quantity),
        }
        .map_err(OrderError::InvalidChange)?;
        if let Some(id) = &order.client_order_id {
            check_client_order_id(id, priced).map_err(OrderError::InvalidChange)?;
            if user.is_none() {
                return Err(OrderError::InvalidChange(ANONYMOUS_CLIENT_ORDER_ID));
            }
        }
        let client_order_id = order.client_order_id.clone();
        let command = match order.protection_bps {
            Some(protection_bps) => Command::Sweep {
                side: order.side,
                quantity: order.quantity,
                protection_bps,
                options: OrderOptions::boxed(order.terms, order.client_order_id),
            },
            None => Command::Place {
                side: order.side,
                quantity: order.quantity,
                limit: order.price,
                options: OrderOptions::boxed(order.terms, order.client_order_id),
            },
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
        if let Some(refusal) = self.book.read(|book| book.refusal(number))? {
            return Err(OrderError::Refused { refusal, number });
        }
        let view = self.order_view(number)?;
        Ok(Placed {
            transaction_number: number,
            client_order_id,
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

    /// Leader side: cancels `user`'s open order with client order id `id`. A retry under the
    /// key of a cancel already logged gets that cancel's answer, whatever the order's state.
    pub async fn cancel_by_client_order_id(
        self: &Arc<Self>,
        id: &str,
        key: Option<String>,
        user: u64,
    ) -> Result<Changed, OrderError> {
        let logged = match key.as_deref() {
            Some(key) => self.log().number_for_key(key)?,
            None => None,
        };
        let target = match logged.map(|number| self.get(number)).transpose()?.flatten() {
            Some(Order {
                command: Command::Cancel { target },
                ..
            }) => target,
            _ => self
                .book()
                .open_by_client_order_id(user, id)
                .ok_or_else(|| OrderError::ClientOrderIdNotOpen(id.to_owned()))?,
        };
        self.cancel(target, key, Some(user)).await
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
        if let Some(refusal) = self.book.read(|book| book.refusal(number))? {
            return Err(OrderError::Refused { refusal, number });
        }
        Ok(Changed {
            transaction_number: number,
            order: self.order_view(target)?,
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
    pub fn read_book<T>(&self, read: impl FnOnce(&Book) -> T) -> Result<T, OrderError> {
        self.book.read(read)
    }

    /// Leader side: checks and proposes one command, then waits until the group committed
    /// it, the book applied it and the catalog took it (which has invalidated the frontends'
    /// caches by then). Commands that arrive while the consensus layer writes share its
    /// next fsync and replication; commands the catalog applier finds waiting share one
    /// catalog call. A new order the checks refuse is proposed as a refusal, which changes
    /// nothing but is committed like the rest.
    async fn submit(self: &Arc<Self>, submission: Submission) -> Result<u64, OrderError> {
        let (requests, mut progress) = {
            let guard = self.leading();
            let term = self.leader_term().ok_or_else(|| self.not_leader())?;
            self.not_handing_over()?;
            match guard.as_ref() {
                Some(sequencer) if sequencer.term == term => {
                    (sequencer.requests.clone(), sequencer.progress.clone())
                }
                _ if self.catalog_failing.load(Ordering::Acquire) => {
                    return Err(OrderError::CatalogUnavailable(
                        "the new leader cannot bring the catalog up to date yet".into(),
                    ))
                }
                _ => return Err(OrderError::NotReady),
            }
        };
        let market = matches!(submission.command, Command::Place { limit: None, .. });
        let (reply, proposed) = oneshot::channel();
        let request = Request::Propose {
            submission,
            // The request's id, as the frontend passed it on: the sequencer is another task.
            request_id: request_id::current().and_then(|id| id.to_str().ok().map(str::to_owned)),
            reply,
        };
        // A sequencer that is gone proposed nothing: this replica no longer leads that term.
        requests.send(request).map_err(|_| OrderError::NotReady)?;
        let proposed = proposed.await.map_err(|_| OrderError::NotReady)??;
        let number = match proposed {
            Proposed::Logged(number) => number,
            Proposed::InFlight(mut first) => {
                let outcome = first
                    .wait_for(Option::is_some)
                    .await
                    .map(|outcome| outcome.flatten())
                    .ok()
                    .flatten();
                outcome.ok_or_else(|| OrderError::OutcomeUnknown {
                    cause: "the same command under this key did not finish".into(),
                    catalog: false,
                })?
            }
            Proposed::Now {
                answer,
                key,
                proposed,
            } => {
                // Proposed, so perhaps written: only a retry under its key can say.
                let number = answer
                    .await
                    .unwrap_or_else(|_| Err("this replica stopped leading".to_owned()));
                if let Some((key, done)) = key {
                    done.send_replace(Some(number.as_ref().ok().copied()));
                    // (A sequencer that is gone has dropped its state with the key.)
                    let _ = requests.send(Request::Finished { key });
                }
                self.metrics
                    .commit_round_seconds
                    .observe(proposed.elapsed().as_secs_f64());
                number.map_err(|cause| OrderError::OutcomeUnknown {
                    cause,
                    catalog: false,
                })?
            }
        };
        // Committed and in the book. A book command that did not trade changes nothing in the
        // catalog (the catalog gets it in order with the others, for its position alone), so
        // it is answered now; anything else once the catalog has it too (I3, I7).
        if !market && self.book.read(|book| book.entry_price(number))?.is_none() {
            return Ok(number);
        }
        let waiting_since = progress.borrow().round;
        loop {
            {
                let now = progress.borrow_and_update();
                if now.applied >= number {
                    return Ok(number);
                }
                if let Some(failure) = &now.failure {
                    // A catalog round that began after this command committed and covered it:
                    // committed but not in the catalog, which the next round retries.
                    if failure.round > waiting_since && failure.through >= number {
                        return Err(OrderError::OutcomeUnknown {
                            cause: format!("catalog unavailable: {}", failure.cause),
                            catalog: true,
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

    /// Checks `submission` against the log (a retry), the house and the price guard, and
    /// proposes it; the sequencer's, which owns `leading`.
    fn propose(
        &self,
        leading: &mut Leading,
        submission: Submission,
        request_id: Option<String>,
    ) -> Result<Proposed, OrderError> {
        let Submission {
            name,
            command,
            key,
            user,
            guard: price_guard,
        } = submission;
        // A retry of a command already in the log or in flight: see it through, never
        // execute it again. The key must come back with the same request, not a different one.
        if let Some(key) = key.as_deref() {
            let same = |logged: &Order| {
                logged.command == command
                    && name.as_ref().is_none_or(|name| *name == logged.name)
                    && logged.user == user
            };
            // (The log's guard must be gone before `get` takes it again.)
            let logged = self.log().number_for_key(key)?;
            if let Some(number) = logged {
                let logged = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
                return if same(&logged) {
                    Ok(Proposed::Logged(number))
                } else {
                    Err(OrderError::KeyReused)
                };
            }
            if let Some((proposal, first)) = leading.in_flight.get(key) {
                return if same(proposal) {
                    Ok(Proposed::InFlight(first.clone()))
                } else {
                    Err(OrderError::KeyReused)
                };
            }
        }
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
        let proposal = Order {
            number: 0,
            term: 0,
            name: name.clone(),
            key: key.clone(),
            user,
            stamp: Stamp {
                time,
                quote: Some(quote),
                rejected,
                request_id,
            },
            command,
        };
        let (answered, answer) = oneshot::channel();
        leading
            .proposals
            .send((proposal.clone(), answered))
            .map_err(|_| OrderError::Task("the proposer stopped".into()))?;
        // Proposed: it will be applied if it commits, by this leader or the next, so the
        // projection counts it either way.
        leading.last_time = time;
        leading.house.insert(
            name,
            House {
                quantity: updated,
                ..house
            },
        );
        let key = key.map(|key| {
            let (done, first) = watch::channel(None);
            leading.in_flight.insert(key.clone(), (proposal, first));
            (key, done)
        });
        Ok(Proposed::Now {
            answer,
            key,
            proposed: Instant::now(),
        })
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

    /// Whether every command this leader took is answered: committed, applied, and in the
    /// catalog.
    async fn drained(&self) -> bool {
        let all_applied = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics.last_applied.map(|id| id.index) == metrics.last_log_index
        };
        let catalog = match self.leading().as_ref() {
            Some(sequencer) => sequencer.progress.borrow().applied,
            None => return false,
        };
        all_applied && catalog >= self.book().applied()
    }

    fn leader_step(&self, step: Result<(), OrderError>) -> Result<(), OrderError> {
        match step {
            Err(OrderError::NotLeader { .. }) => Err(self.not_leader()),
            other => other,
        }
    }

    /// "Not the leader", naming the leader this replica follows in its term, if any.
    fn not_leader(&self) -> OrderError {
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

    /// Takes over each term this replica is elected in, and lets go of it when it is not.
    /// It watches openraft's server metrics, which change only with the vote, the state or
    /// the membership (its full metrics change with every entry).
    async fn follow_leadership(self: Arc<Self>) {
        let mut metrics = self.raft.server_metrics();
        loop {
            let term = led_term(&metrics.borrow_and_update());
            match term {
                Some(term) if self.leading_term.load(Ordering::Acquire) != term => {
                    self.take_over(term).await;
                }
                Some(_) => {}
                None => {
                    if self.leading_term.swap(0, Ordering::AcqRel) != 0 {
                        tracing::info!("no longer leading");
                    }
                    *self.leading() = None;
                }
            }
            let changed = match self.leading_term.load(Ordering::Acquire) {
                // Elected but not taken over (the catalog failed): try again shortly.
                0 if term.is_some() => tokio::time::timeout(CATALOG_RETRY, metrics.changed())
                    .await
                    .ok(),
                _ => Some(metrics.changed().await),
            };
            if let Some(Err(_)) = changed {
                return;
            }
        }
    }

    /// Prepares to take commands in `term`: confirms the leadership with every earlier
    /// entry committed and in the book, brings the catalog up to date under this term (which
    /// fences older leaders out of it) and projects the house from it.
    async fn take_over(self: &Arc<Self>, term: u64) {
        match self.prepare_leading(term).await {
            Ok((leading, progress)) => {
                let (requests, waiting) = mpsc::unbounded_channel();
                let task = tokio::spawn(self.clone().sequence(term, leading, waiting));
                *self.leading() = Some(Sequencer {
                    term,
                    requests,
                    progress,
                    task,
                });
                self.catalog_failing.store(false, Ordering::Release);
                self.leading_term.store(term, Ordering::Release);
                self.metrics.takeovers.inc();
                tracing::info!(term, last = self.log().last(), "leading");
            }
            Err(e) => {
                if matches!(e, OrderError::CatalogUnavailable(_)) {
                    self.catalog_failing.store(true, Ordering::Release);
                }
                tracing::warn!(term, "cannot take over yet: {e}");
            }
        }
    }

    /// The sequencer's task for `term`: it owns `leading` and answers what it is asked, in
    /// order. A command it is asked for once this replica no longer leads the term, or hands
    /// it over, is refused before it is proposed, as one asked for then would be.
    async fn sequence(
        self: Arc<Self>,
        term: u64,
        mut leading: Leading,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) {
        while let Some(request) = requests.recv().await {
            match request {
                Request::Propose {
                    submission,
                    request_id,
                    reply,
                } => {
                    let answer = match self.leader_term() {
                        Some(led) if led == term => self
                            .not_handing_over()
                            .and_then(|()| self.propose(&mut leading, submission, request_id)),
                        _ => Err(self.not_leader()),
                    };
                    let _ = reply.send(answer);
                }
                Request::Finished { key } => {
                    leading.in_flight.remove(&key);
                }
            }
        }
    }

    /// The leader's state for `term`, and its catalog applier's progress.
    async fn prepare_leading(
        self: &Arc<Self>,
        term: u64,
    ) -> Result<(Leading, watch::Receiver<Progress>), OrderError> {
        self.confirm_leadership().await?;
        let applied = self.book().applied();
        let snapshot = self.catalog.snapshot().await.map_err(OrderError::catalog)?;
        if snapshot.applied > applied {
            return Err(OrderError::CatalogUnavailable(format!(
                "catalog has applied entry {} but this replica's book ends at {applied}",
                snapshot.applied
            )));
        }
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
        for order in self.orders_between(snapshot.applied, applied)? {
            if let (Some(stock), Some((side, count))) = (house.get_mut(&order.name), order.market())
            {
                stock.quantity = stock.quantity.saturating_add_signed(side.delta(count));
            }
        }
        let last_time = {
            let log = self.log();
            log.get(log.last())?.map_or(0, |entry| entry.stamp.time)
        };
        // Applies what is committed but not in the catalog yet, and records the new term.
        let mut catalog_applied = snapshot.applied;
        self.apply_to_catalog(term, &mut catalog_applied, applied)
            .await?;
        let (progress, watched) = watch::channel(Progress {
            applied: catalog_applied,
            ..Progress::default()
        });
        let applier = tokio::spawn(self.clone().apply_loop(term, progress, catalog_applied));
        let (proposals, waiting) = mpsc::unbounded_channel();
        let proposer = tokio::spawn(propose_entries(self.raft.clone(), waiting));
        let expirer = tokio::spawn(self.clone().write_expiries());
        let leading = Leading {
            house,
            last_time,
            in_flight: HashMap::new(),
            proposals,
            proposer,
            applier,
            expirer,
        };
        Ok((leading, watched))
    }

    /// The leader's expiry writer, one per term: once the soonest expiry of an open order has
    /// come by this leader's clock, it proposes the expiry entry of that order's stock, whose
    /// time (the proposal's, never earlier) is the cutoff every replica expires orders by.
    async fn write_expiries(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(EXPIRY_CHECK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let due = self
                .book()
                .next_expiry()
                .filter(|(expires, _)| *expires <= now_millis())
                .map(|(_, name)| name.to_owned());
            let Some(name) = due else { continue };
            let expiry = Submission {
                name: Some(name),
                command: Command::Expire,
                key: None,
                user: None,
                guard: None,
            };
            // Not written now (handing over, the catalog down): the next tick tries again.
            match self.submit(expiry).await {
                Ok(_) => {
                    self.metrics.expiry_entries.inc();
                }
                Err(e) => tracing::debug!("expiry entry not written: {e}"),
            }
        }
    }

    /// The leader's catalog applier, one per term: applies what the book has and the catalog
    /// lacks, as soon as the book applies an entry and every [`CATALOG_RETRY`] otherwise
    /// (which catches the catalog up after an outage).
    async fn apply_loop(
        self: Arc<Self>,
        term: u64,
        progress: watch::Sender<Progress>,
        mut catalog_applied: u64,
    ) {
        let mut ticks = tokio::time::interval(CATALOG_RETRY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A round starts as soon as the book applies an entry, before its commands' answers
        // reach the requests waiting for them.
        let mut book_applied = self.book.feed().applied();
        loop {
            tokio::select! {
                Ok(()) = book_applied.changed() => {}
                _ = ticks.tick() => {}
            }
            let through = self.book().applied();
            if through <= catalog_applied {
                continue;
            }
            let (applying, before) = (Instant::now(), catalog_applied);
            let result = self
                .apply_to_catalog(term, &mut catalog_applied, through)
                .await;
            self.catalog_failing
                .store(result.is_err(), Ordering::Release);
            match &result {
                Ok(()) => {
                    let metrics = &self.metrics;
                    metrics
                        .catalog_apply_seconds
                        .observe(applying.elapsed().as_secs_f64());
                    metrics
                        .commit_round_entries
                        .observe((catalog_applied - before) as f64);
                }
                Err(OrderError::NotLeader { .. }) => {
                    tracing::info!(term, "the catalog knows a newer term; no longer applying");
                }
                Err(e) => tracing::warn!(term, through, "catalog apply failed: {e}"),
            }
            progress.send_modify(|now| {
                now.round += 1;
                now.applied = catalog_applied;
                now.failure = result.err().map(|error| RoundFailure {
                    round: now.round,
                    through,
                    cause: error.to_string(),
                });
            });
        }
    }

    fn leading(&self) -> MutexGuard<'_, Option<Sequencer>> {
        self.leading.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
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
        if matches!(entry.command, Command::Group(_)) {
            return Err(OrderError::NotAnOrder(target));
        }
        if entry.user.is_some() && entry.user != user {
            return Err(OrderError::NotOwner(target));
        }
        Ok(entry.name)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock()
    }

    fn orders_between(&self, after: u64, through: u64) -> Result<Vec<Order>, OrderError> {
        let count = usize::try_from(through.saturating_sub(after)).unwrap_or(usize::MAX);
        self.log().after(after, count)
    }

    /// Applies the log through `number` to the catalog, in order, under the leader's term.
    async fn apply_to_catalog(
        &self,
        term: u64,
        catalog_applied: &mut u64,
        number: u64,
    ) -> Result<(), OrderError> {
        let (mut sent, mut retried) = (false, false);
        // Sent at least once even when there is nothing to apply: that records the term.
        while *catalog_applied < number || !sent {
            sent = true;
            let through = number.min(*catalog_applied + BATCH as u64);
            let orders = self.orders_between(*catalog_applied, through)?;
            // (A trade the archive cannot give fails the round, which is retried: a price
            // missing from it would be a change the catalog never gets.)
            let trades: Vec<CatalogTrade> = self.book.read(|book| {
                orders
                    .into_iter()
                    .map(|o| {
                        let delta = o.market().map_or(0, |(side, count)| side.delta(count));
                        let price = book.entry_price(o.number);
                        let changes = delta != 0 || price.is_some();
                        CatalogTrade {
                            number: o.number,
                            delta,
                            price,
                            request_id: o.stamp.request_id.filter(|_| changes),
                            name: o.name,
                        }
                    })
                    .collect()
            })?;
            let request = ApplyRequest { term, trades };
            match self.catalog.apply(&request).await {
                Ok(outcome) => {
                    *catalog_applied = outcome.applied;
                    continue;
                }
                Err(RemoteError::Api(error))
                    if error.status == axum::http::StatusCode::CONFLICT =>
                {
                    // Out of step with the catalog: a newer leader, or a different position.
                    let snapshot = self.catalog.snapshot().await.map_err(OrderError::catalog)?;
                    if snapshot.term > term {
                        return Err(self.not_leader());
                    }
                    if snapshot.applied == *catalog_applied {
                        return Err(OrderError::CatalogUnavailable(error.message));
                    }
                    *catalog_applied = snapshot.applied;
                }
                // One quick retry rides over a dropped connection; a catalog that is down or
                // hung fails the round (its entries answer "outcome unknown" at once, and new
                // orders are refused until the catalog is back), and the next round tries
                // again.
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

/// Proposes the commands `waiting` brings, in order, as entries of up to
/// [`consensus::MAX_PROPOSAL`] commands, with at most [`PROPOSALS_IN_FLIGHT`] entries proposed
/// and not yet applied; each command is answered its number once its entry is applied.
async fn propose_entries(raft: Raft, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        // Let the commands already on their way in join this entry: a yield runs the tasks
        // that are ready and polls the sockets (tokio wakes a yielded task after its driver).
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
        }
        let mut batch = vec![first];
        while batch.len() < consensus::MAX_PROPOSAL {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (orders, answers): (Vec<Order>, Vec<_>) = batch.into_iter().unzip();
        let written = match raft.client_write_ff(orders).await {
            Ok(written) => written,
            Err(e) => {
                let cause = format!("consensus stopped: {e}");
                for answer in answers {
                    let _ = answer.send(Err(cause.clone()));
                }
                continue;
            }
        };
        // Answered by a task of its own, so the next entry can be proposed meanwhile; it
        // answers even if this replica stops leading first.
        tokio::spawn(async move {
            let first = match written.await {
                Ok(Ok(applied)) => Ok(applied.data),
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => {
                    Err("this replica stopped leading".to_owned())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the consensus layer stopped".to_owned()),
            };
            drop(slot);
            for (offset, answer) in (0..).zip(answers) {
                let _ = answer.send(first.clone().map(|first| first + offset));
            }
        });
    }
}

/// The term a replica leads, from its server metrics; `None` while it does not lead.
fn led_term(
    metrics: &openraft::metrics::RaftServerMetrics<u64, openraft::BasicNode>,
) -> Option<u64> {
    (metrics.state == ServerState::Leader).then_some(metrics.vote.leader_id.term)
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
            ..
        } => quantity
            .checked_sub(u64::from(count))
            .ok_or(Rejection::InsufficientQuantity),
        Command::Place {
            side: Side::Sell,
            quantity: count,
            limit: None,
            ..
        } => quantity
            .checked_add(u64::from(count))
            .ok_or(Rejection::QuantityOverflow),
        _ => Ok(quantity),
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
