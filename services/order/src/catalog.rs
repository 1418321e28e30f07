//! The catalog as a leader uses it: its snapshot (to take over: the house's quantities and
//! how far the catalog applied the log) and applying committed entries under the leader's
//! term. Over HTTP in a real run; in memory in the replica simulation, so that the sequencer
//! and the catalog applier are tested without a network.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::wire::{ApplyOutcome, ApplyRequest, Snapshot};
use stocknet_common::{BaseUrl, RemoteError};

/// How long the leader waits for the catalog to apply a batch: its fsync and its invalidation
/// push (at most 1 s per frontend) fit, and a wait on a hung catalog still ends before a
/// frontend's 2 s deadline for the leader.
pub const CATALOG_TIMEOUT: Duration = Duration::from_millis(1500);

/// The catalog's side of the leader's calls. Each call answers (or fails) within
/// [`CATALOG_TIMEOUT`]; a failure with no answer says so (`RemoteError::Unreachable`).
pub trait Catalog: Send + Sync + 'static {
    /// `GET /snapshot`.
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, RemoteError>>;
    /// `POST /apply`: the entries' trades in order, idempotently; 409 for an older term or a
    /// gap.
    fn apply<'a>(
        &'a self,
        request: &'a ApplyRequest,
    ) -> BoxFuture<'a, Result<ApplyOutcome, RemoteError>>;
}

/// The catalog service at `url`, called with `http` (which carries the cluster secret).
pub struct HttpCatalog {
    http: reqwest::Client,
    url: BaseUrl,
}

impl HttpCatalog {
    pub fn new(http: reqwest::Client, url: &BaseUrl) -> Arc<Self> {
        Arc::new(Self {
            http,
            url: url.clone(),
        })
    }
}

impl Catalog for HttpCatalog {
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, RemoteError>> {
        Box::pin(async move {
            let url = paths::SNAPSHOT.url(&self.url, &[])?;
            call(self.http.get(url).timeout(CATALOG_TIMEOUT)).await
        })
    }

    fn apply<'a>(
        &'a self,
        request: &'a ApplyRequest,
    ) -> BoxFuture<'a, Result<ApplyOutcome, RemoteError>> {
        Box::pin(async move {
            let url = paths::APPLY.url(&self.url, &[])?;
            call(self.http.post(url).timeout(CATALOG_TIMEOUT).json(request)).await
        })
    }
}
