//! When a replica stands for election: Raft's pre-vote (the dissertation's §9.6), which
//! openraft 0.9 lacks. openraft's own election timer is off (`enable_elect: false`); instead a
//! replica that has not heard from a leader for its election timeout first asks the others
//! whether they would vote for it, and triggers an election only when a majority would.
//!
//! Without it, a replica back from a hang (SIGSTOP, a long pause) finds its timer long expired,
//! stands at once in a new term and, since the leader grants a vote to an up-to-date candidate
//! and steps down on seeing the higher term, deposes a healthy leader: every hung follower
//! cost a leader change. With it, the others refuse while they hear from their leader, and the
//! term only grows when the leader is really gone.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::{BasicNode, LogId, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{election_timeout, CatchUp, Raft, HEARTBEAT, VOTER_LEASE};
use crate::catalog::Catalog;

/// How recently a replica must have heard from a leader (or, being the leader, from a
/// majority) to refuse a pre-vote: as long as openraft's voters refuse votes, so that a
/// candidate granted pre-votes is granted votes too. It is a heartbeat shorter than the
/// shortest election timeout: a voter that heard the lost leader's last heartbeat a moment
/// after the first candidate did still grants it, where the full timeout had it refuse, and
/// the next candidate in rank was elected instead (one more leader change, the handover back).
pub const LEASE: Duration = VOTER_LEASE;
const _: () = assert!(LEASE.as_millis() + HEARTBEAT.as_millis() <= election_timeout(0).as_millis());

/// "Would you vote for me?": a candidate's next term and its last log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreVote {
    pub candidate: u64,
    pub term: u64,
    pub last_log: Option<LogId<u64>>,
}

/// "The leader of `term` hands the leadership to `to`": sent to every voter once `to` holds the
/// leader's whole log and the leader's heartbeats have stopped. To `to` it is Raft's
/// TimeoutNow (the dissertation's §3.10), "stand now"; the others let it stand first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub leader: u64,
    pub term: u64,
    pub to: u64,
}

/// How long a handover heard of holds: as long as the leader waits for its voter to be
/// elected before it takes up its heartbeats again.
const HANDOVER_HOLDS: Duration = super::handover::ELECTED_DEADLINE;

/// A handover this replica heard of from its leader, and when.
#[derive(Debug, Clone, Copy)]
struct HandoverHeard {
    term: u64,
    to: u64,
    at: Instant,
}

/// How a replica asks another what elections and handovers need to know: over HTTP, or in
/// tests in memory. `None`: no answer (down, hung, unreachable), which counts as "no".
pub trait ElectionTransport: Clone + Send + Sync + 'static {
    /// Its pre-vote for `request`.
    fn pre_vote(
        &self,
        target: u64,
        node: &BasicNode,
        request: &PreVote,
    ) -> impl Future<Output = Option<bool>> + Send;

    /// Whether it reaches the catalog now (see [`Elections::reaches_catalog`]).
    fn reaches_catalog(
        &self,
        target: u64,
        node: &BasicNode,
    ) -> impl Future<Output = Option<bool>> + Send;

    /// Tells it of a handover (see [`Elections::heard_of_handover`]); whether it took it.
    fn announce_handover(
        &self,
        target: u64,
        node: &BasicNode,
        request: &Handover,
    ) -> impl Future<Output = Option<bool>> + Send;
}

/// One replica's side of elections: when it last heard from a leader, its answers to others'
/// pre-votes, and the task that stands when the leader is lost.
pub struct Elections {
    raft: Raft,
    id: u64,
    last_contact: Mutex<Instant>,
    /// While this replica, leading, hands the leadership over (`handover.rs`): the voter it
    /// hands it to; 0 otherwise.
    handing_to: AtomicU64,
    /// The handover this replica's leader announced (see [`Self::heard_of_handover`]).
    handover_heard: Mutex<Option<HandoverHeard>>,
    /// Wakes the standing task when it is handed the leadership.
    stand_now: Notify,
    /// How far this replica, following, has caught up with its leader.
    pub catch_up: CatchUp,
    /// The catalog, as this replica would reach it leading.
    catalog: Arc<dyn Catalog>,
}

impl Elections {
    /// The elections of replica `id`, which would apply its log to `catalog` leading.
    pub fn new(raft: Raft, id: u64, catalog: Arc<dyn Catalog>) -> Arc<Self> {
        Arc::new(Self {
            raft,
            id,
            last_contact: Mutex::new(Instant::now()),
            handing_to: AtomicU64::new(0),
            handover_heard: Mutex::new(None),
            stand_now: Notify::new(),
            catch_up: CatchUp::default(),
            catalog,
        })
    }

    /// Whether this replica reaches the catalog now (it answers a snapshot, as a takeover
    /// asks first): a leader that cannot asks this before it hands the leadership here, and
    /// so does a leader handing over by preference (`handover.rs`).
    pub async fn reaches_catalog(&self) -> bool {
        self.catalog.snapshot().await.is_ok()
    }

