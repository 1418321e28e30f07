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
//!
//! openraft 0.9 waits one heartbeat for an append's answer and then drops the call, so over a
//! link whose round trip is longer no answer ever came back and the group committed nothing
//! (a gray failure: slow, not down). An append is therefore sent from a task of its own, with
//! a deadline of [`APPEND_DEADLINE`] (the HTTP transport's; the tests' network has none),
//! which goes on when openraft stops waiting; the next append to the same replica first waits
//! for it, and takes its answer when it says what the new one asks: the same leader and log
//! position, and the follower matched the old one's entries, which begin the new one's (a
//! conflict is asked again, since openraft may have moved past that entry by a snapshot).
//! Such an answer is an acknowledgement that came late, which Raft allows of any message; the
//! lease counts it from when the old append was sent, earlier than openraft's count, and only
//! once openraft takes it, so that the lease is never ahead of what openraft counts. A
//! heartbeat meanwhile (openraft takes no progress from one) is answered by a recent such
//! answer without being sent, and leaves it for the append after it. A replica that is down
//! or hung holds at most one append of this leader's at a time, as before.

use std::sync::Arc;

use openraft::error::{NetworkError, RPCError, RaftError};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use super::durable::clamp_commit;
use super::{Durable, Lease, SnapshotAnswer, TypeConfig, HEARTBEAT};

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

impl<F> RaftNetworkFactory<TypeConfig> for Outgoing<F>
where
    F: RaftNetworkFactory<TypeConfig>,
    F::Network: Clone + Sync,
{
    type Network = OutgoingPeer<F::Network>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        OutgoingPeer {
            inner: self.inner.new_client(target, node).await,
            target,
            lease: self.lease.clone(),
            durable: self.durable.clone(),
            accepted: None,
            unclaimed: None,
        }
    }
}

/// How long an append may take to be answered, openraft's deadline (a heartbeat) passed.
const APPEND_DEADLINE: Duration = Duration::from_secs(1);

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
    /// The last append sent, while openraft has not taken its answer.
    unclaimed: Option<Unclaimed>,
}

type AppendAnswer = Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>>;

/// An append openraft has not taken the answer of: on its way, or come.
struct Unclaimed {
    sent: SentAppend,
    coming: JoinHandle<Came>,
    came: Option<Came>,
}

/// An append's answer, and when it came.
struct Came {
    answer: AppendAnswer,
    at: Instant,
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        self.coming.abort();
    }
}

impl Unclaimed {
    /// Its answer, once it has come (if openraft stops waiting meanwhile, it stays unclaimed
    /// for the next call).
    async fn came(&mut self) -> &Came {
        let came = match self.came.take() {
            Some(came) => came,
            None => (&mut self.coming).await.unwrap_or_else(|e| Came {
                answer: Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(e),
                ))),
                at: Instant::now(),
            }),
        };
        self.came.insert(came)
    }
}

/// What an append asked: under which vote, after which entry, through which, with which
/// commit point, and when it was sent (when openraft called: at most that late).
#[derive(Debug, Clone, Copy)]
struct SentAppend {
    vote: openraft::Vote<u64>,
    prev: Option<LogId<u64>>,
    last: Option<LogId<u64>>,
    commit: Option<LogId<u64>>,
    at: Instant,
}

/// What an earlier append's answer says of a new request.
#[derive(Debug)]
enum Claim {
    /// This is the request's answer.
    Answers(AppendEntriesResponse<u64>),
    /// The request is a heartbeat after the same entry, and the answer says more than it can
    /// carry (openraft takes no progress from a heartbeat): it is the next append's.
    CoversHeartbeat,
    /// Nothing: the request must go.
    Nothing,
}

impl SentAppend {
    fn of(request: &AppendEntriesRequest<TypeConfig>, at: Instant) -> Self {
        Self {
            vote: request.vote,
            prev: request.prev_log_id,
            last: last_of(request),
            commit: request.leader_commit,
            at,
        }
    }

    /// What this append's `answer` says of `request`: the same leader's append after the same
    /// entry, of which the follower matched some entries or all, has its answer; so has one
    /// the follower refused for a newer vote. A conflict is not reused: openraft may have
    /// moved past that entry by a snapshot since.
    fn claim(&self, answer: &AppendAnswer, request: &AppendEntriesRequest<TypeConfig>) -> Claim {
        if self.vote != request.vote || self.prev != request.prev_log_id {
            return Claim::Nothing;
        }
        let matched = |matching: Option<LogId<u64>>| {
            if request.entries.is_empty() && matching > request.prev_log_id {
                Claim::CoversHeartbeat
            } else if matching >= last_of(request) {
                // A leader's log only grows: the follower holds every entry `request` sends.
                Claim::Answers(AppendEntriesResponse::Success)
            } else if matching > request.prev_log_id {
                Claim::Answers(AppendEntriesResponse::PartialSuccess(matching))
            } else {
                Claim::Nothing
            }
        };
        match answer {
            Ok(AppendEntriesResponse::Success) => matched(self.last),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => matched(*matching),
            Ok(AppendEntriesResponse::HigherVote(vote)) => {
                Claim::Answers(AppendEntriesResponse::HigherVote(*vote))
            }
            Ok(AppendEntriesResponse::Conflict) | Err(_) => Claim::Nothing,
        }
    }
}

