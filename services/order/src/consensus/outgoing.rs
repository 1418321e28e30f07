//! What a replica does around each call openraft makes to another, whatever the transport
//! (HTTP, or the tests' in-memory network): the commit point an append carries is cut to what
//! this replica holds on disk (`durable.rs`), and an append a voter accepted renews the lease
//! (`lease.rs`).

use std::sync::Arc;

use openraft::error::{RPCError, RaftError};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::time::Instant;

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
        }
    }
}

pub struct OutgoingPeer<N> {
    inner: N,
    target: u64,
    lease: Arc<Lease>,
    durable: Durable,
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
        let vote = request.vote;
        let sent = Instant::now();
        let answer = self.inner.append_entries(request, option).await;
        if vote.is_committed()
            && matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_)))
        {
            self.lease.acked(self.target, vote.leader_id().term, sent);
        }
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
