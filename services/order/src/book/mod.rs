//! The order book: the deterministic state machine every replica runs over its committed log.
//! Limit orders match the opposite side of their stock's book with price-time priority (best
//! price first, then the oldest), trade at the resting order's price, fill partially and rest
//! the remainder. Market orders do not touch the book (they trade with the catalog's house
//! inventory). Modify and cancel change or remove an open limit order.
//!
//! A limit order's terms ([`Terms`]) follow the major exchanges' APIs: `ioc` cancels what does
//! not fill at once and `fok` is refused unless all of it does; `day` and `gtd` orders expire
//! at the [`Command::Expire`] entry the leader writes once their time has come (never by a
//! replica's clock); a post-only order is refused if it would take liquidity; and a user's
//! orders never trade with each other unless the incoming one says `stp: none` (Coinbase's
//! and Binance's self-trade prevention, decided by the incoming order).
//!
//! Applying the same entries in the same order gives the same book on every replica: nothing
//! here reads a clock, a random number or a hash map's iteration order. (The maps hash with
//! foldhash, fast and seeded per process: their keys, order numbers and stock names the log
//! holds, are not chosen by an attacker, and nothing iterates them where order matters.)

mod archiving;
mod image;
mod matching;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
pub(crate) mod tests;
mod views;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use stocknet_common::{Price, Rejection, SelfTrade, Side, Status, Terms, TimeInForce};

use crate::archive::Archive;
use crate::candles::{Candle, Minutes};
use crate::portfolio::Portfolios;
use crate::report::Reports;

/// A limit order and what has happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOrder {
    pub number: u64,
    /// Shared with its stock's book and every order of it: a new order allocates no name.
    pub name: Arc<str>,
    /// Who placed it; `None` for an anonymous order.
    pub user: Option<u64>,
    pub side: Side,
    pub price: Price,
    /// Total quantity (a modify may change it).
    pub quantity: u32,
    pub filled: u32,
    /// Why it left the book before it filled, if it did.
    pub removal: Option<Removal>,
    pub time_in_force: TimeInForce,
    pub post_only: bool,
    pub self_trade: SelfTrade,
    /// A market order against the book: `price` is its protection limit.
    pub market: bool,
    /// What of an iceberg's current slice is unfilled.
    pub shown: u32,
    /// A stop order waiting for its trigger: in no queue, and not open.
    pub pending: bool,
    /// What few orders have (an expiry, a client order id, an iceberg's slice), boxed: there
    /// is a record for every order ever placed, and matching reads and writes them.
    pub(crate) extras: Option<Box<Extras>>,
    /// Id of the last trade it took part in (0: none); each trade links to the one before of
    /// each of its orders ([`Book::order_trades`]), so that a fill appends to the trade list
    /// alone and allocates nothing.
    pub(crate) last_trade: u64,
    /// Its place in the time priority of its price level: a modify that loses priority gives
    /// it a new one, which makes its old queue slot stale. 0 once it is closed.
    pub(crate) slot: u64,
}

/// What few limit orders have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extras {
    /// When it expires (milliseconds since the epoch): a `day` order's end of day, a `gtd`
    /// order's `expire_at`.
    pub expires: Option<u64>,
    /// The id its user gave it.
    pub client_order_id: Option<Arc<str>>,
    /// An iceberg's visible part.
    pub display: Option<u32>,
    /// A stop order's trigger.
    pub stop_price: Option<Price>,
    /// A stop order to enter as a market order on the book: its protection.
    pub protection_bps: Option<u32>,
    /// The entry whose trade triggered it.
    pub triggered: Option<u64>,
}

impl Extras {
    /// `None` where there is nothing to keep.
    #[inline]
    pub(crate) fn boxed(self) -> Option<Box<Self>> {
        let none = self.expires.is_none()
            && self.client_order_id.is_none()
            && self.display.is_none()
            && self.stop_price.is_none();
        (!none).then(|| Box::new(self))
    }
}

/// How an order left the book before it filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Removal {
    /// By its owner, by its time in force (`ioc`), or by self-trade prevention.
    Cancelled,
    /// At its expiry (`day`, `gtd`).
    Expired,
}

impl LimitOrder {
    pub fn terms(&self) -> Terms {
        Terms {
            time_in_force: self.time_in_force,
            expire_at: self
                .expires()
                .filter(|_| self.time_in_force == TimeInForce::Gtd),
            post_only: self.post_only,
            self_trade: self.self_trade,
            display_quantity: self.display(),
            stop_price: self.stop_price(),
        }
    }

