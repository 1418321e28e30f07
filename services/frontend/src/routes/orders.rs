//! Orders: placing, modifying and cancelling them (writes, under an idempotency key), and
//! reading them back from the leader.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::Ordering;
use stocknet_common::client::call;
use stocknet_common::clock::parse_instant;
use stocknet_common::envelope::{parse_json_object, DataEnvelope, ErrorEnvelope, RawBody};
use stocknet_common::model::{check_client_order_id, ANONYMOUS_CLIENT_ORDER_ID};
use stocknet_common::paths;
use stocknet_common::wire::{
    Changed, NewOrder, OrderChange, OrderPage, OrderType, OrderView, Placed, PriceGuard,
    CLIENT_KEY_PREFIX, IDEMPOTENCY_KEY, USER,
};
use stocknet_common::{
    data, Price, Query, RemoteError, SelfTrade, Side, Status, Terms, TimeInForce,
};
use utoipa::{IntoParams, ToSchema};

use super::answers::{
    BadQuery, NeedsKey, NoLeader, OrderChangeAnswers, UnknownStock, WriteAnswers,
};
use super::extract::OrderNumber;
use crate::credentials;
use crate::routes::stocks::is_name_text;
use crate::upstream::leader::Leader;
use crate::upstream::order_group;
use crate::{Answer, AppState, FrontendError};

/// Orders fail at once, with `Retry-After`, while the catalog's breaker is open: the leader
/// could not apply them to the catalog anyway.
fn fail_fast_without_catalog(state: &AppState) -> Result<(), FrontendError> {
    state
        .inner
        .catalog_breaker
        .admit()
        .map_err(|retry_after| FrontendError::CatalogDown { retry_after })
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

/// Fields a `POST /orders` body may have.
const ORDER_FIELDS: [&str; 15] = [
    "name",
    "quantity",
    "type",
    "price",
    "expected_price",
    "max_deviation_bps",
    "time_in_force",
    "expire_at",
    "post_only",
    "stp",
    "client_order_id",
    "order_type",
    "protection_bps",
    "display_quantity",
    "stop_price",
];

/// A `POST /orders` body: the order, and the client's guard against a moved price, which the
/// leader checks as it sequences the order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    /// The stock.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    name: String,
    #[schema(minimum = 1)]
    quantity: u32,
    #[serde(rename = "type")]
    side: Side,
    /// Limit price; without one (and without `order_type`) the order is a market order against
    /// the house inventory, as in the seed API.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    price: Option<Price>,
    /// `limit` (needs `price`) or `market`: a market order against the book (no `price`), which
    /// takes the opposite side from its best price on, within `protection_bps`, as an `ioc`
    /// (default) or `fok` order; what does not fill is cancelled (409 `no_liquidity` if that
    /// side is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    order_type: Option<OrderType>,
    /// How far from the best opposite price a market order on the book may trade, in basis
    /// points (0–10000); the frontend's default (500: 5%) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10000, nullable = false)]
    protection_bps: Option<u32>,
    /// An iceberg: only this much of a resting limit order shows on the book at a time (at
    /// least 1, below `quantity`); each new slice goes to the back of its price level.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    display_quantity: Option<u32>,
    /// A stop order: it waits off the book until a trade of the stock is at or above this (a
    /// buy) or at or below it (a sell), then enters as placed: a limit order with `price`, a
    /// market order on the book with `order_type` `market`. With `gtc`, `ioc` or `fok`; not
    /// post-only or an iceberg. Its status is `untriggered` until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    stop_price: Option<Price>,
    /// Refuse the order (409, reason `price_moved`) if the stock's price is further than the
    /// tolerance from this.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    expected_price: Option<Price>,
    /// The tolerance in basis points (0–10000); the frontend's default (200: 2%) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10000, nullable = false)]
    max_deviation_bps: Option<u32>,
    /// A limit order's time in force: `gtc` (default) rests until filled or cancelled; `ioc`
    /// fills what it can now and cancels the rest; `fok` fills entirely now or is refused (409,
    /// reason `would_not_fill`); `day` expires at the end of the UTC day; `gtd` at `expire_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    time_in_force: Option<TimeInForce>,
    /// When a `gtd` order expires: RFC 3339, or milliseconds since the Unix epoch. Refused
    /// (409, reason `expiry_passed`) if it is not in the future when the leader sequences it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, example = "2026-12-31T21:00:00Z")]
    expire_at: Option<u64>,
    /// Refuse the order (409, reason `would_take_liquidity`) rather than let it trade on entry;
    /// not with `ioc` or `fok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    post_only: Option<bool>,
    /// Self-trade prevention, when this order would trade with a resting order of the same
    /// user: `cancel_newest` (default: this order's rest is cancelled), `cancel_oldest` (the
    /// resting one is), `cancel_both`, or `none` (they trade). Anonymous orders trade.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    stp: Option<SelfTrade>,
    /// Your own id for a limit order (needs an API key): unique among your open orders (409,
    /// reason `duplicate_client_order_id`, if not), shown with the order and in the audit
    /// trail; find it with `GET /orders?user=&client_order_id=`, cancel it with
    /// `DELETE /orders?client_order_id=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    client_order_id: Option<String>,
}

