//! The catalog's handlers: probes and metrics; stock lookups and listings; and, for the order
//! leader and the frontends only, the snapshot, applying committed trades, and users and
//! their keys.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use stocknet_common::envelope::bounded;
use stocknet_common::file;
use stocknet_common::request_id;
use stocknet_common::wire::{
    stock_after, stock_cursor, ApplyRequest, CatalogHealth, Invalidation, NewKey, NewUser,
    Snapshot, StockPage, FRONTEND_PROCESS,
};
use stocknet_common::{data, ApiError, Json, Path, Query};

use crate::error::CatalogError;
use crate::users::{Revoked, UserStore};
use crate::AppState;

/// `GET /metrics`: Prometheus metrics, open like `/health`.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.refresh_metrics();
    stocknet_common::metrics::exposition(&state.metrics.registry)
}

/// `GET /health`, which the frontends probe (and Kubernetes). A frontend's probe names its
/// process: the catalog notes when each last probed (`pushes.rs`). A caller without the secret
/// (a frontend given another) is never granted the lease: nothing it cached is pushed to it.
pub(crate) async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (applied, term) = state.store.position();
    let (pushes, lease) = if state.secret.admits(&headers) {
        let process = headers.get(FRONTEND_PROCESS);
        let process = process.and_then(|name| name.to_str().ok());
        state.pushes.probed(process, Instant::now())
    } else {
        (state.pushes.mark(), false)
    };
    data(CatalogHealth {
        service: "catalog".to_owned(),
        applied,
        term,
        pushes,
        lease,
        behind: state.store.is_behind(),
    })
}

