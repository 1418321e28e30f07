//! Linearizable reads: served on the leader's lease (`lease.rs`) when it holds one, with no
//! call between replicas; otherwise they share a leadership check. openraft's read index
//! (`Raft::ensure_linearizable`) sends a heartbeat to every follower per call, so one check
//! per read would cost two calls between replicas for every read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, RaftMetrics, StorageError};
use tokio::sync::{watch, Notify};

use super::lease::{self, LeaseRead};
use super::{Lease, LogStore, Raft};

/// How long a read on the lease of a leader just elected waits for its book to apply the
/// entries before it. Past it, the read takes a leadership check instead.
const LEASE_APPLY_WAIT: Duration = Duration::from_millis(500);

/// How long one leadership check (a read-index round and the wait for the book to apply
/// through it) may take before the reads waiting for it are refused.
const CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// How recently a majority must have accepted an append sent by a leader whose check waits
/// for their acknowledgements: a round trip (at most the append's 1 s deadline) and a little.
const ANSWERED_LATELY: Duration = Duration::from_millis(1500);

/// What a replica that starts as the leader of its term must have applied before it serves a
/// read. openraft resumes a leader whose vote is committed, with no election and no blank
/// entry, so what it acknowledged before it stopped is in its log but may not be in its book
/// (restored from an older snapshot), and neither way of confirming a read covers it: the
/// lease's "now" relies on every answer of this term coming after the book applied it, and
/// openraft's read index is the term's first entry, or the commit point learned since. Every
/// entry of its log is its term's to commit (only a newer term's leader could cut any), so
/// the book reaches the floor while the term lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFloor {
    /// The term it leads.
    pub term: u64,
    /// The last entry of its log when it started.
    pub index: u64,
}

impl BootFloor {
    /// The floor of replica `id` that starts on `store`: `None` unless its vote is a committed
    /// one for itself.
    pub async fn of(store: &LogStore, id: u64) -> Result<Option<Self>, StorageError<u64>> {
        let vote = store.clone().read_vote().await?;
        Ok(vote
            .filter(|vote| vote.is_committed() && vote.leader_id().voted_for() == Some(id))
            .map(|vote| Self {
                term: vote.leader_id().term,
                index: store.last_log_id().map_or(0, |last| last.index),
            }))
    }
}

/// The leadership checks of one replica, run one at a time by a task of their own.
pub struct SharedReads {
    raft: Raft,
    lease: Arc<Lease>,
    /// Where a leader restarted within its term may serve reads from, if this replica started
    /// as one.
    boot_floor: Option<BootFloor>,
    /// Whether `boot_floor` no longer holds reads back: the book applied through it, or a
    /// newer term began.
    floor_passed: AtomicBool,
    rounds: watch::Sender<Rounds>,
    wanted: Arc<Notify>,
    checker: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rounds {
    started: u64,
    finished: u64,
    /// Whether the last finished round confirmed the leadership.
    confirmed: bool,
}

impl SharedReads {
    pub fn start(raft: Raft, lease: Arc<Lease>, boot_floor: Option<BootFloor>) -> Self {
        let (rounds, _) = watch::channel(Rounds::default());
        let wanted = Arc::new(Notify::new());
        let checker = tokio::spawn(check_when_wanted(
            raft.clone(),
            lease.clone(),
            rounds.clone(),
            wanted.clone(),
        ));
        Self {
            raft,
            lease,
            floor_passed: AtomicBool::new(boot_floor.is_none()),
            boot_floor,
            rounds,
            wanted,
            checker,
        }
    }

    /// Whether this replica leads and its state machine holds every entry committed before the
    /// call: on the lease, at once (or, just elected, once the state machine applied the
    /// entries before its term's first); without one, the answer of a check that started
    /// after the call (a heartbeat round a majority answered in this term, then the state
    /// machine applied through the commit point it learned), shared with every read waiting
    /// for it. Either way only past the [`BootFloor`], if this replica started as a leader.
    pub async fn confirm(&self) -> bool {
        if !self.holds_boot_log().await {
            return false;
        }
        let on_lease = self.lease.read(&self.raft.metrics().borrow());
        match on_lease {
            Some(LeaseRead::Now) => return true,
            Some(LeaseRead::After(index)) => {
                let applied = self
                    .raft
                    .wait(Some(LEASE_APPLY_WAIT))
                    .applied_index_at_least(Some(index), "a read on the lease")
                    .await;
                if applied.is_ok() {
                    return true;
                }
            }
            None => {}
        }
        let mut rounds = self.rounds.subscribe();
        let needed = rounds.borrow().started + 1;
        self.wanted.notify_one();
        rounds
            .wait_for(|r| r.finished >= needed)
            .await
            .is_ok_and(|r| r.confirmed)
    }

