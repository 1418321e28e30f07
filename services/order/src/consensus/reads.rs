//! Linearizable reads: served on the leader's lease (`lease.rs`) when it holds one, with no
//! call between replicas; otherwise they share a leadership check. openraft's read index
//! (`Raft::ensure_linearizable`) sends a heartbeat to every follower per call, so one check
//! per read would cost two calls between replicas for every read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::{watch, Notify};

use super::lease::LeaseRead;
use super::{Lease, Raft};

/// How long a read on the lease of a leader just elected waits for its book to apply the
/// entries before it. Past it, the read takes a leadership check instead.
const LEASE_APPLY_WAIT: Duration = Duration::from_millis(500);

/// The leadership checks of one replica, run one at a time by a task of their own.
pub struct SharedReads {
    raft: Raft,
    lease: Arc<Lease>,
    /// The last entry of this replica's log when it started. A leader that restarts within its
    /// term (openraft resumes it: no election, no blank entry) may have acknowledged entries
    /// up to here in its earlier life, and neither its lease (whose reads rely on its answers
    /// coming after its book applied what they answer) nor openraft's read index (its term's
    /// first entry, or the commit point it has learned since the restart) covers them.
    boot_floor: u64,
    /// Whether the book has applied through `boot_floor`: from then on it only grows.
    floor_applied: AtomicBool,
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
    pub fn start(raft: Raft, lease: Arc<Lease>, boot_floor: u64) -> Self {
        let (rounds, _) = watch::channel(Rounds::default());
        let wanted = Arc::new(Notify::new());
        let checker = tokio::spawn(check_when_wanted(
            raft.clone(),
            rounds.clone(),
            wanted.clone(),
        ));
        Self {
            raft,
            lease,
            boot_floor,
            floor_applied: AtomicBool::new(false),
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
    /// for it. Either way only once the state machine holds its log as it was when this
    /// replica started (`boot_floor`).
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

    /// Whether the state machine holds the log as it was when this replica started, waiting
    /// for it a while if this replica leads (one that does not is refused by the checks after,
    /// at once).
    async fn holds_boot_log(&self) -> bool {
        if self.floor_applied.load(Ordering::Acquire) {
            return true;
        }
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return true;
        }
        let applied = self
            .raft
            .wait(Some(LEASE_APPLY_WAIT))
            .applied_index_at_least(Some(self.boot_floor), "a read after a restart")
            .await;
        if applied.is_err() {
            return false;
        }
        self.floor_applied.store(true, Ordering::Release);
        true
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
async fn check_when_wanted(raft: Raft, rounds: watch::Sender<Rounds>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let round = rounds.borrow().started + 1;
        rounds.send_modify(|r| r.started = round);
        let confirmed = match raft.ensure_linearizable().await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("leadership not confirmed: {e}");
                false
            }
        };
        rounds.send_modify(|r| {
            r.finished = round;
            r.confirmed = confirmed;
        });
    }
}