impl PlaceOrder {
    /// The order for the leader; a guard without its own tolerance gets `default_bps`, a market
    /// order on the book without its own protection `default_protection_bps`.
    fn into_order(self, default_bps: u32, default_protection_bps: u32) -> NewOrder {
        let terms = self.terms();
        let protection_bps = (self.order_type == Some(OrderType::Market))
            .then(|| self.protection_bps.unwrap_or(default_protection_bps));
        NewOrder {
            name: self.name,
            quantity: self.quantity,
            side: self.side,
            price: self.price,
            guard: self.expected_price.map(|expected| PriceGuard {
                expected,
                max_deviation_bps: self.max_deviation_bps.unwrap_or(default_bps),
            }),
            terms,
            client_order_id: self.client_order_id,
            protection_bps,
        }
    }

    fn terms(&self) -> Terms {
        let market = self.order_type == Some(OrderType::Market);
        Terms {
            time_in_force: self.time_in_force.unwrap_or(if market {
                TimeInForce::Ioc
            } else {
                TimeInForce::Gtc
            }),
            expire_at: self.expire_at,
            post_only: self.post_only.unwrap_or(false),
            self_trade: self.stp.unwrap_or_default(),
            display_quantity: self.display_quantity,
            stop_price: self.stop_price,
        }
    }
}

/// Largest tolerance an order may ask for: 100%.
const MAX_DEVIATION_BPS: u32 = 10_000;