    /// Whether reads are past the [`BootFloor`], waiting a while for the book to apply through
    /// it while the term this replica started in lasts.
    async fn holds_boot_log(&self) -> bool {
        let Some(floor) = self.boot_floor else {
            return true;
        };
        if self.past_boot_floor(&self.raft.metrics().borrow()) {
            return true;
        }
        let applied = self
            .raft
            .wait(Some(LEASE_APPLY_WAIT))
            .applied_index_at_least(Some(floor.index), "a read after a restart")
            .await;
        if applied.is_err() {
            return false;
        }
        self.floor_passed.store(true, Ordering::Release);
        true
    }

    /// Whether, as `metrics` show this replica, its reads are past its [`BootFloor`] (it has
    /// none, its book applied through it, or a newer term began: that term's leader's blank
    /// entry comes after everything before it, which the lease and the read index cover).
    pub fn past_boot_floor(&self, metrics: &RaftMetrics<u64, BasicNode>) -> bool {
        let Some(floor) = self.boot_floor else {
            return true;
        };
        if self.floor_passed.load(Ordering::Acquire) {
            return true;
        }
        let applied = metrics.last_applied.map_or(0, |applied| applied.index);
        let past = metrics.vote.leader_id().term > floor.term || applied >= floor.index;
        if past {
            self.floor_passed.store(true, Ordering::Release);
        }
        past
    }

    /// How many checks have run, for tests.
    #[cfg(test)]
    pub fn rounds(&self) -> u64 {
        self.rounds.borrow().finished
    }
}

impl Drop for SharedReads {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

/// Runs a check whenever a read wants one; the reads that arrive during a check share the next.
async fn check_when_wanted(
    raft: Raft,
    lease: Arc<Lease>,
    rounds: watch::Sender<Rounds>,
    wanted: Arc<Notify>,
) {
    loop {
        wanted.notified().await;
        let round = rounds.borrow().started + 1;
        rounds.send_modify(|r| r.started = round);
        // Bounded: openraft waits without a deadline for the book to apply through the read
        // index, which a leader that lost its followers after a check confirmed it never does.
        let checked = tokio::time::timeout(CHECK_DEADLINE, check(&raft, &lease)).await;
        let confirmed = match checked {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!("leadership not confirmed: {e}");
                false
            }
            Err(_) => {
                tracing::debug!("leadership not confirmed within {CHECK_DEADLINE:?}");
                false
            }
        };
        rounds.send_modify(|r| {
            r.finished = round;
            r.confirmed = confirmed;
        });
    }
}

/// One leadership check, for the reads that arrived before it began: openraft's read index,
/// or, where that fails, the same on the acknowledgements the lease counts. openraft gives
/// each of its check's heartbeats one heartbeat interval (50 ms) to be answered, so over a
/// link slower than that (or behind a follower's fsync) it never confirms, while the lease
/// lapses between acknowledgements once a round trip nears [`READ_LEASE`](super::lease::READ_LEASE).
pub(super) async fn check(raft: &Raft, lease: &Lease) -> Result<(), String> {
    let since = tokio::time::Instant::now();
    let mut metrics = raft.metrics();
    let (term, last) = {
        let now = metrics.borrow_and_update();
        (lease::leading_term(&now), now.last_log_index)
    };
    let Some(term) = term else {
        return Err("not leading".into());
    };
    let failed = match raft.ensure_linearizable().await {
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    // A leader that no majority has answered lately (cut off, its followers down) is refused
    // at once: nothing would answer the wait below before the check's deadline.
    let lately = since.checked_sub(ANSWERED_LATELY).unwrap_or(since);
    if !lease.acked_since(&metrics.borrow(), term, lately) {
        return Err(failed);
    }
    raft.trigger()
        .heartbeat()
        .await
        .map_err(|e| e.to_string())?;
    if !lease.wait_confirmed_since(&mut metrics, term, since).await {
        return Err(format!("{failed}; no longer leading term {term}"));
    }
    // Everything this leader acknowledged before the check is at or before `last` (and so is
    // its term's first entry, after every entry of earlier terms).
    raft.wait(None)
        .applied_index_at_least(last, "a leadership check")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
