//! The body of `POST /orders` and of `PUT /orders/{number}` as the API describes them, and
//! their validation: every field's type and bounds, fields that do not go together, unknown
//! fields refused; a valid order becomes the leader's `NewOrder`.

use serde::Serialize;
use serde_json::Value;
use stocknet_common::clock::parse_instant;
use stocknet_common::envelope::parse_json_object;
use stocknet_common::model::{check_client_order_id, LIMIT_TERMS_ONLY};
use stocknet_common::wire::{NewOrder, OrderChange, OrderType, PriceGuard};
use stocknet_common::{Price, SelfTrade, Side, Terms, TimeInForce};
use utoipa::ToSchema;

use crate::FrontendError;
use stocknet_common::catalog_file::is_name_text;

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
pub(super) struct PlaceOrder {
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
    #[schema(schema_with = expiry_schema)]
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
    pub(super) fn into_order(self, default_bps: u32, default_protection_bps: u32) -> NewOrder {
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

/// Largest tolerance an order may ask for (`max_deviation_bps`, `protection_bps`): 100%.
const MAX_BASIS_POINTS: u32 = 10_000;

pub(super) fn validate_order(body: &[u8]) -> Result<PlaceOrder, FrontendError> {
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
    let price = price_field(&fields, "price")?;
    let expected = price_field(&fields, "expected_price")?;
    let max_deviation_bps = basis_points(&fields, "max_deviation_bps")?;
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
    let protection_bps = basis_points(&fields, "protection_bps")?;
    let stop_price = price_field(&fields, "stop_price")?;
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
    // A market order against the house takes no term of a limit order, not even one spelled
    // as its default, which the leader cannot tell from none.
    let limit_terms = time_in_force.is_some()
        || expire_at.is_some()
        || post_only.is_some()
        || stp.is_some()
        || display_quantity.is_some()
        || stop_price.is_some();
    if limit_terms && price.is_none() && order_type.is_none() {
        return Err(bad(LIMIT_TERMS_ONLY));
    }
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
        _ => order.terms().check_new(order.price, order.quantity),
    }
    .map_err(bad)?;
    Ok(order)
}

/// `expire_at` as a body takes it: an instant as a query takes one, or milliseconds since the
/// epoch as a number.
fn expiry_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    let mut schema = stocknet_common::wire::instant_schema();
    if let RefOr::T(Schema::AnyOf(times)) = &mut schema {
        let number = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(stocknet_common::clock::LATEST_MS));
        times.items.push(number.into());
        times.examples = vec![serde_json::json!("2026-12-31T21:00:00Z")];
    }
    schema
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
pub(super) fn validate_change(body: &[u8]) -> Result<OrderChange, FrontendError> {
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    refuse_unknown_fields(&fields, &["quantity", "price"])?;
    let change = OrderChange {
        quantity: fields.get("quantity").map(validate_quantity).transpose()?,
        price: price_field(&fields, "price")?,
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
        return Ok(());
    }
    // Named up to a few: the answer to a body of a million made-up fields stays short.
    const NAMED: usize = 8;
    let mut named = unknown[..unknown.len().min(NAMED)].join(", ");
    if unknown.len() > NAMED {
        named.push_str(&format!(" and {} more", unknown.len() - NAMED));
    }
    Err(FrontendError::BadRequest(format!(
        "Unknown fields: {named} (known: {})",
        known.join(", ")
    )))
}

/// The field `name` of an order, if it has one: a whole number of basis points, 0 to 10000.
fn basis_points(
    fields: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<u32>, FrontendError> {
    let read = |value: &Value| {
        whole_number(value)
            .and_then(|bps| u32::try_from(bps).ok())
            .filter(|bps| *bps <= MAX_BASIS_POINTS)
    };
    optional_field(
        fields,
        name,
        read,
        "must be a whole number of basis points, 0 to 10000",
    )
}

/// Field `name` of a body, if it has one, as `read` takes it; a value `read` refuses is a 400
/// that names the field and says what `rule` says.
fn optional_field<T>(
    fields: &serde_json::Map<String, Value>,
    name: &str,
    read: impl FnOnce(&Value) -> Option<T>,
    rule: &str,
) -> Result<Option<T>, FrontendError> {
    let Some(value) = fields.get(name) else {
        return Ok(None);
    };
    read(value)
        .map(Some)
        .ok_or_else(|| FrontendError::BadRequest(format!("{name} {rule}")))
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

/// Price `field` of a body, if it has one; a bad one is refused by its name.
fn price_field(
    fields: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<Price>, FrontendError> {
    let read = |value: &Value| {
        value
            .as_f64()
            .and_then(|price| Price::from_f64(price).ok())
            .filter(|price| price.cents() > 0)
    };
    let rule = format!(
        "must be a positive number with at most 2 decimals, at most {}",
        Price::MAX
    );
    optional_field(fields, field, read, &rule)
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
            // Not one that only a double's rounding makes whole.
            (r#"{"name":"A","quantity":0.99999999999999999,"type":"buy"}"#, Some("Invalid JSON body: 0.99999999999999999 has more than 15 significant digits: it would be read as another number")),
            (r#"{"name":"A","quantity":"1","type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":99999999999,"type":"buy"}"#, Some("quantity is too large (at most 4294967295)")),
            (r#"{"name":"A","quantity":1,"type":"hold"}"#, Some("type must be \"buy\" or \"sell\"")),
            (r#"{"name":"","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"{"name":"a\nb","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"[1]"#, Some("Request body must be a JSON object")),
            // A limit order's terms, even their defaults, are not a house order's.
            (r#"{"name":"A","quantity":1,"type":"buy","time_in_force":"gtc"}"#, Some(LIMIT_TERMS_ONLY)),
            (r#"{"name":"A","quantity":1,"type":"buy","post_only":false}"#, Some(LIMIT_TERMS_ONLY)),
            (r#"{"name":"A","quantity":1,"type":"buy","stp":"cancel_newest"}"#, Some(LIMIT_TERMS_ONLY)),
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
                "expected_price must be a positive number with at most 2 decimals, at most 1000000000.00",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","price":1,"stop_price":0}"#,
                "stop_price must be a positive number with at most 2 decimals, at most 1000000000.00",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","stop_price":5}"#,
                "time_in_force, expire_at, post_only, stp, display_quantity and stop_price apply to limit orders: give a price",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","price":1,"time_in_force":"gtd","expire_at":253402300800000}"#,
                "expire_at must be at most 9999-12-31T23:59:59.999Z",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1}"#,
                "Unknown fields: a, b, c, d, e, f, g, h and 2 more (known: name, quantity, type, price, expected_price, max_deviation_bps, time_in_force, expire_at, post_only, stp, client_order_id, order_type, protection_bps, display_quantity, stop_price)",
            ),
        ] {
            match validate_order(body.as_bytes()) {
                Err(FrontendError::BadRequest(got)) => assert_eq!(got, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
