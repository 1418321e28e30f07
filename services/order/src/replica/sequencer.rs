//! The leader's term: taking it over, the sequencer that checks each command (a retry under
//! its key, the house, the price guard) and proposes it, the proposer that gathers commands
//! into entries, and the expiry writer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::ServerState;
use stocknet_common::clock::now_millis;
use stocknet_common::{Command, Order, Price, Rejection, Side, Stamp};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::catalog_applier::{Progress, CATALOG_RETRY};
use super::commands::Submission;
use super::Replica;
use crate::consensus::{self, Raft};
use crate::error::OrderError;

/// How often the leader looks for open orders whose expiry has come: an order expires this
/// long after its time at most (by the leader's clock), plus a commit round (two or three
/// while a command of its stock waits for the quote).
pub(super) const EXPIRY_CHECK: Duration = Duration::from_millis(100);

/// Entries a leader has proposed and not yet seen applied. Commands that arrive meanwhile wait
/// and are proposed together as the next entry: openraft 0.9 writes a leader's entries one at a
/// time, each with its own fsync, so one command per entry would cap orders at one per fsync.
/// One measured best (durable orders at 32 clients: 4.6k/s against 3.7–3.9k/s with 2, 4 or 8
/// in flight): every entry costs a replication call and an fsync on each replica, and fewer,
/// fuller entries cost less.
pub(super) const PROPOSALS_IN_FLIGHT: usize = 1;

/// How often the proposer yields, once an entry can be proposed, before it closes the entry.
pub(super) const GATHER_YIELDS: usize = 2;

/// A command to propose, and where its number (or why it has none) goes once it is applied.
pub(super) type Pending = (Order, watch::Sender<Outcome>);

/// A proposed command's outcome as its requests learn it: `None` until known, then its number
/// once applied, or why it may or may not have executed.
pub(super) type Outcome = Option<Result<u64, String>>;

/// Commands a leader keeps in flight (some with their outcome known) before it forgets those
/// finished; then again once as many more were proposed as are still unfinished, so that a
/// stall (many unfinished) costs no scan per command.
const FINISHED_KEPT: usize = 1024;

/// What only the leader keeps, for its term: the house as it will be once every command it
/// proposed is applied (to refuse overdrafts before proposing), the time of its last entry,
/// the commands proposed under a key and not yet applied, the commands held until their
/// stock's quote settles, and its catalog applier.
pub(super) struct Leading {
    pub(super) house: HashMap<String, House>,
    /// Entries' times never go back along the log, whatever the clock does.
    pub(super) last_time: u64,
    /// Key → the command proposed under it, and its outcome once known: a retry that arrives
    /// meanwhile waits for the first. The proposer sets the outcome, whether or not the request
    /// that proposed it is still there: a request that goes away (its caller's deadline) takes
    /// nothing out of flight, or a command still queued for the next entry would be in neither
    /// the log nor here, and its retry would execute it twice.
    pub(super) in_flight: HashMap<String, (Order, watch::Receiver<Outcome>)>,
    /// How many commands may be in flight before the finished ones are forgotten.
    pub(super) forget_at: usize,
    /// Per stock, the outcome of the last command proposed that may trade on its book: until
    /// it is applied, the book's last price, the stock's quote, may be about to change.
    pub(super) trading: HashMap<String, watch::Receiver<Outcome>>,
    /// Per stock, the commands that wait for its quote to settle, and behind them, in the
    /// order they came, every later command of the stock.
    pub(super) held: HashMap<String, VecDeque<Asked>>,
    /// The commands to propose, in the order the house projection counted them.
    pub(super) proposals: mpsc::UnboundedSender<Pending>,
    pub(super) proposer: tokio::task::JoinHandle<()>,
    pub(super) applier: tokio::task::JoinHandle<()>,
    pub(super) expirer: tokio::task::JoinHandle<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.expirer.abort();
        self.applier.abort();
        self.proposer.abort();
    }
}

