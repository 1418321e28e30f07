//! Domain types that cross service boundaries: sides, prices, stocks and the entries of the
//! replicated order log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::DAY_MS;

/// The side of an order, spelled as the public API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "buy" => Some(Self::Buy),
            "sell" => Some(Self::Sell),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }

    /// How a market order changes the catalog's quantity: a buy takes shares out of it.
    pub fn delta(self, quantity: u32) -> i64 {
        match self {
            Self::Buy => -i64::from(quantity),
            Self::Sell => i64::from(quantity),
        }
    }

    pub fn opposite(self) -> Self {
        match self {
            Self::Buy => Self::Sell,
            Self::Sell => Self::Buy,
        }
    }
}

/// A price in integer cents. On the wire it is a JSON number with at most two decimals
/// (`15.99`); in files, the same decimal text. Arithmetic never goes through floats: a float
/// is only parsed at the edge and accepted when it is exactly some number of cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Price(u64);

/// Why a price was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price must be a non-negative number with at most 2 decimals")]
    Malformed,
    #[error("price must be at most {}", Price::MAX)]
    TooLarge,
}

impl Price {
    /// One billion: far above any stock price, and every cent below it is an exact `f64`.
    pub const MAX: Price = Price(100_000_000_000);

    pub const fn from_cents(cents: u64) -> Self {
        Self(cents)
    }

    pub const fn cents(self) -> u64 {
        self.0
    }

    /// The price `value` denotes if it is a whole number of cents in range.
    pub fn from_f64(value: f64) -> Result<Self, PriceError> {
        if !value.is_finite() || value < 0.0 {
            return Err(PriceError::Malformed);
        }
        if value > Self::MAX.as_f64() {
            return Err(PriceError::TooLarge);
        }
        let cents = (value * 100.0).round();
        // Exact for every decimal with at most two places: both sides are the double nearest it.
        if cents / 100.0 != value {
            return Err(PriceError::Malformed);
        }
        Ok(Self(cents as u64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl FromStr for Price {
    type Err = PriceError;

    /// Decimal text: digits, optionally a point and one or two more digits.
    fn from_str(text: &str) -> Result<Self, PriceError> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 2 {
            return Err(PriceError::Malformed);
        }
        if text.ends_with('.') {
            return Err(PriceError::Malformed);
        }
        let whole: u64 = whole.parse().map_err(|_| PriceError::TooLarge)?;
        let fraction: u64 = format!("{fraction:0<2}")
            .parse()
            .map_err(|_| PriceError::Malformed)?;
        let cents = whole
            .checked_mul(100)
            .and_then(|c| c.checked_add(fraction))
            .filter(|&c| c <= Self::MAX.0)
            .ok_or(PriceError::TooLarge)?;
        Ok(Self(cents))
    }
}

impl utoipa::PartialSchema for Price {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some(
                "A price: at most 2 decimals (whole cents), at most 1000000000.",
            ))
            .minimum(Some(0.01))
            .maximum(Some(Price::MAX.as_f64()))
            .multiple_of(Some(0.01))
            .examples([serde_json::json!(15.99)])
            .into()
    }
}

impl ToSchema for Price {}

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Price;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative price with at most 2 decimals")
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Price, E> {
                Price::from_f64(value).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Price, E> {
                value
                    .checked_mul(100)
                    .map(Price)
                    .filter(|p| *p <= Price::MAX)
                    .ok_or_else(|| E::custom(PriceError::TooLarge))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Price, E> {
                let value = u64::try_from(value).map_err(|_| E::custom(PriceError::Malformed))?;
                self.visit_u64(value)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Price, E> {
                text.trim().parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An amount of money in integer cents that may be negative (a profit or loss, a short
/// position's value). On the wire, a JSON number with at most two decimals: exact to the
/// cent within ±2^53 cents (about 90 trillion), as every JSON reader's doubles are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i128);

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0 as f64 / 100.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        let cents = (value * 100.0).round();
        if !cents.is_finite() || cents.abs() > 9.0e15 || cents / 100.0 != value {
            return Err(serde::de::Error::custom(
                "an amount with at most 2 decimals",
            ));
        }
        Ok(Self(cents as i128))
    }
}

impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some(
                "An amount of money, possibly negative, in whole cents.",
            ))
            .multiple_of(Some(0.01))
            .examples([serde_json::json!(-12.5)])
            .into()
    }
}

impl ToSchema for Money {}

/// The lifecycle of an order, as the public API spells it. A market order is filled (or
/// refused) when it is acknowledged; a limit order is open until it fills or is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    PartiallyFilled,
    Filled,
    Cancelled,
    /// Reached its time in force's expiry (`day`, `gtd`) while open.
    Expired,
    /// A stop order waiting for its trigger, off the book.
    Untriggered,
    /// Refused by the leader (see its audit record for why): nothing executed.
    Rejected,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "partially_filled" => Some(Self::PartiallyFilled),
            "filled" => Some(Self::Filled),
            "cancelled" => Some(Self::Cancelled),
            "expired" => Some(Self::Expired),
            "untriggered" => Some(Self::Untriggered),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// A stock as the catalog holds it and the public API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stock {
    pub name: String,
    pub price: Price,
    pub quantity: u64,
}