    pub fn expires(&self) -> Option<u64> {
        self.extras.as_ref()?.expires
    }

    pub fn client_order_id(&self) -> Option<&str> {
        self.extras.as_ref()?.client_order_id.as_deref()
    }

    pub fn display(&self) -> Option<u32> {
        self.extras.as_ref()?.display
    }

    pub fn stop_price(&self) -> Option<Price> {
        self.extras.as_ref()?.stop_price
    }

    /// The entry whose trade triggered this stop order.
    pub fn triggered(&self) -> Option<u64> {
        self.extras.as_ref()?.triggered
    }

    pub fn remaining(&self) -> u32 {
        if self.removal.is_some() {
            0
        } else {
            self.quantity - self.filled
        }
    }

    pub fn status(&self) -> Status {
        if let Some(removal) = self.removal {
            match removal {
                Removal::Cancelled => Status::Cancelled,
                Removal::Expired => Status::Expired,
            }
        } else if self.pending {
            Status::Untriggered
        } else if self.filled == self.quantity {
            Status::Filled
        } else if self.filled > 0 {
            Status::PartiallyFilled
        } else {
            Status::Open
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.status(), Status::Open | Status::PartiallyFilled)
    }
}

/// Why a modify or cancel did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    /// Also what the API calls `not_a_limit_order`: the number is a market order's, a refused
    /// order's, or nobody's; none of them has a record in the book to change.
    #[error("Order {0} has no place on the book: a market order, a refused order, or none")]
    NotFound(u64),
    #[error("Order {0} is no longer open")]
    NotOpen(u64),
    #[error("Order {target}: the new quantity must exceed the {filled} already filled")]
    BelowFilled { target: u64, filled: u32 },
    #[error("Order {order}: fill or kill, and only {available} can fill now within its price")]
    WouldNotFill { order: u64, available: u32 },
    #[error("Order {order}: post-only, and it would trade on entry")]
    WouldTakeLiquidity { order: u64 },
    #[error("Order {order}: its expire_at had passed when it reached the book")]
    ExpiryPassed { order: u64 },
    #[error(
        "Order {order}: client_order_id is already order {open}'s, open or waiting for its stop"
    )]
    DuplicateClientOrderId { order: u64, open: u64 },
    #[error("Order {order}: a market order, and the other side of the book is empty")]
    NoLiquidity { order: u64 },
    #[error("Order {0} is a stop order not triggered yet: cancel it and place another")]
    Untriggered(u64),
}

impl Refusal {
    /// The reason as the audit trail names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_a_limit_order",
            Self::NotOpen(_) => "not_open",
            Self::BelowFilled { .. } => "below_filled",
            Self::WouldNotFill { .. } => "would_not_fill",
            Self::WouldTakeLiquidity { .. } => "would_take_liquidity",
            Self::ExpiryPassed { .. } => "expiry_passed",
            Self::DuplicateClientOrderId { .. } => "duplicate_client_order_id",
            Self::NoLiquidity { .. } => "no_liquidity",
            Self::Untriggered(_) => "untriggered",
        }
    }

    /// Every reason, as [`reason`](Self::reason) names it.
    pub const REASONS: [&'static str; 9] = [
        "not_a_limit_order",
        "not_open",
        "below_filled",
        "would_not_fill",
        "would_take_liquidity",
        "expiry_passed",
        "duplicate_client_order_id",
        "no_liquidity",
        "untriggered",
    ];
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A market order: the catalog executes it.
    Market,
    /// The limit order (new or modified) the entry concerns; its trades are the last
    /// `trades` of the book's trade list.
    Changed {
        order: u64,
        trades: usize,
    },
    Refused(Refusal),
    /// A new order the leader refused: nothing happens.
    Rejected(Rejection),
    /// An expiry entry: this many orders expired.
    Expired {
        orders: usize,
    },
    /// The replica group's own entry: nothing happens.
    Group,
}

/// One price level's queue: open orders (their places in [`Book::live`]) with the slot they
/// were queued with. A slot that no longer matches its order's is stale (cancelled, filled or
/// re-queued, the place perhaps taken by another order since) and is skipped.
#[derive(Debug, Default, Clone)]
struct Level {
    queue: VecDeque<(u32, u64)>,
    /// Remaining quantity of the live orders.
    total: u64,
    live: usize,
}

