//! `GET /cluster`: the leader this frontend uses, each replica's and the catalog's health asked
//! now, and the breaker in front of the catalog.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use futures::future::join_all;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stocknet_common::client::call;
use stocknet_common::data;
use stocknet_common::envelope::DataEnvelope;
use stocknet_common::paths;
use stocknet_common::wire::{CatalogHealth, Health};
use stocknet_common::{BaseUrl, RemoteError};
use utoipa::ToSchema;

use crate::upstream::breaker::BreakerView;
use crate::AppState;

/// How long `GET /cluster` waits for each service's health.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(800);

/// One order replica as this frontend sees it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaView {
    pub id: u32,
    /// Answered its health check.
    pub up: bool,
    /// Resynced and serving.
    pub ready: bool,
    pub term: Option<u64>,
    /// The leader it follows.
    pub leader: Option<u32>,
    pub last_transaction: Option<u64>,
    pub applied: Option<u64>,
}

/// The catalog as this frontend sees it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogView {
    pub up: bool,
    pub applied: Option<u64>,
    pub term: Option<u64>,
    /// It waits for the order leader to catch it up after a power loss of its machine: its
    /// lookups answer 503 (this frontend's, stale) meanwhile.
    pub behind: bool,
    /// This frontend's breaker in front of it: while open, orders fail at once (503) and
    /// lookups answer stale.
    pub breaker: BreakerView,
}

/// The cluster: the leader this frontend uses, each replica's and the catalog's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub leader: Option<u32>,
    pub term: Option<u64>,
    /// By id.
    pub replicas: Vec<ReplicaView>,
    pub catalog: CatalogView,
}

/// The order leader this frontend sends orders to, each replica's health (term, leader, last
/// transaction, readiness) and the catalog's, asked now (each within 0.8 s).
#[utoipa::path(get, path = "/cluster", operation_id = "get_cluster", tag = "service",
    responses((status = 200, body = DataEnvelope<ClusterView>)))]
pub async fn cluster(State(state): State<AppState>) -> Response {
    let inner = &state.inner;
    let replicas = inner.leaders.replicas();
    let (answers, catalog) = tokio::join!(
        join_all(
            replicas
                .iter()
                .map(|peer| health::<Health>(&inner.http, &peer.url))
        ),
        health::<CatalogHealth>(&inner.http, &inner.catalog_url)
    );
    let mut replicas: Vec<ReplicaView> = replicas
        .iter()
        .zip(answers)
        .map(|(peer, answer)| {
            let health = answer.ok();
            ReplicaView {
                id: peer.id,
                up: health.is_some(),
                ready: health.as_ref().is_some_and(|h| h.ready),
                term: health.as_ref().map(|h| h.term),
                leader: health.as_ref().and_then(|h| h.leader),
                last_transaction: health.as_ref().map(|h| h.last_transaction),
                applied: health.as_ref().map(|h| h.applied),
            }
        })
        .collect();
    replicas.sort_by_key(|r| r.id);
    let catalog = catalog.ok();
    let leader = inner.leaders.current();
    data(ClusterView {
        leader: leader.as_ref().map(|l| l.id),
        term: leader.as_ref().map(|l| l.term),
        replicas,
        catalog: CatalogView {
            up: catalog.is_some(),
            applied: catalog.as_ref().map(|c| c.applied),
            term: catalog.as_ref().map(|c| c.term),
            behind: catalog.as_ref().is_some_and(|c| c.behind),
            breaker: inner.catalog_breaker.view(std::time::Instant::now()),
        },
    })
}

/// A service's `GET /health`, within [`HEALTH_TIMEOUT`].
async fn health<T: DeserializeOwned>(
    http: &reqwest::Client,
    base: &BaseUrl,
) -> Result<T, RemoteError> {
    let url = paths::HEALTH.url(base, &[])?;
    call(http.get(url).timeout(HEALTH_TIMEOUT)).await
}
