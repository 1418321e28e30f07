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
//! from whichever append comes next (the next round's, or the heartbeat within
//! [`HEARTBEAT`](super::HEARTBEAT)), and nothing waits for a follower to apply. Such an append
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
        self.accepted = None;
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