/// What one log entry does to its stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A new order: without `limit` a market order against the catalog's house inventory
    /// (as in the seed API), with it a limit order on the stock's book.
    Place {
        side: Side,
        quantity: u32,
        limit: Option<Price>,
        /// A limit order's terms and client order id, if it has any.
        options: Option<Box<OrderOptions>>,
    },
    /// Changes the open limit order `target`: its total quantity and/or its price.
    Modify {
        target: u64,
        quantity: Option<u32>,
        price: Option<Price>,
    },
    /// A market order against the book (the seed's market order, `Place` without a limit, trades
    /// with the house): it takes the opposite side from its best price on, no further from that
    /// price (when it executes) than `protection_bps`, as an `ioc` or `fok` order; what does not
    /// fill is cancelled.
    Sweep {
        side: Side,
        quantity: u32,
        protection_bps: u32,
        /// Its terms (`ioc` or `fok`) and client order id.
        options: Option<Box<OrderOptions>>,
    },
    /// Cancels the open limit order `target`.
    Cancel { target: u64 },
    /// Written by the leader once an open order of the entry's stock has reached its expiry:
    /// every open order of that stock whose expiry is at or before the entry's time expires
    /// here, so that every replica expires the same orders at the same point of the log.
    Expire,
    /// The replica group's own entry, not an order: the blank entry a new leader appends to
    /// commit what earlier terms left (`leader`), or a change of the voters and their
    /// addresses (`membership`, the consensus layer's configuration as JSON). It changes no
    /// book, portfolio or stock.
    Group(GroupEntry),
}

impl Command {
    /// Whether `retry`, sent under the key this command was logged with, is the same request.
    /// A market order on the book's protection does not count: a frontend fills it in from its
    /// own default when the client gave none, so a retry through a frontend with another
    /// default is the same request (answered with what the first did), not a key reused for
    /// a different one, whose 422 would say that an order that executed never will.
    pub fn same_request(&self, retry: &Command) -> bool {
        match (self, retry) {
            (
                Command::Sweep {
                    side,
                    quantity,
                    options,
                    ..
                },
                Command::Sweep {
                    side: retry_side,
                    quantity: retry_quantity,
                    options: retry_options,
                    ..
                },
            ) => side == retry_side && quantity == retry_quantity && options == retry_options,
            _ => self == retry,
        }
    }
}

/// What a [`Command::Group`] entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupEntry {
    Leader,
    Membership(String),
}

/// What a new order carries beyond side, quantity and price: its terms and the user's own id
/// for it (unique among their open orders). Boxed in a command, and absent where it is all
/// default: most orders have none, and every log entry in memory is the size of the largest
/// command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderOptions {
    pub terms: Terms,
    pub client_order_id: Option<String>,
}

impl OrderOptions {
    /// The options of an order with `terms` and `client_order_id`: `None` if they are the
    /// default, so that equal orders are equal commands.
    pub fn boxed(terms: Terms, client_order_id: Option<String>) -> Option<Box<Self>> {
        let options = Self {
            terms,
            client_order_id,
        };
        (options != Self::default()).then(|| Box::new(options))
    }
}

/// How long a limit order may rest, as the exchanges' APIs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeInForce {
    /// Good till cancelled: rests until filled or cancelled.
    #[default]
    Gtc,
    /// Immediate or cancel: trades what it can now, and the rest is cancelled.
    Ioc,
    /// Fill or kill: trades all of its quantity now, or is refused and does nothing.
    Fok,
    /// Expires at the end of the UTC day it was placed on.
    Day,
    /// Good till date: expires at its `expire_at`.
    Gtd,
}

