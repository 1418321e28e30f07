//! The wire protocol between StockNet's services: every request and reply body that crosses a
//! service boundary, defined once here and used by both sides of the call, so that no client
//! links a server's crate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_key::{ApiKey, Credential};
use crate::client::BaseUrl;
use crate::model::{Order, Price, SelfTrade, Side, Status, Stock, Terms, TimeInForce};

// ---- catalog ---------------------------------------------------------------------------------

/// One committed log entry as the catalog applies it. The order group's own entries (a new
/// leader's, a membership change) name no stock: they only advance the catalog's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogTrade {
    pub number: u64,
    /// The stock; empty for the order group's own entries.
    pub name: String,
    /// Change in the house quantity: negative for a market buy, 0 for a book command.
    pub delta: i64,
    /// The last price the entry traded at in the book, which becomes the stock's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// The `X-Request-Id` of the request that brought the entry, for the catalog's log (only
    /// on entries that change a stock: the catalog logs nothing of the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl CatalogTrade {
    /// Whether this is the order group's own entry, which changes no stock.
    pub fn is_group_entry(&self) -> bool {
        self.name.is_empty()
    }

    /// Whether applying it changes its stock: a quantity the house traded, or a new price. (A
    /// resting limit order, a cancel, a modify that trades nothing, the group's own entries
    /// only advance the catalog's position.)
    pub fn changes_stock(&self) -> bool {
        self.delta != 0 || self.price.is_some()
    }
}

/// Order leader → catalog (`POST /apply`): a batch of committed entries from the leader of
/// `term`, in transaction order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub term: u64,
    pub trades: Vec<CatalogTrade>,
    /// The last entry the leader's book had applied when it began the round: every trade any
    /// leader may have acknowledged is at or before it, so a catalog that holds it holds them
    /// all (how a catalog back from a power loss knows it has caught up). Absent from leaders
    /// before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_applied: Option<u64>,
}

/// The catalog's answer to an apply: the last applied transaction and the stocks that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub applied: u64,
    pub changed: Vec<String>,
}

/// `GET /snapshot` of the catalog: everything a new order leader needs to take over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub applied: u64,
    pub term: u64,
    pub stocks: Vec<Stock>,
    /// The catalog process that answered ([`PushMark::boot`]).
    #[serde(default)]
    pub boot: u64,
    /// Whether the catalog may lack trades it acknowledged before its machine lost power,
    /// until a leader catches it up: its stocks are as of `applied`, consistent with it (a
    /// leader's take-over can use them), but may be older than what clients were shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub behind: bool,
}

impl Snapshot {
    /// Which catalog state its stocks are from.
    pub fn as_of(&self) -> AsOf {
        AsOf {
            boot: self.boot,
            applied: self.applied,
        }
    }
}

/// Which catalog state a stock's value is from: the catalog process ([`PushMark::boot`], its
/// start: a later process's values are newer) and the last transaction it had applied. A
/// frontend's price streams take a value only if it is newer than the one they sent: a push
/// that timed out and arrived late, or a snapshot overtaken by a push, sends nothing back in
/// time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AsOf {
    pub boot: u64,
    pub applied: u64,
}

/// The `reason` of a catalog's 503 while it is behind after a power loss ([`Snapshot::behind`]):
/// the catalog is not in trouble (a frontend's breaker does not count it, and orders go on,
/// which catch it up), only its stocks cannot be shown yet.
pub const CATCHING_UP: &str = "catching_up";

/// Whether `error` is a catalog's answer that it is catching up ([`CATCHING_UP`]).
pub fn is_catching_up(error: &crate::ApiError) -> bool {
    error.extra.get("reason").and_then(|r| r.as_str()) == Some(CATCHING_UP)
}