/// The record at `place` of a book whose `orders` start at place `archived`, before which
/// `pinned` holds those kept in memory (the fields, so that matching can read one while it
/// changes a stock's book).
fn record_in<'a>(
    orders: &'a [LimitOrder],
    pinned: &'a BTreeMap<u32, LimitOrder>,
    archived: u32,
    place: u32,
) -> &'a LimitOrder {
    match place.checked_sub(archived) {
        Some(index) => &orders[index as usize],
        None => &pinned[&place],
    }
}

/// Keeps the queue of a level that emptied for a new one, up to [`SPARE_QUEUES`] of them.
fn spare(queues: &mut Vec<VecDeque<(u32, u64)>>, level: Level) {
    if queues.len() < SPARE_QUEUES {
        let mut queue = level.queue;
        queue.clear();
        queues.push(queue);
    }
}

/// Emptied levels' queues kept for new ones.
const SPARE_QUEUES: usize = 64;

/// What matching and moves read and change of an open order, kept in a slab of the open orders
/// alone ([`Book::live`]): some thousands, which stay in the caches, where the records of every
/// order ever placed do not. An open order's record ([`LimitOrder`]) is brought up to date
/// when it closes; until then it is read merged with this ([`Book::current`]).
#[derive(Debug, Clone, Copy)]
struct Live {
    /// Its record's place in [`Book::orders`].
    place: u32,
    stock: u32,
    side: Side,
    price: Price,
    quantity: u32,
    filled: u32,
    /// The slot it is queued with; 0 while it is in no queue.
    slot: u64,
    number: u64,
    user: Option<u64>,
    self_trade: SelfTrade,
    /// [`Live::POST_ONLY`], [`Live::ICEBERG`], [`Live::EXTRAS`]: in one byte, so that this
    /// stays 64 bytes.
    flags: u8,
    /// What of an iceberg's current slice is unfilled (its slice size is in its record).
    shown: u32,
}

impl Live {
    const POST_ONLY: u8 = 1;
    const ICEBERG: u8 = 2;
    /// Its record has extras to forget when it closes: known without reading the record,
    /// which closing otherwise only writes.
    const EXTRAS: u8 = 4;

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn remaining(&self) -> u32 {
        self.quantity - self.filled
    }

    /// What of it shows on the book: all that remains, or an iceberg's current slice.
    fn visible(&self) -> u32 {
        if self.has(Self::ICEBERG) {
            self.shown
        } else {
            self.remaining()
        }
    }
}

/// A trade as the book keeps it: its stock by place (the wire [`Trade`] names it).
/// Snapshots write it as it is; keep its fields' order, or bump the snapshot's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Matched {
    pub id: u64,
    pub entry: u64,
    pub stock: u32,
    #[serde(with = "crate::snapshot::in_cents")]
    pub price: Price,
    pub quantity: u32,
    pub buy_order: u64,
    pub sell_order: u64,
    pub taker_side: Side,
    /// The previous trade of its buy order, of its sell order, of its stock (0: none).
    pub buy_previous: u64,
    pub sell_previous: u64,
    pub stock_previous: u64,
}

/// One stock's two sides and trades.
#[derive(Debug, Default, Clone)]
struct StockBook {
    name: Arc<str>,
    bids: BTreeMap<Price, Level>,
    asks: BTreeMap<Price, Level>,
    last_price: Option<Price>,
    /// Its trades: each links to the one before ([`Matched::stock_previous`]) from the last,
    /// and every [`CHECKPOINT_EVERY`]th is listed, so that a page is found by walking one
    /// stretch between two of them.
    trades: StockTrades,
    /// The open orders that expire: (expiry, number), soonest first.
    expiries: BTreeSet<(u64, u64)>,
    /// Stop orders waiting for a trade at or above (buys), at or below (sells) their stop:
    /// (stop, number).
    buy_stops: BTreeSet<(Price, u64)>,
    sell_stops: BTreeSet<(Price, u64)>,
    /// Its trades, minute by minute.
    minutes: Minutes,
}

impl StockBook {
    /// The waiting stop orders of `side`.
    fn stops(&mut self, side: Side) -> &mut BTreeSet<(Price, u64)> {
        match side {
            Side::Buy => &mut self.buy_stops,
            Side::Sell => &mut self.sell_stops,
        }
    }