impl TimeInForce {
    pub const ALL: [Self; 5] = [Self::Gtc, Self::Ioc, Self::Fok, Self::Day, Self::Gtd];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gtc => "gtc",
            Self::Ioc => "ioc",
            Self::Fok => "fok",
            Self::Day => "day",
            Self::Gtd => "gtd",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// What happens when a user's order would trade with another of the same user's: one or both
/// are cancelled instead (the taker's choice decides), or, with `none`, they trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelfTrade {
    /// The incoming order's remainder is cancelled.
    #[default]
    CancelNewest,
    /// The resting order is cancelled, and the incoming one matches on.
    CancelOldest,
    /// Both are cancelled.
    CancelBoth,
    /// They trade.
    None,
}

impl SelfTrade {
    pub const ALL: [Self; 4] = [
        Self::CancelNewest,
        Self::CancelOldest,
        Self::CancelBoth,
        Self::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CancelNewest => "cancel_newest",
            Self::CancelOldest => "cancel_oldest",
            Self::CancelBoth => "cancel_both",
            Self::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// A limit order's time in force and protections. The default is the book's original order:
/// good till cancelled, free to take liquidity, never trading with its own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Terms {
    pub time_in_force: TimeInForce,
    /// Milliseconds since the Unix epoch; set exactly when `time_in_force` is `gtd`.
    pub expire_at: Option<u64>,
    /// Refused if it would take liquidity on entry.
    pub post_only: bool,
    #[serde(rename = "stp")]
    pub self_trade: SelfTrade,
    /// An iceberg order's visible part: only this much shows on the book at a time.
    pub display_quantity: Option<u32>,
    /// A stop order's trigger: it waits, off the book, until a trade of its stock is at or
    /// above this (a buy) or at or below it (a sell), then enters as it was placed.
    pub stop_price: Option<Price>,
}

impl Terms {
    /// What is wrong with these terms on an order of `quantity` with limit price `limit` (none:
    /// a market order, which takes no terms), if anything. The frontend and the leader both
    /// check.
    pub fn check(&self, limit: Option<Price>, quantity: u32) -> Result<(), &'static str> {
        if limit.is_none() && *self != Terms::default() {
            return Err(LIMIT_TERMS_ONLY);
        }

        match (self.time_in_force, self.expire_at) {
            (TimeInForce::Gtd, None) => return Err("time_in_force gtd needs expire_at"),
            (TimeInForce::Gtd, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err("expire_at needs time_in_force gtd"),
        }
        let now_only = matches!(self.time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
        if self.post_only && now_only {
            return Err("a post_only order rests: time_in_force ioc or fok cannot go with it");
        }
        if self.stop_price.is_some()
            && (self.post_only
                || self.display_quantity.is_some()
                || matches!(self.time_in_force, TimeInForce::Day | TimeInForce::Gtd))
        {
            return Err(
                "a stop order (stop_price) is gtc, ioc or fok, and not post_only or an iceberg",
            );
        }
        match self.display_quantity {
            Some(_) if now_only => Err(
                "an iceberg (display_quantity) rests: time_in_force ioc or fok cannot go with it",
            ),
            Some(display) if display == 0 || display >= quantity => {
                Err("display_quantity must be at least 1 and below quantity")
            }
            _ => Ok(()),
        }
    }

    /// [`Terms::check`], and what a new order must satisfy besides: an `expire_at` the API can
    /// show. (Entries already logged are decoded with `check` alone, so that a log written
    /// before a bound was added still reads.)
    pub fn check_new(&self, limit: Option<Price>, quantity: u32) -> Result<(), &'static str> {
        self.check(limit, quantity)?;
        if self
            .expire_at
            .is_some_and(|at| at > crate::clock::LATEST_MS)
        {
            return Err("expire_at must be at most 9999-12-31T23:59:59.999Z");
        }
        Ok(())
    }

    /// What is wrong with these terms on a market order against the book, if anything: it
    /// trades now (`ioc`, or `fok`) and never rests.
    pub fn check_market(&self) -> Result<(), &'static str> {
        if !matches!(self.time_in_force, TimeInForce::Ioc | TimeInForce::Fok)
            || self.post_only
            || self.expire_at.is_some()
            || self.display_quantity.is_some()
        {
            return Err("a market order trades now: time_in_force ioc (its default) or fok, and no post_only, expire_at or display_quantity");
        }
        Ok(())
    }

