//! What a replica does around each call openraft makes to another, whatever the transport
//! (HTTP, or the tests' in-memory network): the commit point an append carries is cut to what
//! this replica holds on disk (`durable.rs`), an append a voter accepted renews the lease
//! (`lease.rs`), and a commit point alone, just after an accepted append, waits for the next
//! append instead of a round of its own.
//!
//! openraft 0.9 sends a follower an empty append as soon as the commit point moves, so every
//! commit round cost each follower two calls, the entries and then the commit point; the
//! second also held up the next round's entries, which a replication stream sends only once
//! the call before them is answered. Raft needs neither: a follower learns the commit point
//! from whichever append comes next (the next round's, or openraft's next heartbeat, at most
//! one and a half [`HEARTBEAT`](super::HEARTBEAT)s later), and nothing waits for a follower
//! to apply. Such an append
//! is answered as accepted without being sent, which openraft reads as a heartbeat's
//! acknowledgement: the time it notes for the follower is then later than the follower's real
//! acknowledgement by at most [`COMMIT_ALONE_WINDOW`] and a round trip. That time serves only
//! `millis_since_quorum_ack`, by which a leader refuses pre-votes (`election.rs`): later is
//! the cautious side. The lease is renewed only by acknowledgements that came (`lease.rs`).

use std::sync::Arc;

use openraft::error::{RPCError, RaftError};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use tokio::time::{Duration, Instant};

use super::durable::clamp_commit;
use super::{Durable, Lease, SnapshotAnswer, TypeConfig};

/// A network factory whose connections hold appends to this replica's disk and note the
/// accepted ones in its lease.
pub struct Outgoing<F> {
    inner: F,
    lease: Arc<Lease>,
    durable: Durable,
}

impl<F> Outgoing<F> {
    pub fn new(network: F, lease: Arc<Lease>, durable: Durable) -> Self {
        Self {
            inner: network,
            lease,
            durable,
        }
    }
}

impl<F: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Outgoing<F> {
    type Network = OutgoingPeer<F::Network>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        OutgoingPeer {
            inner: self.inner.new_client(target, node).await,
            target,
            lease: self.lease.clone(),
            durable: self.durable.clone(),
            accepted: None,
        }
    }
}

/// How soon after an accepted append an append that carries nothing new but the commit point
/// is held back for the next one.
const COMMIT_ALONE_WINDOW: Duration = Duration::from_millis(10);

pub struct OutgoingPeer<N> {
    inner: N,
    target: u64,
    lease: Arc<Lease>,
    durable: Durable,
    /// The last append this connection sent that the follower accepted. A new connection
    /// (openraft opens one for each leadership check) has none, so it sends every append.
    accepted: Option<Accepted>,
}

/// An append the follower accepted: the log it matched through, the commit point it was told,
/// and when its answer came.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    matching: Option<LogId<u64>>,
    commit: Option<LogId<u64>>,
    at: Instant,
}

impl<N> OutgoingPeer<N> {
    /// Whether `request` carries nothing but a newer commit point than the follower was told
    /// by an append it accepted just now: no entries, the same log position.
    fn commit_alone(&self, request: &AppendEntriesRequest<TypeConfig>) -> bool {
        self.accepted.is_some_and(|accepted| {
            request.entries.is_empty()
                && request.prev_log_id == accepted.matching
                && request.leader_commit > accepted.commit
                && accepted.at.elapsed() < COMMIT_ALONE_WINDOW
        })
    }
}