/// The leader's sequencer for one term: the task that owns [`Leading`] and checks and
/// proposes commands one at a time, in the order they reach it, but for a command held until
/// its stock's quote settles and the stock's commands behind it ([`Replica::take`]). Nothing
/// else touches the leader's state, so no lock guards it and none is taken with another's.
pub(super) struct Sequencer {
    pub(super) term: u64,
    pub(super) requests: mpsc::UnboundedSender<Request>,
    /// The catalog applier's progress, which waiting commands watch.
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        // Ends the task, which drops the leader's state (and stops its tasks).
        self.task.abort();
    }
}

/// What the sequencer is asked.
pub(super) enum Request {
    /// Check and propose a command.
    Propose(Asked),
    /// Whether a command under `key` is held, or proposed with its outcome not known yet.
    Pending {
        key: String,
        reply: oneshot::Sender<bool>,
    },
    /// The command that `stock`'s held commands wait for has an outcome.
    Settled { stock: String },
}

/// A command to check and propose, which came with the request id `request_id`.
pub(super) struct Asked {
    pub(super) submission: Submission,
    pub(super) request_id: Option<String>,
    pub(super) reply: oneshot::Sender<Result<Proposed, OrderError>>,
    /// Its stock, once the sequencer has looked it up.
    pub(super) stock: Option<String>,
}

/// A stock's quote, as the last command proposed that may trade on its book leaves it.
enum Quote {
    /// That command is applied: the book's last price is the quote.
    Settled,
    /// Not applied yet: it may trade at another price first.
    Moving(watch::Receiver<Outcome>),
    /// Its proposal failed (this replica stopped leading): it may still be committed by
    /// another leader, or not.
    Unknown,
}

impl Quote {
    fn of(outcome: &watch::Receiver<Outcome>) -> Self {
        match &*outcome.borrow() {
            Some(Ok(_)) => Self::Settled,
            Some(Err(_)) => Self::Unknown,
            // Its proposer is gone (with the term) without an answer.
            None if outcome.has_changed().is_err() => Self::Unknown,
            None => Self::Moving(outcome.clone()),
        }
    }
}

impl Asked {
    /// Whether its answer rests on its stock's quote: a market order against the house
    /// executes at it, and a price guard is checked against it.
    fn needs_quote(&self) -> bool {
        self.submission.guard.is_some()
            || matches!(self.submission.command, Command::Place { limit: None, .. })
    }
}

/// Whether `command`, once applied, may trade on its stock's book and so move its price.
fn may_trade(command: &Command) -> bool {
    matches!(
        command,
        Command::Place { limit: Some(_), .. } | Command::Sweep { .. } | Command::Modify { .. }
    )
}

/// A stock's held commands, once its quote has settled, in the order to take them: first
/// every one that needs the quote and cannot trade (a market order against the house), since
/// the settled quote holds for them all, then the rest as they came. None of them has been
/// answered, so any order is one they could have run in, but a key's commands keep theirs.
/// One whose caller has gone is dropped: it was never proposed, so a retry under its key runs
/// it, once.
fn released(waiting: VecDeque<Asked>) -> impl Iterator<Item = Asked> {
    let mut keys_seen = std::collections::HashSet::new();
    let (first, rest): (Vec<Asked>, Vec<Asked>) = waiting
        .into_iter()
        .filter(|asked| !asked.reply.is_closed())
        .partition(|asked| {
            let key = asked.submission.key.clone();
            let first_under_key = key.is_none_or(|key| keys_seen.insert(key));
            let quoted = asked.needs_quote() && !may_trade(&asked.submission.command);
            quoted && first_under_key
        });
    first.into_iter().chain(rest)
}

/// One stock as the leader projects it.
#[derive(Debug, Clone, Copy)]
pub(super) struct House {
    pub(super) quantity: u64,
    /// The catalog's price when this leader took over; the book's last trade supersedes it.
    pub(super) price: Price,
}

/// How a command got into the log: found there committed (a retry), proposed by an earlier
/// request under the same key, or proposed now; the outcome of the last two is to come.
pub(super) enum Proposed {
    Logged(u64),
    InFlight(watch::Receiver<Outcome>),
    Now(watch::Receiver<Outcome>),
}