    /// When an order with these terms, placed at `placed` (milliseconds since the epoch),
    /// expires: the end of that UTC day for `day`, `expire_at` for `gtd`.
    pub fn expiry(&self, placed: u64) -> Option<u64> {
        match self.time_in_force {
            TimeInForce::Day => Some((placed / DAY_MS + 1) * DAY_MS),
            TimeInForce::Gtd => self.expire_at,
            _ => None,
        }
    }
}

/// Why a market order against the house cannot carry a limit order's terms.
pub const LIMIT_TERMS_ONLY: &str = "time_in_force, expire_at, post_only, stp, display_quantity and stop_price apply to limit orders: give a price";

/// Why an anonymous order cannot carry a client order id.
pub const ANONYMOUS_CLIENT_ORDER_ID: &str =
    "client_order_id needs an API key: it is unique among one user's open orders";

/// What is wrong with `id` as the client order id of an order with limit price `limit`, if
/// anything: like Binance's and Coinbase's, a short token of letters, digits and `-_.:`, on
/// limit orders. The frontend and the leader both check.
pub fn check_client_order_id(id: &str, limit: Option<Price>) -> Result<(), &'static str> {
    if limit.is_none() {
        return Err("client_order_id applies to limit orders: give a price");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    if (1..=64).contains(&id.len()) && id.bytes().all(allowed) {
        Ok(())
    } else {
        Err("client_order_id must be 1 to 64 characters: letters, digits, '-', '_', '.', ':'")
    }
}

/// Why the leader refused a new order. The refusal is logged like any entry (the audit trail
/// holds it, and a retry with the same idempotency key gets the same answer); it changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// A market buy of more than the house holds.
    InsufficientQuantity,
    /// A market sell that would take the house's quantity past what it can count.
    QuantityOverflow,
    /// The stock's price was further from the order's `expected_price` than it allowed.
    PriceMoved,
}

impl Rejection {
    pub const ALL: [Self; 3] = [
        Self::InsufficientQuantity,
        Self::QuantityOverflow,
        Self::PriceMoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientQuantity => "insufficient_quantity",
            Self::QuantityOverflow => "quantity_overflow",
            Self::PriceMoved => "price_moved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What the leader notes about an entry when it sequences it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch by the leader's clock, never below the entry before
    /// (0 in logs written before entries were stamped).
    pub time: u64,
    /// The stock's price then: the last trade's, or the catalog's before any trade. A market
    /// order executes at it.
    pub quote: Option<Price>,
    /// Set when the leader refused the order.
    pub rejected: Option<Rejection>,
    /// The `X-Request-Id` of the request that brought it (absent in logs written before, and
    /// in the group's own entries): the audit record names it, so that its log lines in every
    /// service are found.
    pub request_id: Option<String>,
}

/// One entry of the replicated order log. Every entry names one stock, so that the log can
/// later be split into groups that each own some of the stocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "EntryFields", try_from = "EntryFields")]
pub struct Order {
    /// Transaction number: dense, starting at 1, assigned by the leader.
    pub number: u64,
    /// Term of the leader that sequenced this entry.
    pub term: u64,
    pub name: String,
    /// Idempotency key the entry was placed with, if any.
    pub key: Option<String>,
    /// The user who placed it; `None` for an anonymous order.
    pub user: Option<u64>,
    pub stamp: Stamp,
    pub command: Command,
}

impl Order {
    /// The order's side and quantity if it is a market order the leader accepted.
    pub fn market(&self) -> Option<(Side, u32)> {
        match self.command {
            Command::Place {
                side,
                quantity,
                limit: None,
                ..
            } if self.stamp.rejected.is_none() => Some((side, quantity)),
            _ => None,
        }
    }
}

/// The flat form of a log entry, in JSON and in the log file: `type` is `buy`, `sell`,
/// `modify` or `cancel`; `quantity`, `price` and `target` are present where the type has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFields {
    pub number: u64,
    pub term: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A limit order's terms, where they are not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_in_force: Option<TimeInForce>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub post_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<SelfTrade>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    /// Set on a market order against the book: how far from the best price it may trade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection_bps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_quantity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_price: Option<Price>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Command {
    /// A new order's terms; the default for anything else.
    pub fn terms(&self) -> Terms {
        self.options().map(|o| o.terms).unwrap_or_default()
    }

    /// A new order's client order id, if it has one.
    pub fn client_order_id(&self) -> Option<&str> {
        self.options()?.client_order_id.as_deref()
    }