    /// The voter this leader is handing the leadership to, if it is.
    pub fn handing_to(&self) -> Option<u64> {
        Some(self.handing_to.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// Starts (`Some`) or ends (`None`) a handover: while it lasts this replica grants its
    /// pre-vote to that voter alone.
    pub fn hand_to(&self, voter: Option<u64>) {
        self.handing_to.store(voter.unwrap_or(0), Ordering::Release);
    }

    /// Takes `request` from the leader this replica follows in that term (from anyone else it
    /// is refused), for [`HANDOVER_HOLDS`]. Handed the leadership, this replica stands at
    /// once, without waiting for its election timeout, and asks again each heartbeat while a
    /// majority has not granted its pre-vote (the leader grants it at once; in a group of five
    /// the others once their leases ran out). Any other voter neither stands nor grants its
    /// pre-vote to anyone else meanwhile. Without it, a voter of higher rank than the one handed
    /// the leadership stood first and could win: the leadership could pass between two
    /// replicas that cannot reach the catalog.
    pub fn heard_of_handover(&self, request: &Handover) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let follows = metrics.state != ServerState::Leader
            && metrics.current_term == request.term
            && metrics.current_leader == Some(request.leader)
            && metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.id);
        if follows {
            *self.heard() = Some(HandoverHeard {
                term: request.term,
                to: request.to,
                at: Instant::now(),
            });
            if request.to == self.id {
                self.stand_now.notify_one();
            }
        }
        follows
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Option<HandoverHeard>> {
        self.handover_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The voter this replica's leader of `term` is handing the leadership to, lately.
    fn handover_in(&self, term: u64) -> Option<u64> {
        let heard = (*self.heard())?;
        (heard.term == term && heard.at.elapsed() < HANDOVER_HOLDS).then_some(heard.to)
    }

    /// Records that a leader was heard from (an append it sent was accepted) or a vote was
    /// granted: the election timer starts again. A leader heard from well after it announced a
    /// handover has given it up (or the announcement came late): it is forgotten.
    pub fn heard_from_leader(&self) {
        *self.contact() = Instant::now();
        let mut heard = self.heard();
        if heard.is_some_and(|heard| heard.at.elapsed() > 2 * HEARTBEAT) {
            *heard = None;
        }
    }

    fn contact(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_contact.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_contact(&self) -> Duration {
        self.contact().elapsed()
    }

    /// Whether this replica would vote for `request`'s candidate: it has lost its leader too
    /// (or, leading, no majority answered it lately), the candidate's term is not behind its
    /// own, and the candidate's log is at least as up to date as its own.
    /// A leader handing over grants it at once to the voter it hands over to, and to no other.
    pub async fn answer(&self, request: &PreVote) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let leading = metrics.state == ServerState::Leader;
        if let Some(to) = self.handing_to().filter(|_| leading) {
            return request.candidate == to
                && request.term > metrics.current_term
                && request.last_log >= self.last_log_id();
        }
        if self
            .handover_in(metrics.current_term)
            .is_some_and(|to| to != request.candidate)
        {
            return false;
        }
        let still_led = if leading {
            metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) < LEASE.as_millis())
        } else {
            self.since_contact() < LEASE
        };
        if still_led || request.term < metrics.current_term {
            return false;
        }
        request.last_log >= self.last_log_id()
    }

    /// The last entry of this replica's log as openraft sees it (what its own vote compares),
    /// never waiting for the log: a snapshot being installed holds the log for as long as it
    /// takes, and a pre-vote answered late counts as refused.
    fn last_log_id(&self) -> Option<LogId<u64>> {
        self.raft.data_metrics().borrow().last_log
    }

    /// Stands for election whenever no leader was heard from for the election timeout and a
    /// majority of the voters would vote for this replica (of each voter set, while the
    /// membership changes). Learners never stand. Runs until aborted.
    pub async fn stand_when_leader_lost(self: Arc<Self>, transport: impl ElectionTransport) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_attempt = Instant::now();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.stand_now.notified() => {}
            }
            // The server metrics change only with the vote, state or membership: no copy of
            // the per-entry metrics every tick.
            let metrics = self.raft.server_metrics().borrow().clone();
            let membership = metrics.membership_config.membership().clone();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let handover = self.handover_in(metrics.vote.leader_id.term);
            let told = handover == Some(self.id);
            // Ranked among the voters of the day, the highest id first.
            let timeout = election_timeout(voters.range(self.id + 1..).count() as u64);
            if metrics.state == ServerState::Leader
                || !voters.contains(&self.id)
                || handover.is_some_and(|to| to != self.id)
                || (!told && (self.since_contact() < timeout || Instant::now() < next_attempt))
            {
                continue;
            }
            // Whatever comes of it, the next attempt waits another timeout (handed the
            // leadership, the next tick). (Not as a contact with a leader: a replica that
            // answered others' pre-votes by its own attempts would refuse them all, and two
            // could keep each other from ever standing.)
            next_attempt = Instant::now() + timeout;
            let request = PreVote {
                candidate: self.id,
                term: metrics.vote.leader_id.term + 1,
                last_log: self.last_log_id(),
            };
            let mut asks: FuturesUnordered<_> = membership
                .nodes()
                .filter(|(id, _)| **id != self.id && voters.contains(id))
                .map(|(id, node)| async { (*id, transport.pre_vote(*id, node, &request).await) })
                .collect();
            let configs = membership.get_joint_config();
            let won = |granted: &BTreeSet<u64>| {
                configs
                    .iter()
                    .all(|config| config.intersection(granted).count() * 2 > config.len())
            };
            // Decided as soon as a majority granted: a hung voter is not waited for.
            let mut granted = BTreeSet::from([self.id]);
            while !won(&granted) {
                match asks.next().await {
                    Some((voter, Some(true))) => {
                        granted.insert(voter);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            drop(asks);
            if won(&granted) {
                tracing::info!(
                    term = request.term,
                    granted = granted.len(),
                    "standing for election"
                );
                if self.raft.trigger().elect().await.is_err() {
                    return;
                }
                // Standing once is what the handover asked for.
                *self.heard() = None;
            } else {
                tracing::debug!(
                    granted = granted.len(),
                    "pre-vote refused: a leader is still followed"
                );
            }
        }
    }
}