/// `GET /health` of the catalog, which its frontends probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogHealth {
    pub service: String,
    pub applied: u64,
    pub term: u64,
    /// The last invalidation push this catalog process numbered.
    pub pushes: PushMark,
    /// Whether the probing frontend may renew its cache lease from this answer: not while the
    /// catalog's pushes do not reach it (absent from catalogs before this field: yes).
    #[serde(default = "granted")]
    pub lease: bool,
    /// Whether it waits for the order leader to catch it up after a power loss of its machine
    /// ([`Snapshot::behind`]): its lookups answer 503 meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub behind: bool,
}

fn granted() -> bool {
    true
}

/// One invalidation push of a catalog process: `boot` names the process (a new one at every
/// start), `sequence` counts its pushes from 1. A frontend trusts what it cached for
/// [`CACHE_LEASE`] after a probe that it sent, whose answer's mark it has every push through:
/// so a frontend that missed a push (refused it, or was not pushed to) stops trusting its
/// cache within the lease, and the catalog, when a frontend answered a push with a refusal,
/// waits out the lease before it answers the write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMark {
    pub boot: u64,
    pub sequence: u64,
}

/// How long a frontend trusts its cached lookups and users' credentials after the probe that
/// last confirmed it had every push (counted from when the probe was sent). Below the
/// catalog's deadline for a push (1 s), so that a push that timed out outlasts it too.
pub const CACHE_LEASE: Duration = Duration::from_millis(900);

/// Header of a frontend's calls to the catalog and of its answers to the catalog's pushes:
/// the frontend process's name (random, a new one at every start). The catalog leaves a
/// frontend out of a push once its process has not probed within a lease: it trusts nothing
/// it cached, and a hung frontend would otherwise hold every write for the push's deadline.
pub const FRONTEND_PROCESS: &str = "x-stocknet-frontend";

// ---- frontend (internal) --------------------------------------------------------------------

/// Catalog → frontend (`POST /invalidate`): every stock one catalog update named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invalidation {
    pub names: Vec<String>,
    /// The named stocks as they are now, for the frontends' price streams.
    #[serde(default)]
    pub stocks: Vec<Stock>,
    /// Users whose keys changed (a key revoked): frontends forget their credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<u64>,
    /// Every user's (a restarted catalog may have revoked a key and not told anybody).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_users: bool,
    /// Which push this is (absent from a push by hand, which only invalidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<PushMark>,
    /// Which catalog state `stocks` are from (absent from a push by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
}

// ---- order replicas ---------------------------------------------------------------------------

/// The most a term may grow in one step. An election raises it by one above the highest term
/// a live replica reports, so a jump beyond this comes from a confused (or compromised) peer
/// and is refused: it would otherwise lock every real leader out (docs/OPERATIONS.md tells how
/// to recover a service that accepted one anyway).
pub const MAX_TERM_STEP: u64 = 1_000_000;

/// Whether moving from term `current` to `term` is a jump no election produces.
pub fn is_term_jump(current: u64, term: u64) -> bool {
    term > current.saturating_add(MAX_TERM_STEP)
}

/// Header carrying a client's (or the frontend's) idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether `key` may be a client's idempotency key: 1 to 128 visible ASCII characters. A write
/// under another is refused, and so is a lookup by one (no order can be under it).
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// An order replica as its peers and the frontends address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    pub url: BaseUrl,
}

/// Parses `ID=URL`.
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let (id, url) = text
        .split_once('=')
        .ok_or_else(|| format!("expected ID=URL, got {text:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("replica id {id:?}: {e}"))?;
    Ok(Peer {
        id,
        url: url.parse().map_err(|e| format!("replica {id}: {e}"))?,
    })
}

/// `GET /health` of an order replica: what frontends elect by and the operator watches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub node_id: u32,
    pub term: u64,
    pub leader: Option<u32>,
    /// It knows its term's leader and, following, has applied through the commit point that
    /// leader first sent it: caught up, not merely connected.
    pub ready: bool,
    pub last_transaction: u64,
    /// The last log entry this replica's book holds; everything through it is committed.
    #[serde(default)]
    pub applied: u64,
    /// It took over as `leader` in `term` and is committing in it: a frontend that finds it
    /// follows it rather than electing anew.
    #[serde(default)]
    pub leading: bool,
}