    fn side(&mut self, side: Side) -> &mut BTreeMap<Price, Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

/// Every stock's book, every limit order and every trade (the older ones in the archive, when
/// it has one), as of log entry `applied`.
#[derive(Debug, Default, Clone)]
pub struct Book {
    applied: u64,
    /// Each stock's book, by the stock's place in `stock_places`.
    stocks: Vec<StockBook>,
    /// Stock name → place in `stocks`: a name is hashed once per entry at most.
    stock_places: HashMap<String, u32>,
    /// The records of the newest limit orders, by ascending number (each enters after every
    /// one before it): `orders[i]` is at place `orders_archived + i`; a closed order is found
    /// by number in it. Those before are in the archive, and those of them still needed
    /// (open, waiting to trigger) in `pinned` too.
    orders: Vec<LimitOrder>,
    orders_archived: u32,
    /// The records before `orders` still kept in memory, by place, and their numbers' places.
    pinned: BTreeMap<u32, LimitOrder>,
    pinned_places: HashMap<u64, u32>,
    /// The open orders (a slab: a closed order's place goes to the next new one, listed in
    /// `free`); the price levels hold places in it, so matching looks nothing up.
    live: Vec<Live>,
    /// The last trade of the open order at the same place in `live`: kept beside the slab
    /// rather than in the order's record, so that a fill writes nothing of the records of
    /// every order ever placed, whose caches it would miss. It moves to the record when the
    /// order closes.
    live_last_trade: Vec<u64>,
    free: Vec<u32>,
    /// Open order's number → its place in `live`.
    places: HashMap<u64, u32>,
    /// The newest trades: `trades[i]` has id `trades_archived + i + 1`. Those before went
    /// to `archive`.
    trades: Vec<Matched>,
    trades_archived: u64,
    /// Where records go once more than `in_memory` says are held (none: all stay).
    archive: Option<Arc<Archive>>,
    in_memory: InMemory,
    /// The buyers and sellers of the trades of the order entering now, and the resting orders
    /// it filled (kept to reuse their allocations).
    filled: Vec<u32>,
    /// The resting orders self-trade prevention cancelled while an order entered.
    withdrawn: Vec<u32>,
    traders: Vec<(Option<u64>, Option<u64>)>,
    /// Refused modifies and cancels, to answer a retry of one the same way.
    /// By ascending number (each refused after those before it): the newest; the
    /// `refusals_archived` before them are in the archive.
    refusals: Vec<(u64, Refusal)>,
    refusals_archived: u64,
    /// Each user's open orders by client order id (user → id → number).
    client_ids: HashMap<u64, HashMap<Arc<str>, u64>>,
    next_slot: u64,
    /// The price levels the last applied entry changed (for its [`MarketEvent`]).
    touched: Vec<(Side, Price)>,
    /// Queues of price levels that emptied, kept to give new levels (most moves empty one
    /// level and start another): matching allocates no queue in the steady state.
    spare_queues: Vec<VecDeque<(u32, u64)>>,
    /// The orders the last applied entry changed besides its own and its trades' (for its
    /// [`OrderUpdate`]s): those it triggered, expired or cancelled by self-trade prevention.
    affected: Vec<u64>,
    portfolios: Portfolios,
    reports: Reports,
}

/// How many of the newest trades and limit orders a book with an archive keeps in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InMemory {
    pub trades: usize,
    pub orders: usize,
}

/// Records an order listing reads at most for one page: a filter that matches few orders
/// gives a short page, with where the next one starts.
pub const ORDERS_SCANNED: usize = 100_000;

/// How far apart the trades a stock lists are: a page of its trades walks at most this many.
const CHECKPOINT_EVERY: u64 = 1024;

/// A stock's trades, as [`StockBook`] keeps them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StockTrades {
    /// How many it has had, and the id of its last (0: none).
    pub count: u64,
    pub last: u64,
    /// The id of every [`CHECKPOINT_EVERY`]th, ascending.
    pub checkpoints: Vec<u64>,
}

impl StockTrades {
    /// Adds trade `id`, the stock's newest; the id of its trade before (0: none).
    fn add(&mut self, id: u64) -> u64 {
        self.count += 1;
        if self.count.is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoints.push(id);
        }
        std::mem::replace(&mut self.last, id)
    }
}

/// A stock as a snapshot holds it.
pub(crate) struct StockPart<'a> {
    pub name: &'a str,
    pub last_price: Option<Price>,
    pub trades: &'a StockTrades,
}

