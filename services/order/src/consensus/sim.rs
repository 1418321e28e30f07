//! An in-memory network between the replicas of one process, for the consensus tests and
//! the replica simulation: calls are delivered at once, except over links a test cut, and to
//! and from replicas it made slow, lossy or paused.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use openraft::error::{RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::{
    network, ElectionTransport, Elections, Handover, PreVote, Raft, SnapshotAnswer, TypeConfig,
};

/// Delivers calls between the replicas of one process, except over cut links.
#[derive(Default)]
pub struct Router {
    pub rafts: Mutex<BTreeMap<u64, (Raft, Arc<Elections>)>>,
    pub cut: Mutex<HashSet<(u64, u64)>>,
    /// How many appends each replica answered.
    pub appends_answered: Mutex<BTreeMap<u64, u64>>,
    /// How many snapshots each replica was sent whole (their last chunks delivered).
    pub snapshots_sent: Mutex<BTreeMap<u64, u64>>,
    /// What is wrong with a replica's messages, in and out.
    faults: Mutex<BTreeMap<u64, LinkFault>>,
    resumed: Notify,
    /// Messages counted, for the lossy replicas' losses.
    sent: std::sync::atomic::AtomicU64,
}

/// What happens to every message to and from a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Each takes this long: a slow link.
    Slow(Duration),
    /// One in this many is lost.
    Lossy(u64),
    /// Each waits until the replica resumes, and then arrives, late: a process stopped
    /// (SIGSTOP) and continued.
    Paused,
}

impl Router {
    /// Sets (or with `None` clears) what happens to `node`'s messages.
    pub fn set_fault(&self, node: u64, fault: Option<LinkFault>) {
        let mut faults = self.faults.lock().unwrap();
        match fault {
            Some(fault) => faults.insert(node, fault),
            None => faults.remove(&node),
        };
        drop(faults);
        self.resumed.notify_waiters();
    }

    /// Carries one message from `from` to `to` through their faults: it waits while either is
    /// paused, takes a slow one's time, or is lost (then the caller hears nothing, as from a
    /// cut link).
    async fn carry(&self, from: u64, to: u64) -> Result<(), Unreachable> {
        loop {
            let resumed = self.resumed.notified();
            let faults: Vec<LinkFault> = {
                let faults = self.faults.lock().unwrap();
                [from, to]
                    .iter()
                    .filter_map(|n| faults.get(n).copied())
                    .collect()
            };
            if !faults.contains(&LinkFault::Paused) {
                for fault in faults {
                    match fault {
                        LinkFault::Slow(delay) => tokio::time::sleep(delay).await,
                        LinkFault::Lossy(one_in) => {
                            let sent = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if sent.is_multiple_of(one_in) {
                                return Err(unreachable(from, to));
                            }
                        }
                        LinkFault::Paused => {}
                    }
                }
                return Ok(());
            }
            resumed.await;
        }
    }

    /// `to`'s replica, if `from`'s message reaches it.
    pub async fn reach(&self, from: u64, to: u64) -> Result<(Raft, Arc<Elections>), Unreachable> {
        self.carry(from, to).await?;
        let cut = self.cut.lock().unwrap().contains(&(from, to));
        match self.rafts.lock().unwrap().get(&to) {
            Some(replica) if !cut => Ok(replica.clone()),
            _ => Err(unreachable(from, to)),
        }
    }

    /// Cuts (or, with `cut` false, heals) every link between `node` and the others.
    pub fn isolate(&self, node: u64, others: &[u64], cut: bool) {
        let mut links = self.cut.lock().unwrap();
        for &other in others.iter().filter(|&&o| o != node) {
            for link in [(node, other), (other, node)] {
                if cut {
                    links.insert(link);
                } else {
                    links.remove(&link);
                }
            }
        }
    }
}

fn unreachable(from: u64, to: u64) -> Unreachable {
    Unreachable::new(&std::io::Error::other(format!("{from} cannot reach {to}")))
}

#[derive(Clone)]
pub struct Network {
    pub router: Arc<Router>,
    pub from: u64,
}

#[derive(Clone)]
pub struct Link {
    router: Arc<Router>,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Link {
        Link {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

impl Link {
    /// `deliver`'s answer from the target, through the simulated network.
    async fn call<T>(
        &self,
        deliver: impl AsyncFnOnce(&Raft, &Elections) -> Result<T, RaftError<u64>>,
    ) -> Result<T, RPCError<u64, BasicNode, RaftError<u64>>> {
        let (raft, elections) = self.router.reach(self.from, self.to).await?;
        let answer = deliver(&raft, &elections).await;
        self.deliver(answer).await
    }

    /// The answer to a call, unless the link was cut while it ran or the answer is lost.
    async fn deliver<T, E>(&self, answer: Result<T, E>) -> Result<T, RPCError<u64, BasicNode, E>>
    where
        E: std::error::Error,
    {
        self.router.reach(self.to, self.from).await?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let deliver = async |raft: &Raft, elections: &Elections| {
            network::deliver_append(raft, elections, rpc).await
        };
        let answer = self.call(deliver).await;
        if answer.is_ok() {
            *self
                .router
                .appends_answered
                .lock()
                .unwrap()
                .entry(self.to)
                .or_default() += 1;
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> SnapshotAnswer {
        let (raft, _) = self.router.reach(self.from, self.to).await?;
        if rpc.done {
            *self
                .router
                .snapshots_sent
                .lock()
                .unwrap()
                .entry(self.to)
                .or_default() += 1;
        }
        let answer = raft.install_snapshot(rpc).await;
        self.deliver(answer).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(async |raft: &Raft, elections: &Elections| {
            network::deliver_vote(raft, elections, rpc).await
        })
        .await
    }
}

impl ElectionTransport for Network {
    async fn pre_vote(&self, target: u64, _node: &BasicNode, request: &PreVote) -> Option<bool> {
        let (_, elections) = self.router.reach(self.from, target).await.ok()?;
        let answer = elections.answer(request).await;
        self.router.reach(target, self.from).await.ok()?;
        Some(answer)
    }

    async fn reaches_catalog(&self, target: u64, _node: &BasicNode) -> Option<bool> {
        let (_, elections) = self.router.reach(self.from, target).await.ok()?;
        let answer = elections.reaches_catalog().await;
        self.router.reach(target, self.from).await.ok()?;
        Some(answer)
    }

    async fn announce_handover(
        &self,
        target: u64,
        _node: &BasicNode,
        request: &Handover,
    ) -> Option<bool> {
        let (_, elections) = self.router.reach(self.from, target).await.ok()?;
        let answer = elections.heard_of_handover(request);
        self.router.reach(target, self.from).await.ok()?;
        Some(answer)
    }
}

/// The simulation's choices: proptest's generator, seeded.
pub struct Choices(TestRng);

impl Choices {
    pub fn seeded(seed: u64) -> Self {
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n
    }
}