/// `GET /members` of an order replica: the group's membership as this replica last learned it
/// (the leader's answer is the group's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Members {
    /// The voter sets a commit needs a majority of: one, or two while a change is under way
    /// (Raft's joint consensus: the old set and the new).
    pub configs: Vec<Vec<u32>>,
    /// Replicas that receive the log but do not vote.
    pub learners: Vec<u32>,
    /// Every member's URL.
    pub urls: BTreeMap<u32, String>,
    /// The log entry that made this the membership; `None` for the founding members named by
    /// `--peers`.
    pub entry: Option<u64>,
    /// The replica this one follows, if it knows one.
    pub leader: Option<u32>,
    /// Whether this membership is committed (the answering replica has applied its entry):
    /// Raft acts on a membership once it is in the log, before it commits, and a leader lost
    /// meanwhile leaves the group under the one before. Absent: not known to be.
    #[serde(default)]
    pub committed: bool,
    /// Answered by the leader: how many log entries each other member is behind it (absent:
    /// not heard from yet).
    #[serde(default)]
    pub behind: BTreeMap<u32, u64>,
}

impl Members {
    /// Every voter, in either set while a change is under way.
    pub fn voters(&self) -> BTreeSet<u32> {
        self.configs.iter().flatten().copied().collect()
    }

    /// Whether a change is under way (two voter sets).
    pub fn joint(&self) -> bool {
        self.configs.len() > 1
    }
}

/// `POST /members/learners`: a replica to replicate the log to, not yet voting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewLearner {
    pub id: u32,
    pub url: String,
}

/// `PUT /members/voters`: the voters the group should have; each must be a member already.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Voters {
    pub voters: BTreeSet<u32>,
}

/// A new order (`POST /orders`, which the frontend validates and sends on to the leader).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The stock.
    pub name: String,
    #[schema(minimum = 1)]
    pub quantity: u32,
    #[serde(rename = "type")]
    pub side: Side,
    /// Limit price; without one the order is a market order against the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Refuse the order unless the stock's price is this close to what the client expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub guard: Option<PriceGuard>,
    /// A limit order's time in force and protections.
    #[serde(default, skip_serializing_if = "is_default")]
    #[schema(ignore)]
    pub terms: Terms,
    /// The user's own id for it, unique among their open orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub client_order_id: Option<String>,
    /// Set on a market order against the book (no `price`): how far from the best price it
    /// may trade, in basis points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub protection_bps: Option<u32>,
}

/// Most calls in one `POST /orders/batch`.
pub const MAX_BATCH: usize = 512;

/// One call of a `POST /orders/batch`, in which a frontend sends the leader the writes its
/// clients made at about the same time: what the call on its own carries in its path, query
/// and body (`command`) and in its headers (`Idempotency-Key`, the user, `X-Request-Id`).
/// Each is executed, logged and answered as that call would have been.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchedCall {
    pub command: BatchedCommand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a batched call does, as its own route would.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchedCommand {
    /// `POST /orders`.
    Place(NewOrder),
    /// `PUT /orders/{number}`.
    Modify { number: u64, change: OrderChange },
    /// `DELETE /orders/{number}`.
    Cancel { number: u64 },
    /// `DELETE /orders?client_order_id=`.
    CancelByClientOrderId { client_order_id: String },
}

/// The answer to one call of a batch: a line of the batch's answer (`application/x-ndjson`),
/// which gives each as soon as it is decided, in any order. `index` is the call's place in
/// the batch; the status and the envelope's `data` or `error` are what the call on its own
/// would have answered. (Further fields, from a newer leader, are let be: what the answer
/// says is in these.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer<T> {
    pub index: usize,
    pub status: u16,
    // (A missing `Option` is `None` without `default`, which would bound `T: Default`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Map<String, serde_json::Value>>,
}

