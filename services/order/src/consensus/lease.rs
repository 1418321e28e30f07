//! The leader's lease (the Raft dissertation's §6.4.1): reads served without a round between
//! replicas while no other leader can exist.
//!
//! openraft's voters refuse every vote for [`VOTER_LEASE`] after they accepted an append
//! (openraft's `leader_lease`, counted from when they got it). So once a majority of every
//! voter set has accepted appends this leader sent at or after `t`, no other replica can be
//! elected before `t + VOTER_LEASE`: each candidate needs one of those votes. The leader
//! notes when it sent each append that a voter accepted ([`Outgoing`](super::Outgoing), around the network
//! openraft calls) and holds its lease for [`READ_LEASE`] after the newest time a majority
//! acknowledged. Under load every commit round renews it; idle, the heartbeats do (every
//! 75 ms). What a read on the lease must wait for is [`LeaseRead`]'s.
//!
//! What this assumes, beyond what the read index needs: the replicas' clocks advance at the
//! same rate within the margin (`VOTER_LEASE - READ_LEASE`, 100 ms in 350), as etcd's and
//! TiKV's lease reads do. The leader's own vote is not fenced by openraft; it is by the
//! pre-vote (`election.rs`): a leader refuses every pre-vote while a majority acknowledged it
//! lately, and no replica stands without a majority of pre-votes, so no election reaches it
//! while it holds its lease. The one election it starts itself, a handover, is waited out
//! by the caller (`Replica::confirm_leadership` refuses reads while it lasts).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics, ServerState};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::VOTER_LEASE;

/// How long after a majority's acknowledgement the leader serves reads on its own.
pub const READ_LEASE: Duration = Duration::from_millis(250);

const _: () = assert!(READ_LEASE.as_millis() + 100 <= VOTER_LEASE.as_millis());

/// A read on the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRead {
    /// The book applied an entry of this leader's term, so every entry of earlier terms (all
    /// before its blank entry), and each entry of its own term it acknowledged (it answers
    /// after its book applied them): the book as it stands holds every acknowledged order,
    /// and it only grows. (Not for a leader restarted within its term, which acknowledged
    /// entries in its earlier life: `reads.rs` holds its reads to its `BootFloor` first.)
    Now,
    /// Just elected: once the book applied this index (its last entry, at or past the commit
    /// point).
    After(u64),
}

/// Per replica, the send time of the newest append it accepted, and the leader's term then.
#[derive(Debug, Default)]
pub struct Lease {
    acks: Mutex<HashMap<u64, (u64, Instant)>>,
    /// Woken at each acknowledgement, for [`Lease::wait_confirmed_since`].
    acked: Notify,
}

impl Lease {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Notes that `voter` accepted an append of `term` sent at `sent`.
    pub(super) fn acked(&self, voter: u64, term: u64, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let newest = acks.entry(voter).or_insert((term, sent));
        *newest = (*newest).max((term, sent));
        drop(acks);
        self.acked.notify_waiters();
    }

