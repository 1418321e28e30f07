//! The group's messages between replicas over HTTP: `POST {replica}/raft/append`, `/vote`
//! and `/snapshot`, openraft's requests as JSON, answered with openraft's result as JSON, and
//! `/raft/prevote` ([`PreVote`], answered `true` or `false`). Both sides are this module, so
//! the wire format is openraft's serde form.

use std::error::Error;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Elections, PreVote, PreVoteTransport, Raft, SnapshotAnswer, TypeConfig};
use stocknet_common::envelope::RawBody;
use stocknet_common::paths::{self, Route};
use stocknet_common::ApiError;

/// How long a pre-vote waits for a replica's answer: a hung one is not waited for long.
const PRE_VOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

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
        .with_state(Group { raft, elections })
}

/// Accepts `request` on `raft`, and notes the leader heard from unless the sender was behind.
pub async fn deliver_append(
    raft: &Raft,
    elections: &Elections,
    request: AppendEntriesRequest<TypeConfig>,
) -> Result<AppendEntriesResponse<u64>, RaftError<u64>> {
    let answer = raft.append_entries(request).await;
    if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
        elections.heard_from_leader();
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
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>> {
    Json(group.raft.install_snapshot(request).await)
}

async fn pre_vote(State(group): State<Group>, Json(request): Json<PreVote>) -> Json<bool> {
    Json(group.elections.answer(&request).await)
}

/// Asks replicas for their pre-votes over HTTP, with the cluster secret.
#[derive(Clone)]
pub struct HttpPreVote {
    http: reqwest::Client,
}

impl HttpPreVote {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl PreVoteTransport for HttpPreVote {
    async fn ask(&self, _target: u64, node: &BasicNode, request: &PreVote) -> Option<bool> {
        let url = paths::RAFT_PRE_VOTE.url(&node.addr, &[]).ok()?;
        let response = self
            .http
            .post(url)
            .timeout(PRE_VOTE_TIMEOUT)
            .json(request)
            .send()
            .await
            .ok()?;
        response.error_for_status().ok()?.json().await.ok()
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
            url: node.addr.trim_end_matches('/').to_owned(),
        }
    }
}

pub struct Peer {
    http: reqwest::Client,
    target: u64,
    url: String,
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
        let url = route
            .url(&self.url, &[])
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let response = self
            .http
            .post(url)
            .timeout(option.hard_ttl())
            .json(request)
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
        self.call(paths::RAFT_APPEND, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> SnapshotAnswer {
        self.call(paths::RAFT_SNAPSHOT, &request, &option).await
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

const UNREACHABLE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