fn validate_order(body: &[u8]) -> Result<PlaceOrder, FrontendError> {
    let bad = |message: &str| FrontendError::BadRequest(message.to_owned());
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    refuse_unknown_fields(&fields, &ORDER_FIELDS)?;
    let missing: Vec<&str> = ["name", "quantity", "type"]
        .into_iter()
        .filter(|field| !fields.contains_key(*field))
        .collect();
    if !missing.is_empty() {
        return Err(FrontendError::BadRequest(format!(
            "Missing required fields: {}",
            missing.join(", ")
        )));
    }
    let name = match &fields["name"] {
        Value::String(name) if is_name_text(name) => name.clone(),
        _ => return Err(bad(
            "name must be a non-empty string of at most 128 characters without control characters",
        )),
    };
    let quantity = validate_quantity(&fields["quantity"])?;
    let side = fields["type"]
        .as_str()
        .and_then(Side::parse)
        .ok_or_else(|| bad("type must be \"buy\" or \"sell\""))?;
    let price = fields.get("price").map(validate_price).transpose()?;
    let expected = fields
        .get("expected_price")
        .map(validate_price)
        .transpose()?;
    let max_deviation_bps = match fields.get("max_deviation_bps") {
        None => None,
        Some(value) => Some(
            whole_number(value)
                .and_then(|bps| u32::try_from(bps).ok())
                .filter(|bps| *bps <= MAX_DEVIATION_BPS)
                .ok_or_else(|| {
                    bad("max_deviation_bps must be a whole number of basis points, 0 to 10000")
                })?,
        ),
    };
    if expected.is_none() && max_deviation_bps.is_some() {
        return Err(bad("max_deviation_bps needs expected_price"));
    }
    let text = |field: &str| match fields.get(field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(FrontendError::BadRequest(format!(
            "{field} must be a string"
        ))),
    };
    let time_in_force = text("time_in_force")?
        .map(|t| {
            TimeInForce::parse(t)
                .ok_or_else(|| bad("time_in_force must be gtc, ioc, fok, day or gtd"))
        })
        .transpose()?;
    let stp = text("stp")?
        .map(|s| {
            SelfTrade::parse(s)
                .ok_or_else(|| bad("stp must be cancel_newest, cancel_oldest, cancel_both or none"))
        })
        .transpose()?;
    let post_only = match fields.get("post_only") {
        None => None,
        Some(Value::Bool(post_only)) => Some(*post_only),
        Some(_) => return Err(bad("post_only must be true or false")),
    };
    let expire_at = fields.get("expire_at").map(validate_expiry).transpose()?;
    let order_type = text("order_type")?
        .map(|t| match t {
            "limit" => Ok(OrderType::Limit),
            "market" => Ok(OrderType::Market),
            _ => Err(bad("order_type must be limit or market")),
        })
        .transpose()?;
    let protection_bps = match fields.get("protection_bps") {
        None => None,
        Some(value) => Some(
            whole_number(value)
                .and_then(|bps| u32::try_from(bps).ok())
                .filter(|bps| *bps <= MAX_DEVIATION_BPS)
                .ok_or_else(|| {
                    bad("protection_bps must be a whole number of basis points, 0 to 10000")
                })?,
        ),
    };
    let stop_price = fields.get("stop_price").map(validate_price).transpose()?;
    let display_quantity = fields
        .get("display_quantity")
        .map(|value| {
            whole_number(value)
                .and_then(|q| u32::try_from(q).ok())
                .ok_or_else(|| {
                    bad("display_quantity must be a whole number, at least 1 and below quantity")
                })
        })
        .transpose()?;
    match (order_type, price) {
        (Some(OrderType::Limit), None) => return Err(bad("order_type limit needs a price")),
        (Some(OrderType::Market), Some(_)) => {
            return Err(bad(
                "a market order (order_type market) has no price: protection_bps bounds it",
            ))
        }
        _ => {}
    }
    if protection_bps.is_some() && order_type != Some(OrderType::Market) {
        return Err(bad("protection_bps needs order_type market"));
    }
    // A market order on the book may carry a client order id like a limit order.
    let priced = price.or((order_type == Some(OrderType::Market)).then(|| Price::from_cents(1)));
    let client_order_id = text("client_order_id")?
        .map(|id| check_client_order_id(id, priced).map(|()| id.to_owned()))
        .transpose()
        .map_err(bad)?;
    let order = PlaceOrder {
        name,
        quantity,
        side,
        price,
        expected_price: expected,
        max_deviation_bps,
        time_in_force,
        expire_at,
        post_only,
        stp,
        client_order_id,
        order_type,
        protection_bps,
        display_quantity,
        stop_price,
    };
    // The same checks the leader makes.
    match order_type {
        Some(OrderType::Market) => order.terms().check_market(),
        _ => order.terms().check(order.price, order.quantity),
    }
    .map_err(bad)?;
    Ok(order)
}

/// A `gtd` order's `expire_at`: RFC 3339 or milliseconds since the epoch. Whether it is still
/// in the future the leader decides as it sequences the order (409 `expiry_passed` if not), so
/// that a retry of a logged order gets that order's answer whenever it comes.
fn validate_expiry(value: &Value) -> Result<u64, FrontendError> {
    let bad = || {
        FrontendError::BadRequest(
            "expire_at must be a time: RFC 3339 (2026-12-31T21:00:00Z) or milliseconds since the epoch"
                .into(),
        )
    };
    match value {
        Value::String(text) => parse_instant(text).map_err(|_| bad()),
        number => whole_number(number).ok_or_else(bad),
    }
}

/// A `PUT /orders/{number}` body: a new total quantity, a new price, or both.
fn validate_change(body: &[u8]) -> Result<OrderChange, FrontendError> {
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    refuse_unknown_fields(&fields, &["quantity", "price"])?;
    let change = OrderChange {
        quantity: fields.get("quantity").map(validate_quantity).transpose()?,
        price: fields.get("price").map(validate_price).transpose()?,
    };
    if change.quantity.is_none() && change.price.is_none() {
        return Err(FrontendError::BadRequest(
            "give a new quantity, a new price or both".into(),
        ));
    }
    Ok(change)
}

fn refuse_unknown_fields(
    fields: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<(), FrontendError> {
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|field| !known.contains(field))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(FrontendError::BadRequest(format!(
            "Unknown fields: {} (known: {})",
            unknown.join(", "),
            known.join(", ")
        )))
    }
}