pub(crate) async fn lookup(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, CatalogError> {
    state.store.lookup(&name).map(data)
}

/// Most stocks one page of `GET /stocks` holds.
pub const MAX_PAGE: usize = 1_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    search: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /stocks?search=&limit=&cursor=`: stocks whose names contain `search`, any case, in
/// name order, a page at a time.
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = bounded("limit", query.limit, 100, MAX_PAGE)?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            stock_after(cursor)
                .ok_or_else(|| ApiError::bad_request("cursor is not one this API gave out"))?,
        ),
    };
    let search = query.search.unwrap_or_default();
    let (stocks, more) = state
        .store
        .list(&search, after.as_deref(), limit)
        .map_err(|e| ApiError::from(&e))?;
    let next_cursor = more
        .then(|| stocks.last().map(|s| stock_cursor(&s.name)))
        .flatten();
    Ok(data(StockPage {
        stocks,
        next_cursor,
    }))
}

/// `POST /users` (from a frontend): registers a user by the credential of their first key.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Json(request): Json<NewUser>,
) -> Result<Response, CatalogError> {
    let created = stocknet_common::clock::now_millis();
    let NewUser {
        credential,
        prefix,
        display_name,
    } = request;
    let turn = users_turn(&state).await?;
    let record = change_users(&state, turn, move |users| {
        users.create(credential, prefix, display_name, created)
    })
    .await?;
    tracing::info!(user = record.id, "user created");
    Ok(data(record))
}

/// How long a change of the users waits for the users' file's turn before it is refused with
/// nothing done (503): within a frontend's write deadline, so that the client is told it was
/// not made rather than that nobody knows (504).
pub(crate) const USER_TURN_WAIT: Duration = Duration::from_millis(1500);

/// Runs `change` on the user store on the blocking pool, in `turn` ([`users_turn`]): it
/// writes and fsyncs the users' file. (The turn is held until the change is done, even if its
/// caller goes away.)
pub(crate) async fn change_users<T: Send + 'static>(
    state: &AppState,
    turn: tokio::sync::OwnedSemaphorePermit,
    change: impl FnOnce(&UserStore) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    let users = state.users.clone();
    file::with_turn(turn, move || change(&users))
        .await
        .map_err(CatalogError::Task)?
}

/// The users' file's turn, if it comes within [`USER_TURN_WAIT`].
async fn users_turn(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, CatalogError> {
    let acquire = state.user_writes.clone().acquire_owned();
    tokio::time::timeout(USER_TURN_WAIT, acquire)
        .await
        .map_err(|_| CatalogError::UsersBusy)?
        .map_err(|e| CatalogError::Task(e.to_string()))
}

/// Runs `change` of `user`'s keys, then, if `made` says it changed anything, tells every
/// frontend reachable, in a task of its own: a caller that goes away drops the handler, and a
/// key revoked and not told would stay usable on the frontends that hold it. A change that
/// made nothing (a revocation repeated while the first one's push is on its way: a retry after
/// a 504, a second tab) is answered once the pushes of the user's changes written before it
/// are done.
async fn change_keys<T: Send + 'static>(
    state: &AppState,
    user: u64,
    change: impl FnOnce(&UserStore) -> Result<T, CatalogError> + Send + 'static,
    made: impl FnOnce(&T) -> bool + Send + 'static,
) -> Result<T, CatalogError> {
    let state = state.clone();
    request_id::spawn_whole(async move {
        let turn = users_turn(&state).await?;
        // Numbered in the file's turn, so in the order of the writes: one that finds the
        // change made finds this one's push among those before it.
        let pushing = state.key_pushes.start(user);
        let changed = change_users(&state, turn, change).await?;
        if made(&changed) {
            forget_credentials(&state, user).await;
        } else {
            pushing.after_earlier().await;
        }
        Ok(changed)
    })
    .await
    .map_err(|e| CatalogError::Task(e.to_string()))?
}

/// Tells every frontend reachable that `user`'s keys changed: they fetch them again.
async fn forget_credentials(state: &AppState, user: u64) {
    state
        .push(Invalidation {
            users: vec![user],
            ..Invalidation::default()
        })
        .await;
}

/// `GET /users/{id}`: a user and their keys' credentials, for a frontend verifying a key.
pub(crate) async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, CatalogError> {
    user_id(&id)
        .and_then(|id| state.users.live(id))
        .map(data)
        .ok_or(CatalogError::UserNotFound)
}

pub(crate) fn user_id(text: &str) -> Option<u64> {
    text.parse().ok()
}

/// `POST /users/{id}/keys` (from a frontend): another key for the user, answered once every
/// frontend reachable was told to fetch the user's keys again.
pub(crate) async fn add_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<NewKey>,
) -> Result<Response, CatalogError> {
    let user = user_id(&id).ok_or(CatalogError::UserNotFound)?;
    let created = stocknet_common::clock::now_millis();
    let add =
        move |users: &UserStore| users.add_key(user, request.credential, request.prefix, created);
    let key = change_keys(&state, user, add, |_| true).await?;
    tracing::info!(user, key = key.id, "key added");
    Ok(data(key))
}

/// `DELETE /users/{id}/keys/{key}` (from a frontend, or `stocknet admin`): revokes the key,
/// and answers once every frontend reachable was told to forget the user's credentials.
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, CatalogError> {
    let user = user_id(&id).ok_or(CatalogError::UserNotFound)?;
    let key: u32 = key.parse().map_err(|_| CatalogError::KeyNotFound)?;
    let time = stocknet_common::clock::now_millis();
    // A key revoked before is answered as it was, and tells nobody anything new: no push (a
    // client repeating it would make every frontend fetch the user's keys each time).
    let revoke = move |users: &UserStore| users.revoke(user, key, time);
    let revoked = change_keys(&state, user, revoke, |revoked: &Revoked| revoked.now).await?;
    tracing::info!(user, key, "key revoked");
    Ok(data(revoked.key))
}

pub(crate) async fn snapshot(State(state): State<AppState>) -> Response {
    data(Snapshot {
        boot: state.pushes.boot(),
        ..state.store.snapshot()
    })
}

pub(crate) async fn apply(
    State(state): State<AppState>,
    Json(request): Json<ApplyRequest>,
) -> Result<Response, CatalogError> {
    // Every stock the request changes, not only those changed now: when the catalog crashed
    // between writing a trade and invalidating (or syncing), the leader's resend must still
    // invalidate (and sync).
    let mut names: Vec<String> = request
        .trades
        .iter()
        .filter(|t| t.changes_stock())
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names.dedup();
    let applied = state.store.apply(&request)?;
    // A new leader's first apply (or its retry, if that one's push was cut short). The last
    // leader's last apply may have been taken here and its invalidation cut short (its call
    // dropped with it), and the new leader counts what is applied here as done: every frontend
    // drops every stock before it hears back.
    let new_term = request.term > state.pushed_term.load(Ordering::Acquire);
    // The leader batches entries of many requests: each line names its entry's request.
    for trade in request.trades.iter().filter(|t| t.request_id.is_some()) {
        let id = trade.request_id.as_deref().unwrap_or_default();
        tracing::debug!(request_id = %id, entry = trade.number, stock = trade.name, delta = trade.delta, "applied a committed entry");
    }
    let metrics = &state.metrics;
    // (Not a leader's look at where the catalog stands, which sends none.)
    if !request.trades.is_empty() {
        metrics.apply_trades.observe(request.trades.len() as f64);
    }
    // Trades wait for no fsync (see `store`): their journal lines become durable with the next
    // sync; lost in a power loss before it, the leader sends them again.
    let sync_due = state.store.needs_sync(Instant::now());
    if names.is_empty() && !new_term && !applied.caught_up && !sync_due {
        // Entries that change no stock: nothing to tell.
        state.offer_trial();
        return Ok(data(applied.outcome));
    }
    // The frontends refetch from memory, which holds only committed trades; so they may be told
    // while the disk works, and the answer waits for both.
    let sync = async {
        if !sync_due {
            return Ok(());
        }
        let store = state.store.clone();
        let fsync_seconds = metrics.fsync_seconds.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            store.sync();
            fsync_seconds.observe(started.elapsed().as_secs_f64());
        })
        .await
    };
    let invalidate = async {
        let started = std::time::Instant::now();
        // Caught up after a power loss: every stock as it is now, also to the price streams,
        // which were told only names meanwhile.
        if new_term || applied.caught_up {
            state.invalidate_everything(false).await;
            state.pushed_term.fetch_max(request.term, Ordering::AcqRel);
        } else {
            state.invalidate(names).await;
        }
        metrics
            .invalidation_seconds
            .observe(started.elapsed().as_secs_f64());
    };
    let (synced, ()) = tokio::join!(sync, invalidate);
    synced.map_err(|e| CatalogError::Task(e.to_string()))?;
    Ok(data(applied.outcome))
}