    fn options(&self) -> Option<&OrderOptions> {
        match self {
            Command::Place { options, .. } | Command::Sweep { options, .. } => options.as_deref(),
            _ => None,
        }
    }

    /// The command's fields as the flat forms spell them (the log, the audit trail): its type
    /// (`buy`, `sell`, `modify`, `cancel`, `expire`), quantity, price and target where it has
    /// them.
    pub fn flat(&self) -> (&'static str, Option<u32>, Option<Price>, Option<u64>) {
        match *self {
            Command::Place {
                side,
                quantity,
                limit,
                ..
            } => (side.as_str(), Some(quantity), limit, None),
            Command::Sweep { side, quantity, .. } => (side.as_str(), Some(quantity), None, None),
            Command::Modify {
                target,
                quantity,
                price,
            } => ("modify", quantity, price, Some(target)),
            Command::Cancel { target } => ("cancel", None, None, Some(target)),
            Command::Expire => ("expire", None, None, None),
            Command::Group(GroupEntry::Leader) => ("leader", None, None, None),
            Command::Group(GroupEntry::Membership(_)) => ("membership", None, None, None),
        }
    }
}

impl From<Order> for EntryFields {
    fn from(order: Order) -> Self {
        let (kind, quantity, price, target) = order.command.flat();
        let terms = order.command.terms();
        let client_order_id = order.command.client_order_id().map(str::to_owned);
        let protection_bps = match order.command {
            Command::Sweep { protection_bps, .. } => Some(protection_bps),
            _ => None,
        };
        // A membership entry names no stock: its field holds the configuration.
        let name = match order.command {
            Command::Group(GroupEntry::Membership(config)) => config,
            _ => order.name,
        };
        Self {
            number: order.number,
            term: order.term,
            name,
            kind: kind.to_owned(),
            quantity,
            price,
            target,
            key: order.key,
            user: order.user,
            time: order.stamp.time,
            quote: order.stamp.quote,
            rejected: order.stamp.rejected,
            request_id: order.stamp.request_id,
            time_in_force: Some(terms.time_in_force).filter(|t| *t != TimeInForce::Gtc),
            expire_at: terms.expire_at,
            post_only: terms.post_only,
            stp: Some(terms.self_trade).filter(|s| *s != SelfTrade::CancelNewest),
            client_order_id,
            protection_bps,
            display_quantity: terms.display_quantity,
            stop_price: terms.stop_price,
        }
    }
}

impl TryFrom<EntryFields> for Order {
    type Error = String;

