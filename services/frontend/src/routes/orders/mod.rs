//! Orders: placing, modifying and cancelling them (writes, under an idempotency key), and
//! reading them back from the leader.

mod body;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use stocknet_common::envelope::{ClientBody, DataEnvelope, ErrorEnvelope};
use stocknet_common::model::{check_client_order_id, ANONYMOUS_CLIENT_ORDER_ID};
use stocknet_common::paths;
use stocknet_common::wire::{
    is_idempotency_key, BatchedCall, BatchedCommand, Changed, OrderChange, OrderPage, OrderView,
    Placed, CLIENT_KEY_PREFIX, IDEMPOTENCY_KEY,
};
use stocknet_common::{data, request_id, Price, Query};
use utoipa::IntoParams;

use crate::credentials;
use crate::routes::answers::{
    BadQuery, NeedsKey, NoLeader, OrderChangeAnswers, UnknownStock, WriteAnswers,
};
use crate::routes::extract::{refuse_a_body, NoQuery, OrderNumber};
use crate::upstream::order_group;
use crate::{Answer, AppState, FrontendError};
use body::{validate_change, validate_order, PlaceOrder};

/// What a write starts from: its idempotency key, and the writer (the user its API key names,
/// if it carries one). It fails at once, with `Retry-After`, while the catalog's breaker is
/// open (the leader could not apply it to the catalog anyway), and when the API key cannot be
/// checked now: under the client's own key the answer is then 504 ([`WriteKey::unsent`]).
async fn write_start(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(WriteKey, Option<u64>), FrontendError> {
    let key = WriteKey::of(state, headers)?;
    if let Err(retry_after) = state.inner.catalog_breaker.admit() {
        return Err(key.unsent(FrontendError::CatalogDown { retry_after }));
    }
    let user = credentials::caller(state, headers)
        .await
        .map_err(|e| match e {
            FrontendError::CatalogUnavailable(_) | FrontendError::CatalogDown { .. } => {
                key.unsent(e)
            }
            refused => refused,
        })?;
    Ok((key, user))
}

/// The `Idempotency-Key` header, as the API's description shows it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes a header that handlers read from the `HeaderMap`
struct IdempotencyKey {
    /// 1–128 visible ASCII characters; a retry with the same key executes once.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: Option<String>,
}

/// Places an order: a market order against the house inventory without `price`, a limit
/// order on the stock's book with it. A retry with the same `Idempotency-Key` returns the
/// same transaction number and executes once.
#[utoipa::path(post, path = "/orders", operation_id = "place_order", tag = "orders",
    params(IdempotencyKey),
    request_body = PlaceOrder,
    security((), ("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Placed>),
        (status = 400, description = "A query parameter (it takes none), a malformed Idempotency-Key, or a malformed body: bad JSON, a field twice, an unknown or missing field, a bad value, or fields that do not go together: max_deviation_bps without expected_price; protection_bps without order_type market; order_type limit without price, market with one; expire_at without time_in_force gtd or gtd without it; post_only or display_quantity with ioc or fok; display_quantity not below quantity; stop_price with post_only, display_quantity, day or gtd; terms or client_order_id on a market order against the house; or, recorded as refused (reason quantity_overflow), a market sell that would take the house's quantity past what it can count", body = ErrorEnvelope),
        (status = 401, description = "An API key that is malformed, unknown or wrong, or none with a client_order_id", body = ErrorEnvelope),
        UnknownStock,
        (status = 409, description = "Refused, and recorded as refused (with reason and transaction_number): insufficient stock quantity (market orders; reason insufficient_quantity), the price is further than the tolerance from expected_price (reason price_moved, with current_price), a fok order cannot fill entirely now (would_not_fill), a post_only order would take liquidity (would_take_liquidity), a gtd order's expire_at had passed when it reached the book (expiry_passed), the client_order_id is one of the user's open orders' (duplicate_client_order_id), or a market order on the book found the other side empty (no_liquidity)", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    let inner = &state.inner;
    let order =
        validate_order(&body)?.into_order(inner.price_tolerance_bps, inner.market_protection_bps);
    let (key, user) = write_start(&state, &headers).await?;
    if order.client_order_id.is_some() && user.is_none() {
        return Err(FrontendError::Unauthorized(ANONYMOUS_CLIENT_ORDER_ID));
    }
    let name = order.name.clone();
    let placed: Placed = write_on_leader(&state, &key, user, &BatchedCommand::Place(order)).await?;
    // The catalog has already invalidated every frontend; this covers a frontend the catalog
    // could not reach.
    inner.cache.invalidate([name.as_str()]);
    inner.orders_placed.inc();
    Ok(data(placed))
}

/// A write's idempotency key: the client's `Idempotency-Key`, or one this frontend makes up,
/// under which its own retries of the request go. Both go to the log under
/// [`CLIENT_KEY_PREFIX`], so that a client told a made-up key (in a 504) can retry with it.
pub(crate) struct WriteKey {
    text: String,
    /// The client chose it: this request may be a retry of one that executed.
    from_client: bool,
}

impl WriteKey {
    fn of(state: &AppState, headers: &HeaderMap) -> Result<Self, FrontendError> {
        let Some(value) = credentials::single_header(headers, IDEMPOTENCY_KEY)? else {
            return Ok(Self {
                text: state.inner.next_write_key(),
                from_client: false,
            });
        };
        let text = value
            .to_str()
            .ok()
            .filter(|key| is_idempotency_key(key))
            .ok_or_else(|| {
                FrontendError::BadRequest(
                    "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
                )
            })?;
        Ok(Self {
            text: text.to_owned(),
            from_client: true,
        })
    }

    /// The answer to a write that is not sent now, for want of the catalog or a leader:
    /// `not_sent` (not executed) under a key of its own; under the client's key, which an
    /// earlier request may have executed, 504 with the key (I11: a 503 would say that what
    /// the key names never executed).
    fn unsent(&self, not_sent: FrontendError) -> FrontendError {
        if self.from_client {
            FrontendError::OutcomeUnknown {
                key: self.text.clone(),
            }
        } else {
            not_sent
        }
    }
}

/// Sends `command`, for `user` under the request's idempotency key ([`WriteKey`], as logged)
/// and its id, with the next batch of writes to the leader, through [`order_group::write`].
async fn write_on_leader<T: DeserializeOwned>(
    state: &AppState,
    key: &WriteKey,
    user: Option<u64>,
    command: &BatchedCommand,
) -> Result<T, FrontendError> {
    let logged_key = format!("{CLIENT_KEY_PREFIX}{}", key.text);
    let request_id = request_id::current().and_then(|id| id.to_str().ok().map(str::to_owned));
    let writes = &state.inner.writes;
    order_group::write(state, &key.text, key.from_client, |leader| {
        let call = BatchedCall {
            command: command.clone(),
            key: Some(logged_key.clone()),
            user,
            request_id: request_id.clone(),
        };
        let leader = leader.url.clone();
        async move { writes.write(leader, call).await }
    })
    .await
}

/// Changes an open limit order's total quantity and/or price. A smaller quantity at the same
/// price keeps its place in the queue; anything else sends it to the back (and may trade).
#[utoipa::path(put, path = "/orders/{number}", operation_id = "modify_order", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number of the limit order"), IdempotencyKey),
    security((), ("api_key" = [])),
    request_body = OrderChange,
    responses(
        (status = 200, body = DataEnvelope<Changed>),
        (status = 400, description = "Order number must be a number; a malformed Idempotency-Key, body or a query parameter (it takes none); or neither quantity nor price", body = ErrorEnvelope),
        OrderChangeAnswers,
        (status = 409, description = "No longer open, a quantity not above what is filled, a stop order not triggered yet (untriggered), or a post_only order whose new price would take liquidity (would_take_liquidity)", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn modify_order(
    State(state): State<AppState>,
    OrderNumber(number): OrderNumber,
    headers: HeaderMap,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    let change = validate_change(&body)?;
    change_on_leader(&state, &headers, number, Some(&change)).await
}

/// Cancels an open limit order.
#[utoipa::path(delete, path = "/orders/{number}", operation_id = "cancel_order", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number of the limit order"), IdempotencyKey),
    security((), ("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Changed>),
        (status = 400, description = "Order number must be a number; a malformed Idempotency-Key; a body that is not empty or {}, or a query parameter (it takes none)", body = ErrorEnvelope),
        OrderChangeAnswers,
        (status = 409, description = "No longer open", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    OrderNumber(number): OrderNumber,
    headers: HeaderMap,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    refuse_a_body(&body, "a cancel takes none: PUT changes a quantity")?;
    change_on_leader(&state, &headers, number, None).await
}

/// The query of `DELETE /orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClientOrderIdQuery {
    /// The client_order_id the order was placed with.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    client_order_id: String,
}

/// Cancels the caller's open limit order with this `client_order_id` (Binance's cancel by
/// `origClientOrderId`).
#[utoipa::path(delete, path = "/orders", operation_id = "cancel_order_by_client_order_id", tag = "orders",
    params(ClientOrderIdQuery, IdempotencyKey),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Changed>),
        (status = 400, description = "No client_order_id, a malformed one, or another parameter; a malformed Idempotency-Key; a body that is not empty or {}", body = ErrorEnvelope),
        NeedsKey,
        (status = 404, description = "None of the caller's open orders has this client_order_id", body = ErrorEnvelope),
        (status = 409, description = "The order closed before the cancel reached it", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn cancel_by_client_order_id(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(ClientOrderIdQuery {
        client_order_id: id,
    }): Query<ClientOrderIdQuery>,
    ClientBody(body): ClientBody,
) -> Answer {
    refuse_a_body(&body, "a cancel takes none")?;
    // (Any price: only the id's text is checked here.)
    check_client_order_id(&id, Some(Price::from_cents(1)))
        .map_err(|e| FrontendError::BadRequest(e.to_owned()))?;
    let (key, user) = write_start(&state, &headers).await?;
    let user = user.ok_or(FrontendError::Unauthorized(ANONYMOUS_CLIENT_ORDER_ID))?;
    let cancel = BatchedCommand::CancelByClientOrderId {
        client_order_id: id,
    };
    let changed: Changed = write_on_leader(&state, &key, Some(user), &cancel).await?;
    Ok(data(changed))
}

/// Sends a modify (`change`) or a cancel (none) of order `number` to the leader, under the
/// request's idempotency key.
async fn change_on_leader(
    state: &AppState,
    headers: &HeaderMap,
    number: u64,
    change: Option<&OrderChange>,
) -> Answer {
    let (key, user) = write_start(state, headers).await?;
    let command = match change {
        Some(change) => BatchedCommand::Modify {
            number,
            change: change.clone(),
        },
        None => BatchedCommand::Cancel { number },
    };
    let changed: Changed = write_on_leader(state, &key, user, &command).await?;
    Ok(data(changed))
}

/// Limit orders, newest first, a page at a time. One request looks at 100,000 orders at most,
/// so a page may hold fewer than `limit` orders, even none, and still have a `next_cursor`.
#[utoipa::path(get, path = "/orders", operation_id = "list_orders", tag = "orders",
    params(
        ("name" = Option<String>, Query, description = "Only this stock's"),
        ("status" = Option<String>, Query, description = "Only orders in this state (not rejected: a refused order is not on the book; GET /orders/{number} shows it)", pattern = "^(open|partially_filled|filled|cancelled|expired|untriggered)$"),
        ("user" = Option<u64>, Query, description = "Only this user's orders"),
        ("key" = Option<String>, Query, description = "Only the order placed under this Idempotency-Key (the client's, or the one a 504 named), if it was committed; none if no order was placed under the key (a modify's or cancel's key lists none: retry it to learn how it went); a 504 while a command under it is still being decided", min_length = 1, max_length = 128, pattern = "^[!-~]+$"),
        ("client_order_id" = Option<String>, Query, description = "Only orders with this client_order_id (with user: that user's)", pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor", pattern = "^[0-9]{1,19}$"),
    ),
    responses(
        (status = 200, body = DataEnvelope<OrderPage>),
        BadQuery,
        NoLeader,
        (status = 504, description = "With key: a command under it is still being decided (written and not committed, or queued at the leader); ask again", body = ErrorEnvelope),
    ))]
pub(crate) async fn list_orders(State(state): State<AppState>, uri: Uri) -> Answer {
    order_group::forward_read(&state, paths::ORDERS, &[], uri.query()).await
}

/// An order: the seed's fields and where it stands, with its trades.
#[utoipa::path(get, path = "/orders/{number}", operation_id = "get_order", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number")),
    responses(
        (status = 200, body = DataEnvelope<OrderView>),
        (status = 400, description = "Order number must be a number", body = ErrorEnvelope),
        (status = 404, description = "Order number invalid", body = ErrorEnvelope),
        NoLeader,
    ))]
pub(crate) async fn query_order(
    State(state): State<AppState>,
    OrderNumber(number): OrderNumber,
) -> Answer {
    order_group::forward_read(&state, paths::ORDER, &[&number.to_string()], None).await
}
