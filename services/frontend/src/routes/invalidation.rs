//! The catalog's cache invalidation push (internal: it needs the shared secret).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use stocknet_common::wire::{Invalidation, FRONTEND_PROCESS};
use stocknet_common::{data, Json, Path};

use crate::upstream::catalog::forget_cached;
use crate::AppState;

pub(crate) async fn invalidate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    state.inner.cache.invalidate([name.as_str()]);
    data(serde_json::json!({ "success": true }))
}

/// The catalog's push: every stock one catalog update named, or the users one of whose keys
/// was revoked; one request per frontend.
pub(crate) async fn invalidate_many(
    State(state): State<AppState>,
    Json(request): Json<Invalidation>,
) -> Response {
    state
        .inner
        .cache
        .invalidate(request.names.iter().map(String::as_str));
    if request.all_users {
        state.inner.credentials.clear();
    } else if !request.users.is_empty() {
        state.inner.credentials.forget(&request.users);
    }
    // Counted once what it invalidates is dropped: counting it may renew the lease.
    if let Some(mark) = request.mark {
        let forget = || forget_cached(&state);
        state.inner.catalog_contact.pushed(mark, forget);
    }
    // Only values newer than those noted and sent: a push that timed out while this process
    // hung may arrive after later ones, or after the catalog's snapshot.
    let as_of = request.as_of;
    state.inner.remember_pushed(&request.stocks, as_of);
    state.inner.streams.publish_prices(request.stocks, as_of);
    // Which process took it: the catalog leaves this process out of pushes once it stops
    // probing (a hang), knowing that it trusts nothing it cached by then.
    let process = [(FRONTEND_PROCESS, state.inner.process.clone())];
    (process, data(serde_json::json!({ "success": true }))).into_response()
}