    fn try_from(mut fields: EntryFields) -> Result<Self, String> {
        let side = Side::parse(&fields.kind);
        let terms = Terms {
            time_in_force: fields.time_in_force.unwrap_or_default(),
            expire_at: fields.expire_at,
            post_only: fields.post_only,
            self_trade: fields.stp.unwrap_or_default(),
            display_quantity: fields.display_quantity,
            stop_price: fields.stop_price,
        };
        if side.is_none()
            && (terms != Terms::default()
                || fields.client_order_id.is_some()
                || fields.protection_bps.is_some())
        {
            return Err(format!(
                "entry {}: only a new order has a time in force, protections or a client order id",
                fields.number
            ));
        }
        let command = match (side, fields.kind.as_str(), fields.quantity, fields.target) {
            (Some(side), _, Some(quantity), None) if fields.protection_bps.is_some() => {
                let fail = |e: &str| format!("entry {}: {e}", fields.number);
                if fields.price.is_some() {
                    return Err(fail("a market order on the book has no price"));
                }
                terms.check_market().map_err(fail)?;
                if let Some(id) = &fields.client_order_id {
                    // (Any price: a market order may carry an id like a limit order.)
                    check_client_order_id(id, Some(Price(1))).map_err(fail)?;
                }
                Command::Sweep {
                    side,
                    quantity,
                    protection_bps: fields.protection_bps.unwrap_or_default(),
                    options: OrderOptions::boxed(terms, fields.client_order_id.take()),
                }
            }
            (Some(side), _, Some(quantity), None) => {
                terms
                    .check(fields.price, quantity)
                    .map_err(|e| format!("entry {}: {e}", fields.number))?;
                if let Some(id) = &fields.client_order_id {
                    check_client_order_id(id, fields.price)
                        .map_err(|e| format!("entry {}: {e}", fields.number))?;
                }
                Command::Place {
                    side,
                    quantity,
                    limit: fields.price,
                    options: OrderOptions::boxed(terms, fields.client_order_id.take()),
                }
            }
            (None, "modify", quantity, Some(target))
                if quantity.is_some() || fields.price.is_some() =>
            {
                Command::Modify {
                    target,
                    quantity,
                    price: fields.price,
                }
            }
            (None, "cancel", None, Some(target)) if fields.price.is_none() => {
                Command::Cancel { target }
            }
            (None, "expire", None, None) if fields.price.is_none() => Command::Expire,
            (None, "leader", None, None) if fields.price.is_none() => {
                Command::Group(GroupEntry::Leader)
            }
            (None, "membership", None, None) if fields.price.is_none() => {
                Command::Group(GroupEntry::Membership(std::mem::take(&mut fields.name)))
            }
            (_, kind, ..) => {
                return Err(format!(
                    "entry {}: type {kind:?} with these fields is not a log entry",
                    fields.number
                ))
            }
        };
        if fields.rejected.is_some()
            && !matches!(command, Command::Place { .. } | Command::Sweep { .. })
        {
            return Err(format!(
                "entry {}: only a new order is refused by the leader",
                fields.number
            ));
        }
        Ok(Self {
            number: fields.number,
            term: fields.term,
            name: fields.name,
            key: fields.key,
            user: fields.user,
            stamp: Stamp {
                time: fields.time,
                quote: fields.quote,
                rejected: fields.rejected,
                request_id: fields.request_id,
            },
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_whole_cents_or_refused() {
        for (text, cents) in [("15.99", 1599), ("9.5", 950), ("7", 700), ("0.01", 1)] {
            assert_eq!(text.parse::<Price>(), Ok(Price(cents)), "{text}");
            let json: Price = serde_json::from_str(text).unwrap();
            assert_eq!(json, Price(cents), "{text} as JSON");
        }
        for bad in ["1.234", "-1", "1.", ".5", "1e3", "abc", "", "1.2.3"] {
            assert!(bad.parse::<Price>().is_err(), "{bad}");
        }
        for bad in ["1.234", "-1", "1e12", "0.001", "\"x\""] {
            assert!(serde_json::from_str::<Price>(bad).is_err(), "{bad} as JSON");
        }
        assert_eq!(Price(1599).to_string(), "15.99");
        assert_eq!(Price(5).to_string(), "0.05");
        assert_eq!(serde_json::to_string(&Price(1599)).unwrap(), "15.99");
        assert_eq!(serde_json::to_string(&Price(700)).unwrap(), "7.0");
    }

    #[test]
    fn terms_are_checked_and_day_orders_expire_at_the_end_of_their_utc_day() {
        let limit = Some(Price(100));
        let terms = |time_in_force, expire_at, post_only| Terms {
            time_in_force,
            expire_at,
            post_only,
            ..Terms::default()
        };
        assert_eq!(Terms::default().check(None, 5), Ok(()));
        assert!(terms(TimeInForce::Ioc, None, false).check(None, 5).is_err());
        assert_eq!(terms(TimeInForce::Ioc, None, false).check(limit, 5), Ok(()));
        assert!(terms(TimeInForce::Gtd, None, false)
            .check(limit, 5)
            .is_err());
        assert!(terms(TimeInForce::Day, Some(5), false)
            .check(limit, 5)
            .is_err());
        assert_eq!(
            terms(TimeInForce::Gtd, Some(5), true).check(limit, 5),
            Ok(())
        );
        assert!(terms(TimeInForce::Fok, None, true).check(limit, 5).is_err());
        let latest = Some(crate::clock::LATEST_MS);
        assert_eq!(
            terms(TimeInForce::Gtd, latest, false).check_new(limit, 5),
            Ok(())
        );
        let later = terms(TimeInForce::Gtd, latest.map(|at| at + 1), false);
        assert!(later.check_new(limit, 5).is_err());
        assert_eq!(later.check(limit, 5), Ok(()), "a logged entry still reads");
        let iceberg = |time_in_force, display| Terms {
            time_in_force,
            display_quantity: Some(display),
            ..Terms::default()
        };
        assert_eq!(iceberg(TimeInForce::Gtc, 2).check(limit, 5), Ok(()));
        for bad in [
            iceberg(TimeInForce::Gtc, 0),
            iceberg(TimeInForce::Gtc, 5),
            iceberg(TimeInForce::Ioc, 2),
        ] {
            assert!(bad.check(limit, 5).is_err(), "{bad:?}");
        }

        let day = 86_400_000;
        let placed = 20_000 * day + 5;
        assert_eq!(
            terms(TimeInForce::Day, None, false).expiry(placed),
            Some(20_001 * day)
        );
        assert_eq!(
            terms(TimeInForce::Gtd, Some(7), false).expiry(placed),
            Some(7)
        );
        assert_eq!(terms(TimeInForce::Gtc, None, false).expiry(placed), None);
        for t in TimeInForce::ALL {
            assert_eq!(TimeInForce::parse(t.as_str()), Some(t));
        }
        for s in SelfTrade::ALL {
            assert_eq!(SelfTrade::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn log_entries_round_trip_through_their_flat_form() {
        let entries = [
            Command::Place {
                side: Side::Buy,
                quantity: 5,
                limit: None,
                options: None,
            },
            Command::Place {
                side: Side::Sell,
                quantity: 5,
                limit: Some(Price(1250)),
                options: None,
            },
            Command::Place {
                side: Side::Sell,
                quantity: 5,
                limit: Some(Price(1250)),
                options: OrderOptions::boxed(
                    Terms {
                        time_in_force: TimeInForce::Gtd,
                        expire_at: Some(1_800_000_060_000),
                        post_only: true,
                        self_trade: SelfTrade::CancelBoth,
                        display_quantity: Some(2),
                        stop_price: None,
                    },
                    Some("grid-7".into()),
                ),
            },
            Command::Expire,
            Command::Place {
                side: Side::Buy,
                quantity: 5,
                limit: Some(Price(1300)),
                options: OrderOptions::boxed(
                    Terms {
                        stop_price: Some(Price(1290)),
                        ..Terms::default()
                    },
                    None,
                ),
            },
            Command::Sweep {
                side: Side::Buy,
                quantity: 3,
                protection_bps: 500,
                options: OrderOptions::boxed(
                    Terms {
                        time_in_force: TimeInForce::Ioc,
                        ..Terms::default()
                    },
                    Some("sweep-1".into()),
                ),
            },
            Command::Modify {
                target: 3,
                quantity: None,
                price: Some(Price(1)),
            },
            Command::Cancel { target: 3 },
        ];
        for command in entries {
            let order = Order {
                number: 4,
                term: 2,
                name: "A".into(),
                key: Some("k".into()),
                user: Some(9),
                stamp: Stamp {
                    time: 1_800_000_000_000,
                    quote: Some(Price(1599)),
                    rejected: None,
                    request_id: Some("6f1c0e2a9b3d4c5e-42".into()),
                },
                command,
            };
            let json = serde_json::to_string(&order).unwrap();
            assert_eq!(
                serde_json::from_str::<Order>(&json).unwrap(),
                order,
                "{json}"
            );
        }
        let market = r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":5}"#;
        assert!(serde_json::from_str::<Order>(market)
            .unwrap()
            .market()
            .is_some());
        let refused = r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":5,"rejected":"price_moved"}"#;
        let refused = serde_json::from_str::<Order>(refused).unwrap();
        assert_eq!(refused.stamp.rejected, Some(Rejection::PriceMoved));
        assert!(
            refused.market().is_none(),
            "a refused order executes nothing"
        );
        for bad in [
            r#"{"number":1,"term":1,"name":"A","type":"buy"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"cancel","target":1,"quantity":1}"#,
            r#"{"number":1,"term":1,"name":"A","type":"modify","target":1}"#,
            r#"{"number":1,"term":1,"name":"A","type":"hold","quantity":1}"#,
            r#"{"number":1,"term":1,"name":"A","type":"cancel","target":1,"rejected":"price_moved"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"cancel","target":1,"post_only":true}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"time_in_force":"ioc"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"price":2,"expire_at":9}"#,
            r#"{"number":1,"term":1,"name":"A","type":"expire","quantity":1}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"protection_bps":5}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"price":2,"protection_bps":5,"time_in_force":"ioc"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"cancel","target":1,"protection_bps":5}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"client_order_id":"x"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"buy","quantity":1,"price":2,"client_order_id":"a b"}"#,
            r#"{"number":1,"term":1,"name":"A","type":"cancel","target":1,"client_order_id":"x"}"#,
        ] {
            assert!(serde_json::from_str::<Order>(bad).is_err(), "{bad}");
        }
    }
}
