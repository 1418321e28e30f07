//! The replica's HTTP handlers: probes and metrics; the frontends' reads and writes (orders,
//! trades, book, candles, portfolio, audit, report, the feeds); the group's log pages and
//! membership steps. Every route but the probes and metrics needs the shared secret.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use stocknet_common::clock;
use stocknet_common::deadline::REQUEST_DEADLINE;
use stocknet_common::envelope::{bounded, RawBody};
use stocknet_common::model;
use stocknet_common::request_id;
use stocknet_common::wire::{
    self, AuditQuery, BatchAnswer, BatchedCall, BatchedCommand, CandleQuery, Candles, Changed,
    NewLearner, NewOrder, OrderChange, OrderPage, Placed, Trade, Voters, CLIENT_KEY_PREFIX,
    IDEMPOTENCY_KEY, MAX_BATCH, READ_FROM_LEADER, USER,
};
use stocknet_common::{data, ApiError, Json, Path, Query, Status};

use crate::audit::AuditFilter;
use crate::error::OrderError;
use crate::replica::{Caller, Replica};
use crate::AppState;

/// A read a frontend forwards (it carries [`READ_FROM_LEADER`]) is served only once this
/// replica has confirmed that it leads: never from a deposed leader or from a restarted one
/// that has not caught up (I12).
pub(crate) async fn confirm_leader_reads(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if request.headers().contains_key(READ_FROM_LEADER) {
        if let Err(e) = state.replica.confirm_leadership().await {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// `GET /metrics`: Prometheus metrics, open like the probes (they reveal no orders).
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.replica.refresh_metrics();
    stocknet_common::metrics::exposition(&state.replica.metrics().registry)
}

pub(crate) async fn health(State(state): State<AppState>) -> Response {
    data(state.replica.health())
}

/// `GET /members`: the group's membership as this replica knows it.
pub(crate) async fn members(State(state): State<AppState>) -> Response {
    data(state.replica.members())
}

/// `POST /members/learners` (leader only): replicate the log to a new replica.
pub(crate) async fn add_learner(
    State(state): State<AppState>,
    Json(learner): Json<NewLearner>,
) -> Result<Response, ApiError> {
    state.replica.add_learner(learner).await?;
    Ok(data(state.replica.members()))
}

/// `PUT /members/voters` (leader only): the voters the group should have.
pub(crate) async fn change_voters(
    State(state): State<AppState>,
    Json(voters): Json<Voters>,
) -> Result<Response, ApiError> {
    state.replica.change_voters(voters).await?;
    Ok(data(state.replica.members()))
}

/// Readiness: 200 once this replica knows its term's leader and is caught up with it
/// ([`Replica::is_ready`](crate::replica::Replica::is_ready)).
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.replica.is_ready() {
        data(serde_json::json!({ "ready": true }))
    } else {
        OrderError::NotReady.into_response()
    }
}

pub(crate) async fn place(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(order): Json<NewOrder>,
) -> Result<Response, ApiError> {
    write_alone(&state, &headers, BatchedCommand::Place(order)).await
}

/// A write that came on its own route, with its key and user in `headers`, run as a batch
/// runs each of its calls.
async fn write_alone(
    state: &AppState,
    headers: &HeaderMap,
    command: BatchedCommand,
) -> Result<Response, ApiError> {
    let call = BatchedCall {
        command,
        key: idempotency_key(headers),
        user: user(headers)?,
        request_id: None,
    };
    Ok(data(write(&state.replica, call).await?))
}

/// `POST /orders/batch`: writes a frontend gathered (placements, modifies, cancels), each
/// executed, logged (under its own request id) and answered as its own route would have: one
/// that is not such a call (an unknown field, from a newer frontend, say) is refused alone.
/// They go to the sequencer in the batch's order, at once, so that they share commit rounds.
/// The answer is a line per call ([`BatchAnswer`], see [`answer_lines`]).
pub(crate) async fn write_batch(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
    let calls: Vec<Result<BatchedCall, ApiError>> =
        match serde_json::from_slice::<Vec<BatchedCall>>(&body) {
            Ok(calls) => calls.into_iter().map(Ok).collect(),
            Err(_) => serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                .map_err(|e| ApiError::bad_request(format!("a batch of calls: {e}")))?
                .into_iter()
                .map(|call| {
                    serde_json::from_value(call)
                        .map_err(|e| ApiError::bad_request(format!("a call of the batch: {e}")))
                })
                .collect(),
        };
    if calls.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a batch holds at most {MAX_BATCH} calls"),
        ));
    }
    let writing: FuturesUnordered<_> = calls
        .into_iter()
        .enumerate()
        .map(|(index, call)| {
            let replica = state.replica.clone();
            let id = call.as_ref().ok().and_then(|c| c.request_id.clone());
            request_id::serve_as(id.as_deref(), async move {
                let written = match call {
                    Ok(call) => write(&replica, call).await,
                    Err(refused) => Err(refused),
                };
                let answer = match written {
                    Ok(written) => BatchAnswer {
                        index,
                        status: StatusCode::OK.as_u16(),
                        data: Some(written),
                        error: None,
                    },
                    Err(error) => BatchAnswer {
                        index,
                        status: error.status.as_u16(),
                        data: None,
                        error: Some(error.into_error_object()),
                    },
                };
                // The call's own line, under its id, as `served.rs` writes one per request.
                tracing::debug!(status = answer.status, "served a call of a batch");
                answer
            })
        })
        .collect();
    let mut lines = answer_lines(writing, deadline);
    // The first answers go with the headers, and with the end when they are all: one write,
    // and one wake-up of the frontend, where the headers alone would take one of their own.
    let first = lines.next().await;
    let lines = futures::stream::iter(first).chain(lines);
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// What a write answers with.
#[derive(Serialize)]
#[serde(untagged)]
enum Written {
    Placed(Placed),
    Changed(Changed),
}

