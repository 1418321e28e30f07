//! The group's messages between replicas over HTTP: `POST {replica}/raft/append`, `/vote`
//! and `/snapshot`, openraft's requests as JSON (a snapshot's chunk with its bytes as they
//! are, see [`encode_chunk`]), answered with openraft's result as JSON; `/raft/prevote`
//! ([`PreVote`]), `/raft/catalog-check` (whether the replica reaches the catalog) and
//! `/raft/handover` ([`Handover`], whether the replica takes it), answered `true` or
//! `false`. Both sides are this module, so the wire format is openraft's serde form.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ElectionTransport, Elections, Handover, PreVote, Raft, SnapshotAnswer, TypeConfig};
use crate::catalog::CATALOG_TIMEOUT;
use stocknet_common::envelope::{Json, RawBody};
use stocknet_common::paths::{self, Route};
use stocknet_common::server::BODY_LIMIT;
use stocknet_common::{ApiError, BaseUrl};

/// How long a pre-vote waits for a replica's answer: a hung one is not waited for long.
const PRE_VOTE_TIMEOUT: Duration = Duration::from_millis(250);

/// How much longer than its own call to the catalog a replica asked whether it reaches the
/// catalog may take to answer.
const CATALOG_CHECK_MARGIN: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct Group {
    raft: Raft,
    elections: Arc<Elections>,
}

/// The routes a replica serves to the others (behind the cluster secret, as all internal
/// routes are), for a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(
    raft: Raft,
    elections: Arc<Elections>,
) -> Router<S> {
    Router::new()
        .route(paths::RAFT_APPEND.pattern(), post(append))
        .route(paths::RAFT_VOTE.pattern(), post(vote))
        .route(paths::RAFT_SNAPSHOT.pattern(), post(snapshot))
        .route(paths::RAFT_PRE_VOTE.pattern(), post(pre_vote))
        .route(paths::RAFT_CATALOG_CHECK.pattern(), post(catalog_check))
        .route(paths::RAFT_HANDOVER.pattern(), post(handover))
        .with_state(Group { raft, elections })
}

/// Accepts `request` on `raft`, and notes the leader heard from unless the sender was behind.
pub async fn deliver_append(
    raft: &Raft,
    elections: &Elections,
    request: AppendEntriesRequest<TypeConfig>,
) -> Result<AppendEntriesResponse<u64>, RaftError<u64>> {
    let term = request.vote.leader_id().get_term();
    let commit = request.leader_commit.map(|id| id.index);
    let answer = raft.append_entries(request).await;
    if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
        elections.heard_from_leader();
        elections.catch_up.heard(term, commit);
    }
    answer
}

/// Answers `request` on `raft`; a vote granted starts the election timer again, as Raft has it.
pub async fn deliver_vote(
    raft: &Raft,
    elections: &Elections,
    request: VoteRequest<u64>,
) -> Result<VoteResponse<u64>, RaftError<u64>> {
    let answer = raft.vote(request).await;
    if matches!(&answer, Ok(a) if a.vote_granted) {
        elections.heard_from_leader();
    }
    answer
}

/// Decodes the body itself rather than through `axum::Json`, whose error paths
/// (`serde_path_to_error`) cost a follower about 3% of its CPU on this, its busiest route.
async fn append(
    State(group): State<Group>,
    RawBody(body): RawBody,
) -> Result<Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>>, ApiError> {
    let request: AppendEntriesRequest<TypeConfig> =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(
        deliver_append(&group.raft, &group.elections, request).await,
    ))
}