/// How an order on the book is priced: at its limit, or at the market within a protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderType {
    Limit,
    Market,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The price check of an order, made by the leader as it sequences the order (so the price it
/// checks is the one a market order executes at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceGuard {
    pub expected: Price,
    /// Largest distance from `expected` allowed, in basis points of it.
    pub max_deviation_bps: u32,
}

impl PriceGuard {
    /// Whether `current` is within the allowed distance of the expected price.
    pub fn admits(&self, current: Price) -> bool {
        let distance = u128::from(current.cents().abs_diff(self.expected.cents()));
        distance * 10_000 <= u128::from(self.expected.cents()) * u128::from(self.max_deviation_bps)
    }
}

/// Header of an internal call made for a user the frontend verified (their id). Only internal
/// routes, which need the shared secret, read it.
pub const USER: &str = "stocknet-user";

/// Header a frontend puts on the reads it forwards to the leader: the replica answers only after
/// confirming that it still leads and its book holds everything committed before the read (a
/// read-index round), else 503. Without it a replica answers from its own book as it stands
/// (operators, tests).
pub const READ_FROM_LEADER: &str = "stocknet-read-from-leader";

/// A user's position in one stock, as the replicas keep it (`GET /portfolios/{user}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub name: String,
    /// Negative when short.
    pub shares: i64,
    /// What the open shares cost, with the sign of `shares`.
    pub cost_cents: i128,
    pub average_cost: Option<Price>,
    pub realized_cents: i128,
    pub bought: u64,
    pub sold: u64,
}

/// Prefix of an `Idempotency-Key` in the log: the client's key, or the one the frontend gave a
/// command that came without one (and told the client in a 504), so that a client's retry with
/// either finds the command. Entries written before the frontend's keys went under it keep theirs.
pub const CLIENT_KEY_PREFIX: &str = "client-";

/// `reason` of a replica's 503 (not executed) or 504 (outcome unknown) when the catalog is
/// what failed: a frontend neither retries such an answer on another replica nor elects.
pub const CATALOG_UNAVAILABLE: &str = "catalog_unavailable";

/// The field of a replica's 503 "Not the leader" answer naming the replica it follows and that
/// replica's term (`{"leader": 3, "term": 7}` beside the code and message), when it knows one: a
/// frontend checks that replica first instead of asking every replica.
pub const LEADER_HINT: &str = "leader";
pub const LEADER_HINT_TERM: &str = "term";

/// What became of a command that reached the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Refused,
}