/// A write, from a batch or its own route.
async fn write(replica: &Arc<Replica>, call: BatchedCall) -> Result<Written, ApiError> {
    let caller = Caller::new(call.key, call.user);
    Ok(match call.command {
        BatchedCommand::Place(order) => Written::Placed(replica.place(order, caller).await?),
        BatchedCommand::Modify { number, change } => {
            Written::Changed(replica.modify(number, change, caller).await?)
        }
        BatchedCommand::Cancel { number } => {
            Written::Changed(replica.cancel(number, caller).await?)
        }
        BatchedCommand::CancelByClientOrderId { client_order_id } => {
            let user = caller
                .user
                .ok_or_else(|| ApiError::bad_request(model::ANONYMOUS_CLIENT_ORDER_ID))?;
            Written::Changed(
                replica
                    .cancel_by_client_order_id(&client_order_id, caller.key, user)
                    .await?,
            )
        }
    })
}

/// The lines of a batch's answer: each order's as soon as it is decided, those decided
/// together in one chunk (one write), so that an order that needs no catalog round does not
/// wait for one that does. They end at `deadline`, as a request's answer would (a 408): the
/// frontend takes an order without a line as one whose outcome is unknown.
pub(crate) fn answer_lines<F, T>(
    answers: FuturesUnordered<F>,
    deadline: tokio::time::Instant,
) -> impl Stream<Item = Result<Vec<u8>, serde_json::Error>>
where
    F: Future<Output = BatchAnswer<T>>,
    T: serde::Serialize,
{
    answers
        .take_until(Box::pin(tokio::time::sleep_until(deadline)))
        .ready_chunks(MAX_BATCH)
        .map(|answers| {
            let mut chunk = Vec::new();
            for answer in answers {
                serde_json::to_writer(&mut chunk, &answer)?;
                chunk.push(b'\n');
            }
            Ok(chunk)
        })
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The user the frontend verified the request's API key for, if it had one.
pub(crate) fn user(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(USER)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| ApiError::bad_request("the user header must be a user id"))
        })
        .transpose()
}