/// A JSON number that is a whole non-negative number: JSON Schema's `integer` includes `5.0`.
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let number = value.as_f64()?;
        // Below 2^53 every whole f64 is exact, and quantities and tolerances are far below.
        (number.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&number))
            .then_some(number as u64)
    })
}

fn validate_quantity(value: &Value) -> Result<u32, FrontendError> {
    let bad = |message: &str| FrontendError::BadRequest(message.to_owned());
    match whole_number(value) {
        Some(0) | None => Err(bad("quantity must be a positive integer")),
        Some(quantity) => {
            u32::try_from(quantity).map_err(|_| bad("quantity is too large (at most 4294967295)"))
        }
    }
}

fn validate_price(value: &Value) -> Result<Price, FrontendError> {
    value
        .as_f64()
        .and_then(|price| Price::from_f64(price).ok())
        .filter(|price| price.cents() > 0)
        .ok_or_else(|| {
            FrontendError::BadRequest(format!(
                "price must be a positive number with at most 2 decimals, at most {}",
                Price::MAX
            ))
        })
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
        (status = 400, description = "Malformed body: bad JSON, a field twice, an unknown or missing field, a bad value, or fields that do not go together: max_deviation_bps without expected_price; protection_bps without order_type market; order_type limit without price, market with one; expire_at without time_in_force gtd or gtd without it; post_only or display_quantity with ioc or fok; display_quantity not below quantity; stop_price with post_only, display_quantity, day or gtd; terms or client_order_id on a market order against the house; or, recorded as refused (reason quantity_overflow), a market sell that would take the house's quantity past what it can count", body = ErrorEnvelope),
        (status = 401, description = "An API key that is malformed, unknown or wrong, or none with a client_order_id", body = ErrorEnvelope),
        UnknownStock,
        (status = 409, description = "Refused, and recorded as refused (with reason and transaction_number): insufficient stock quantity (market orders; reason insufficient_quantity), the price is further than the tolerance from expected_price (reason price_moved, with current_price), a fok order cannot fill entirely now (would_not_fill), a post_only order would take liquidity (would_take_liquidity), a gtd order's expire_at had passed when it reached the book (expiry_passed), the client_order_id is one of the user's open orders' (duplicate_client_order_id), or a market order on the book found the other side empty (no_liquidity)", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Answer {
    let inner = &state.inner;
    let order =
        validate_order(&body)?.into_order(inner.price_tolerance_bps, inner.market_protection_bps);
    fail_fast_without_catalog(&state)?;
    let user = credentials::caller(&state, &headers).await?;
    if order.client_order_id.is_some() && user.is_none() {
        return Err(FrontendError::Unauthorized(ANONYMOUS_CLIENT_ORDER_ID));
    }
    let placed: Placed = write_on_leader(&state, &headers, user, |leader| {
        Ok(inner.http.post(leader.orders_url.clone()).json(&order))
    })
    .await?;
    // The catalog has already invalidated every frontend; this covers a frontend the catalog
    // could not reach.
    inner.cache.invalidate([order.name.as_str()]);
    inner.orders_placed.inc();
    Ok(data(placed))
}

/// The client's `Idempotency-Key`, or one this frontend makes up, under which its own retries
/// of the request go. Both go to the log under [`CLIENT_KEY_PREFIX`], so that a client told a
/// made-up key (in a 504) can retry with it.
fn idempotency_key(state: &AppState, headers: &HeaderMap) -> Result<String, FrontendError> {
    let inner = &state.inner;
    Ok(match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => value
            .to_str()
            .ok()
            .filter(|key| {
                (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                FrontendError::BadRequest(
                    "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
                )
            })?
            .to_owned(),
        None => format!(
            "{}-{}",
            inner.key_prefix,
            inner.next_key.fetch_add(1, Ordering::Relaxed)
        ),
    })
}

/// Sends a write, which `request` makes for a leader, under the request's idempotency key
/// (see [`idempotency_key`]) and for `user`, through [`order_group::write`].
async fn write_on_leader<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    user: Option<u64>,
    request: impl Fn(&Leader) -> Result<reqwest::RequestBuilder, RemoteError>,
) -> Result<T, FrontendError> {
    let key = idempotency_key(state, headers)?;
    let logged_key = format!("{CLIENT_KEY_PREFIX}{key}");
    order_group::write(state, &key, |leader| {
        let request = request(leader).map(|request| {
            let request = request.header(IDEMPOTENCY_KEY, logged_key.as_str());
            match user {
                Some(user) => request.header(USER, user),
                None => request,
            }
        });
        async move { call::<T>(request?).await }
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
        (status = 400, description = "Malformed body, or neither quantity nor price", body = ErrorEnvelope),
        OrderChangeAnswers,
        (status = 409, description = "No longer open, or a quantity not above what is filled", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn modify_order(
    State(state): State<AppState>,
    OrderNumber(number): OrderNumber,
    headers: HeaderMap,
    RawBody(body): RawBody,
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
        (status = 400, description = "Order number must be a number, or a malformed Idempotency-Key", body = ErrorEnvelope),
        OrderChangeAnswers,
        (status = 409, description = "No longer open", body = ErrorEnvelope),
        WriteAnswers,
    ))]
pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    OrderNumber(number): OrderNumber,
    headers: HeaderMap,
) -> Answer {
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
        (status = 400, description = "No client_order_id, a malformed one, or another parameter", body = ErrorEnvelope),
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
) -> Answer {
    // (Any price: only the id's text is checked here.)
    check_client_order_id(&id, Some(Price::from_cents(1)))
        .map_err(|e| FrontendError::BadRequest(e.to_owned()))?;
    fail_fast_without_catalog(&state)?;
    let user = credentials::caller(&state, &headers)
        .await?
        .ok_or(FrontendError::Unauthorized(ANONYMOUS_CLIENT_ORDER_ID))?;
    let changed: Changed = write_on_leader(&state, &headers, Some(user), |leader| {
        let url = paths::ORDERS.url(&leader.url, &[])?;
        Ok(state
            .inner
            .http
            .delete(url)
            .query(&[("client_order_id", id.as_str())]))
    })
    .await?;
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
    fail_fast_without_catalog(state)?;
    let user = credentials::caller(state, headers).await?;
    let changed: Changed = write_on_leader(state, headers, user, |leader| {
        let url = paths::ORDER.url(&leader.url, &[&number.to_string()])?;
        let http = &state.inner.http;
        Ok(match change {
            Some(change) => http.put(url).json(change),
            None => http.delete(url),
        })
    })
    .await?;
    Ok(data(changed))
}

/// Limit orders, newest first, a page at a time. One request looks at 100,000 orders at most,
/// so a page may hold fewer than `limit` orders, even none, and still have a `next_cursor`.
#[utoipa::path(get, path = "/orders", operation_id = "list_orders", tag = "orders",
    params(
        ("name" = Option<String>, Query, description = "Only this stock's"),
        ("status" = Option<Status>, Query, description = "Only orders in this state"),
        ("user" = Option<u64>, Query, description = "Only this user's orders"),
        ("key" = Option<String>, Query, description = "Only the order placed under this Idempotency-Key (the client's, or the one a 504 named), if it was committed"),
        ("client_order_id" = Option<String>, Query, description = "Only orders with this client_order_id (with user: that user's)", pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor", pattern = "^[0-9]{1,19}$"),
    ),
    responses(
        (status = 200, body = DataEnvelope<OrderPage>),
        BadQuery,
        NoLeader,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_validation_messages() {
        let cases = [
            (r#"{"name":"A","quantity":1,"type":"buy"}"#, None),
            (r#"{"name":"A","quantity":1}"#, Some("Missing required fields: type")),
            (r#"{"name":"A","quantity":0,"type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":-3,"type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":1.5,"type":"buy"}"#, Some("quantity must be a positive integer")),
            // JSON Schema's integers include whole numbers written with a fraction.
            (r#"{"name":"A","quantity":5.0,"type":"buy"}"#, None),
            (r#"{"name":"A","quantity":"1","type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":99999999999,"type":"buy"}"#, Some("quantity is too large (at most 4294967295)")),
            (r#"{"name":"A","quantity":1,"type":"hold"}"#, Some("type must be \"buy\" or \"sell\"")),
            (r#"{"name":"","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"{"name":"a\nb","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"[1]"#, Some("Request body must be a JSON object")),
        ];
        for (body, expected) in cases {
            match (validate_order(body.as_bytes()), expected) {
                (Ok(_), None) => {}
                (Err(FrontendError::BadRequest(message)), Some(expected)) => {
                    assert_eq!(message, expected, "{body}")
                }
                (other, _) => panic!("{body}: unexpected {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod terms_tests {
    use super::*;

    #[test]
    fn terms_are_validated_and_sent_to_the_leader() {
        let body = br#"{"name":"A","quantity":1,"type":"buy","price":10,"time_in_force":"gtd","expire_at":"2100-01-01T00:00:00Z","post_only":true,"stp":"cancel_both"}"#;
        let order = validate_order(body).unwrap().into_order(200, 500);
        assert_eq!(
            order.terms,
            Terms {
                time_in_force: TimeInForce::Gtd,
                expire_at: Some(4_102_444_800_000),
                post_only: true,
                self_trade: SelfTrade::CancelBoth,
                display_quantity: None,
                stop_price: None,
            }
        );
        let iceberg = br#"{"name":"A","quantity":10,"type":"buy","price":10,"display_quantity":3}"#;
        let terms = validate_order(iceberg).unwrap().into_order(200, 500).terms;
        assert_eq!(terms.display_quantity, Some(3));
        for (quantity, display) in [(10, "10"), (10, "0"), (10, "1.5"), (10, "\"3\"")] {
            let body = format!(
                r#"{{"name":"A","quantity":{quantity},"type":"buy","price":10,"display_quantity":{display}}}"#
            );
            assert!(
                matches!(validate_order(body.as_bytes()), Err(FrontendError::BadRequest(m)) if m.contains("display_quantity")),
                "{body}"
            );
        }
        let body = br#"{"name":"A","quantity":1,"type":"buy","price":10,"time_in_force":"gtd","expire_at":4102444800000}"#;
        let order = validate_order(body).unwrap().into_order(200, 500);
        assert_eq!(order.terms.expire_at, Some(4_102_444_800_000));
        let body = br#"{"name":"A","quantity":1,"type":"sell","price":10,"time_in_force":"ioc","stp":"none"}"#;
        let terms = validate_order(body).unwrap().into_order(200, 500).terms;
        assert_eq!(
            (terms.time_in_force, terms.self_trade),
            (TimeInForce::Ioc, SelfTrade::None)
        );
        let plain = br#"{"name":"A","quantity":1,"type":"buy","price":10}"#;
        assert_eq!(
            validate_order(plain).unwrap().into_order(200, 500).terms,
            Terms::default()
        );

        let future = r#""expire_at":"2100-01-01T00:00:00Z""#;
        let expiry_error = "expire_at must be a time: RFC 3339 (2026-12-31T21:00:00Z) or milliseconds since the epoch";
        for (fields, message) in [
            (
                r#""time_in_force":"gfd""#.to_owned(),
                "time_in_force must be gtc, ioc, fok, day or gtd",
            ),
            (
                r#""time_in_force":1"#.to_owned(),
                "time_in_force must be a string",
            ),
            (
                r#""stp":"cancel""#.to_owned(),
                "stp must be cancel_newest, cancel_oldest, cancel_both or none",
            ),
            (
                r#""post_only":"yes""#.to_owned(),
                "post_only must be true or false",
            ),
            (
                r#""time_in_force":"gtd""#.to_owned(),
                "time_in_force gtd needs expire_at",
            ),
            (future.to_owned(), "expire_at needs time_in_force gtd"),
            (
                r#""time_in_force":"gtd","expire_at":"tomorrow""#.to_owned(),
                expiry_error,
            ),
            (
                r#""time_in_force":"gtd","expire_at":-5"#.to_owned(),
                expiry_error,
            ),
            (
                r#""time_in_force":"fok","post_only":true"#.to_owned(),
                "a post_only order rests: time_in_force ioc or fok cannot go with it",
            ),
        ] {
            let body = format!(r#"{{"name":"A","quantity":1,"type":"buy","price":10,{fields}}}"#);
            match validate_order(body.as_bytes()) {
                Err(FrontendError::BadRequest(got)) => assert_eq!(got, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // A market order on the book: ioc by default, the frontend's protection unless it
        // names its own, and none of a resting order's terms.
        let market = br#"{"name":"A","quantity":3,"type":"buy","order_type":"market"}"#;
        let order = validate_order(market).unwrap().into_order(200, 500);
        assert_eq!(
            (order.price, order.protection_bps, order.terms.time_in_force),
            (None, Some(500), TimeInForce::Ioc)
        );
        let market = br#"{"name":"A","quantity":3,"type":"sell","order_type":"market","protection_bps":50,"time_in_force":"fok","client_order_id":"m-1"}"#;
        let order = validate_order(market).unwrap().into_order(200, 500);
        assert_eq!(
            (order.protection_bps, order.terms.time_in_force),
            (Some(50), TimeInForce::Fok)
        );
        let limit = br#"{"name":"A","quantity":3,"type":"sell","order_type":"limit","price":9}"#;
        assert_eq!(
            validate_order(limit)
                .unwrap()
                .into_order(200, 500)
                .protection_bps,
            None
        );
        for (fields, message) in [
            (r#""order_type":"stop""#, "order_type must be limit or market"),
            (r#""order_type":"limit""#, "order_type limit needs a price"),
            (r#""order_type":"market","price":5"#, "a market order (order_type market) has no price: protection_bps bounds it"),
            (r#""protection_bps":5"#, "protection_bps needs order_type market"),
            (r#""order_type":"market","protection_bps":10001"#, "protection_bps must be a whole number of basis points, 0 to 10000"),
            (r#""order_type":"market","time_in_force":"gtc""#, "a market order trades now: time_in_force ioc (its default) or fok, and no post_only, expire_at or display_quantity"),
            (r#""order_type":"market","post_only":true"#, "a market order trades now: time_in_force ioc (its default) or fok, and no post_only, expire_at or display_quantity"),
        ] {
            let body = format!(r#"{{"name":"A","quantity":1,"type":"buy",{fields}}}"#);
            match validate_order(body.as_bytes()) {
                Err(FrontendError::BadRequest(got)) => assert_eq!(got, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // A stop order: gtc, ioc or fok, not post-only or an iceberg.
        let stop = br#"{"name":"A","quantity":2,"type":"buy","price":10,"stop_price":9.5}"#;
        let terms = validate_order(stop).unwrap().into_order(200, 500).terms;
        assert_eq!(terms.stop_price, Some(Price::from_cents(950)));
        let stop_market =
            br#"{"name":"A","quantity":2,"type":"sell","order_type":"market","stop_price":9}"#;
        let order = validate_order(stop_market).unwrap().into_order(200, 500);
        assert_eq!(
            (order.protection_bps, order.terms.stop_price),
            (Some(500), Some(Price::from_cents(900)))
        );
        for fields in [
            r#""stop_price":9,"post_only":true"#,
            r#""stop_price":9,"time_in_force":"day""#,
            r#""stop_price":0"#,
        ] {
            let body = format!(r#"{{"name":"A","quantity":2,"type":"buy","price":10,{fields}}}"#);
            assert!(
                matches!(
                    validate_order(body.as_bytes()),
                    Err(FrontendError::BadRequest(_))
                ),
                "{body}"
            );
        }
        // A market order (no price) takes no terms.
        let market = br#"{"name":"A","quantity":1,"type":"buy","time_in_force":"ioc"}"#;
        assert!(matches!(
            validate_order(market),
            Err(FrontendError::BadRequest(m)) if m.contains("apply to limit orders")
        ));
    }
}

#[cfg(test)]
mod price_check_tests {
    use super::*;

    #[test]
    fn the_guard_is_validated_and_sent_with_the_default_tolerance_filled_in() {
        let body = br#"{"name":"A","quantity":1,"type":"buy","expected_price":15.99,"max_deviation_bps":50}"#;
        let order = validate_order(body).unwrap().into_order(200, 500);
        assert_eq!(order.price, None);
        let guard = |bps| {
            Some(PriceGuard {
                expected: Price::from_cents(1599),
                max_deviation_bps: bps,
            })
        };
        assert_eq!(order.guard, guard(50));
        let body = br#"{"name":"A","quantity":1,"type":"buy","expected_price":15.99}"#;
        assert_eq!(
            validate_order(body).unwrap().into_order(200, 500).guard,
            guard(200)
        );
        let body = br#"{"name":"A","quantity":1,"type":"buy"}"#;
        assert_eq!(
            validate_order(body).unwrap().into_order(200, 500).guard,
            None
        );
        for (body, message) in [
            (
                r#"{"name":"A","quantity":1,"type":"buy","max_deviation_bps":50}"#,
                "max_deviation_bps needs expected_price",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","expected_price":1,"max_deviation_bps":10001}"#,
                "max_deviation_bps must be a whole number of basis points, 0 to 10000",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","expected_price":-1}"#,
                "price must be a positive number with at most 2 decimals, at most 1000000000.00",
            ),
        ] {
            match validate_order(body.as_bytes()) {
                Err(FrontendError::BadRequest(got)) => assert_eq!(got, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