/// What a snapshot of the book holds; the price levels follow from the open orders.
pub(crate) struct Parts<'a, Orders> {
    pub applied: u64,
    pub next_slot: u64,
    /// Each stock, by place: its name, last price and trade ids.
    pub stocks: Vec<StockPart<'a>>,
    /// The records in memory, each with its place and its stock's: the ones before
    /// `orders_archived` are also in the archive.
    pub orders_archived: u32,
    pub orders: Orders,
    /// The trades in memory, after the archive's first `trades_archived`.
    pub trades_archived: u64,
    pub trades: &'a [Matched],
    /// Sorted by entry number, so that equal books give equal snapshots.
    /// The refusals in memory, after the archive's first ones.
    pub refusals: (u64, &'a [(u64, Refusal)]),
    pub portfolios: &'a Portfolios,
    pub reports: &'a Reports,
    /// Each stock's minutes with trades, by name.
    pub candles: Vec<(&'a str, &'a [Candle])>,
}

impl Book {
    /// The last log entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Whether the view of order `number` (entry `number`) reads nothing from the archive: its
    /// record, if it has one (a market order against the house has none), is in memory, and so
    /// is every trade since it entered (records and trades go to the archive oldest first, so
    /// all those after the oldest kept are kept).
    pub fn view_in_memory(&self, number: u64) -> bool {
        let record = self.orders_archived == 0
            || self.places.contains_key(&number)
            || self
                .orders
                .first()
                .is_some_and(|first| first.number <= number);
        let trades = self.trades_archived == 0
            || self
                .trades
                .first()
                .is_some_and(|oldest| oldest.entry <= number);
        record && trades
    }

    /// Limit order `number` as of now.
    pub fn order(&self, number: u64) -> Option<LimitOrder> {
        let record = self.record_at(self.place(number)?)?;
        Some(self.current(&record))
    }