/// `GET /audit`: the commands that reached a leader, newest first, filtered.
pub(crate) async fn audit_trail(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let filter = AuditFilter::parse(&query).map_err(ApiError::bad_request)?;
    let limit = page_size(query.limit)?;
    let before = match query.cursor.as_deref() {
        None => u64::MAX,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::bad_request("cursor is not one this API gave out"))?,
    };
    Ok(data(state.replica.audit(filter, before, limit).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportQuery {
    /// `YYYY-MM-DD`; today (UTC) when absent.
    date: Option<String>,
}

/// `GET /reports/daily?date=`: one UTC day of the market, from the book's tallies.
pub(crate) async fn daily_report(
    State(state): State<AppState>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let day = match query.date.as_deref() {
        Some(date) => clock::parse_day(date).map_err(ApiError::bad_request)?,
        None => clock::day_of(clock::now_millis()),
    };
    Ok(data(
        state
            .replica
            .read_book_off_runtime(move |book| book.daily_report(day))
            .await?,
    ))
}

/// `GET /portfolios/{user}`: the user's positions, from the committed log.
pub(crate) async fn portfolio(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let user: u64 = user
        .parse()
        .map_err(|_| ApiError::bad_request("User id must be a number"))?;
    let holdings = state
        .replica
        .read_book_off_runtime(move |book| book.holdings(user))
        .await?;
    Ok(data(holdings))
}

pub(crate) async fn modify_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    Json(change): Json<OrderChange>,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    write_alone(&state, &headers, BatchedCommand::Modify { number, change }).await
}

pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    write_alone(&state, &headers, BatchedCommand::Cancel { number }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientOrderId {
    client_order_id: String,
}

/// `DELETE /orders?client_order_id=`: cancels the user's open order with that client order id.
pub(crate) async fn cancel_by_client_order_id(
    State(state): State<AppState>,
    Query(query): Query<ClientOrderId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let client_order_id = query.client_order_id;
    let command = BatchedCommand::CancelByClientOrderId { client_order_id };
    write_alone(&state, &headers, command).await
}

/// Most items one page of a listing holds.
pub const MAX_PAGE: usize = 1_000;
/// Items a listing's page holds when the request does not say.
pub(crate) const DEFAULT_PAGE: usize = 100;

pub(crate) fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    bounded("limit", limit, DEFAULT_PAGE, MAX_PAGE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderFilter {
    name: Option<String>,
    status: Option<String>,
    /// Only this user's orders.
    user: Option<u64>,
    /// Only the order placed under this client `Idempotency-Key`, once committed.
    key: Option<String>,
    /// Only orders with this client order id.
    client_order_id: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /orders`: limit orders, newest first; the cursor is the last number of the previous
/// page.
pub(crate) async fn list_orders(
    State(state): State<AppState>,
    Query(filter): Query<OrderFilter>,
) -> Result<Response, ApiError> {
    let limit = page_size(filter.limit)?;
    let status = filter
        .status
        .as_deref()
        .map(|text| {
            // A refused order is not on the book: `rejected` would list nothing, ever.
            Status::parse(text)
                .filter(|status| *status != Status::Rejected)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "status must be open, partially_filled, filled, cancelled, expired or untriggered",
                    )
                })
        })
        .transpose()?;
    if let Some(id) = filter.client_order_id.as_deref() {
        // (Any price: only the id's text is checked here.)
        model::check_client_order_id(id, Some(stocknet_common::Price::from_cents(1)))
            .map_err(ApiError::bad_request)?;
    }
    let before = match filter.cursor.as_deref() {
        None => u64::MAX,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::bad_request("cursor is not one this API gave out"))?,
    };
    if let Some(key) = filter.key.as_deref() {
        if !wire::is_idempotency_key(key) {
            return Err(ApiError::bad_request(
                "key must be an Idempotency-Key: 1 to 128 visible ASCII characters",
            ));
        }
        let logged = format!("{CLIENT_KEY_PREFIX}{key}");
        let orders = state
            .replica
            .placed_under(&logged)
            .await?
            .filter(|(order, user)| {
                filter.name.as_ref().is_none_or(|name| *name == order.name)
                    && status.is_none_or(|status| status == order.status)
                    && filter.user.is_none_or(|wanted| *user == Some(wanted))
            })
            .map(|(order, _)| order)
            .into_iter()
            .collect();
        return Ok(data(OrderPage {
            orders,
            next_cursor: None,
        }));
    }
    let wanted = move |order: &crate::book::LimitOrder| {
        filter
            .name
            .as_deref()
            .is_none_or(|name| *order.name == *name)
            && status.is_none_or(|status| order.status() == status)
            && filter.user.is_none_or(|user| order.user == Some(user))
            && filter
                .client_order_id
                .as_deref()
                .is_none_or(|id| order.client_order_id() == Some(id))
    };
    let budget = (limit, crate::book::ORDERS_SCANNED, ORDERS_SCANNED_AT_ONCE);
    let view = |book: &crate::book::Book, order: &crate::book::LimitOrder| book.limit_view(order);
    let (orders, next) = state
        .replica
        .read_off_runtime(move |replica| {
            replica
                .book_store()
                .orders_page(before, budget, wanted, view)
        })
        .await?;
    Ok(data(OrderPage {
        orders,
        next_cursor: next.map(|number| number.to_string()),
    }))
}

/// How many records an order listing reads under one hold of the book's lock.
const ORDERS_SCANNED_AT_ONCE: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TradeFilter {
    name: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /trades`: trades after trade id `after`, oldest first.
pub(crate) async fn trades(
    State(state): State<AppState>,
    Query(filter): Query<TradeFilter>,
) -> Result<Response, ApiError> {
    let limit = page_size(filter.limit)?;
    let trades: Vec<Trade> = state
        .replica
        .read_book_off_runtime(move |book| {
            book.trades(filter.name.as_deref(), filter.after.unwrap_or(0), limit)
        })
        .await?;
    Ok(data(trades))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    after: u64,
    /// How long to wait for a new entry, in milliseconds (default and at most 20,000).
    wait_ms: Option<u64>,
}

/// `GET /feed?after=N`: the market events of the entries after N; a long poll that waits for
/// the next entry when there is none yet.
pub(crate) async fn feed(
    State(state): State<AppState>,
    Query(query): Query<FeedQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(20_000));
    data(state.replica.feed().wait_for_page(query.after, wait).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderFeedQuery {
    /// Only this user's updates; absent: everybody's (a frontend's shared poll).
    user: Option<u64>,
    after: u64,
    /// How long to wait for an update, in milliseconds (default and at most 20,000).
    wait_ms: Option<u64>,
}

/// `GET /feed/orders?user=U&after=N`: user U's order updates of the entries after N
/// (everybody's without `user`); a long poll that waits for one when there is none yet. An N
/// past the end of the log is refused by the leader, and left to it by any other replica (see
/// [`Replica::order_updates`]).
pub(crate) async fn order_feed(
    State(state): State<AppState>,
    Query(query): Query<OrderFeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(20_000));
    let updates = state.replica.order_updates(query.user, query.after, wait);
    Ok(data(updates.await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DepthQuery {
    depth: Option<usize>,
}

/// Price levels shown when the request does not say.
pub(crate) const DEFAULT_DEPTH: usize = 10;

/// `GET /book/{name}`: the best price levels of each side, aggregated.
pub(crate) async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DepthQuery>,
) -> Result<Response, ApiError> {
    let depth = bounded("depth", query.depth, DEFAULT_DEPTH, MAX_PAGE)?;
    Ok(data(
        state
            .replica
            .read_book_off_runtime(move |book| book.depth(&name, depth))
            .await?,
    ))
}

/// Candles a request gets when it gives no `from`.
pub(crate) const DEFAULT_CANDLES: u64 = 100;

/// `GET /candles/{name}`: the stock's candles of one interval in `[from, to)` (none if `from`
/// is not before `to`), at most [`MAX_PAGE`] of them, with where the next page starts.
pub(crate) async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<CandleQuery>,
) -> Result<Response, ApiError> {
    let interval = query.interval.unwrap_or_default();
    let width = interval.millis();
    let instant = |text: &Option<String>| {
        text.as_deref()
            .map(clock::parse_instant)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let to = instant(&query.to)?.unwrap_or_else(clock::now_millis);
    let from = instant(&query.from)?.unwrap_or(to.saturating_sub(DEFAULT_CANDLES * width));
    let stock = name.clone();
    let (applied, (candles, next)) = state
        .replica
        .read_book_off_runtime(move |book| {
            let candles = book.candles(&stock, width, (from, to), MAX_PAGE);
            (book.applied(), candles)
        })
        .await?;
    let candles = candles
        .into_iter()
        .map(|c| wire::Candle {
            time: clock::rfc3339(c.start),
            traded: c.traded,
        })
        .collect();
    Ok(data(Candles {
        name,
        interval,
        applied,
        candles,
        next_from: next.map(clock::rfc3339),
    }))
}

pub(crate) fn parse_number(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Order number must be a number"))
}

pub(crate) async fn lookup(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    // A recent order's view is read from memory, quicker than a hand-over to the blocking
    // pool (a reader checking what it just placed); an older one's may read the archive.
    let view = if state
        .replica
        .read_book(|book| book.view_in_memory(number))?
    {
        state.replica.order_view(number)?
    } else {
        state
            .replica
            .read_off_runtime(move |replica| replica.order_view(number))
            .await?
    };
    Ok(data(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    limit: Option<usize>,
}

/// `GET /orders/logs/{after}?limit=`: the log's lines after `after`, at most `limit` (1 to a
/// batch, a batch by default).
pub(crate) async fn orders_after(
    State(state): State<AppState>,
    Path(after): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let after = parse_number(&after)?;
    let batch = crate::replica::BATCH;
    let limit = bounded("limit", page.limit, batch, batch)?;
    Ok(data(state.replica.slice_after(after, limit)?))
}