/// One command of the audit trail: who sent it, when, under which key, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Its transaction number.
    pub number: u64,
    /// When the leader sequenced it: RFC 3339, UTC.
    pub time: String,
    /// The user whose key it carried; null for an anonymous command and the leader's `expire`.
    pub user: Option<u64>,
    pub name: String,
    /// `buy`, `sell`, `modify`, `cancel`, or `expire` (the leader's, expiring a stock's orders).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// A limit order's price, or a modify's new price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// The order a modify or cancel changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// The `Idempotency-Key` it ran under: the client's, or the frontend's own (`auto-…`) when
    /// the client sent none, which an answer of 504 names too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A new limit order's `client_order_id`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    /// The stock's price when the leader sequenced it (a market order's execution price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<Price>,
    pub outcome: Outcome,
    /// Why it was refused: `insufficient_quantity`, `quantity_overflow`, `price_moved`,
    /// `not_open`, `not_a_limit_order`, `below_filled`, `would_not_fill`, `would_take_liquidity`,
    /// `expiry_passed`, `duplicate_client_order_id`, `no_liquidity` or `untriggered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `X-Request-Id` of the request that brought it: its log lines in the frontend, the
    /// leader and the catalog carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The filters of `GET /audit`, which the frontend checks and the leader's replica applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this user's commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u64>,
    /// Only this stock's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `accepted`, `refused`, or a refusal's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(
        pattern = "^(accepted|refused|insufficient_quantity|quantity_overflow|price_moved|not_a_limit_order|not_open|below_filled|would_not_fill|would_take_liquidity|expiry_passed|duplicate_client_order_id|no_liquidity|untriggered)$"
    )]
    pub outcome: Option<String>,
    /// From this time on (RFC 3339, or milliseconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(schema_with = instant_schema)]
    pub from: Option<String>,
    /// Up to this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(schema_with = instant_schema)]
    pub to: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent when nothing older matches. A page may hold
    /// fewer records than `limit` (even none) and still have a cursor: one request examines a
    /// bounded number of commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One stock's day in the daily report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockDay {
    pub name: String,
    /// Executions: trades on the book and market orders against the house.
    pub trades: u64,
    /// Shares executed.
    pub volume: u64,
    /// Shares clients bought: both sides of a book trade count, a market order on its side.
    pub bought: u64,
    pub sold: u64,
    /// Volume-weighted average price, to the nearest cent; null without executions, as are
    /// `open`, `high`, `low` and `close`.
    pub vwap: Option<Price>,
    pub open: Option<Price>,
    pub high: Option<Price>,
    pub low: Option<Price>,
    pub close: Option<Price>,
    /// Refused commands by reason.
    pub refused: BTreeMap<String, u64>,
}

/// A user's traded shares (bought and sold) in a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserVolume {
    pub user: u64,
    pub volume: u64,
}

/// `GET /reports/daily?date=YYYY-MM-DD`: one UTC day of the market, from the committed log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DailyReport {
    pub date: String,
    /// Every stock with an execution or a refusal that day, in name order.
    pub stocks: Vec<StockDay>,
    /// The users who traded the most shares that day, most first (at most 10).
    pub top_users: Vec<UserVolume>,
}

// ---- users (catalog, internal) ----------------------------------------------------------------

/// Frontend → catalog (`POST /users`): store a new user with the credential of their first key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub credential: Credential,
    /// The key's [prefix](crate::api_key::ApiKey::prefix).
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// Frontend → catalog (`POST /users/{id}/keys`): another key for a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub credential: Credential,
    pub prefix: String,
}

/// A user as the catalog keeps it, revoked keys included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// By id, from 1.
    pub keys: Vec<KeyRecord>,
}

impl UserRecord {
    /// Whether `key` is one of this user's keys, and not revoked.
    pub fn admits(&self, key: &ApiKey) -> bool {
        key.user() == self.id && self.keys.iter().any(|k| k.admits(key))
    }

    /// The keys not revoked.
    pub fn live_keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.iter().filter(|k| k.revoked.is_none())
    }
}

/// One of a user's API keys as the catalog keeps it: never the key, only its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u32,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    /// The key's [prefix](crate::api_key::ApiKey::prefix); absent for a key made before
    /// prefixes were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub credential: Credential,
    /// When it was revoked (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

impl KeyRecord {
    /// Whether `key` is this one and it is not revoked: one hash, only where the prefix matches.
    pub fn admits(&self, key: &ApiKey) -> bool {
        self.revoked.is_none()
            && self
                .prefix
                .as_ref()
                .is_none_or(|prefix| *prefix == key.prefix())
            && self.credential.verifies(key)
    }
}

/// Whether `name` can be a user's display name: 1 to 64 characters, none of them a control
/// character.
pub fn check_display_name(name: &str) -> Result<(), &'static str> {
    let length = name.chars().count();
    if (1..=64).contains(&length) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err("display_name must be 1 to 64 characters, none of them a control character")
    }
}

/// `GET /orders/logs/{after}`: a page of a replica's log, its own entries included (for
/// operators and tests comparing replicas).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSlice {
    /// Term of the order the page follows; `None` when this log is shorter than that.
    pub prev_term: Option<u64>,
    /// Where this log ends.
    pub last: u64,
    /// How far the serving replica has applied the log (all of it committed).
    #[serde(default)]
    pub committed: u64,
    pub orders: Vec<Order>,
}