impl<N: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for OutgoingPeer<N> {
    /// Any answer but `HigherVote` means the voter took this leader's vote, and with it
    /// started its lease again (openraft answers a log conflict after that).
    async fn append_entries(
        &mut self,
        mut request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        clamp_commit(&mut request, self.durable.through());
        if self.commit_alone(&request) {
            return Ok(AppendEntriesResponse::Success);
        }
        let vote = request.vote;
        let (commit, last) = (request.leader_commit, request.entries.last());
        let matching = last.map_or(request.prev_log_id, |entry| Some(entry.log_id));
        let sent = Instant::now();
        let answer = self.inner.append_entries(request, option).await;
        if vote.is_committed()
            && matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_)))
        {
            self.lease.acked(self.target, vote.leader_id().term, sent);
        }
        self.accepted = match &answer {
            Ok(AppendEntriesResponse::Success) => Some(Accepted {
                matching,
                commit,
                at: Instant::now(),
            }),
            _ => None,
        };
        answer
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> SnapshotAnswer {
        self.inner.install_snapshot(request, option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.inner.vote(request, option).await
    }

    fn backoff(&self) -> Backoff {
        self.inner.backoff()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::consensus::DurableLog;

    /// What a follower was sent: each append's count of entries and commit point.
    type Told = Vec<(usize, Option<u64>)>;

    /// A follower that accepts every append, and what it was sent.
    #[derive(Clone, Default)]
    struct Follower(Arc<Mutex<Told>>);

    impl RaftNetwork<TypeConfig> for Follower {
        async fn append_entries(
            &mut self,
            request: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
            let commit = request.leader_commit.map(|c| c.index);
            self.0.lock().unwrap().push((request.entries.len(), commit));
            Ok(AppendEntriesResponse::Success)
        }

        async fn install_snapshot(
            &mut self,
            _request: InstallSnapshotRequest<TypeConfig>,
            _option: RPCOption,
        ) -> SnapshotAnswer {
            unreachable!("no snapshot in these tests")
        }

        async fn vote(
            &mut self,
            _request: VoteRequest<u64>,
            _option: RPCOption,
        ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
            unreachable!("no vote in these tests")
        }
    }

    impl RaftNetworkFactory<TypeConfig> for Follower {
        type Network = Follower;

        async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> Follower {
            self.clone()
        }
    }

    fn id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// An append from leader 1 of term 1: `entries` after `prev`, and the commit point.
    fn append(prev: u64, entries: &[u64], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        let entries = entries.iter().map(|&i| id(i));
        crate::consensus::blank_append(1, Some(id(prev)), entries, Some(id(commit)))
    }

    /// Sends `request` through `peer`; whether it reached the follower.
    async fn sent(
        peer: &mut OutgoingPeer<Follower>,
        follower: &Follower,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> bool {
        let before = follower.0.lock().unwrap().len();
        let answer = peer
            .append_entries(request, RPCOption::new(Duration::from_millis(50)))
            .await;
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)));
        follower.0.lock().unwrap().len() > before
    }

    /// A commit point alone right after an accepted append is not sent: the next append
    /// carries it. Everything else is: entries, a heartbeat that moves nothing, a commit point
    /// alone once the window passed, and any append of a new connection (a leadership
    /// check's, which must reach the follower).
    #[tokio::test(start_paused = true)]
    async fn a_commit_point_alone_waits_for_the_next_append_and_nothing_else_does() {
        let durable = DurableLog::new(Some(100));
        let follower = Follower::default();
        let lease = Lease::new();
        let mut network = Outgoing::new(follower.clone(), lease.clone(), durable.watch());
        let node = BasicNode::default();
        let mut peer = network.new_client(2, &node).await;

        assert!(sent(&mut peer, &follower, append(4, &[5, 6], 4)).await);
        // openraft's empty append once 6 is committed: held back.
        assert!(!sent(&mut peer, &follower, append(6, &[], 6)).await);
        // The next round's entries carry it.
        assert!(sent(&mut peer, &follower, append(6, &[7], 6)).await);
        // A heartbeat with the commit point the follower was told goes.
        assert!(sent(&mut peer, &follower, append(7, &[], 6)).await);
        // A commit point alone goes once the window since the last acceptance has passed.
        tokio::time::advance(COMMIT_ALONE_WINDOW).await;
        assert!(sent(&mut peer, &follower, append(7, &[], 7)).await);
        // A commit point alone from a new connection goes, however recent the acceptance.
        assert!(sent(&mut peer, &follower, append(7, &[8], 7)).await);
        let mut check = network.new_client(2, &node).await;
        assert!(sent(&mut check, &follower, append(8, &[], 8)).await);
        // Entries the follower does not hold yet: a different position, sent.
        assert!(sent(&mut peer, &follower, append(9, &[], 9)).await);

        let told: Told = follower.0.lock().unwrap().clone();
        assert_eq!(
            told,
            [
                (2, Some(4)),
                (1, Some(6)),
                (0, Some(6)),
                (0, Some(7)),
                (1, Some(7)),
                (0, Some(8)),
                (0, Some(9)),
            ]
        );
    }

    /// A commit point the leader does not hold on disk yet is cut (`durable.rs`); an append
    /// whose cut commit point is no newer than the follower was told is sent, since it moves
    /// nothing: the leader's disk held it back, not this rule.
    #[tokio::test(start_paused = true)]
    async fn a_commit_point_cut_to_the_disk_is_judged_as_cut() {
        let durable = DurableLog::new(Some(6));
        let follower = Follower::default();
        let mut network = Outgoing::new(follower.clone(), Lease::new(), durable.watch());
        let mut peer = network.new_client(2, &BasicNode::default()).await;
        assert!(sent(&mut peer, &follower, append(6, &[7, 8], 6)).await);
        // Committed through 8, but the leader's disk holds through 6 and the append names
        // only 8: cut to none, nothing new.
        assert!(sent(&mut peer, &follower, append(8, &[], 8)).await);
        assert_eq!(follower.0.lock().unwrap().last(), Some(&(0, None)));
    }
}