async fn vote(
    State(group): State<Group>,
    Json(request): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, RaftError<u64>>> {
    Json(deliver_vote(&group.raft, &group.elections, request).await)
}

async fn snapshot(
    State(group): State<Group>,
    RawBody(body): RawBody,
) -> Result<
    Json<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>,
    ApiError,
> {
    let request = decode_chunk(&body).map_err(ApiError::bad_request)?;
    Ok(Json(group.raft.install_snapshot(request).await))
}

/// A snapshot's chunk on the wire: the length of the rest of openraft's request as JSON (four
/// bytes, little-endian), that JSON, then the chunk's bytes as they are (in JSON each would be
/// a number).
fn encode_chunk(mut request: InstallSnapshotRequest<TypeConfig>) -> Result<Vec<u8>, String> {
    let data = std::mem::take(&mut request.data);
    let head = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let length = u32::try_from(head.len()).map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(4 + head.len() + data.len());
    body.extend_from_slice(&length.to_le_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(&data);
    Ok(body)
}

fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let (length, rest) = body
        .split_first_chunk::<4>()
        .ok_or("a snapshot chunk without its length")?;
    let length = usize::try_from(u32::from_le_bytes(*length)).map_err(|e| e.to_string())?;
    let (head, data) = rest
        .split_at_checked(length)
        .ok_or("a snapshot chunk shorter than its length says")?;
    let mut request: InstallSnapshotRequest<TypeConfig> =
        serde_json::from_slice(head).map_err(|e| e.to_string())?;
    request.data = data.to_vec();
    Ok(request)
}

async fn pre_vote(State(group): State<Group>, Json(request): Json<PreVote>) -> Json<bool> {
    Json(group.elections.answer(&request).await)
}

async fn catalog_check(State(group): State<Group>) -> Json<bool> {
    Json(group.elections.reaches_catalog().await)
}

async fn handover(State(group): State<Group>, Json(request): Json<Handover>) -> Json<bool> {
    Json(group.elections.heard_of_handover(&request))
}

/// Asks replicas for their pre-votes, and whether they reach the catalog, over HTTP with the
/// cluster secret.
#[derive(Clone)]
pub struct HttpElections {
    http: reqwest::Client,
}

impl HttpElections {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    async fn ask(
        &self,
        node: &BasicNode,
        route: Route,
        request: &impl Serialize,
        timeout: Duration,
    ) -> Option<bool> {
        let base: BaseUrl = node.addr.parse().ok()?;
        let url = route.url(&base, &[]).ok()?;
        let sent = self.http.post(url).timeout(timeout).json(request).send();
        sent.await.ok()?.error_for_status().ok()?.json().await.ok()
    }
}

impl ElectionTransport for HttpElections {
    async fn pre_vote(&self, _target: u64, node: &BasicNode, request: &PreVote) -> Option<bool> {
        self.ask(node, paths::RAFT_PRE_VOTE, request, PRE_VOTE_TIMEOUT)
            .await
    }

    async fn reaches_catalog(&self, _target: u64, node: &BasicNode) -> Option<bool> {
        let timeout = CATALOG_TIMEOUT + CATALOG_CHECK_MARGIN;
        self.ask(node, paths::RAFT_CATALOG_CHECK, &(), timeout)
            .await
    }

    async fn announce_handover(
        &self,
        _target: u64,
        node: &BasicNode,
        request: &Handover,
    ) -> Option<bool> {
        self.ask(node, paths::RAFT_HANDOVER, request, PRE_VOTE_TIMEOUT)
            .await
    }
}

/// Makes one [`Peer`] per replica openraft talks to, sharing one HTTP client (and its
/// connection pool per replica), which carries the cluster secret.
#[derive(Clone)]
pub struct HttpNetwork {
    http: reqwest::Client,
}

impl HttpNetwork {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            http: self.http.clone(),
            target,
            url: node.addr.parse(),
        }
    }
}

/// How long a replica may take to answer a chunk of a snapshot before the last: to write
/// a megabyte.
const CHUNK_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Peer {
    http: reqwest::Client,
    target: u64,
    /// Where the replica answers: openraft names it by text, which only an address that
    /// parsed ever came from (`--peers`, `POST /learners`).
    url: Result<BaseUrl, String>,
}

impl Peer {
    /// One call, within openraft's deadline for it. No answer (refused, reset, timed out: a
    /// peer that is down or hung) is `Unreachable`, which openraft backs off from; an answer
    /// that is not openraft's result is a network error.
    async fn call<Q, A, E>(
        &self,
        route: Route,
        request: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(route, (body, "application/json"), option).await
    }