/// Frontend → leader (`PUT /orders/{number}`): the new total quantity and/or price of an open
/// limit order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderChange {
    /// The new total quantity; it must exceed what is already filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    pub quantity: Option<u32>,
    /// The new limit price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub price: Option<Price>,
}

/// One of an order's trades, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Fill {
    pub trade: u64,
    pub price: Price,
    pub quantity: u32,
}

/// An order as `GET /orders/{number}` shows it: the seed's fields (`number`, `name`, `type`,
/// `quantity`) and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub number: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub side: Side,
    pub quantity: u32,
    /// `limit` or `market` for an order on the book; absent for a market order against the
    /// house (the seed's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_type: Option<OrderType>,
    /// The limit price (a book market order's: its protection limit, worked out as it
    /// executed); absent for a market order against the house, and for a stop market order
    /// that has not triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    pub status: Status,
    pub filled_quantity: u32,
    pub remaining_quantity: u32,
    /// Book trades, oldest first, at most the last 100 (`FILLS_SHOWN`); a market order trades
    /// with the catalog and has none.
    pub fills: Vec<Fill>,
    /// Present (true) when the order has more fills than `fills` shows: `GET /trades` has every
    /// trade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fills_truncated: bool,
    /// A book order's time in force (absent for a market order against the house).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_in_force: Option<TimeInForce>,
    /// When it expires (RFC 3339, UTC): a `day` or `gtd` order's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<String>,
    /// Whether it was placed post-only (absent for a market order against the house).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_only: Option<bool>,
    /// Its self-trade prevention (absent for a market order against the house).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<SelfTrade>,
    /// The id its user gave it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    /// An iceberg's visible part: only this much of it shows on the book at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_quantity: Option<u32>,
    /// A stop order's trigger price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_price: Option<Price>,
    /// The log entry whose trade triggered this stop order, once one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<u64>,
}

impl OrderView {
    /// An order with nothing filled, no price, no terms and no fills.
    pub fn new(number: u64, name: String, side: Side, quantity: u32, status: Status) -> Self {
        Self {
            number,
            name,
            side,
            quantity,
            order_type: None,
            price: None,
            status,
            filled_quantity: 0,
            remaining_quantity: 0,
            fills: Vec::new(),
            fills_truncated: false,
            time_in_force: None,
            expire_at: None,
            post_only: None,
            stp: None,
            client_order_id: None,
            display_quantity: None,
            stop_price: None,
            triggered_at: None,
        }
    }
}

/// The most fills an order's view lists: each older one is a read of the archive under the
/// book's lock, so an order with a million fills must not make every look at it read them all
/// (nor a page of 1,000 such orders 1,000 times that).
pub const FILLS_SHOWN: usize = 100;

/// The answer to `POST /orders`: the seed's `transaction_number` and the order's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Placed {
    pub transaction_number: u64,
    /// The id its user gave it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    pub status: Status,
    pub filled_quantity: u32,
    pub remaining_quantity: u32,
    pub fills: Vec<Fill>,
}

/// The answer to `PUT` and `DELETE /orders/{number}`: the command's own transaction number
/// and the order as it stands after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Changed {
    pub transaction_number: u64,
    pub order: OrderView,
}

/// A page of `GET /orders`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last one. A page that looked at as
    /// many orders as one request may can be short, even empty, and still have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One trade between a resting (maker) order and an incoming (taker) one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Trade {
    /// Dense, from 1, in the order trades happened.
    pub id: u64,
    /// The log entry that caused it: the taker's order, a modify that re-priced it, or, when
    /// the taker is a stop order that a trade triggered, the entry of that trade.
    pub entry: u64,
    pub name: String,
    pub price: Price,
    pub quantity: u32,
    pub buy_order: u64,
    pub sell_order: u64,
    /// The taker's side.
    pub taker_side: Side,
}