impl Replica {
    /// Checks `submission` against the log (a retry), the house and the price guard, and
    /// proposes it; the sequencer's, which owns `leading`.
    pub(super) fn propose(
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
                logged.command.same_request(&command)
                    && name.as_ref().is_none_or(|name| *name == logged.name)
                    && logged.user == user
            };
            // In flight first: its entry may be in the log already, written and not committed.
            // Once its outcome is known, the log says the rest.
            match leading.in_flight.get(key) {
                Some((proposal, _)) if !same(proposal) => return Err(OrderError::KeyReused),
                Some((_, first)) if first.borrow().is_none() => {
                    return Ok(Proposed::InFlight(first.clone()))
                }
                Some(_) => {
                    leading.in_flight.remove(key);
                }
                None => {}
            }
            // (The log's guard must be gone before `get` takes it again.)
            let logged = self.log().number_for_key(key)?;
            if let Some(number) = logged {
                let logged = self.get(number)?.ok_or(OrderError::OrderNotFound)?;
                // What the book has applied is committed and stays: once it covers the entry,
                // a key that still names it is this command's for good (asked again after, in
                // case the entry was overwritten between the two looks).
                let committed = || -> Result<bool, OrderError> {
                    let applied = self.book().applied();
                    Ok(number <= applied && self.log().number_for_key(key)? == Some(number))
                };
                return if !same(&logged) {
                    Err(OrderError::KeyReused)
                } else if committed()? {
                    Ok(Proposed::Logged(number))
                } else {
                    // Written by a proposal that has ended without an outcome (its leader
                    // stepped down): it may commit yet, or be overwritten.
                    Err(OrderError::OutcomeUnknown {
                        cause: "the command under this key is logged and not yet committed".into(),
                        catalog: false,
                    })
                };
            }
        }
        let fenced = self.catalog_fenced.load(Ordering::Acquire);
        if fenced != 0 && fenced == self.leading_term.load(Ordering::Acquire) {
            return Err(self.not_leader());
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
        let (done, outcome) = watch::channel(None);
        let trades = rejected.is_none() && may_trade(&proposal.command);
        leading
            .proposals
            .send((proposal.clone(), done))
            .map_err(|_| OrderError::Task("the proposer stopped".into()))?;
        if trades {
            // (A stock seen before costs no new name.)
            match leading.trading.get_mut(&name) {
                Some(last) => *last = outcome.clone(),
                None => {
                    leading.trading.insert(name.clone(), outcome.clone());
                }
            }
        }
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
        if let Some(key) = key {
            if leading.in_flight.len() >= leading.forget_at {
                leading
                    .in_flight
                    .retain(|_, (_, outcome)| outcome.borrow().is_none());
                leading.forget_at = FINISHED_KEPT.max(2 * leading.in_flight.len());
            }
            leading.in_flight.insert(key, (proposal, outcome.clone()));
        }
        Ok(Proposed::Now(outcome))
    }

    /// Whether every command this leader took is answered: committed and applied and, with
    /// `catalog`, in the catalog.
    pub(super) fn drained(&self, catalog: bool) -> bool {
        let all_applied = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.last_applied.map(|id| id.index) == metrics.last_log_index
        };
        if !catalog {
            return all_applied;
        }
        let in_catalog = match self.leading().as_ref() {
            Some(sequencer) => sequencer.progress.borrow().applied,
            None => return false,
        };
        all_applied && in_catalog >= self.book().applied()
    }

    /// Takes over each term this replica is elected in, and lets go of it when it is not.
    /// It watches openraft's server metrics, which change only with the vote, the state or
    /// the membership (its full metrics change with every entry).
    pub(super) async fn follow_leadership(self: Arc<Self>) {
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
                    // What the catalog did for this leader's term says nothing of the next.
                    self.catalog_failing.store(false, Ordering::Release);
                }
            }
            let led = self.leading_term.load(Ordering::Acquire);
            let changed = match take_over_again_after(term, led) {
                Some(retry) => tokio::time::timeout(retry, metrics.changed()).await.ok(),
                None => Some(metrics.changed().await),
            };
            if let Some(Err(_)) = changed {
                return;
            }
        }
    }

    /// Prepares to take commands in `term`: confirms the leadership with every earlier
    /// entry committed and in the book, brings the catalog up to date under this term (which
    /// fences older leaders out of it) and projects the house from it.
    pub(super) async fn take_over(self: &Arc<Self>, term: u64) {
        let prepared = self.prepare_leading(term).await.and_then(|prepared| {
            // Its catalog calls take a while: a replica that lost the term meanwhile (and may
            // lead a newer one) does not start taking commands in it.
            match self.leader_term() {
                Some(leading) if leading == term => Ok(prepared),
                _ => Err(self.not_leader()),
            }
        });
        match prepared {
            Ok((leading, progress)) => {
                let (requests, waiting) = mpsc::unbounded_channel();
                let settled = requests.downgrade();
                let task = tokio::spawn(self.clone().sequence(term, leading, waiting, settled));
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
    /// it over, is refused before it is proposed, as one asked for then would be. `settled`
    /// is its own queue, on which it tells itself that a held stock's quote has settled.
    pub(super) async fn sequence(
        self: Arc<Self>,
        term: u64,
        mut leading: Leading,
        mut requests: mpsc::UnboundedReceiver<Request>,
        settled: mpsc::WeakUnboundedSender<Request>,
    ) {
        while let Some(request) = requests.recv().await {
            match request {
                Request::Propose(asked) => self.take(term, &mut leading, asked, &settled),
                Request::Pending { key, reply } => {
                    let proposed = leading
                        .in_flight
                        .get(&key)
                        .is_some_and(|(_, outcome)| outcome.borrow().is_none());
                    let held = || {
                        leading
                            .held
                            .values()
                            .flatten()
                            .any(|asked| asked.submission.key.as_deref() == Some(key.as_str()))
                    };
                    let _ = reply.send(proposed || held());
                }
                Request::Settled { stock } => {
                    let waiting = leading.held.remove(&stock).unwrap_or_default();
                    for asked in released(waiting) {
                        self.take(term, &mut leading, asked, &settled);
                    }
                }
            }
        }
    }

    /// Answers `asked` now, or holds it while its stock's quote may be about to change: a
    /// command whose answer rests on the quote waits until the stock's last command that may
    /// trade on the book is applied, so that the quote it is checked against and executes at
    /// is the book's last price where it stands in the log. Later commands of the stock, and
    /// later commands under a held command's key, wait behind it in the order they came, so
    /// that a stream of book orders cannot hold it forever and a key's commands keep theirs.
    fn take(
        &self,
        term: u64,
        leading: &mut Leading,
        mut asked: Asked,
        settled: &mpsc::WeakUnboundedSender<Request>,
    ) {
        let proposable = match self.leader_term() {
            Some(led) if led == term => self.not_handing_over(),
            _ => Err(self.not_leader()),
        };
        if let Err(refused) = proposable {
            let _ = asked.reply.send(Err(refused));
            return;
        }
        if !leading.held.is_empty() {
            if asked.stock.is_none() {
                asked.stock = self.stock_of(&asked.submission);
            }
            // Behind an earlier command under its key, wherever that waits; else behind its
            // stock's.
            let key = asked.submission.key.as_deref();
            let under_key = key.and_then(|key| {
                leading.held.iter().find_map(|(stock, queue)| {
                    let held = |earlier: &Asked| earlier.submission.key.as_deref() == Some(key);
                    queue.iter().any(held).then(|| stock.clone())
                })
            });
            let behind = under_key.or_else(|| {
                (asked.stock.as_ref())
                    .filter(|stock| leading.held.contains_key(*stock))
                    .cloned()
            });
            if let Some(queue) = behind.and_then(|stock| leading.held.get_mut(&stock)) {
                queue.push_back(asked);
                return;
            }
        }
        if asked.needs_quote() {
            // (Only a new order needs the quote, and it names its stock.)
            let stock = asked.submission.name.as_deref();
            match stock
                .and_then(|stock| leading.trading.get(stock))
                .map(Quote::of)
            {
                Some(Quote::Moving(mut outcome)) => {
                    let stock = stock.unwrap_or_default().to_owned();
                    leading.held.insert(stock.clone(), VecDeque::from([asked]));
                    let settled = settled.clone();
                    tokio::spawn(async move {
                        // Known (or its proposer gone): `take` tells which.
                        let _ = outcome.wait_for(Option::is_some).await;
                        if let Some(requests) = settled.upgrade() {
                            let _ = requests.send(Request::Settled { stock });
                        }
                    });
                    return;
                }
                Some(Quote::Unknown) => {
                    // That command may yet be committed by another leader, before this one in
                    // the log: nothing is proposed, and the caller tries elsewhere.
                    let _ = asked.reply.send(Err(OrderError::NotReady));
                    return;
                }
                Some(Quote::Settled) | None => {}
            }
        }
        let Asked {
            submission,
            request_id,
            reply,
            ..
        } = asked;
        let _ = reply.send(self.propose(leading, submission, request_id));
    }

    /// The stock `submission` is for: a new order names it; a modify or cancel, its target's
    /// (read from the log, which the sequencer does only while some stock's commands are held).
    fn stock_of(&self, submission: &Submission) -> Option<String> {
        match (&submission.name, &submission.command) {
            (Some(name), _) => Some(name.clone()),
            (None, Command::Modify { target, .. } | Command::Cancel { target }) => {
                self.get(*target).ok().flatten().map(|entry| entry.name)
            }
            _ => None,
        }
    }

    /// The leader's state for `term`, and its catalog applier's progress.
    pub(super) async fn prepare_leading(
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
            forget_at: FINISHED_KEPT,
            trading: HashMap::new(),
            held: HashMap::new(),
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
    pub(super) async fn write_expiries(self: Arc<Self>) {
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

    /// The stock of a modify's or cancel's target, an entry of the log. A user's order only
    /// its owner (`user`) may change; an anonymous one anybody may. Whether the target is an
    /// open limit order the book decides when it applies the command, so that a refused
    /// command is in the log (the audit trail) like any other.
    pub(super) fn target_stock(
        &self,
        command: &Command,
        user: Option<u64>,
    ) -> Result<String, OrderError> {
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
}

/// Proposes the commands `waiting` brings, in order, as entries of up to
/// [`consensus::MAX_PROPOSAL`] commands, with at most [`PROPOSALS_IN_FLIGHT`] entries proposed
/// and not yet applied; each command is answered its number once its entry is applied.
pub(super) async fn propose_entries(raft: Raft, mut waiting: mpsc::UnboundedReceiver<Pending>) {
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
                    answer.send_replace(Some(Err(cause.clone())));
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
                answer.send_replace(Some(first.clone().map(|first| first + offset)));
            }
        });
    }
}

/// The term a replica leads, from its server metrics; `None` while it does not lead.
pub(super) fn led_term(
    metrics: &openraft::metrics::RaftServerMetrics<u64, openraft::BasicNode>,
) -> Option<u64> {
    (metrics.state == ServerState::Leader).then_some(metrics.vote.leader_id.term)
}

/// The house quantity after `command`, or why the leader refuses it: a market buy takes
/// shares out of the house, a market sell puts them in; the book, not the house, takes the
/// other side of everything else.
pub(super) fn project(command: &Command, quantity: u64) -> Result<u64, Rejection> {
    match *command {
        Command::Place {
            side,
            quantity: count,
            limit: None,
            ..
        } => {
            let count = u64::from(count);
            let (after, refusal) = match side {
                Side::Buy => (quantity.checked_sub(count), Rejection::InsufficientQuantity),
                Side::Sell => (quantity.checked_add(count), Rejection::QuantityOverflow),
            };
            after.ok_or(refusal)
        }
        _ => Ok(quantity),
    }
}

/// When [`Replica::follow_leadership`] tries a take-over again even if the server metrics do
/// not change: while this replica leads `term` and has not taken it over (`taken`: the term it
/// last took over), because the catalog failed or because what it took over was an earlier
/// term it led before it was elected again. A stable group's metrics never change, so waiting
/// for them alone would leave the leader refusing every command for good.
fn take_over_again_after(term: Option<u64>, taken: u64) -> Option<Duration> {
    term.filter(|&term| term != taken).map(|_| CATALOG_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_led_and_not_taken_over_is_taken_over_again_shortly() {
        assert_eq!(take_over_again_after(Some(7), 0), Some(CATALOG_RETRY));
        // Re-elected after it took over an earlier term: the catalog failing now is tried
        // again too.
        assert_eq!(take_over_again_after(Some(7), 6), Some(CATALOG_RETRY));
        assert_eq!(take_over_again_after(Some(7), 7), None);
        assert_eq!(take_over_again_after(None, 6), None);
    }
}