    /// The record at `place`, from memory or, a closed order's from long ago, the archive.
    fn record_at(&self, place: u32) -> Option<std::borrow::Cow<'_, LimitOrder>> {
        if let Some(index) = place.checked_sub(self.orders_archived) {
            return self
                .orders
                .get(index as usize)
                .map(std::borrow::Cow::Borrowed);
        }
        if let Some(record) = self.pinned.get(&place) {
            return Some(std::borrow::Cow::Borrowed(record));
        }
        let name = |stock: u32| Some(self.stocks.get(stock as usize)?.name.clone());
        let order = self.archive.as_ref()?.order(place, name)?;
        Some(std::borrow::Cow::Owned(order))
    }

    /// The record at `place` of an order kept in memory (open, waiting, or recent).
    fn record(&self, place: u32) -> &LimitOrder {
        record_in(&self.orders, &self.pinned, self.orders_archived, place)
    }

    fn record_mut(&mut self, place: u32) -> &mut LimitOrder {
        match place.checked_sub(self.orders_archived) {
            Some(index) => &mut self.orders[index as usize],
            None => self.pinned.get_mut(&place).expect("a pinned record"),
        }
    }

    /// `record` as of now: an open order's price, quantity, fills and slot are in `live`.
    fn current(&self, record: &LimitOrder) -> LimitOrder {
        let mut order = record.clone();
        if let Some(&at) = self.places.get(&record.number) {
            let live = &self.live[at as usize];
            (order.price, order.quantity, order.filled) = (live.price, live.quantity, live.filled);
            (order.slot, order.shown) = (live.slot, live.shown);
            order.last_trade = self.live_last_trade[at as usize];
        }
        order
    }

    /// The place of order `number`'s record, open or closed.
    fn place(&self, number: u64) -> Option<u32> {
        if let Some(&live) = self.places.get(&number) {
            return Some(self.live[live as usize].place);
        }
        if self
            .orders
            .first()
            .is_some_and(|first| first.number <= number)
        {
            let index = self
                .orders
                .binary_search_by_key(&number, |order| order.number)
                .ok()?;
            return Some(self.orders_archived + index as u32);
        }
        if let Some(&place) = self.pinned_places.get(&number) {
            return Some(place);
        }
        let place = self.archived_below(number);
        (place < self.orders_archived && self.archived_number(place)? == number).then_some(place)
    }

    /// The first place before `orders` whose order's number is not below `number` (every
    /// place before it holds a smaller one), by bisecting the archive.
    fn archived_below(&self, number: u64) -> u32 {
        let (mut low, mut high) = (0, self.orders_archived);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.archived_number(middle) {
                Some(found) if found < number => low = middle + 1,
                Some(_) => high = middle,
                // Unreadable (counted as a failed read): nothing is answered from here.
                None => return 0,
            }
        }
        low
    }

    fn archived_number(&self, place: u32) -> Option<u64> {
        self.archive.as_ref()?.order_number(place)
    }

    /// Adds `order`, the newest, of the stock at `stock`, queued nowhere yet; if it is open,
    /// its place in `live`.
    fn push(&mut self, stock: u32, order: LimitOrder) -> Result<Option<u32>, String> {
        let place = u32::try_from(self.orders.len())
            .ok()
            .and_then(|index| index.checked_add(self.orders_archived))
            .ok_or("too many orders")?;
        let open = order.is_open();
        self.orders.push(order);
        if !open {
            return Ok(None);
        }
        self.open_live(place, stock).map(Some)
    }

    /// Gives the record at `place` in `orders`, of the stock at `stock`, a place among the
    /// open orders; that place.
    fn open_live(&mut self, place: u32, stock: u32) -> Result<u32, String> {
        let order = self.record(place);
        let last_trade = order.last_trade;
        let live = Live {
            place,
            stock,
            side: order.side,
            price: order.price,
            quantity: order.quantity,
            filled: order.filled,
            slot: 0,
            number: order.number,
            user: order.user,
            self_trade: order.self_trade,
            flags: [
                (order.post_only, Live::POST_ONLY),
                (order.display().is_some(), Live::ICEBERG),
                (order.extras.is_some(), Live::EXTRAS),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .fold(0, |flags, (_, flag)| flags | flag),
            shown: order.shown,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.live[at as usize] = live;
                self.live_last_trade[at as usize] = last_trade;
                at
            }
            None => {
                let at = u32::try_from(self.live.len()).map_err(|_| "too many orders")?;
                self.live.push(live);
                self.live_last_trade.push(last_trade);
                at
            }
        };
        self.places.insert(live.number, at);
        Ok(at)
    }

    /// Brings the record of the order at `at` in `live`, which closed, up to date and frees
    /// its place (its queue slot goes stale).
    #[inline]
    fn close(&mut self, at: u32) {
        let live = self.live[at as usize];
        let last_trade = self.live_last_trade[at as usize];
        let record = self.record_mut(live.place);
        (record.price, record.quantity, record.filled) = (live.price, live.quantity, live.filled);
        record.shown = live.shown;
        record.last_trade = last_trade;
        // A closed order is in no queue, however it closed.
        record.slot = 0;
        self.live[at as usize].slot = 0;
        let (number, stock, place) = (live.number, live.stock, live.place);
        if live.has(Live::EXTRAS) {
            self.forget_extras(number, stock, place);
        }
        self.places.remove(&number);
        self.free.push(at);
    }

    /// Takes closed order `number`, of the stock at `stock`, whose record is at `place`, out of
    /// the expiries and client order ids it is in.
    #[cold]
    fn forget_extras(&mut self, number: u64, stock: u32, place: u32) {
        let record = record_in(&self.orders, &self.pinned, self.orders_archived, place);
        let Some(extras) = record.extras.as_deref() else {
            return;
        };
        if let Some(expires) = extras.expires {
            self.stocks[stock as usize]
                .expiries
                .remove(&(expires, number));
        }
        if let (Some(user), Some(id)) = (record.user, &extras.client_order_id) {
            if let Some(ids) = self.client_ids.get_mut(&user) {
                ids.remove(&**id);
                if ids.is_empty() {
                    self.client_ids.remove(&user);
                }
            }
        }
    }

    /// The place of `name`'s book, which it gets the first time it is named.
    fn stock_place(&mut self, name: &str) -> Result<u32, String> {
        if let Some(&place) = self.stock_places.get(name) {
            return Ok(place);
        }
        let place = u32::try_from(self.stocks.len()).map_err(|_| "too many stocks".to_owned())?;
        self.stock_places.insert(name.to_owned(), place);
        self.stocks.push(StockBook {
            name: name.into(),
            ..StockBook::default()
        });
        Ok(place)
    }

    /// `name`'s book, if it was ever named.
    fn stock(&self, name: &str) -> Option<&StockBook> {
        let place = *self.stock_places.get(name)?;
        self.stocks.get(place as usize)
    }

    /// Trade `id`, from memory or, an older one, from the archive.
    fn matched(&self, id: u64) -> Option<Matched> {
        match id.checked_sub(self.trades_archived + 1) {
            Some(index) => self.trades.get(usize::try_from(index).ok()?).copied(),
            None if id == 0 => None,
            None => self.archive.as_ref()?.trade(id, self.stocks.len()),
        }
    }

    /// How many trades there have been.
    fn trade_count(&self) -> u64 {
        self.trades_archived + self.trades.len() as u64
    }
}