/// The last entry `request` sends, or the one it follows if it sends none.
fn last_of(request: &AppendEntriesRequest<TypeConfig>) -> Option<LogId<u64>> {
    request
        .entries
        .last()
        .map_or(request.prev_log_id, |entry| Some(entry.log_id))
}

/// An append the follower accepted: the log it matched through, the commit point it was told,
/// and when openraft took its answer.
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

    /// Notes what the answer to `sent`, as openraft takes it, says: a voter that took the
    /// vote renewed this leader's lease from when it was sent, and an accepted append is what
    /// a commit point alone may wait behind. (Only answers openraft takes renew the lease, so
    /// that the lease is never newer than openraft's own count of acknowledgements, by which
    /// the leader refuses pre-votes.)
    fn note(&mut self, sent: &SentAppend, answer: &AppendAnswer) {
        if sent.vote.is_committed()
            && matches!(answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_)))
        {
            self.lease
                .acked(self.target, sent.vote.leader_id().term, sent.at);
        }
        self.accepted = match answer {
            Ok(AppendEntriesResponse::Success) => Some(Accepted {
                matching: sent.last,
                commit: sent.commit,
                at: Instant::now(),
            }),
            _ => None,
        };
    }

    /// The answer the unclaimed append (once come) gives `request`, if it gives one.
    async fn claim(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
    ) -> Option<AppendEntriesResponse<u64>> {
        let unclaimed = self.unclaimed.as_mut()?;
        let sent = unclaimed.sent;
        let came = unclaimed.came().await;
        match sent.claim(&came.answer, request) {
            // Told as a heartbeat's acknowledgement, a recent answer: openraft then counts
            // the follower as heard from later than it was, by at most a heartbeat and a
            // round trip, the cautious side for the pre-votes it refuses.
            Claim::CoversHeartbeat if came.at.elapsed() < HEARTBEAT => {
                Some(AppendEntriesResponse::Success)
            }
            Claim::Answers(reply) => {
                let came = self.unclaimed.take()?.came.take()?;
                self.note(&sent, &came.answer);
                Some(reply)
            }
            Claim::CoversHeartbeat | Claim::Nothing => {
                self.unclaimed = None;
                None
            }
        }
    }
}