/// A price level as `GET /book/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DepthLevel {
    pub price: Price,
    pub quantity: u64,
    pub orders: usize,
}

/// The best `depth` levels of each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Depth {
    pub name: String,
    /// The book as of this log entry: a stream of changes goes on from the next.
    pub applied: u64,
    pub bids: Vec<DepthLevel>,
    pub asks: Vec<DepthLevel>,
    pub last_price: Option<Price>,
}

/// A candle's width, as `GET /candles/{name}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum CandleInterval {
    #[default]
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl CandleInterval {
    /// Its width in milliseconds.
    pub fn millis(self) -> u64 {
        const MINUTE: u64 = 60_000;
        match self {
            Self::Minute => MINUTE,
            Self::FiveMinutes => 5 * MINUTE,
            Self::Hour => 60 * MINUTE,
            Self::Day => 24 * 60 * MINUTE,
        }
    }
}

/// The query of `GET /candles/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CandleQuery {
    /// `1m` (default), `5m`, `1h` or `1d` (UTC days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<CandleInterval>)]
    pub interval: Option<CandleInterval>,
    /// From this time on (RFC 3339, or milliseconds since the epoch); default: 100 intervals
    /// before `to`. A page that ends before `to` says where the next starts (`next_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(schema_with = instant_schema)]
    pub from: Option<String>,
    /// Up to this time, exclusive; default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(schema_with = instant_schema)]
    pub to: Option<String>,
}

/// An instant as a query takes it: RFC 3339, or milliseconds since the epoch. Any of the two
/// (a validator that does not check formats takes a number for a date-time too).
pub fn instant_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,19}$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .into()
}

/// What the trades of an interval came to: the replicas keep it per minute and the frontends'
/// candle streams per interval, both by the same two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ohlcv {
    pub open: Price,
    pub high: Price,
    pub low: Price,
    pub close: Price,
    /// Shares traded.
    pub volume: u64,
    pub trades: u32,
}

impl Ohlcv {
    /// One trade of `quantity` at `price`.
    pub fn trade(price: Price, quantity: u32) -> Self {
        Self {
            open: price,
            high: price,
            low: price,
            close: price,
            volume: u64::from(quantity),
            trades: 1,
        }
    }

    /// Adds `later`, which comes after everything in this one.
    pub fn extend(&mut self, later: &Ohlcv) {
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume += later.volume;
        self.trades += later.trades;
    }
}

/// The book trades of one interval of one stock. Intervals without trades have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Candle {
    /// Start of the interval, RFC 3339, UTC.
    pub time: String,
    #[serde(flatten)]
    pub traded: Ohlcv,
}

/// `GET /candles/{name}`: oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Candles {
    pub name: String,
    pub interval: CandleInterval,
    /// The candles are as of this log entry: a stream of trades goes on from the next.
    pub applied: u64,
    pub candles: Vec<Candle>,
    /// More candles start here, before `to`: pass it as `from` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_from: Option<String>,
}

/// A price level after a change: quantity 0 means the level is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LevelChange {
    pub side: Side,
    pub price: Price,
    pub quantity: u64,
    pub orders: usize,
}

/// What one committed log entry changed in its stock's book. Every replica derives the same
/// events from the same log, so a frontend can follow them across a change of leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MarketEvent {
    pub entry: u64,
    /// The entry's time (milliseconds since the epoch, the leader's stamp): its trades' time.
    #[serde(default)]
    pub time: u64,
    pub name: String,
    pub trades: Vec<Trade>,
    pub levels: Vec<LevelChange>,
    /// The stock's last trade price after the entry.
    pub last_price: Option<Price>,
}

/// Leader → frontend (`GET /feed?after=N`): the market events of the entries after `N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedPage {
    /// Events of entries up to here may be gone: a follower behind it has missed some.
    pub floor: u64,
    /// The page holds every event of the entries after the request's `after` through this
    /// one; the next request asks for the entries after it.
    pub through: u64,
    pub events: Vec<MarketEvent>,
}