    /// [`call`](Self::call) with a body already encoded, of the content type given.
    async fn send<A, E>(
        &self,
        route: Route,
        (body, content_type): (Vec<u8>, &'static str),
        option: &RPCOption,
    ) -> Result<A, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        A: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let base = self.url.as_ref().map_err(|e| {
            RPCError::Network(NetworkError::new(&stocknet_common::RemoteError::Decode(
                e.clone(),
            )))
        })?;
        let url = route
            .url(base, &[])
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let response = self
            .http
            .post(url)
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let response = response
            .error_for_status()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<A, RaftError<u64, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let body =
            serde_json::to_vec(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(too_large) = too_large(request.entries.len(), body.len()) {
            return Err(RPCError::PayloadTooLarge(too_large));
        }
        self.send(paths::RAFT_APPEND, (body, "application/json"), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> SnapshotAnswer {
        // openraft gives every chunk the last one's deadline, which covers installing the
        // whole log; a chunk before it is answered once written, so a transfer whose
        // connection went silent (packets dropped) is given up, and the chunk sent again,
        // after a chunk's deadline rather than the install's.
        let option = match request.done {
            true => option,
            false => RPCOption::new(option.hard_ttl().min(CHUNK_DEADLINE)),
        };
        let body = encode_chunk(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let body = (body, "application/octet-stream");
        self.send(paths::RAFT_SNAPSHOT, body, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(paths::RAFT_VOTE, &request, &option).await
    }

    /// How long replication to a replica that did not answer pauses before it tries again:
    /// shorter than openraft's 0.5 s, so that a replica back from a hang or a restart is
    /// caught up at once (a lagging replica cannot win an election, and one that stands
    /// anyway delays the one that can).
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// Whether `entries` entries encoded in `bytes` bytes are past the body limit every replica
/// enforces, and if so how many to send instead. Long idempotency keys and request ids make
/// `MAX_PAYLOAD_ENTRIES` full entries larger than that; openraft splits a batch on this
/// error, and only on it (any other would send the same batch again, for ever).
fn too_large(entries: usize, bytes: usize) -> Option<PayloadTooLarge> {
    (bytes > BODY_LIMIT).then(|| {
        let fitting = entries as u64 * BODY_LIMIT as u64 / bytes as u64;
        PayloadTooLarge::new_entries_hint(fitting.max(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{SnapshotMeta, Vote};
    use stocknet_common::{Command, Order, Price, Side, Stamp};

    /// A batch as full as the leader sends, of orders with the longest key and request id the
    /// API takes, is past the body limit: it is split, never sent to be refused (a follower
    /// behind by that much would otherwise never catch up).
    #[tokio::test]
    async fn a_batch_past_the_body_limit_is_split_before_it_is_sent() {
        let long = |n: usize| format!("{n:0>128}");
        let entry = |index: u64| openraft::Entry::<TypeConfig> {
            log_id: super::super::log_id(1, index),
            payload: openraft::EntryPayload::Normal(
                (0..super::super::MAX_PROPOSAL)
                    .map(|i| Order {
                        number: 0,
                        term: 0,
                        name: "GameStart".into(),
                        key: Some(long(i)),
                        user: Some(u64::MAX),
                        stamp: Stamp {
                            time: u64::MAX,
                            request_id: Some(long(i)),
                            ..Stamp::default()
                        },
                        command: Command::Place {
                            side: Side::Buy,
                            quantity: u32::MAX,
                            limit: Some(Price::MAX),
                            options: None,
                        },
                    })
                    .collect(),
            ),
        };
        let full = super::super::MAX_PAYLOAD_ENTRIES;
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=full).map(entry).collect(),
            leader_commit: None,
        };
        // Nothing listens there: a batch that went out would be unreachable, not too large.
        let mut peer = Peer {
            http: reqwest::Client::new(),
            target: 2,
            url: "http://127.0.0.1:9".parse(),
        };
        let option = RPCOption::new(Duration::from_secs(1));
        let refused = peer.append_entries(request.clone(), option).await;
        let Err(RPCError::PayloadTooLarge(too_large)) = refused else {
            panic!("{refused:?}");
        };
        let hint = too_large.entries_hint();
        assert!(hint < full, "{hint}");
        let fitting = AppendEntriesRequest {
            entries: request.entries[..hint as usize].to_vec(),
            ..request
        };
        assert!(serde_json::to_vec(&fitting).unwrap().len() <= BODY_LIMIT);
    }

    /// A chunk before the last that nobody answers (the replica's connection went silent
    /// mid-transfer) is given up after a chunk's deadline, not the install's five minutes;
    /// the last is given the install's.
    #[tokio::test(start_paused = true)]
    async fn a_chunk_before_the_last_is_given_up_after_a_chunk_s_deadline() {
        // Takes connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let mut peer = Peer {
            http: reqwest::Client::new(),
            target: 2,
            url: url.parse(),
        };
        let chunk = |done| InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![7; 16],
            done,
        };
        let install = super::super::INSTALL_SNAPSHOT_TIMEOUT;
        let started = tokio::time::Instant::now();
        let answer = peer
            .install_snapshot(chunk(false), RPCOption::new(install))
            .await;
        assert!(
            matches!(answer, Err(RPCError::Unreachable(_))),
            "{answer:?}"
        );
        assert_eq!(started.elapsed().as_secs(), CHUNK_DEADLINE.as_secs());
        let last = tokio::time::timeout(
            install - Duration::from_secs(1),
            peer.install_snapshot(chunk(true), RPCOption::new(install)),
        )
        .await;
        assert!(last.is_err(), "the last chunk waits for the install");
        held.abort();
    }

    #[test]
    fn a_snapshot_chunk_travels_with_its_bytes_as_they_are() {
        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            meta: SnapshotMeta {
                last_log_id: Some(super::super::log_id(3, 41)),
                snapshot_id: "3-41".into(),
                ..Default::default()
            },
            offset: 262_144,
            data: (0..=255).cycle().take(1000).collect(),
            done: false,
        };
        let body = encode_chunk(request.clone()).unwrap();
        assert!(
            body.len() < request.data.len() + 400,
            "{} bytes",
            body.len()
        );
        let decoded = decode_chunk(&body).unwrap();
        assert_eq!(decoded.data, request.data);
        assert_eq!(
            (decoded.vote, decoded.meta, decoded.offset, decoded.done),
            (request.vote, request.meta, request.offset, request.done)
        );
        assert!(decode_chunk(&body[..3]).is_err());
        assert!(decode_chunk(&body[..body.len() - request.data.len() - 1]).is_err());
    }
}