impl<N> RaftNetwork<TypeConfig> for OutgoingPeer<N>
where
    N: RaftNetwork<TypeConfig> + Clone + Send + Sync + 'static,
{
    /// Any answer but `HigherVote` means the voter took this leader's vote, and with it
    /// started its lease again (openraft answers a log conflict after that).
    async fn append_entries(
        &mut self,
        mut request: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> AppendAnswer {
        let called = Instant::now();
        clamp_commit(&mut request, self.durable.through());
        if let Some(reply) = self.claim(&request).await {
            return Ok(reply);
        }
        if self.commit_alone(&request) {
            return Ok(AppendEntriesResponse::Success);
        }
        let sent = SentAppend::of(&request, called);
        let mut inner = self.inner.clone();
        let coming = tokio::spawn(async move {
            let answer = inner
                .append_entries(request, RPCOption::new(APPEND_DEADLINE))
                .await;
            Came {
                answer,
                at: Instant::now(),
            }
        });
        let unclaimed = self.unclaimed.insert(Unclaimed {
            sent,
            coming,
            came: None,
        });
        unclaimed.came().await;
        let came = self
            .unclaimed
            .take()
            .and_then(|mut unclaimed| unclaimed.came.take());
        let answer = came.map_or_else(
            || {
                let none = std::io::Error::other("the append's task ended without an answer");
                Err(RPCError::Network(NetworkError::new(&none)))
            },
            |came| came.answer,
        );
        self.note(&sent, &answer);
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
    use crate::consensus::{DurableLog, HEARTBEAT};

    /// What a follower was sent: each append's count of entries and commit point.
    type Told = Vec<(usize, Option<u64>)>;

    /// A follower that accepts every append, and what it was sent; while `holding` is set,
    /// its answers wait (a slow link).
    #[derive(Clone, Default)]
    struct Follower {
        told: Arc<Mutex<Told>>,
        holding: Arc<tokio::sync::watch::Sender<bool>>,
        /// While set, it answers that its log conflicts.
        conflicting: Arc<std::sync::atomic::AtomicBool>,
    }

    impl RaftNetwork<TypeConfig> for Follower {
        async fn append_entries(
            &mut self,
            request: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
            let commit = request.leader_commit.map(|c| c.index);
            self.told
                .lock()
                .unwrap()
                .push((request.entries.len(), commit));
            let mut holding = self.holding.subscribe();
            let _ = holding.wait_for(|&holding| !holding).await;
            if self.conflicting.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(AppendEntriesResponse::Conflict);
            }
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
        let before = follower.told.lock().unwrap().len();
        let answer = peer
            .append_entries(request, RPCOption::new(Duration::from_millis(50)))
            .await;
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)));
        follower.told.lock().unwrap().len() > before
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

        let told: Told = follower.told.lock().unwrap().clone();
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

    /// A connection to `follower` of a leader whose disk holds its log through `durable`.
    async fn connection(follower: &Follower, durable: u64) -> OutgoingPeer<Follower> {
        let durable = DurableLog::new(Some(durable));
        let mut network = Outgoing::new(follower.clone(), Lease::new(), durable.watch());
        network.new_client(2, &BasicNode::default()).await
    }

    /// A commit point the leader does not hold on disk yet is cut (`durable.rs`); an append
    /// whose cut commit point is no newer than the follower was told is sent, since it moves
    /// nothing: the leader's disk held it back, not this rule.
    #[tokio::test(start_paused = true)]
    async fn a_commit_point_cut_to_the_disk_is_judged_as_cut() {
        let follower = Follower::default();
        let mut peer = connection(&follower, 6).await;
        assert!(sent(&mut peer, &follower, append(6, &[7, 8], 6)).await);
        // Committed through 8, but the leader's disk holds through 6 and the append names
        // only 8: cut to none, nothing new.
        assert!(sent(&mut peer, &follower, append(8, &[], 8)).await);
        assert_eq!(follower.told.lock().unwrap().last(), Some(&(0, None)));
    }

    /// openraft waits a heartbeat for an append's answer; one that comes later answers the
    /// next append where it says what that one asks, and nothing is sent twice.
    #[tokio::test(start_paused = true)]
    async fn an_answer_openraft_stopped_waiting_for_answers_the_next_append() {
        let follower = Follower::default();
        let mut peer = connection(&follower, 100).await;
        let option = || RPCOption::new(HEARTBEAT);
        // Sends `request` while the follower's answer is held, as openraft does: it gives up.
        let give_up = async |peer: &mut OutgoingPeer<Follower>, request| {
            follower.holding.send_replace(true);
            let waited = tokio::time::timeout(HEARTBEAT, peer.append_entries(request, option()));
            assert!(waited.await.is_err(), "no answer within the heartbeat");
            follower.holding.send_replace(false);
        };
        let answer = async |peer: &mut OutgoingPeer<Follower>, request| {
            let answer = peer.append_entries(request, option()).await;
            answer.map_err(|e| e.to_string())
        };

        // How many appends reached the follower.
        let sends = || follower.told.lock().unwrap().len();

        give_up(&mut peer, append(4, &[5, 6], 4)).await;
        // A heartbeat meanwhile is answered, and leaves the answer to the append after it: one
        // entry more since, so the follower matched 5 and 6, and only 7 must go.
        let heartbeat = answer(&mut peer, append(4, &[], 4)).await;
        assert_eq!(heartbeat, Ok(AppendEntriesResponse::Success));
        let partly = answer(&mut peer, append(4, &[5, 6, 7], 6)).await;
        assert_eq!(
            partly,
            Ok(AppendEntriesResponse::PartialSuccess(Some(id(6))))
        );
        assert_eq!(sends(), 1, "neither the heartbeat nor the append was sent");
        // The same entries again: all matched.
        give_up(&mut peer, append(6, &[7], 6)).await;
        let whole = answer(&mut peer, append(6, &[7], 6)).await;
        assert_eq!(whole, Ok(AppendEntriesResponse::Success));
        assert_eq!(sends(), 2, "the append given up on, not its repeat");
        // Another position (openraft probing back after a conflict): sent.
        give_up(&mut peer, append(7, &[8], 7)).await;
        assert!(sent(&mut peer, &follower, append(5, &[6, 7, 8], 7)).await);
        // A conflict is not taken as the next answer: it is asked again.
        follower
            .conflicting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        give_up(&mut peer, append(8, &[9], 8)).await;
        let conflict = answer(&mut peer, append(8, &[9], 8)).await;
        assert_eq!(conflict, Ok(AppendEntriesResponse::Conflict));
        assert_eq!(sends(), 6, "the conflicting append, asked again");
        follower
            .conflicting
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // An answer a heartbeat old no longer stands for a heartbeat: the heartbeat goes, and
        // the append after it again.
        give_up(&mut peer, append(8, &[9], 8)).await;
        // (The append's task takes the answer before the clock moves on.)
        tokio::task::yield_now().await;
        tokio::time::advance(HEARTBEAT).await;
        assert!(sent(&mut peer, &follower, append(8, &[], 8)).await);
        assert!(sent(&mut peer, &follower, append(8, &[9], 8)).await);
    }
}