    /// Waits until a majority of every voter set has accepted appends this replica sent,
    /// leading `term`, at or after `since`; `false` once it no longer leads that term. Then
    /// no other replica led at `since` (each election needs a vote of one of those voters,
    /// and a voter that has voted in a newer term refuses the appends of an older one): a
    /// read index (the dissertation's §6.4) on the acknowledgements the lease counts, with
    /// no deadline per call, for links slower than openraft's own check allows.
    pub async fn wait_confirmed_since(
        &self,
        metrics: &mut watch::Receiver<RaftMetrics<u64, BasicNode>>,
        term: u64,
        since: Instant,
    ) -> bool {
        loop {
            let acked = self.acked.notified();
            tokio::pin!(acked);
            acked.as_mut().enable();
            {
                let metrics = metrics.borrow_and_update();
                if leading_term(&metrics) != Some(term) {
                    return false;
                }
                if self.acked_since(&metrics, term, since) {
                    return true;
                }
            }
            tokio::select! {
                () = &mut acked => {}
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Whether a majority of every voter set has accepted appends `metrics`' replica sent in
    /// `term` at or after `since`.
    pub fn acked_since(
        &self,
        metrics: &RaftMetrics<u64, BasicNode>,
        term: u64,
        since: Instant,
    ) -> bool {
        let configs = metrics.membership_config.membership().get_joint_config();
        let acked = self.quorum_acked(metrics.id, term, configs, Instant::now());
        acked.is_some_and(|at| at >= since)
    }

    /// How a read may be served on the lease, if `metrics`' replica leads and holds its lease
    /// now (`None`: it must confirm its leadership by a round).
    pub fn read(&self, metrics: &RaftMetrics<u64, BasicNode>) -> Option<LeaseRead> {
        let term = leading_term(metrics)?;
        let now = Instant::now();
        let acked = self.quorum_acked(
            metrics.id,
            term,
            metrics.membership_config.membership().get_joint_config(),
            now,
        )?;
        if now >= acked + READ_LEASE {
            return None;
        }
        match metrics.last_applied {
            Some(applied) if applied.leader_id.term == term => Some(LeaseRead::Now),
            _ => metrics.last_log_index.map(LeaseRead::After),
        }
    }

    /// The newest time that a majority of each voter set acknowledged in `term` (the leader
    /// counting as acknowledging `now`).
    fn quorum_acked(
        &self,
        leader: u64,
        term: u64,
        configs: &[BTreeSet<u64>],
        now: Instant,
    ) -> Option<Instant> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let mut oldest: Option<Instant> = None;
        for voters in configs {
            let mut times: Vec<Instant> = voters
                .iter()
                .filter_map(|&voter| match acks.get(&voter) {
                    _ if voter == leader => Some(now),
                    Some(&(acked_term, sent)) if acked_term == term => Some(sent),
                    _ => None,
                })
                .collect();
            let majority = voters.len() / 2 + 1;
            if times.len() < majority {
                return None;
            }
            times.sort_unstable_by(|a, b| b.cmp(a));
            let acked = times[majority - 1];
            oldest = Some(oldest.map_or(acked, |o| o.min(acked)));
        }
        oldest
    }
}

/// The term `metrics`' replica leads, elected.
pub fn leading_term(metrics: &RaftMetrics<u64, BasicNode>) -> Option<u64> {
    let leads = metrics.state == ServerState::Leader
        && metrics.current_leader == Some(metrics.id)
        && metrics.vote.is_committed();
    leads.then(|| metrics.vote.leader_id().term)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership, Vote};

    use super::*;

    #[test]
    fn the_lease_runs_from_the_newest_time_a_majority_of_every_voter_set_acknowledged() {
        let lease = Lease::new();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let now = at(1000);
        let three: Vec<BTreeSet<u64>> = vec![[1, 2, 3].into()];
        // Leader 1 alone is no majority of three.
        assert_eq!(lease.quorum_acked(1, 5, &three, now), None);
        lease.acked(2, 5, at(100));
        lease.acked(3, 5, at(300));
        // The newest acknowledgement counts: 3's at 300 with the leader's own.
        assert_eq!(lease.quorum_acked(1, 5, &three, now), Some(at(300)));
        // An older answer arriving late moves nothing back.
        lease.acked(3, 5, at(200));
        assert_eq!(lease.quorum_acked(1, 5, &three, now), Some(at(300)));
        // Another term's acknowledgements are not this leader's.
        assert_eq!(lease.quorum_acked(1, 6, &three, now), None);
        // Five voters need two acknowledgements beside the leader's: the second newest.
        let five: Vec<BTreeSet<u64>> = vec![[1, 2, 3, 4, 5].into()];
        assert_eq!(lease.quorum_acked(1, 5, &five, now), Some(at(100)));
        // While the membership changes, each voter set must have its majority: the older.
        let joint = vec![three[0].clone(), [1, 4, 5].into()];
        assert_eq!(lease.quorum_acked(1, 5, &joint, now), None);
        lease.acked(4, 5, at(50));
        assert_eq!(lease.quorum_acked(1, 5, &joint, now), Some(at(50)));
        // A leader outside the voter set counts for nothing.
        assert_eq!(lease.quorum_acked(9, 5, &three, now), Some(at(100)));
    }

    /// A leader of term 2 with replicas 2 and 3 acknowledging now, whose book applied
    /// `applied`, with its log ending at entry 9.
    fn leading(lease: &Lease, applied: LogId<u64>) -> RaftMetrics<u64, BasicNode> {
        let now = Instant::now();
        lease.acked(2, 2, now);
        lease.acked(3, 2, now);
        let voters = BTreeSet::from([1, 2, 3]);
        let mut metrics = RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        metrics.current_leader = Some(1);
        metrics.vote = Vote::new_committed(2, 1);
        metrics.membership_config = Arc::new(StoredMembership::new(
            None,
            Membership::new(vec![voters], None),
        ));
        metrics.last_log_index = Some(9);
        metrics.last_applied = Some(applied);
        metrics
    }

    #[test]
    fn a_read_on_the_lease_waits_only_until_the_book_applied_an_entry_of_the_leaders_term() {
        let entry = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
        let lease = Lease::new();
        // Its blank entry (7) applied: every acknowledged order is in the book.
        assert_eq!(
            lease.read(&leading(&lease, entry(2, 7))),
            Some(LeaseRead::Now)
        );
        // Just elected, the book still behind its blank entry: an order a former leader
        // acknowledged may not be applied yet, so the read waits for the log's end.
        assert_eq!(
            lease.read(&leading(&lease, entry(1, 6))),
            Some(LeaseRead::After(9))
        );
        // Not leading: no read on the lease.
        let mut following = leading(&lease, entry(2, 7));
        following.state = ServerState::Follower;
        assert_eq!(lease.read(&following), None);
        // A lease long gone: none either.
        let stale = Lease::new();
        let long_ago = Instant::now() - READ_LEASE * 2;
        stale.acked(2, 2, long_ago);
        stale.acked(3, 2, long_ago);
        assert_eq!(stale.read(&leading(&Lease::new(), entry(2, 7))), None);
    }
}