/// What happened to an order at one log entry, as its user's stream (`/ws/orders`) tells it.
/// Names follow Binance's execution types and Coinbase's order statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderEvent {
    /// It reached the book (resting, or waiting for its stop), or the house took it.
    Accepted,
    /// Refused by the leader or the book (`reason` says why); for a modify or cancel, the
    /// order it named, unchanged.
    Refused,
    /// A modify changed its price or quantity.
    Modified,
    /// A trade reached the waiting stop order's trigger: it entered the book. (A stop already
    /// reached when it arrives enters at once, and is `accepted`, without this.)
    Triggered,
    /// It traded (`fills`) and some is left.
    PartiallyFilled,
    /// It traded (`fills`, if on the book) and nothing is left.
    Filled,
    /// Its owner cancelled it, its time in force did (`ioc`, `fok`), or self-trade prevention.
    Cancelled,
    /// Its `day` or `gtd` expiry came.
    Expired,
}

/// One change of a user's order, at log entry `entry`. One entry may change an order more
/// than once (a stop triggered, then filled): those updates come in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderUpdate {
    /// The log entry that made the change: resume a stream after it.
    pub entry: u64,
    /// The entry's time, RFC 3339, UTC.
    pub time: String,
    pub user: u64,
    pub event: OrderEvent,
    /// The order after the entry. Its `fills` are left out: each update carries its own.
    pub order: OrderView,
    /// The order's trades at this entry (`partially_filled`, `filled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fills: Vec<Fill>,
    /// Why it was refused (`refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Leader → frontend (`GET /feed/orders?user=U&after=N`): one user's order updates of the
/// entries after `N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderUpdatePage {
    /// Some updates of the entries after `after` are gone (the replica's ring moved past
    /// them, or it started after them): the page holds those still kept.
    pub gap: bool,
    /// The page holds every update of the user's orders after the request's `after` through
    /// this entry.
    pub through: u64,
    pub updates: Vec<OrderUpdate>,
}

/// A page of `GET /stocks`, in name order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StockPage {
    pub stocks: Vec<Stock>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The opaque cursor of a page that ended at stock `name` (hex of its UTF-8 bytes).
pub fn stock_cursor(name: &str) -> String {
    crate::api_key::to_hex(name.as_bytes())
}

/// The stock name a cursor of [`stock_cursor`] stands for.
pub fn stock_after(cursor: &str) -> Option<String> {
    if !cursor.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    // Any name is a position in name order, so any even run of hex digits is a cursor.
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_within_the_tolerance_passes_and_one_beyond_does_not() {
        let guard = |bps| PriceGuard {
            expected: Price::from_cents(10_000),
            max_deviation_bps: bps,
        };
        // 2% of 100.00 is 2.00, either way, exactly at the edge included.
        assert!(guard(200).admits(Price::from_cents(10_200)));
        assert!(guard(200).admits(Price::from_cents(9_800)));
        assert!(!guard(200).admits(Price::from_cents(10_201)));
        assert!(!guard(200).admits(Price::from_cents(9_799)));
        assert!(guard(0).admits(Price::from_cents(10_000)));
        assert!(!guard(0).admits(Price::from_cents(10_001)));
    }

    #[test]
    fn stock_cursors_round_trip_and_refuse_what_is_not_hex() {
        for name in ["GameStart", "Fish, \"Co\"", "Ünïcode ✓", ""] {
            assert_eq!(stock_after(&stock_cursor(name)).as_deref(), Some(name));
        }
        for bad in ["z", "zz", "4", "fff"] {
            assert_eq!(stock_after(bad), None, "{bad}");
        }
        // Even hex that is no UTF-8 is still a position in name order.
        assert_eq!(stock_after("ff").as_deref(), Some("\u{fffd}"));
    }
}
