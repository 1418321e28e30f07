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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use hashbrown::HashMap;

use serde::{Deserialize, Serialize};
use stocknet_common::clock::day_of;
use stocknet_common::clock::rfc3339;
use stocknet_common::wire::{
    DailyReport, Depth, DepthLevel, Fill, Holding, LevelChange, MarketEvent, OrderEvent, OrderType,
    OrderUpdate, OrderView, Trade,
};
use stocknet_common::{
    Command, Order, Price, Rejection, SelfTrade, Side, Status, Terms, TimeInForce,
};

use crate::archive::{Archive, Counts};
use crate::candles::{Candle, Minutes};
use crate::error::OrderError;
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
    #[error("Order {0} is not a limit order")]
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
    #[error("Order {order}: client_order_id is already open order {open}'s")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Matched {
    pub id: u64,
    pub entry: u64,
    pub stock: u32,
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
    pub(crate) fn parts(&self) -> Parts<'_, impl Iterator<Item = (u32, u32, LimitOrder)> + '_> {
        // By name, so that equal books give equal snapshots.
        let mut candles: Vec<(&str, &[Candle])> = self
            .stocks
            .iter()
            .map(|book| (&*book.name, book.minutes.as_slice()))
            .filter(|(_, minutes)| !minutes.is_empty())
            .collect();
        candles.sort_unstable_by_key(|(name, _)| *name);
        Parts {
            applied: self.applied,
            next_slot: self.next_slot,
            stocks: self
                .stocks
                .iter()
                .map(|book| StockPart {
                    name: &book.name,
                    last_price: book.last_price,
                    trades: &book.trades,
                })
                .collect(),
            orders_archived: self.orders_archived,
            orders: self
                .pinned
                .iter()
                .map(|(&place, order)| (place, order))
                .chain((self.orders_archived..).zip(&self.orders))
                .map(|(place, order)| {
                    let stock = self
                        .stock_places
                        .get(&*order.name)
                        .copied()
                        .unwrap_or_default();
                    (place, stock, self.current(order))
                }),
            trades_archived: self.trades_archived,
            trades: &self.trades,
            refusals: (self.refusals_archived, &self.refusals),
            portfolios: &self.portfolios,
            reports: &self.reports,
            candles,
        }
    }

    /// Rebuilds a book from the parts of a snapshot: each open order goes back into its price
    /// level in the order of its slot, which is its time priority.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        applied: u64,
        next_slot: u64,
        stocks: Vec<(String, Option<Price>, StockTrades)>,
        (orders_archived, orders): (u32, impl Iterator<Item = (u32, LimitOrder)>),
        (trades_archived, trades): (u64, Vec<Matched>),
        (refusals_archived, refusals): (u64, Vec<(u64, Refusal)>),
        portfolios: Portfolios,
        reports: Reports,
    ) -> Result<Self, String> {
        let ascending = refusals.windows(2).all(|pair| pair[0].0 < pair[1].0);
        if !ascending || refusals.last().is_some_and(|&(number, _)| number > applied) {
            return Err("the refusals are out of place".to_owned());
        }
        let mut book = Book {
            applied,
            next_slot,
            orders_archived,
            trades_archived,
            refusals_archived,
            refusals,
            portfolios,
            reports,
            ..Book::default()
        };
        let trade_count = trades_archived + trades.len() as u64;
        // The stocks in their places: archived trades name them by place.
        for (index, (name, last_price, trades)) in stocks.into_iter().enumerate() {
            if book.stock_place(&name)? as usize != index {
                return Err(format!("stock {name} is listed twice"));
            }
            let listed = trades.checkpoints.len() as u64 == trades.count / CHECKPOINT_EVERY
                && trades.checkpoints.is_sorted()
                && trades
                    .checkpoints
                    .last()
                    .is_none_or(|&id| id <= trades.last)
                && trades.last <= trade_count;
            if !listed {
                return Err(format!("the trades of stock {name} are out of place"));
            }
            let stock = &mut book.stocks[index];
            (stock.last_price, stock.trades) = (last_price, trades);
        }
        let mut open = Vec::new();
        let mut last: Option<(u32, u64)> = None;
        for (place, order) in orders {
            if order.filled > order.quantity || order.slot > next_slot {
                return Err(format!("order {} is inconsistent", order.number));
            }
            // In place order, by number, the ones before the archived mark pinned and the
            // rest one after another from it.
            let in_order = last.is_none_or(|(p, n)| p < place && n < order.number);
            let next = orders_archived as usize + book.orders.len();
            if !in_order || (place >= orders_archived && place as usize != next) {
                return Err(format!("order {} is out of place", order.number));
            }
            last = Some((place, order.number));
            let slot = order.slot;
            let stock = book.stock_place(&order.name)?;
            if order.last_trade > trade_count {
                return Err(format!("order {} names a trade to come", order.number));
            }
            let order = LimitOrder {
                name: book.stocks[stock as usize].name.clone(),
                ..order
            };
            // A stop order waiting for its trigger goes back among its stock's stops.
            let held = match (order.pending && order.removal.is_none(), order.stop_price()) {
                (true, Some(stop)) => {
                    let id = order.client_order_id().map(Arc::<str>::from);
                    Some((order.side, stop, order.number, order.user, id))
                }
                _ => None,
            };
            let live = if place < orders_archived {
                let open = order.is_open();
                book.pinned_places.insert(order.number, place);
                book.pinned.insert(place, order);
                match open {
                    true => Some(book.open_live(place, stock)?),
                    false => None,
                }
            } else {
                book.push(stock, order)?
            };
            if let Some(live) = live {
                open.push((slot, live));
            }
            if let Some((side, stop, number, user, id)) = held {
                book.stocks[stock as usize]
                    .stops(side)
                    .insert((stop, number));
                book.keep_client_id(user, id, number);
            }
        }
        for (index, trade) in trades.iter().enumerate() {
            let stocks = book.stocks.len();
            if trade.id != trades_archived + index as u64 + 1
                || trade.stock as usize >= stocks
                || trade
                    .buy_previous
                    .max(trade.sell_previous)
                    .max(trade.stock_previous)
                    >= trade.id
            {
                return Err(format!("trade {} is out of place", trade.id));
            }
        }
        book.trades = trades;
        open.sort_unstable();
        for (slot, live) in open {
            book.live[live as usize].slot = slot;
            let order = book.live[live as usize];
            let record = book.record(order.place);
            let (user, extras) = (record.user, record.extras.as_deref().cloned());
            let extras = extras.unwrap_or_default();
            if let Some(expires) = extras.expires {
                book.stocks[order.stock as usize]
                    .expiries
                    .insert((expires, order.number));
            }
            book.keep_client_id(user, extras.client_order_id, order.number);
            let level = book.stocks[order.stock as usize]
                .side(order.side)
                .entry(order.price)
                .or_default();
            level.queue.push_back((live, slot));
            level.total += u64::from(order.visible());
            level.live += 1;
        }
        Ok(book)
    }

    /// Restores the minutes of `name`'s trades (from a snapshot).
    pub(crate) fn restore_minutes(
        &mut self,
        name: &str,
        candles: Vec<Candle>,
    ) -> Result<(), String> {
        let place = self.stock_place(name)?;
        self.stocks[place as usize].minutes = Minutes::from_candles(candles)?;
        Ok(())
    }

    /// The first `limit` of `name`'s candles of `interval` milliseconds (a whole number of
    /// minutes) starting in `[from, to)`, oldest first, and where the next starts if any.
    pub fn candles(
        &self,
        name: &str,
        interval: u64,
        (from, to): (u64, u64),
        limit: usize,
    ) -> (Vec<Candle>, Option<u64>) {
        self.stock(name)
            .map(|book| book.minutes.candles(interval, from, to, limit))
            .unwrap_or_default()
    }

    /// The last log entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
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

    /// Why the book refused command `number`, if it did.
    pub fn refusal(&self, number: u64) -> Option<Refusal> {
        if self
            .refusals
            .first()
            .is_some_and(|&(first, _)| first <= number)
        {
            let index = self.refusals.binary_search_by_key(&number, |r| r.0).ok()?;
            return Some(self.refusals[index].1);
        }
        // Older: bisect the archive's.
        let archive = self.archive.as_ref()?;
        let (mut low, mut high) = (0, self.refusals_archived);
        while low < high {
            let middle = low + (high - low) / 2;
            let (found, refusal) = archive.refusal(middle)?;
            match found.cmp(&number) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(refusal),
            }
        }
        None
    }

    /// The price of `name`'s last trade on the book, if it ever traded.
    pub fn last_price(&self, name: &str) -> Option<Price> {
        self.stock(name).and_then(|b| b.last_price)
    }

    /// `user`'s positions, stock by stock.
    pub fn holdings(&self, user: u64) -> Vec<Holding> {
        self.portfolios.holdings(user)
    }

    /// The report of UTC day `day` (days since 1970-01-01).
    pub fn daily_report(&self, day: u32) -> DailyReport {
        self.reports.daily(day)
    }

    pub fn trade(&self, id: u64) -> Option<Trade> {
        self.matched(id).map(|m| self.wire(&m))
    }

    /// Trade `id`, from memory or, an older one, from the archive.
    fn matched(&self, id: u64) -> Option<Matched> {
        match id.checked_sub(self.trades_archived + 1) {
            Some(index) => self.trades.get(usize::try_from(index).ok()?).copied(),
            None if id == 0 => None,
            None => self.archive.as_ref()?.trade(id),
        }
    }

    /// How many trades there have been.
    fn trade_count(&self) -> u64 {
        self.trades_archived + self.trades.len() as u64
    }

    /// Sends the oldest trades and limit orders' records to the archive once twice as many as
    /// are to stay in memory are held (so that each is moved once), keeping the newest. Called
    /// before an entry is applied: what it touches stays in memory while it is. A record that
    /// cannot be written stays in memory, with those after it.
    fn archive_old(&mut self) {
        let (trades, orders) = (self.in_memory.trades, self.in_memory.orders);
        let due = self.trades.len() >= 2 * trades
            || self.orders.len() >= 2 * orders
            || self.refusals.len() >= 2 * orders;
        // (Most entries find nothing due: the archive is not even touched then.)
        let Some(archive) = self.archive.as_ref().filter(|_| due).cloned() else {
            return;
        };
        if self.trades.len() >= 2 * self.in_memory.trades {
            let leaving = self.trades.len() - self.in_memory.trades;
            let written = self.trades[..leaving]
                .iter()
                .try_for_each(|trade| archive.write_trade(trade));
            match written {
                Ok(()) => {
                    self.trades.drain(..leaving);
                    self.trades_archived += leaving as u64;
                }
                Err(e) => tracing::error!("trades stay in memory: {e}"),
            }
        }
        if self.orders.len() >= 2 * self.in_memory.orders {
            if let Err(e) = self.archive_orders(&archive) {
                tracing::error!("order records stay in memory: {e}");
            }
        }
        if self.refusals.len() >= 2 * self.in_memory.orders {
            let leaving = self.refusals.len() - self.in_memory.orders;
            let first = self.refusals_archived;
            let written = (first..).zip(&self.refusals[..leaving]).try_for_each(
                |(index, (number, refusal))| archive.write_refusal(index, *number, refusal),
            );
            match written {
                Ok(()) => {
                    self.refusals.drain(..leaving);
                    self.refusals_archived += leaving as u64;
                }
                Err(e) => tracing::error!("refusals stay in memory: {e}"),
            }
        }
    }

    /// Writes the oldest records of `orders` to `archive`, keeping the newest
    /// `in_memory.orders`, and the records that closed among the pinned ones; pins those that
    /// are still needed (open, waiting to trigger, or too long for the archive).
    #[cold]
    fn archive_orders(&mut self, archive: &Archive) -> Result<(), OrderError> {
        let needed = |book: &Book, order: &LimitOrder| {
            book.places.contains_key(&order.number) || (order.pending && order.removal.is_none())
        };
        let closed: Vec<u32> = self
            .pinned
            .iter()
            .filter(|(_, order)| !needed(self, order))
            .map(|(&place, _)| place)
            .collect();
        for place in closed {
            let order = &self.pinned[&place];
            if archive.write_order(place, self.stock_places[&*order.name], order)? {
                let number = order.number;
                self.pinned.remove(&place);
                self.pinned_places.remove(&number);
            }
        }
        let leaving = self.orders.len() - self.in_memory.orders;
        let mut pins = Vec::new();
        for (index, record) in self.orders[..leaving].iter().enumerate() {
            let place = self.orders_archived + index as u32;
            // An open one's record is written as it is now (its number is what a search by
            // number reads), and again once it closes.
            let order = self.current(record);
            let whole = archive.write_order(place, self.stock_places[&*order.name], &order)?;
            if !whole || needed(self, record) {
                pins.push(place);
            }
        }
        let mut pins = pins.into_iter().peekable();
        for (place, record) in (self.orders_archived..).zip(self.orders.drain(..leaving)) {
            if pins.next_if_eq(&place).is_some() {
                self.pinned_places.insert(record.number, place);
                self.pinned.insert(place, record);
            }
        }
        self.orders_archived += leaving as u32;
        Ok(())
    }

    /// Keeps no more than `in_memory` trades and limit orders' records (at least one of each)
    /// in memory; older ones go to `archive`, which must hold every record this book archived
    /// already.
    pub fn with_archive(mut self, archive: Arc<Archive>, in_memory: InMemory) -> Self {
        self.archive = Some(archive);
        self.in_memory = InMemory {
            trades: in_memory.trades.max(1),
            orders: in_memory.orders.max(1),
        };
        self
    }

    pub fn in_memory(&self) -> InMemory {
        self.in_memory
    }

    /// How many trades, limit orders' records and refusals, from the first, are in the
    /// archive rather than only in memory.
    pub fn archived(&self) -> Counts {
        Counts {
            trades: self.trades_archived,
            orders: u64::from(self.orders_archived),
            refusals: self.refusals_archived,
        }
    }

    /// `matched` as the wire names it.
    /// The trades `order` took part in, oldest first.
    fn order_trades(&self, order: &LimitOrder) -> Vec<Matched> {
        let mut trades = Vec::new();
        let mut id = order.last_trade;
        while let Some(trade) = self.matched(id) {
            trades.push(trade);
            id = match trade.buy_order == order.number {
                true => trade.buy_previous,
                false => trade.sell_previous,
            };
        }
        trades.reverse();
        trades
    }

    fn wire(&self, matched: &Matched) -> Trade {
        Trade {
            id: matched.id,
            entry: matched.entry,
            name: self.stocks[matched.stock as usize].name.to_string(),
            price: matched.price,
            quantity: matched.quantity,
            buy_order: matched.buy_order,
            sell_order: matched.sell_order,
            taker_side: matched.taker_side,
        }
    }

    /// The public view of the order log entry `entry` places, as of now; `None` for a modify
    /// or cancel, or for a limit order not applied yet.
    pub fn view(&self, entry: &Order) -> Option<OrderView> {
        let (side, quantity, limit, order_type) = match entry.command {
            Command::Place {
                side,
                quantity,
                limit,
                ..
            } => (side, quantity, limit, limit.map(|_| OrderType::Limit)),
            Command::Sweep { side, quantity, .. } => {
                (side, quantity, None, Some(OrderType::Market))
            }
            _ => return None,
        };
        let terms = entry.command.terms();
        let client_order_id = entry.command.client_order_id().map(str::to_owned);
        let done = |status, filled_quantity| OrderView {
            number: entry.number,
            name: entry.name.clone(),
            side,
            quantity,
            order_type,
            price: limit,
            status,
            filled_quantity,
            remaining_quantity: 0,
            fills: Vec::new(),
            time_in_force: None,
            expire_at: None,
            post_only: None,
            stp: None,
            client_order_id: client_order_id.clone(),
            display_quantity: None,
            stop_price: None,
            triggered_at: None,
        };
        match order_type {
            _ if entry.stamp.rejected.is_some() => Some(done(Status::Rejected, 0)),
            // The house executed it.
            None => Some(done(Status::Filled, quantity)),
            // Refused by the book (fill or kill, post-only, a passed expiry, no liquidity...):
            // it never rested.
            Some(_) if self.refusal(entry.number).is_some() => Some(OrderView {
                time_in_force: Some(terms.time_in_force),
                expire_at: terms.expire_at.map(rfc3339),
                post_only: Some(terms.post_only),
                stp: Some(terms.self_trade),
                display_quantity: terms.display_quantity,
                stop_price: terms.stop_price,
                ..done(Status::Rejected, 0)
            }),
            Some(_) => self.order(entry.number).map(|o| self.limit_view(&o)),
        }
    }

    pub fn limit_view(&self, order: &LimitOrder) -> OrderView {
        OrderView {
            fills: self
                .order_trades(order)
                .into_iter()
                .map(|t| Fill {
                    trade: t.id,
                    price: t.price,
                    quantity: t.quantity,
                })
                .collect(),
            ..self.limit_view_without_fills(order)
        }
    }

    /// [`limit_view`](Self::limit_view) without the fill list, which grows with every trade
    /// of the order (an order update carries its own entry's fills instead).
    fn limit_view_without_fills(&self, order: &LimitOrder) -> OrderView {
        OrderView {
            number: order.number,
            name: order.name.to_string(),
            side: order.side,
            quantity: order.quantity,
            order_type: Some(if order.market {
                OrderType::Market
            } else {
                OrderType::Limit
            }),
            price: Some(order.price),
            status: order.status(),
            filled_quantity: order.filled,
            remaining_quantity: order.remaining(),
            fills: Vec::new(),
            time_in_force: Some(order.time_in_force),
            expire_at: order.expires().map(rfc3339),
            post_only: Some(order.post_only),
            stp: Some(order.self_trade),
            client_order_id: order.client_order_id().map(str::to_owned),
            display_quantity: order.display(),
            stop_price: order.stop_price(),
            triggered_at: order.triggered(),
        }
    }

    /// What the last applied entry, `entry`, changed in its stock's book: its trades and the
    /// new state of every price level it touched (quantity 0: the level is gone). `None` when
    /// it changed nothing (a market order, a refusal).
    pub fn last_changes(&self, entry: &Order) -> Option<MarketEvent> {
        if entry.number != self.applied {
            return None;
        }
        let first = self.trades.partition_point(|t| t.entry < entry.number);
        let trades: Vec<Trade> = self.trades[first..].iter().map(|m| self.wire(m)).collect();
        let mut touched = self.touched.clone();
        touched.sort_unstable_by_key(|&(side, price)| (side == Side::Sell, price));
        touched.dedup();
        if trades.is_empty() && touched.is_empty() {
            return None;
        }
        let book = self.stock(&entry.name);
        let levels = touched
            .into_iter()
            .map(|(side, price)| {
                let level = book.and_then(|b| match side {
                    Side::Buy => b.bids.get(&price),
                    Side::Sell => b.asks.get(&price),
                });
                LevelChange {
                    side,
                    price,
                    quantity: level.map_or(0, |l| l.total),
                    orders: level.map_or(0, |l| l.live),
                }
            })
            .collect();
        Some(MarketEvent {
            entry: entry.number,
            time: entry.stamp.time,
            name: entry.name.clone(),
            trades,
            levels,
            last_price: book.and_then(|b| b.last_price),
        })
    }

    /// What the last applied entry, `entry`, did to users' orders (anonymous orders have no
    /// updates): its own order first, then every other it changed by number, each with one
    /// update per thing that happened to it, in the order it happened.
    pub fn last_order_updates(&self, entry: &Order) -> Vec<OrderUpdate> {
        if entry.number != self.applied {
            return Vec::new();
        }
        let first = self.trades.partition_point(|t| t.entry < entry.number);
        let trades = &self.trades[first..];
        let (own, entered) = match entry.command {
            Command::Place { .. } | Command::Sweep { .. } => (Some(entry.number), true),
            Command::Modify { target, .. } | Command::Cancel { target } => (Some(target), false),
            Command::Expire | Command::Group(_) => (None, false),
        };
        let mut others: Vec<u64> = trades
            .iter()
            .flat_map(|t| [t.buy_order, t.sell_order])
            .chain(self.affected.iter().copied())
            .filter(|&number| Some(number) != own)
            .collect();
        others.sort_unstable();
        others.dedup();
        let time = rfc3339(entry.stamp.time);
        let mut updates = Vec::new();
        for number in own.into_iter().chain(others) {
            let is_own = Some(number) == own;
            let view = if is_own && entered {
                self.view(entry)
            } else {
                self.order(number)
                    .map(|order| self.limit_view_without_fills(&order))
            };
            let Some(mut order) = view else { continue };
            let user = match self.place(number).and_then(|place| self.record_at(place)) {
                Some(record) => record.user,
                None => entry.user,
            };
            let Some(user) = user else { continue };
            let fills: Vec<Fill> = trades
                .iter()
                .filter(|t| t.buy_order == number || t.sell_order == number)
                .map(|t| Fill {
                    trade: t.id,
                    price: t.price,
                    quantity: t.quantity,
                })
                .collect();
            order.fills = Vec::new();
            let mut events = Vec::new();
            let refusal = match (is_own, entry.stamp.rejected) {
                (false, _) => None,
                (true, Some(rejection)) => Some(rejection.as_str()),
                (true, None) => self.refusal(entry.number).map(|r| r.reason()),
            };
            if let Some(reason) = refusal {
                events.push((OrderEvent::Refused, Some(reason)));
            } else {
                if is_own && entered {
                    events.push((OrderEvent::Accepted, None));
                }
                if order.triggered_at == Some(entry.number) {
                    events.push((OrderEvent::Triggered, None));
                }
                if is_own && matches!(entry.command, Command::Modify { .. }) {
                    events.push((OrderEvent::Modified, None));
                }
                // A market order against the house fills without book trades.
                let house = is_own && order.order_type.is_none();
                if !fills.is_empty() || house {
                    events.push(match order.status {
                        Status::Filled => (OrderEvent::Filled, None),
                        _ => (OrderEvent::PartiallyFilled, None),
                    });
                }
                match order.status {
                    Status::Cancelled => events.push((OrderEvent::Cancelled, None)),
                    Status::Expired => events.push((OrderEvent::Expired, None)),
                    _ => {}
                }
            }
            for (event, reason) in events {
                let traded = matches!(event, OrderEvent::PartiallyFilled | OrderEvent::Filled);
                updates.push(OrderUpdate {
                    entry: entry.number,
                    time: time.clone(),
                    user,
                    event,
                    order: order.clone(),
                    fills: if traded { fills.clone() } else { Vec::new() },
                    reason: reason.map(str::to_owned),
                });
            }
        }
        updates
    }

    /// The price of the last trade entry `number` caused, if it traded.
    pub fn entry_price(&self, number: u64) -> Option<Price> {
        let end = self.trades.partition_point(|t| t.entry <= number);
        let last = match end.checked_sub(1) {
            Some(i) => self.trades[i],
            // Older than every trade in memory: the archive's last trade of an entry up to
            // `number`, by bisection (trades are in entry order).
            None => {
                let (mut low, mut high) = (1, self.trades_archived);
                let mut found = None;
                while low <= high {
                    let middle = low + (high - low) / 2;
                    let trade = self.matched(middle)?;
                    if trade.entry <= number {
                        found = Some(trade);
                        low = middle + 1;
                    } else {
                        high = middle - 1;
                    }
                }
                found?
            }
        };
        (last.entry == number).then_some(last.price)
    }

    /// Up to `limit` limit orders as of now, newest first, with numbers below `before`, that
    /// `wanted` keeps, and the number the next page starts below if there may be more. It
    /// looks at `scanned` orders at most: a filter that few orders pass gives a short page
    /// (perhaps an empty one) and where to go on.
    pub fn orders_page(
        &self,
        before: u64,
        (limit, scanned): (usize, usize),
        wanted: impl Fn(&LimitOrder) -> bool,
    ) -> (Vec<LimitOrder>, Option<u64>) {
        let end = self.orders.partition_point(|o| o.number < before);
        let recent = self.orders[..end]
            .iter()
            .rev()
            .map(|o| Some(std::borrow::Cow::Borrowed(o)));
        // Before `orders`: kept in memory (pinned), or read from the archive.
        let top = match end {
            0 => self.archived_below(before),
            _ => self.orders_archived,
        };
        let older = (0..top).rev().map(|place| self.record_at(place));
        let mut found = Vec::new();
        for (looked, record) in recent.chain(older).enumerate() {
            // Unreadable: counted as a failed read, which fails the whole read.
            let Some(record) = record else { break };
            let order = self.current(&record);
            let number = order.number;
            if wanted(&order) {
                if found.len() == limit {
                    // More: the next page starts below the last of this one.
                    let next = found
                        .last()
                        .map_or(number + 1, |last: &LimitOrder| last.number);
                    return (found, Some(next));
                }
                found.push(order);
            }
            if looked + 1 == scanned {
                return (found, Some(number));
            }
        }
        (found, None)
    }

    /// Up to `limit` trades with ids above `after`, oldest first, of one stock or all.
    pub fn trades(&self, name: Option<&str>, after: u64, limit: usize) -> Vec<Trade> {
        match name {
            None => (after.saturating_add(1)..=self.trade_count())
                .take(limit)
                .map_while(|id| self.matched(id))
                .map(|m| self.wire(&m))
                .collect(),
            Some(name) => {
                let Some(book) = self.stock(name) else {
                    return Vec::new();
                };
                let trades = &book.trades;
                // The stretches between the listed trades after `after`, and after the last
                // listed one, each walked back from its end.
                let first = trades.checkpoints.partition_point(|&id| id <= after);
                let listed = trades.checkpoints[first..].iter().copied();
                let last = trades.checkpoints.last().copied().unwrap_or(0);
                let ends = listed.chain((trades.last > last.max(after)).then_some(trades.last));
                let mut found: Vec<Trade> = Vec::new();
                let mut floor = after;
                for end in ends {
                    let mut stretch = Vec::new();
                    let mut id = end;
                    while id > floor {
                        let Some(trade) = self.matched(id) else {
                            // Unreadable: counted as a failed read, which fails the read.
                            return found;
                        };
                        stretch.push(trade);
                        id = trade.stock_previous;
                    }
                    found.extend(stretch.iter().rev().map(|m| self.wire(m)));
                    if found.len() >= limit {
                        found.truncate(limit);
                        break;
                    }
                    floor = end;
                }
                found
            }
        }
    }

    /// The best `depth` price levels of each side of `name`'s book.
    pub fn depth(&self, name: &str, depth: usize) -> Depth {
        let level = |(price, level): (&Price, &Level)| DepthLevel {
            price: *price,
            quantity: level.total,
            orders: level.live,
        };
        let book = self.stock(name);
        Depth {
            name: name.to_owned(),
            applied: self.applied,
            bids: book
                .map(|b| b.bids.iter().rev().take(depth).map(level).collect())
                .unwrap_or_default(),
            asks: book
                .map(|b| b.asks.iter().take(depth).map(level).collect())
                .unwrap_or_default(),
            last_price: book.and_then(|b| b.last_price),
        }
    }

    /// Applies the next log entry. Entries must come in log order, each exactly once.
    pub fn apply(&mut self, entry: &Order) -> Applied {
        debug_assert!(entry.number > self.applied);
        self.archive_old();
        self.applied = entry.number;
        self.touched.clear();
        self.affected.clear();

        let before = self.trades.len();
        // (Worked out only where a report needs it: most entries are moves that trade nothing.)
        let day = || day_of(entry.stamp.time);
        if let Some(rejection) = entry.stamp.rejected {
            self.reports.refused(day(), &entry.name, rejection.as_str());
            return Applied::Rejected(rejection);
        }
        let result = match entry.command {
            Command::Place {
                side,
                quantity,
                limit: None,
                ..
            } => {
                // Executed by the house at the price the leader quoted (logs from before
                // quotes have no users, so no portfolio misses one).
                if let Some(quote) = entry.stamp.quote {
                    if let Some(user) = entry.user {
                        self.portfolios
                            .fill(user, &entry.name, side, quantity, quote);
                    }
                    self.reports
                        .market(day(), &entry.name, entry.user, side, quantity, quote);
                }
                return Applied::Market;
            }
            Command::Place {
                side,
                quantity,
                limit: Some(price),
                ..
            } => self.place_limit(entry, side, quantity, price),
            Command::Sweep {
                side,
                quantity,
                protection_bps,
                ..
            } => self.sweep(entry, side, quantity, protection_bps),
            Command::Modify {
                target,
                quantity,
                price,
            } => self.modify(entry.number, target, quantity, price),
            Command::Cancel { target } => self.cancel(target),
            Command::Expire => {
                let orders = match self.stock_places.get(entry.name.as_str()) {
                    Some(&stock) => self.expire(stock, entry.stamp.time),
                    None => 0,
                };
                return Applied::Expired { orders };
            }
            Command::Group(_) => return Applied::Group,
        };
        match result {
            Ok(order) => {
                if self.trades.len() > before {
                    self.book_fills(before, entry.stamp.time);
                    // (The trades name their stock's place: no name is hashed.)
                    let stock = self.trades[before].stock;
                    let book = &self.stocks[stock as usize];
                    if !book.buy_stops.is_empty() || !book.sell_stops.is_empty() {
                        self.trigger_stops(stock, entry);
                    }
                }
                Applied::Changed {
                    order,
                    trades: self.trades.len() - before,
                }
            }
            Err(refusal) => {
                self.reports.refused(day(), &entry.name, refusal.reason());
                self.refusals.push((entry.number, refusal));
                Applied::Refused(refusal)
            }
        }
    }

    /// Books the trades from index `first` on, made at `time`, into their users' portfolios,
    /// the day's report and their stock's minutes.
    fn book_fills(&mut self, first: usize, time: u64) {
        let day = day_of(time);
        for (trade, &(buyer, seller)) in self.trades[first..].iter().zip(&self.traders) {
            let stock = &mut self.stocks[trade.stock as usize];
            stock.minutes.trade(time, trade.price, trade.quantity);
            let name = &*stock.name;
            for (side, owner) in [(Side::Buy, buyer), (Side::Sell, seller)] {
                if let Some(owner) = owner {
                    self.portfolios
                        .fill(owner, name, side, trade.quantity, trade.price);
                }
            }
            self.reports
                .trade(day, name, trade.quantity, trade.price, buyer, seller);
        }
    }

    /// The place in `live` of open order `target`.
    fn open_order(&self, target: u64) -> Result<u32, Refusal> {
        if let Some(&live) = self.places.get(&target) {
            return Ok(live);
        }
        match self.place(target) {
            Some(_) => Err(Refusal::NotOpen(target)),
            None => Err(Refusal::NotFound(target)),
        }
    }

    /// Enters new limit order `entry` unless its terms refuse it: a `gtd` expiry already
    /// passed, a post-only order that would take liquidity, a fill-or-kill order that cannot
    /// fill entirely now; or its client order id is one of its user's open orders' already.
    fn place_limit(
        &mut self,
        entry: &Order,
        side: Side,
        quantity: u32,
        price: Price,
    ) -> Result<u64, Refusal> {
        let number = entry.number;
        let terms = entry.command.terms();
        let client_order_id = entry.command.client_order_id();
        self.check_client_id(entry)?;
        // Four billion stocks or limit orders in one book: refused, like an unknown target.
        let stock = self
            .stock_place(&entry.name)
            .map_err(|_| Refusal::NotFound(number))?;
        let expires = terms.expiry(entry.stamp.time);
        if expires.is_some_and(|expires| expires <= entry.stamp.time) {
            // (So an expiry is never 0.)
            return Err(Refusal::ExpiryPassed { order: number });
        }
        if let Some(stop) = terms.stop_price {
            if !self.stop_reached(stock, side, stop) {
                return self.hold(entry, stock, (side, quantity, price), None);
            }
        }
        if terms.post_only && self.crosses(stock, side, price) {
            return Err(Refusal::WouldTakeLiquidity { order: number });
        }
        if terms.time_in_force == TimeInForce::Fok {
            let available =
                self.fillable(stock, side, price, entry.user, terms.self_trade, quantity);
            if available < quantity {
                return Err(Refusal::WouldNotFill {
                    order: number,
                    available,
                });
            }
        }
        let extras = Extras {
            expires,
            client_order_id: client_order_id.map(Arc::from),
            display: terms.display_quantity,
            stop_price: terms.stop_price,
            ..Extras::default()
        };
        let order = self.new_order(entry, stock, (side, quantity, price), &terms, extras);
        let Ok(Some(live)) = self.push(stock, order) else {
            return Err(Refusal::NotFound(number));
        };
        let rests = !matches!(terms.time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
        if self.enter(live, number, rests) {
            if let Some(expires) = expires {
                self.stocks[stock as usize]
                    .expiries
                    .insert((expires, number));
            }
            self.keep_client_id(entry.user, client_order_id.map(Arc::from), number);
        }
        Ok(number)
    }

    /// Entry `entry`'s new order (`side`, `quantity`, `price`) of the stock at `stock`, under
    /// `terms`, as it arrives: nothing filled, in no queue.
    fn new_order(
        &self,
        entry: &Order,
        stock: u32,
        (side, quantity, price): (Side, u32, Price),
        terms: &Terms,
        extras: Extras,
    ) -> LimitOrder {
        LimitOrder {
            number: entry.number,
            name: self.stocks[stock as usize].name.clone(),
            user: entry.user,
            side,
            price,
            quantity,
            filled: 0,
            removal: None,
            time_in_force: terms.time_in_force,
            post_only: terms.post_only,
            self_trade: terms.self_trade,
            market: matches!(entry.command, Command::Sweep { .. }),
            shown: 0,
            extras: extras.boxed(),
            pending: false,
            last_trade: 0,
            slot: 0,
        }
    }

    /// Enters market order `entry` against the book: as an `ioc` or `fok` order whose limit is
    /// the opposite side's best price now, moved `protection_bps` against it (rounded to the
    /// cent towards the best price). Refused if that side is empty.
    fn sweep(
        &mut self,
        entry: &Order,
        side: Side,
        quantity: u32,
        protection_bps: u32,
    ) -> Result<u64, Refusal> {
        let number = entry.number;
        let stock = self
            .stock_place(&entry.name)
            .map_err(|_| Refusal::NotFound(number))?;
        if let Some(stop) = entry.command.terms().stop_price {
            if !self.stop_reached(stock, side, stop) {
                let order = (side, quantity, Price::default());
                return self.hold(entry, stock, order, Some(protection_bps));
            }
        }
        let Some(limit) = self.protection_limit(stock, side, protection_bps) else {
            return Err(Refusal::NoLiquidity { order: number });
        };
        self.place_limit(entry, side, quantity, limit)
    }

    /// The limit of a market order of `side` on the book at `stock` with `protection_bps`:
    /// the opposite side's best price now, moved that far against it (rounded to the cent
    /// towards the best price); `None` if that side is empty.
    fn protection_limit(&self, stock: u32, side: Side, protection_bps: u32) -> Option<Price> {
        let book = &self.stocks[stock as usize];
        let best = match side {
            Side::Buy => book.asks.first_key_value(),
            Side::Sell => book.bids.last_key_value(),
        };
        let best = u128::from(best?.0.cents());
        let bps = u128::from(protection_bps.min(10_000));
        let limit = match side {
            Side::Buy => best * (10_000 + bps) / 10_000,
            Side::Sell => (best * (10_000 - bps)).div_ceil(10_000).max(1),
        };
        let limit = u64::try_from(limit).map_or(Price::MAX, Price::from_cents);
        Some(limit.min(Price::MAX))
    }

    /// Whether the last trade of the stock at `stock` has reached `stop` for a stop order of
    /// `side`: at or above it for a buy, at or below it for a sell.
    fn stop_reached(&self, stock: u32, side: Side, stop: Price) -> bool {
        self.stocks[stock as usize]
            .last_price
            .is_some_and(|last| match side {
                Side::Buy => last >= stop,
                Side::Sell => last <= stop,
            })
    }

    /// Keeps stop order `entry` (`side`, `quantity`, limit `price`; a market order on the book
    /// with `protection` instead) off the book until a trade reaches its stop.
    fn hold(
        &mut self,
        entry: &Order,
        stock: u32,
        (side, quantity, price): (Side, u32, Price),
        protection: Option<u32>,
    ) -> Result<u64, Refusal> {
        let number = entry.number;
        let terms = entry.command.terms();
        let client_order_id = entry.command.client_order_id();
        let Some(stop) = terms.stop_price else {
            return Err(Refusal::NotFound(number));
        };
        self.check_client_id(entry)?;
        let extras = Extras {
            client_order_id: client_order_id.map(Arc::from),
            stop_price: Some(stop),
            protection_bps: protection,
            ..Extras::default()
        };
        let order = LimitOrder {
            post_only: false,
            market: protection.is_some(),
            pending: true,
            ..self.new_order(entry, stock, (side, quantity, price), &terms, extras)
        };
        if self.push(stock, order).is_err() {
            return Err(Refusal::NotFound(number));
        }
        self.stocks[stock as usize]
            .stops(side)
            .insert((stop, number));
        self.keep_client_id(entry.user, client_order_id.map(Arc::from), number);
        Ok(number)
    }

    /// Enters, oldest first, every stop order of the stock at `stock` the last trade has
    /// reached, as entry `entry`'s doing: each may trade and reach more.
    fn trigger_stops(&mut self, stock: u32, entry: &Order) {
        loop {
            let book = &self.stocks[stock as usize];
            let Some(last) = book.last_price else { return };
            let buys = book.buy_stops.range(..=(last, u64::MAX));
            let sells = book.sell_stops.range((last, 0)..);
            let due = buys.chain(sells).map(|&(_, number)| number).min();
            let Some(number) = due else { return };
            self.trigger(stock, number, entry);
        }
    }

    /// Enters stop order `number` of the stock at `stock`, whose stop a trade of `entry` has
    /// reached: a market order at its protection limit now, a limit order at its limit.
    fn trigger(&mut self, stock: u32, number: u64, entry: &Order) {
        let Some(place) = self.place(number) else {
            return;
        };
        self.affected.push(number);
        let record = self.record_mut(place);
        let (stop, protection) = match record.extras.as_deref_mut() {
            Some(extras) => {
                extras.triggered = Some(entry.number);
                (extras.stop_price, extras.protection_bps)
            }
            None => (None, None),
        };
        record.pending = false;
        let (side, quantity, user) = (record.side, record.quantity, record.user);
        let (time_in_force, self_trade) = (record.time_in_force, record.self_trade);
        if let Some(stop) = stop {
            self.stocks[stock as usize]
                .stops(side)
                .remove(&(stop, number));
        }
        let price = match protection {
            Some(bps) => match self.protection_limit(stock, side, bps) {
                Some(limit) => limit,
                None => return self.withdraw_stop(stock, number, place),
            },
            None => self.record(place).price,
        };
        self.record_mut(place).price = price;
        if time_in_force == TimeInForce::Fok
            && self.fillable(stock, side, price, user, self_trade, quantity) < quantity
        {
            return self.withdraw_stop(stock, number, place);
        }
        let Ok(at) = self.open_live(place, stock) else {
            return self.withdraw_stop(stock, number, place);
        };
        let before = self.trades.len();
        let rests = !matches!(time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
        self.enter(at, entry.number, rests);
        if self.trades.len() > before {
            self.book_fills(before, entry.stamp.time);
        }
    }

    /// Cancels stop order `number` (record at `place`) that is in no queue: untriggered, or
    /// triggered and unable to enter (no liquidity; fill or kill, and not fillable).
    fn withdraw_stop(&mut self, stock: u32, number: u64, place: u32) {
        let record = self.record_mut(place);
        let (side, stop) = (
            record.side,
            record.extras.as_ref().and_then(|e| e.stop_price),
        );
        record.pending = false;
        record.removal = Some(Removal::Cancelled);
        if let Some(stop) = stop {
            self.stocks[stock as usize]
                .stops(side)
                .remove(&(stop, number));
        }
        self.forget_extras(number, stock, place);
    }

    /// Whether an order of `side` at `limit` would trade with the best of the opposite side
    /// in the stock at `stock`.
    fn crosses(&self, stock: u32, side: Side, limit: Price) -> bool {
        let book = &self.stocks[stock as usize];
        match side {
            Side::Buy => book
                .asks
                .first_key_value()
                .is_some_and(|(p, _)| *p <= limit),
            Side::Sell => book.bids.last_key_value().is_some_and(|(p, _)| *p >= limit),
        }
    }

    /// How much of `wanted` an order of `user` at `limit` would fill now (up to `wanted`),
    /// walking the opposite side as [`enter`](Self::enter) would, self-trade prevention
    /// included.
    fn fillable(
        &self,
        stock: u32,
        side: Side,
        limit: Price,
        user: Option<u64>,
        self_trade: SelfTrade,
        wanted: u32,
    ) -> u32 {
        let book = &self.stocks[stock as usize];
        let levels: Box<dyn Iterator<Item = &Level>> = match side {
            Side::Buy => Box::new(book.asks.range(..=limit).map(|(_, l)| l)),
            Side::Sell => Box::new(book.bids.range(limit..).rev().map(|(_, l)| l)),
        };
        let prevented = user.filter(|_| self_trade != SelfTrade::None);
        let mut available = 0u32;
        for level in levels {
            // The level's orders as matching meets them: an iceberg's next slice behind the
            // rest, so that an order of the same user may be met before it.
            // (remaining, visible, slice size, of the same user)
            let mut queue: VecDeque<(u32, u32, u32, bool)> = level
                .queue
                .iter()
                .map(|&(at, slot)| (&self.live[at as usize], slot))
                .filter(|(resting, slot)| resting.slot == *slot)
                .map(|(resting, _)| {
                    let own = prevented.is_some() && resting.user == prevented;
                    let slice = match resting.has(Live::ICEBERG) {
                        true => self.record(resting.place).display(),
                        false => None,
                    };
                    let (remaining, visible) = (resting.remaining(), resting.visible());
                    (remaining, visible, slice.unwrap_or(remaining), own)
                })
                .collect();
            while let Some((remaining, visible, slice, own)) = queue.pop_front() {
                if own {
                    match self_trade {
                        SelfTrade::CancelOldest => continue,
                        _ => return available,
                    }
                }
                let taken = visible.min(wanted - available);
                available += taken;
                if available == wanted {
                    return wanted;
                }
                if remaining > taken {
                    // Only an iceberg has more than it shows: its next slice.
                    let left = remaining - taken;
                    queue.push_back((left, slice.min(left), slice, own));
                }
            }
        }
        available
    }

    /// Expires every open order of the stock at `stock` whose expiry is at or before `cutoff`;
    /// how many.
    fn expire(&mut self, stock: u32, cutoff: u64) -> usize {
        let mut expired = 0;
        while let Some(&(expires, number)) = self.stocks[stock as usize].expiries.first() {
            if expires > cutoff {
                break;
            }
            self.stocks[stock as usize].expiries.pop_first();
            if let Some(&live) = self.places.get(&number) {
                self.remove(live, Removal::Expired);
                self.affected.push(number);
                expired += 1;
            }
        }
        expired
    }

    /// Refuses new order `entry` if one of its user's open or waiting orders holds its client
    /// order id.
    fn check_client_id(&self, entry: &Order) -> Result<(), Refusal> {
        let (Some(user), Some(id)) = (entry.user, entry.command.client_order_id()) else {
            return Ok(());
        };
        match self.client_ids.get(&user).and_then(|ids| ids.get(id)) {
            Some(&open) => Err(Refusal::DuplicateClientOrderId {
                order: entry.number,
                open,
            }),
            None => Ok(()),
        }
    }

    /// Notes that order `number`, open or waiting, holds its user's client order id `id`.
    fn keep_client_id(&mut self, user: Option<u64>, id: Option<Arc<str>>, number: u64) {
        if let (Some(user), Some(id)) = (user, id) {
            self.client_ids.entry(user).or_default().insert(id, number);
        }
    }

    /// The open order of `user` with client order id `id`, if there is one.
    pub fn open_by_client_order_id(&self, user: u64, id: &str) -> Option<u64> {
        self.client_ids.get(&user)?.get(id).copied()
    }

    /// The soonest expiry of an open order, and its stock: when the leader is to write an
    /// expiry entry.
    pub fn next_expiry(&self) -> Option<(u64, &str)> {
        self.stocks
            .iter()
            .filter_map(|book| Some((book.expiries.first()?.0, &*book.name)))
            .min()
    }

    fn cancel(&mut self, target: u64) -> Result<u64, Refusal> {
        let live = match self.open_order(target) {
            Ok(live) => live,
            Err(refusal) => {
                let (stock, place) = self.untriggered(target).ok_or(refusal)?;
                self.withdraw_stop(stock, target, place);
                return Ok(target);
            }
        };
        self.remove(live, Removal::Cancelled);
        Ok(target)
    }

    /// The stock and record place of `target`, which is not open, if it is a stop order
    /// waiting for its trigger.
    fn untriggered(&self, target: u64) -> Option<(u32, u32)> {
        let place = self.place(target)?;
        let record = self.record_at(place)?;
        if !record.pending || record.removal.is_some() {
            return None;
        }
        let stock = *self.stock_places.get(&*record.name)?;
        Some((stock, place))
    }

    /// Takes the open order at `live` off its level and closes it as `removal` says.
    fn remove(&mut self, live: u32, removal: Removal) {
        self.unqueue(live);
        let place = self.live[live as usize].place;
        self.record_mut(place).removal = Some(removal);
        self.close(live);
    }

    /// A smaller quantity at the same price keeps the order's place; a new price or a larger
    /// quantity sends it to the back of its (new) level, after matching what it now crosses.
    fn modify(
        &mut self,
        entry: u64,
        target: u64,
        quantity: Option<u32>,
        price: Option<Price>,
    ) -> Result<u64, Refusal> {
        let at = self
            .open_order(target)
            .map_err(|refusal| match self.untriggered(target) {
                Some(_) => Refusal::Untriggered(target),
                None => refusal,
            })?;
        let order = self.live[at as usize];
        let new_quantity = quantity.unwrap_or(order.quantity);
        let new_price = price.unwrap_or(order.price);
        if new_quantity <= order.filled {
            return Err(Refusal::BelowFilled {
                target,
                filled: order.filled,
            });
        }
        let keeps_place = new_price == order.price && new_quantity <= order.quantity;
        if order.has(Live::POST_ONLY) && self.crosses(order.stock, order.side, new_price) {
            return Err(Refusal::WouldTakeLiquidity { order: target });
        }
        if !keeps_place {
            self.unqueue(at);
        }
        let live = &mut self.live[at as usize];
        (live.quantity, live.price) = (new_quantity, new_price);
        if keeps_place {
            // An iceberg's slice shrinks only if less than it remains.
            live.shown = live.shown.min(live.remaining());
            let shrink = u64::from(order.visible() - live.visible());
            let stock = &mut self.stocks[order.stock as usize];
            if let Some(level) = stock.side(order.side).get_mut(&order.price) {
                level.total -= shrink;
            }
            self.touched.push((order.side, order.price));
        } else {
            self.enter(at, entry, true);
        }
        Ok(target)
    }

    /// Removes the open order at `at` in `live` from its level (its queue slot goes stale).
    fn unqueue(&mut self, at: u32) {
        let order = &mut self.live[at as usize];
        order.slot = 0;
        let (side, price, visible) = (order.side, order.price, order.visible());
        let levels = self.stocks[order.stock as usize].side(side);
        self.touched.push((side, price));
        if let Some(level) = levels.get_mut(&price) {
            level.total -= u64::from(visible);
            level.live -= 1;
            if level.live == 0 {
                if let Some(level) = levels.remove(&price) {
                    spare(&mut self.spare_queues, level);
                }
            } else if level.queue.len() > 2 * level.live + 16 {
                let live = &self.live;
                level
                    .queue
                    .retain(|&(at, slot)| live[at as usize].slot == slot);
            }
        }
    }

    /// Matches the open order at `at` in `live` (not queued) against the opposite side, then
    /// queues what remains at the back of its level if it `rests`, and cancels it otherwise.
    /// Meeting an order of its own user, it cancels one or both as its self-trade prevention
    /// says. `entry` is the log entry doing this. Whether it rests now.
    fn enter(&mut self, at: u32, entry: u64, rests: bool) -> bool {
        let taker = self.live[at as usize];
        let (side, limit) = (taker.side, taker.price);
        let mut remaining = taker.remaining();
        let mut taker_cancelled = false;
        // The user whose orders this one may not trade with (an anonymous order trades).
        let prevented = taker.user.filter(|_| taker.self_trade != SelfTrade::None);
        let book = &mut self.stocks[taker.stock as usize];
        self.traders.clear();
        self.filled.clear();
        self.withdrawn.clear();
        while remaining > 0 {
            let opposite = book.side(side.opposite());
            let best = match side {
                Side::Buy => opposite.first_entry(),
                Side::Sell => opposite.last_entry(),
            };
            let Some(mut best) = best else { break };
            let price = *best.key();
            let crosses = match side {
                Side::Buy => price <= limit,
                Side::Sell => price >= limit,
            };
            if !crosses {
                break;
            }
            let level = best.get_mut();
            let Some(&(queued, slot)) = level.queue.front() else {
                best.remove();
                continue;
            };
            let resting = &mut self.live[queued as usize];
            if resting.slot != slot {
                level.queue.pop_front();
                continue;
            }
            if prevented.is_some() && resting.user == prevented {
                let (cancel_resting, cancel_taker) = match taker.self_trade {
                    SelfTrade::CancelOldest => (true, false),
                    SelfTrade::CancelBoth => (true, true),
                    SelfTrade::CancelNewest | SelfTrade::None => (false, true),
                };
                if cancel_resting {
                    self.touched.push((side.opposite(), price));
                    level.queue.pop_front();
                    level.total -= u64::from(resting.visible());
                    level.live -= 1;
                    resting.slot = 0;
                    if level.live == 0 {
                        spare(&mut self.spare_queues, best.remove());
                    }
                    self.withdrawn.push(queued);
                }
                if cancel_taker {
                    taker_cancelled = true;
                    break;
                }
                continue;
            }
            // An iceberg trades its visible slice, and only then shows the next one, at the back
            // of its level (a new slot), as exchanges refill them.
            let quantity = remaining.min(resting.visible());
            let id = self.trades_archived + self.trades.len() as u64 + 1;
            self.touched.push((side.opposite(), price));
            resting.filled += quantity;
            level.total -= u64::from(quantity);
            if resting.has(Live::ICEBERG) {
                resting.shown -= quantity;
                if resting.shown == 0 && resting.remaining() > 0 {
                    let display = record_in(
                        &self.orders,
                        &self.pinned,
                        self.orders_archived,
                        resting.place,
                    )
                    .display();
                    let display = display.unwrap_or_default();
                    resting.shown = display.min(resting.remaining());
                    self.next_slot += 1;
                    resting.slot = self.next_slot;
                    level.queue.pop_front();
                    level.queue.push_back((queued, self.next_slot));
                    level.total += u64::from(resting.shown);
                }
            }
            let resting = *resting;
            if resting.remaining() == 0 {
                level.queue.pop_front();
                level.live -= 1;
                if level.live == 0 {
                    spare(&mut self.spare_queues, best.remove());
                }
                self.filled.push(queued);
            }
            remaining -= quantity;
            let taker_previous = std::mem::replace(&mut self.live_last_trade[at as usize], id);
            let resting_previous =
                std::mem::replace(&mut self.live_last_trade[queued as usize], id);
            let (buy_order, sell_order, buy_previous, sell_previous) = match side {
                Side::Buy => (
                    taker.number,
                    resting.number,
                    taker_previous,
                    resting_previous,
                ),
                Side::Sell => (
                    resting.number,
                    taker.number,
                    resting_previous,
                    taker_previous,
                ),
            };
            self.traders.push(match side {
                Side::Buy => (taker.user, resting.user),
                Side::Sell => (resting.user, taker.user),
            });
            let stock_previous = book.trades.add(id);
            self.trades.push(Matched {
                id,
                entry,
                stock: taker.stock,
                price,
                quantity,
                buy_order,
                sell_order,
                taker_side: side,
                buy_previous,
                sell_previous,
                stock_previous,
            });
            book.last_price = Some(price);
        }
        let rests = rests && !taker_cancelled;
        let shown = if taker.has(Live::ICEBERG) {
            let record = record_in(
                &self.orders,
                &self.pinned,
                self.orders_archived,
                taker.place,
            );
            record.display().unwrap_or_default().min(remaining)
        } else {
            0
        };
        let slot = if remaining > 0 && rests {
            self.next_slot += 1;
            self.touched.push((side, limit));
            let level = book.side(side).entry(limit).or_insert_with(|| Level {
                queue: self.spare_queues.pop().unwrap_or_default(),
                ..Level::default()
            });
            level.queue.push_back((at, self.next_slot));
            level.total += u64::from(if taker.has(Live::ICEBERG) {
                shown
            } else {
                remaining
            });
            level.live += 1;
            self.next_slot
        } else {
            0
        };
        let live = &mut self.live[at as usize];
        (live.filled, live.slot, live.shown) = (taker.quantity - remaining, slot, shown);
        if remaining == 0 {
            self.close(at);
        } else if !rests {
            self.record_mut(taker.place).removal = Some(Removal::Cancelled);
            self.close(at);
        }
        for index in 0..self.filled.len() {
            self.close(self.filled[index]);
        }
        self.filled.clear();
        for index in 0..self.withdrawn.len() {
            let withdrawn = self.withdrawn[index];
            let place = self.live[withdrawn as usize].place;
            self.record_mut(place).removal = Some(Removal::Cancelled);
            self.affected.push(self.record(place).number);
            self.close(withdrawn);
        }
        self.withdrawn.clear();
        slot != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use stocknet_common::{OrderOptions, Stamp};

    /// Entry `number` of stock `A` in term 1, anonymous and without a key.
    pub(crate) fn entry(number: u64, command: Command) -> Order {
        Order {
            number,
            term: 1,
            name: "A".into(),
            key: None,
            user: None,
            stamp: Stamp::default(),
            command,
        }
    }

    fn limit(side: Side, quantity: u32, cents: u64) -> Command {
        Command::Place {
            side,
            quantity,
            limit: Some(Price::from_cents(cents)),
            options: None,
        }
    }

    /// Applies `commands` as entries 1, 2, ...
    fn book(commands: &[Command]) -> Book {
        let mut book = Book::default();
        for (i, command) in commands.iter().enumerate() {
            book.apply(&entry(i as u64 + 1, command.clone()));
        }
        book
    }

    fn level(cents: u64, quantity: u64, orders: usize) -> DepthLevel {
        DepthLevel {
            price: Price::from_cents(cents),
            quantity,
            orders,
        }
    }

    #[test]
    fn best_price_then_oldest_trades_first_at_the_resting_price() {
        let mut book = book(&[
            limit(Side::Sell, 5, 1010),
            limit(Side::Sell, 5, 1000),
            limit(Side::Sell, 5, 1000),
        ]);
        let applied = book.apply(&entry(4, limit(Side::Buy, 8, 1010)));
        assert_eq!(
            applied,
            Applied::Changed {
                order: 4,
                trades: 2
            }
        );
        let trades = book.trades(None, 0, 10);
        let fills: Vec<(u64, u64, u32)> = trades
            .iter()
            .map(|t| (t.sell_order, t.price.cents(), t.quantity))
            .collect();
        assert_eq!(fills, [(2, 1000, 5), (3, 1000, 3)]);
        assert_eq!(book.order(4).unwrap().status(), Status::Filled);
        assert_eq!(book.order(3).unwrap().status(), Status::PartiallyFilled);
        assert_eq!(book.order(2).unwrap().status(), Status::Filled);
        assert_eq!(
            book.depth("A", 5).asks,
            [level(1000, 2, 1), level(1010, 5, 1)]
        );
        assert_eq!(book.entry_price(4), Some(Price::from_cents(1000)));
        assert_eq!(book.entry_price(3), None);
        assert_eq!(book.depth("A", 5).last_price, Some(Price::from_cents(1000)));
    }

    #[test]
    fn an_order_that_does_not_cross_rests_and_a_partial_fill_rests_its_remainder() {
        let mut book = book(&[limit(Side::Buy, 5, 990), limit(Side::Sell, 3, 1000)]);
        assert!(book.trades(None, 0, 10).is_empty());
        book.apply(&entry(3, limit(Side::Sell, 7, 990)));
        let order = book.order(3).unwrap();
        assert_eq!((order.filled, order.status()), (5, Status::PartiallyFilled));
        let depth = book.depth("A", 5);
        assert!(depth.bids.is_empty());
        assert_eq!(depth.asks, [level(990, 2, 1), level(1000, 3, 1)]);
    }

    #[test]
    fn modify_keeps_priority_only_when_it_shrinks_at_the_same_price() {
        // Orders 1 and 2 rest at 10.00; 3 shrinks 1 (keeps its place), 4 grows 2 (loses it
        // but 2 is behind 1 anyway), then a buy of 3 takes order 1 first.
        let mut book = book(&[
            limit(Side::Sell, 5, 1000),
            limit(Side::Sell, 5, 1000),
            Command::Modify {
                target: 1,
                quantity: Some(2),
                price: None,
            },
        ]);
        assert_eq!(book.depth("A", 1).asks, [level(1000, 7, 2)]);
        book.apply(&entry(4, limit(Side::Buy, 3, 1000)));
        let sells: Vec<(u64, u32)> = book
            .trades(None, 0, 10)
            .iter()
            .map(|t| (t.sell_order, t.quantity))
            .collect();
        assert_eq!(sells, [(1, 2), (2, 1)]);

        // A larger quantity goes to the back: order 2 (4 left) moves behind order 5.
        book.apply(&entry(5, limit(Side::Sell, 1, 1000)));
        let modify = Command::Modify {
            target: 2,
            quantity: Some(9),
            price: None,
        };
        assert!(matches!(
            book.apply(&entry(6, modify)),
            Applied::Changed { .. }
        ));
        book.apply(&entry(7, limit(Side::Buy, 1, 1000)));
        assert_eq!(book.trades(None, 2, 10)[0].sell_order, 5);
        assert_eq!(book.depth("A", 1).asks, [level(1000, 8, 1)]);
    }

    #[test]
    fn a_repriced_order_matches_what_it_now_crosses() {
        let mut book = book(&[limit(Side::Sell, 5, 1000), limit(Side::Buy, 5, 900)]);
        let applied = book.apply(&entry(
            3,
            Command::Modify {
                target: 2,
                quantity: None,
                price: Some(Price::from_cents(1000)),
            },
        ));
        assert_eq!(
            applied,
            Applied::Changed {
                order: 2,
                trades: 1
            }
        );
        let trade = &book.trades(Some("A"), 0, 10)[0];
        assert_eq!((trade.entry, trade.buy_order, trade.sell_order), (3, 2, 1));
        assert_eq!(book.entry_price(3), Some(Price::from_cents(1000)));
    }

    /// A limit order of `user` with `terms`, as entry `number` at time `time`.
    fn with_terms(
        number: u64,
        user: u64,
        time: u64,
        (side, quantity, cents): (Side, u32, u64),
        terms: Terms,
    ) -> Order {
        Order {
            user: Some(user),
            stamp: Stamp {
                time,
                ..Stamp::default()
            },
            ..entry(
                number,
                Command::Place {
                    side,
                    quantity,
                    limit: Some(Price::from_cents(cents)),
                    options: OrderOptions::boxed(terms, None),
                },
            )
        }
    }

    fn tif(time_in_force: TimeInForce) -> Terms {
        Terms {
            time_in_force,
            ..Terms::default()
        }
    }

    #[test]
    fn ioc_fills_what_it_can_and_fok_all_or_is_refused() {
        let mut book = book(&[limit(Side::Sell, 3, 1000), limit(Side::Sell, 3, 1010)]);
        book.apply(&with_terms(
            3,
            1,
            0,
            (Side::Buy, 5, 1000),
            tif(TimeInForce::Ioc),
        ));
        let ioc = book.order(3).unwrap();
        assert_eq!((ioc.filled, ioc.status()), (3, Status::Cancelled));
        assert!(book.depth("A", 5).bids.is_empty(), "nothing of it rests");

        let refused = book.apply(&with_terms(
            4,
            1,
            0,
            (Side::Buy, 4, 1010),
            tif(TimeInForce::Fok),
        ));
        assert_eq!(
            refused,
            Applied::Refused(Refusal::WouldNotFill {
                order: 4,
                available: 3
            })
        );
        assert!(book.order(4).is_none() && book.trades(None, 1, 10).is_empty());
        let view = book.view(&with_terms(
            4,
            1,
            0,
            (Side::Buy, 4, 1010),
            tif(TimeInForce::Fok),
        ));
        assert_eq!(view.map(|v| v.status), Some(Status::Rejected));
        book.apply(&with_terms(
            5,
            1,
            0,
            (Side::Buy, 3, 1010),
            tif(TimeInForce::Fok),
        ));
        assert_eq!(book.order(5).unwrap().status(), Status::Filled);
    }

    #[test]
    fn post_only_is_refused_where_it_would_take_and_rests_where_it_would_not() {
        let post_only = Terms {
            post_only: true,
            ..Terms::default()
        };
        let mut book = book(&[limit(Side::Sell, 3, 1000)]);
        let taking = book.apply(&with_terms(2, 1, 0, (Side::Buy, 1, 1000), post_only));
        assert_eq!(
            taking,
            Applied::Refused(Refusal::WouldTakeLiquidity { order: 2 })
        );
        book.apply(&with_terms(3, 1, 0, (Side::Buy, 1, 990), post_only));
        assert_eq!(book.order(3).unwrap().status(), Status::Open);
        // Re-priced across the spread, it is refused too, and stays as it was.
        let repriced = book.apply(&entry(
            4,
            Command::Modify {
                target: 3,
                quantity: None,
                price: Some(Price::from_cents(1000)),
            },
        ));
        assert_eq!(
            repriced,
            Applied::Refused(Refusal::WouldTakeLiquidity { order: 3 })
        );
        assert_eq!(book.depth("A", 5).bids, [level(990, 1, 1)]);
    }

    #[test]
    fn a_users_orders_do_not_trade_with_each_other_unless_the_taker_allows_it() {
        let stp = |self_trade| Terms {
            self_trade,
            ..Terms::default()
        };
        let gtc = Terms::default();
        let sells = |book: &mut Book| {
            book.apply(&with_terms(1, 7, 0, (Side::Sell, 2, 1000), gtc));
            book.apply(&with_terms(2, 8, 0, (Side::Sell, 2, 1000), gtc));
        };
        let statuses = |book: &Book, numbers: &[u64]| -> Vec<Status> {
            numbers
                .iter()
                .map(|&n| book.order(n).unwrap().status())
                .collect()
        };
        use Status::{Cancelled, Filled, Open, PartiallyFilled};
        // User 7 buys 3 where their own sell of 2 is first in line.
        for (self_trade, expected, traded) in [
            (SelfTrade::CancelNewest, [Open, Open, Cancelled], 0),
            (
                SelfTrade::CancelOldest,
                [Cancelled, Filled, PartiallyFilled],
                2,
            ),
            (SelfTrade::CancelBoth, [Cancelled, Open, Cancelled], 0),
            (SelfTrade::None, [Filled, PartiallyFilled, Filled], 3),
        ] {
            let mut book = Book::default();
            sells(&mut book);
            book.apply(&with_terms(3, 7, 0, (Side::Buy, 3, 1000), stp(self_trade)));
            assert_eq!(statuses(&book, &[1, 2, 3]), expected, "{self_trade:?}");
            let quantity: u32 = book.trades(None, 0, 10).iter().map(|t| t.quantity).sum();
            assert_eq!(quantity, traded, "{self_trade:?}");
        }
        // An anonymous order trades with anyone's.
        let mut book = Book::default();
        sells(&mut book);
        book.apply(&entry(3, limit(Side::Buy, 4, 1000)));
        assert_eq!(statuses(&book, &[1, 2, 3]), [Filled, Filled, Filled]);
    }

    #[test]
    fn a_market_order_sweeps_the_book_within_its_protection_and_cancels_the_rest() {
        let sweep = |number, side, quantity, protection_bps| {
            entry(
                number,
                Command::Sweep {
                    side,
                    quantity,
                    protection_bps,
                    options: OrderOptions::boxed(tif(TimeInForce::Ioc), None),
                },
            )
        };
        let mut book = book(&[]);
        assert_eq!(
            book.apply(&sweep(1, Side::Buy, 5, 500)),
            Applied::Refused(Refusal::NoLiquidity { order: 1 })
        );
        book.apply(&entry(2, limit(Side::Sell, 2, 1000)));
        book.apply(&entry(3, limit(Side::Sell, 2, 1050)));
        book.apply(&entry(4, limit(Side::Sell, 2, 1051)));
        // 5% above 10.00 is 10.50: the offers at 10.00 and 10.50 fill, the one at 10.51 not.
        book.apply(&sweep(5, Side::Buy, 10, 500));
        let order = book.order(5).unwrap();
        assert_eq!(
            (order.filled, order.status(), order.price, order.market),
            (4, Status::Cancelled, Price::from_cents(1050), true)
        );
        assert_eq!(book.depth("A", 5).asks, [level(1051, 2, 1)]);
        assert_eq!(
            book.view(&sweep(5, Side::Buy, 10, 500)).unwrap().order_type,
            Some(OrderType::Market)
        );
        // A sell's limit rounds up, towards the best bid: 1% below 9.99 is 9.8901, so 9.90.
        book.apply(&entry(6, limit(Side::Buy, 1, 999)));
        book.apply(&entry(7, limit(Side::Buy, 1, 989)));
        book.apply(&sweep(8, Side::Sell, 3, 100));
        let order = book.order(8).unwrap();
        assert_eq!((order.filled, order.price), (1, Price::from_cents(990)));
    }

    #[test]
    fn an_iceberg_shows_a_slice_and_each_refill_goes_to_the_back_of_its_level() {
        let iceberg = Terms {
            display_quantity: Some(2),
            ..Terms::default()
        };
        let mut book = book(&[]);
        book.apply(&with_terms(1, 1, 0, (Side::Sell, 5, 1000), iceberg));
        book.apply(&entry(2, limit(Side::Sell, 3, 1000)));
        assert_eq!(
            book.depth("A", 5).asks,
            [level(1000, 5, 2)],
            "2 of 5 show, and 3"
        );
        // A buy of 3 takes the iceberg's slice of 2, whose next slice goes behind order 2,
        // then 1 of order 2.
        book.apply(&with_terms(3, 2, 0, (Side::Buy, 3, 1000), Terms::default()));
        let sellers: Vec<(u64, u32)> = book
            .trades(None, 0, 10)
            .iter()
            .map(|t| (t.sell_order, t.quantity))
            .collect();
        assert_eq!(sellers, [(1, 2), (2, 1)]);
        assert_eq!(
            book.depth("A", 5).asks,
            [level(1000, 4, 2)],
            "2 of order 2, 2 shown"
        );
        book.apply(&with_terms(4, 2, 0, (Side::Buy, 3, 1000), Terms::default()));
        let sellers: Vec<u64> = book
            .trades(None, 2, 10)
            .iter()
            .map(|t| t.sell_order)
            .collect();
        assert_eq!(sellers, [2, 1], "order 2 first now");
        let order = book.order(1).unwrap();
        assert_eq!(
            (order.filled, order.shown),
            (3, 1),
            "the last slice: 1 shows of 2 left"
        );
        assert_eq!(book.depth("A", 5).asks, [level(1000, 1, 1)]);
        let view = book.limit_view(&order);
        assert_eq!(
            (view.display_quantity, view.remaining_quantity),
            (Some(2), 2)
        );
    }

    #[test]
    fn each_entry_tells_its_users_what_it_did_to_their_orders() {
        let said =
            |book: &Book, entry: &Order| -> Vec<(u64, u64, OrderEvent, usize, Option<String>)> {
                book.last_order_updates(entry)
                    .into_iter()
                    .map(|u| {
                        assert_eq!(u.entry, entry.number);
                        assert!(u.order.fills.is_empty(), "fills come with the update");
                        (u.order.number, u.user, u.event, u.fills.len(), u.reason)
                    })
                    .collect()
            };
        let mut book = Book::default();
        let apply = |book: &mut Book, order: Order| {
            book.apply(&order);
            said(book, &order)
        };
        use OrderEvent::*;
        let sell = with_terms(1, 7, 0, (Side::Sell, 5, 1000), Terms::default());
        assert_eq!(apply(&mut book, sell), [(1, 7, Accepted, 0, None)]);
        let stop = Terms {
            stop_price: Some(Price::from_cents(1000)),
            ..Terms::default()
        };
        let waiting = with_terms(2, 8, 0, (Side::Buy, 3, 1050), stop);
        assert_eq!(apply(&mut book, waiting), [(2, 8, Accepted, 0, None)]);
        // User 8 buys 2 of order 1; the trade triggers user 8's stop, which takes the other 3.
        let buy = with_terms(3, 8, 0, (Side::Buy, 2, 1000), Terms::default());
        assert_eq!(
            apply(&mut book, buy),
            [
                (3, 8, Accepted, 0, None),
                (3, 8, Filled, 1, None),
                (1, 7, Filled, 2, None),
                (2, 8, Triggered, 0, None),
                (2, 8, Filled, 1, None),
            ]
        );
        let cancel = Order {
            user: Some(7),
            ..entry(4, Command::Cancel { target: 1 })
        };
        assert_eq!(
            apply(&mut book, cancel),
            [(1, 7, Refused, 0, Some("not_open".into()))]
        );
        // Anonymous orders have no updates; a user's resting order they trade with has.
        let resting = with_terms(5, 7, 0, (Side::Sell, 4, 1100), Terms::default());
        apply(&mut book, resting);
        assert_eq!(
            apply(&mut book, entry(6, limit(Side::Buy, 1, 1100))),
            [(5, 7, PartiallyFilled, 1, None)]
        );
        // Self-trade prevention cancels user 7's resting order; the new one rests.
        let oldest = Terms {
            self_trade: SelfTrade::CancelOldest,
            ..Terms::default()
        };
        let own = with_terms(7, 7, 0, (Side::Buy, 1, 1100), oldest);
        assert_eq!(
            apply(&mut book, own),
            [(7, 7, Accepted, 0, None), (5, 7, Cancelled, 0, None)]
        );
        let gtd = Terms {
            time_in_force: TimeInForce::Gtd,
            expire_at: Some(5_000),
            ..Terms::default()
        };
        apply(&mut book, with_terms(8, 8, 1_000, (Side::Buy, 1, 900), gtd));
        let expiry = Order {
            stamp: Stamp {
                time: 6_000,
                ..Stamp::default()
            },
            ..entry(9, Command::Expire)
        };
        assert_eq!(apply(&mut book, expiry), [(8, 8, Expired, 0, None)]);
        let post_only = Terms {
            post_only: true,
            ..Terms::default()
        };
        let crossing = with_terms(10, 8, 0, (Side::Sell, 1, 1000), post_only);
        assert_eq!(
            apply(&mut book, crossing),
            [(10, 8, Refused, 0, Some("would_take_liquidity".into()))]
        );
    }

    #[test]
    fn a_stop_order_waits_off_the_book_until_a_trade_reaches_its_stop() {
        let stop = |cents| Terms {
            stop_price: Some(Price::from_cents(cents)),
            ..Terms::default()
        };
        let mut book = book(&[limit(Side::Sell, 2, 1000), limit(Side::Sell, 5, 1050)]);
        // A stop-limit buy at 10.50 once a trade is at 10.20 or above; a stop-market sell
        // once one is at 9.00 or below.
        book.apply(&with_terms(3, 7, 0, (Side::Buy, 3, 1050), stop(1020)));
        book.apply(&Order {
            user: Some(8),
            ..entry(
                4,
                Command::Sweep {
                    side: Side::Sell,
                    quantity: 1,
                    protection_bps: 500,
                    options: OrderOptions::boxed(
                        Terms {
                            time_in_force: TimeInForce::Ioc,
                            ..stop(900)
                        },
                        None,
                    ),
                },
            )
        });
        assert_eq!(book.order(3).unwrap().status(), Status::Untriggered);
        assert_eq!(book.order(4).unwrap().status(), Status::Untriggered);
        assert_eq!(book.depth("A", 5).bids, []);
        let refused = book.apply(&entry(
            5,
            Command::Modify {
                target: 3,
                quantity: Some(1),
                price: None,
            },
        ));
        assert_eq!(refused, Applied::Refused(Refusal::Untriggered(3)));
        // A trade at 10.00 reaches neither stop; one at 10.50 triggers the buy, which takes 3
        // of the rest at 10.50 in the same entry.
        book.apply(&entry(6, limit(Side::Buy, 2, 1000)));
        assert_eq!(book.order(3).unwrap().status(), Status::Untriggered);
        book.apply(&entry(7, limit(Side::Buy, 1, 1050)));
        let triggered = book.order(3).unwrap();
        assert_eq!(
            (triggered.status(), triggered.filled, triggered.triggered()),
            (Status::Filled, 3, Some(7))
        );
        assert!(book.trades(None, 0, 10).iter().all(|t| t.entry != 3));
        // Cancelled while waiting, it never enters.
        book.apply(&entry(8, Command::Cancel { target: 4 }));
        assert_eq!(book.order(4).unwrap().status(), Status::Cancelled);
    }

    #[test]
    fn a_client_order_id_is_unique_among_its_users_open_orders() {
        let with_id = |number, user, id: &str| Order {
            user: Some(user),
            ..entry(
                number,
                Command::Place {
                    side: Side::Buy,
                    quantity: 1,
                    limit: Some(Price::from_cents(990)),
                    options: OrderOptions::boxed(Terms::default(), Some(id.into())),
                },
            )
        };
        let mut book = Book::default();
        book.apply(&with_id(1, 7, "grid-1"));
        book.apply(&with_id(2, 8, "grid-1"));
        assert_eq!(
            book.apply(&with_id(3, 7, "grid-1")),
            Applied::Refused(Refusal::DuplicateClientOrderId { order: 3, open: 1 })
        );
        assert_eq!(book.open_by_client_order_id(7, "grid-1"), Some(1));
        assert_eq!(book.open_by_client_order_id(8, "grid-1"), Some(2));
        assert_eq!(book.order(1).unwrap().client_order_id(), Some("grid-1"));
        // Closed, its id is free again; a snapshot keeps who holds which.
        book.apply(&entry(4, Command::Cancel { target: 1 }));
        assert_eq!(book.open_by_client_order_id(7, "grid-1"), None);
        let mut book = crate::snapshot::decode(&crate::snapshot::encode(&book).unwrap()).unwrap();
        assert_eq!(book.open_by_client_order_id(8, "grid-1"), Some(2));
        assert!(matches!(
            book.apply(&with_id(5, 7, "grid-1")),
            Applied::Changed { order: 5, .. }
        ));
        assert_eq!(book.open_by_client_order_id(7, "grid-1"), Some(5));
    }

    #[test]
    fn day_and_gtd_orders_expire_at_the_expiry_entry_and_a_snapshot_keeps_their_expiry() {
        let day = stocknet_common::clock::DAY_MS;
        let gtd = |at| Terms {
            time_in_force: TimeInForce::Gtd,
            expire_at: Some(at),
            ..Terms::default()
        };
        let mut book = Book::default();
        book.apply(&with_terms(
            1,
            1,
            10,
            (Side::Buy, 1, 990),
            tif(TimeInForce::Day),
        ));
        book.apply(&with_terms(2, 1, 10, (Side::Buy, 1, 980), gtd(500)));
        book.apply(&with_terms(3, 1, 10, (Side::Buy, 1, 970), Terms::default()));
        let passed = book.apply(&with_terms(4, 1, 600, (Side::Buy, 1, 960), gtd(600)));
        assert_eq!(passed, Applied::Refused(Refusal::ExpiryPassed { order: 4 }));
        assert_eq!(book.next_expiry(), Some((500, "A")));

        let expire = |number, time| Order {
            stamp: Stamp {
                time,
                ..Stamp::default()
            },
            ..entry(number, Command::Expire)
        };
        let restored = crate::snapshot::decode(&crate::snapshot::encode(&book).unwrap()).unwrap();
        for mut book in [book, restored] {
            assert_eq!(book.apply(&expire(5, 499)), Applied::Expired { orders: 0 });
            assert_eq!(book.apply(&expire(6, 500)), Applied::Expired { orders: 1 });
            assert_eq!(book.order(2).unwrap().status(), Status::Expired);
            assert_eq!(book.next_expiry(), Some((day, "A")), "the day order's");
            assert_eq!(book.apply(&expire(7, day)), Applied::Expired { orders: 1 });
            assert_eq!(book.order(1).unwrap().status(), Status::Expired);
            assert_eq!(book.next_expiry(), None);
            assert_eq!(book.depth("A", 5).bids, [level(970, 1, 1)]);
        }
    }

    #[test]
    fn cancel_and_modify_refuse_unknown_and_closed_orders() {
        let mut book = book(&[
            Command::Place {
                side: Side::Buy,
                quantity: 1,
                limit: None,
                options: None,
            },
            limit(Side::Sell, 5, 1000),
            Command::Cancel { target: 2 },
        ]);
        assert!(book.depth("A", 5).asks.is_empty());
        assert_eq!(book.order(2).unwrap().status(), Status::Cancelled);
        for (number, command, refusal) in [
            (4, Command::Cancel { target: 2 }, Refusal::NotOpen(2)),
            (5, Command::Cancel { target: 1 }, Refusal::NotFound(1)),
            (6, Command::Cancel { target: 99 }, Refusal::NotFound(99)),
        ] {
            assert_eq!(
                book.apply(&entry(number, command)),
                Applied::Refused(refusal)
            );
            assert_eq!(book.refusal(number), Some(refusal));
        }
        book.apply(&entry(7, limit(Side::Sell, 5, 1000)));
        book.apply(&entry(8, limit(Side::Buy, 2, 1000)));
        let shrink = Command::Modify {
            target: 7,
            quantity: Some(2),
            price: None,
        };
        assert_eq!(
            book.apply(&entry(9, shrink)),
            Applied::Refused(Refusal::BelowFilled {
                target: 7,
                filled: 2
            })
        );
    }

    #[test]
    fn each_entry_reports_its_trades_and_the_levels_it_changed() {
        let mut book = Book::default();
        let market = entry(
            1,
            Command::Place {
                side: Side::Buy,
                quantity: 1,
                limit: None,
                options: None,
            },
        );
        book.apply(&market);
        assert_eq!(book.last_changes(&market), None);
        let rest = entry(2, limit(Side::Sell, 5, 1000));
        book.apply(&rest);
        let changes = book.last_changes(&rest).unwrap();
        assert!(changes.trades.is_empty());
        assert_eq!(
            changes.levels,
            [LevelChange {
                side: Side::Sell,
                price: Price::from_cents(1000),
                quantity: 5,
                orders: 1
            }]
        );
        let take = entry(3, limit(Side::Buy, 7, 1000));
        book.apply(&take);
        let changes = book.last_changes(&take).unwrap();
        assert_eq!(changes.trades.len(), 1);
        assert_eq!(changes.last_price, Some(Price::from_cents(1000)));
        // The ask level is gone and the rest of the buy rests.
        let levels: Vec<(Side, u64, usize)> = changes
            .levels
            .iter()
            .map(|l| (l.side, l.quantity, l.orders))
            .collect();
        assert_eq!(levels, [(Side::Buy, 2, 1), (Side::Sell, 0, 0)]);
        // Only the entry just applied has changes to report.
        assert_eq!(book.last_changes(&rest), None);
    }

    #[test]
    fn a_stock_s_trades_page_across_its_checkpoints_and_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Arc::new(Archive::open(dir.path(), 1).unwrap());
        let in_memory = InMemory {
            trades: 100,
            orders: 100,
        };
        let mut book = Book::default().with_archive(archive.clone(), in_memory);
        // A crossing pair a trade, one in three of stock B: over two checkpoints of A.
        let mut number = 0;
        for pair in 0..3_300 {
            let name = if pair % 3 == 0 { "B" } else { "A" };
            for side in [Side::Sell, Side::Buy] {
                number += 1;
                let order = Order {
                    name: name.into(),
                    ..entry(number, limit(side, 1, 100 + pair % 7))
                };
                book.apply(&order);
            }
        }
        assert!(book.archived().trades > 3_000);
        let all = book.trades(None, 0, usize::MAX);
        assert_eq!(all.len(), 3_300);
        for name in ["A", "B"] {
            let of: Vec<&Trade> = all.iter().filter(|t| t.name == name).collect();
            let at = |i: usize| of[i.min(of.len() - 1)].id;
            let cases = [
                (0, usize::MAX),
                (0, 1),
                (at(500), 10),
                (at(1022), 3),
                (at(1023), 2),
                (at(1023) - 1, 1_500),
                (at(2047), 1_000),
                (at(of.len() - 2), 5),
                (at(of.len() - 1), 5),
            ];
            for (after, limit) in cases {
                let expected: Vec<Trade> = of
                    .iter()
                    .filter(|t| t.id > after)
                    .take(limit)
                    .map(|t| (*t).clone())
                    .collect();
                let paged = book.trades(Some(name), after, limit);
                assert_eq!(paged, expected, "{name} after {after}, {limit}");
            }
        }
        // A snapshot keeps each stock's checkpoints.
        let bytes = crate::snapshot::encode(&book).unwrap();
        let restored = crate::snapshot::decode(&bytes).unwrap();
        let restored = restored.with_archive(archive.clone(), in_memory);
        for name in ["A", "B"] {
            let every = |book: &Book| book.trades(Some(name), 0, usize::MAX);
            assert_eq!(every(&restored), every(&book));
        }
        assert_eq!(archive.failed_reads(), 0);
    }

    #[test]
    fn listings_filter_and_page() {
        let book = book(&[
            limit(Side::Sell, 5, 1000),
            limit(Side::Buy, 2, 1000),
            limit(Side::Buy, 1, 900),
        ]);
        let numbers = |before, limit, wanted: &dyn Fn(&LimitOrder) -> bool| {
            let (orders, next) = book.orders_page(before, (limit, 10), wanted);
            (orders.iter().map(|o| o.number).collect::<Vec<u64>>(), next)
        };
        assert_eq!(numbers(u64::MAX, 10, &|_| true), (vec![3, 2, 1], None));
        assert_eq!(numbers(3, 10, &|_| true), (vec![2, 1], None));
        assert_eq!(numbers(u64::MAX, 2, &|_| true), (vec![3, 2], Some(2)));
        let filled = |o: &LimitOrder| o.status() == Status::Filled;
        assert_eq!(numbers(u64::MAX, 10, &filled), (vec![2], None));
        // Looking at one order at most: a short page, and where the next one starts.
        let (orders, next) = book.orders_page(u64::MAX, (10, 1), filled);
        assert_eq!((orders.len(), next), (0, Some(3)));
        assert_eq!(book.trades(Some("A"), 1, 10).len(), 0);
        assert_eq!(book.trades(Some("B"), 0, 10).len(), 0);
    }
}

/// The matching engine against a model that is obviously right and slow: resting orders in
/// one vector, the best one found by a full scan each time.
#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::prelude::*;
    use stocknet_common::{OrderOptions, Stamp};

    /// Entries go to users 0 and 1 and to nobody in turn; market orders execute at a quote.
    fn stamped(number: u64, name: &str, command: Command) -> Order {
        Order {
            number,
            term: 1,
            name: name.into(),
            key: None,
            user: [Some(0), Some(1), None][(number % 3) as usize],
            // Ten entries a day, so that reports span days.
            stamp: Stamp {
                time: number * stocknet_common::clock::DAY_MS / 10,
                quote: Some(Price::from_cents(1_000 + number % 7)),
                ..Stamp::default()
            },
            command,
        }
    }

    #[derive(Debug, Clone)]
    struct Resting {
        number: u64,
        user: Option<u64>,
        side: Side,
        price: u64,
        quantity: u32,
        filled: u32,
        /// Time priority: lower goes first.
        since: u64,
        self_trade: SelfTrade,
        post_only: bool,
        expires: Option<u64>,
        client_order_id: Option<String>,
        /// An iceberg's slice size (0: none) and what of its slice is unfilled.
        display: u32,
        shown: u32,
    }

    impl Resting {
        fn visible(&self) -> u32 {
            if self.display == 0 {
                self.quantity - self.filled
            } else {
                self.shown
            }
        }
    }

    /// The book's rules written the plain way: a list of resting orders searched for the best
    /// one at every step, and a fill-or-kill order tried on a copy.
    #[derive(Debug, Default, Clone)]
    struct Model {
        resting: Vec<Resting>,
        /// Every limit order's (quantity, filled, removed, side, price), by number.
        orders: BTreeMap<u64, (u32, u32, bool, Side, u64)>,
        /// (price, quantity, buy order, sell order, entry)
        trades: Vec<(u64, u32, u64, u64, u64)>,
        /// The entries the book refused.
        refused: BTreeSet<u64>,
        clock: u64,
        /// Stop orders waiting for their trigger, with their stop, and a market one's
        /// protection (`None`: a limit order).
        stops: Vec<(Resting, u64, Option<u32>, TimeInForce)>,
    }

    impl Model {
        /// The best resting order `order` crosses, by its place in `resting`.
        fn best(&self, order: &Resting) -> Option<usize> {
            self.resting
                .iter()
                .enumerate()
                .filter(|(_, r)| r.side != order.side)
                .filter(|(_, r)| match order.side {
                    Side::Buy => r.price <= order.price,
                    Side::Sell => r.price >= order.price,
                })
                .min_by_key(|(_, r)| {
                    let price = match order.side {
                        Side::Buy => r.price as i64,
                        Side::Sell => -(r.price as i64),
                    };
                    (price, r.since)
                })
                .map(|(i, _)| i)
        }

        fn remove(&mut self, i: usize) {
            let removed = self.resting.remove(i);
            self.orders.get_mut(&removed.number).unwrap().2 = true;
        }

        fn enter(&mut self, mut order: Resting, entry: u64, rests: bool) {
            let mut cancelled = !rests;
            loop {
                let remaining = order.quantity - order.filled;
                if remaining == 0 {
                    break;
                }
                let Some(i) = self.best(&order) else { break };
                let maker = &mut self.resting[i];
                if order.user.is_some()
                    && maker.user == order.user
                    && order.self_trade != SelfTrade::None
                {
                    if matches!(
                        order.self_trade,
                        SelfTrade::CancelOldest | SelfTrade::CancelBoth
                    ) {
                        self.remove(i);
                    }
                    if order.self_trade != SelfTrade::CancelOldest {
                        cancelled = true;
                        break;
                    }
                    continue;
                }
                let quantity = remaining.min(maker.visible());
                maker.filled += quantity;
                order.filled += quantity;
                if maker.display > 0 {
                    maker.shown -= quantity;
                    if maker.shown == 0 && maker.filled < maker.quantity {
                        // The next slice, behind everything resting now.
                        maker.shown = maker.display.min(maker.quantity - maker.filled);
                        self.clock += 1;
                        maker.since = self.clock;
                    }
                }
                let (buy, sell) = match order.side {
                    Side::Buy => (order.number, maker.number),
                    Side::Sell => (maker.number, order.number),
                };
                self.trades.push((maker.price, quantity, buy, sell, entry));
                let maker = maker.clone();
                self.orders.get_mut(&maker.number).unwrap().1 = maker.filled;
                if maker.filled == maker.quantity {
                    self.resting.remove(i);
                }
            }
            let record = self.orders.get_mut(&order.number).unwrap();
            record.1 = order.filled;
            if order.filled < order.quantity {
                if cancelled {
                    record.2 = true;
                } else {
                    self.clock += 1;
                    order.since = self.clock;
                    order.shown = order.display.min(order.quantity - order.filled);
                    self.resting.push(order);
                }
            }
        }

        /// A market order's limit: the best opposite price moved by the protection, to the cent
        /// towards it; `None` if that side is empty.
        fn protection_limit(&self, side: Side, protection_bps: u32) -> Option<u64> {
            let opposite = self
                .resting
                .iter()
                .filter(|r| r.side != side)
                .map(|r| r.price);
            let best = match side {
                Side::Buy => opposite.min(),
                Side::Sell => opposite.max(),
            }?;
            let bps = u64::from(protection_bps);
            Some(match side {
                Side::Buy => best * (10_000 + bps) / 10_000,
                Side::Sell => (best * (10_000 - bps)).div_ceil(10_000).max(1),
            })
        }

        fn reached(&self, side: Side, stop: u64) -> bool {
            self.trades.last().is_some_and(|&(last, ..)| match side {
                Side::Buy => last >= stop,
                Side::Sell => last <= stop,
            })
        }

        /// Enters the oldest stop order the last trade reached, and again, while there is one.
        fn trigger(&mut self, entry: u64) {
            while let Some(i) = (0..self.stops.len())
                .filter(|&i| self.reached(self.stops[i].0.side, self.stops[i].1))
                .min_by_key(|&i| self.stops[i].0.number)
            {
                let (mut order, _, protection, time_in_force) = self.stops.remove(i);
                if let Some(bps) = protection {
                    match self.protection_limit(order.side, bps) {
                        Some(limit) => order.price = limit,
                        None => {
                            self.orders.get_mut(&order.number).unwrap().2 = true;
                            continue;
                        }
                    }
                }
                self.orders.get_mut(&order.number).unwrap().4 = order.price;
                if time_in_force == TimeInForce::Fok {
                    let mut trial = self.clone();
                    trial.enter(order.clone(), entry, false);
                    if trial.orders[&order.number].1 < order.quantity {
                        self.orders.get_mut(&order.number).unwrap().2 = true;
                        continue;
                    }
                }
                let rests = !matches!(time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
                self.enter(order, entry, rests);
            }
        }

        fn place(&mut self, entry: &Order, side: Side, quantity: u32, price: u64) {
            self.place_as(entry, side, quantity, price, None);
        }

        /// Places `entry`, a market order on the book with `protection` if given.
        fn place_as(
            &mut self,
            entry: &Order,
            side: Side,
            quantity: u32,
            price: u64,
            protection: Option<u32>,
        ) {
            let (number, time) = (entry.number, entry.stamp.time);
            let terms = entry.command.terms();
            let client_order_id = entry.command.client_order_id().map(str::to_owned);
            let duplicate = client_order_id.is_some()
                && entry.user.is_some()
                && self
                    .resting
                    .iter()
                    .chain(self.stops.iter().map(|stop| &stop.0))
                    .any(|r| r.user == entry.user && r.client_order_id == client_order_id);
            let order = Resting {
                client_order_id,
                number,
                user: entry.user,
                side,
                price,
                quantity,
                filled: 0,
                since: 0,
                self_trade: terms.self_trade,
                post_only: terms.post_only,
                expires: terms.expiry(time),
                display: terms.display_quantity.unwrap_or(0),
                shown: 0,
            };
            let expired = order.expires.is_some_and(|at| at <= time);
            if let Some(stop) = terms.stop_price.map(Price::cents) {
                if duplicate {
                    self.refused.insert(number);
                    return;
                }
                if !self.reached(side, stop) {
                    // A market one's price is worked out when it triggers.
                    let price = if protection.is_some() { 0 } else { price };
                    self.orders
                        .insert(number, (quantity, 0, false, side, price));
                    let held = Resting { price, ..order };
                    self.stops
                        .push((held, stop, protection, terms.time_in_force));
                    return;
                }
            }
            if protection.is_some() && price == 0 {
                self.refused.insert(number);
                return;
            }
            let takes = self.best(&order).is_some();
            let fills = || {
                let mut trial = self.clone();
                trial
                    .orders
                    .insert(number, (quantity, 0, false, side, price));
                trial.enter(order.clone(), number, false);
                trial.orders[&number].1 == quantity
            };
            let fok = terms.time_in_force == TimeInForce::Fok;
            if duplicate || expired || (terms.post_only && takes) || (fok && !fills()) {
                self.refused.insert(number);
                return;
            }
            self.orders
                .insert(number, (quantity, 0, false, side, price));
            let rests = !matches!(terms.time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
            self.enter(order, number, rests);
        }

        fn apply(&mut self, entry: &Order) {
            let before = self.trades.len();
            self.apply_command(entry);
            if self.trades.len() > before {
                self.trigger(entry.number);
            }
        }

        fn apply_command(&mut self, entry: &Order) {
            let number = entry.number;
            let time = entry.stamp.time;
            match entry.command.clone() {
                Command::Place {
                    side,
                    quantity,
                    limit: Some(price),
                    ..
                } => self.place(entry, side, quantity, price.cents()),
                Command::Sweep {
                    side,
                    quantity,
                    protection_bps,
                    ..
                } => {
                    // Its limit now (0: the book is empty on that side, refused unless it is
                    // a stop order to hold).
                    let limit = self.protection_limit(side, protection_bps).unwrap_or(0);
                    self.place_as(entry, side, quantity, limit, Some(protection_bps));
                }
                Command::Place { limit: None, .. } | Command::Group(_) => {}
                Command::Expire => {
                    while let Some(i) = self
                        .resting
                        .iter()
                        .position(|r| r.expires.is_some_and(|at| at <= time))
                    {
                        self.remove(i);
                    }
                }
                Command::Cancel { target } => {
                    if let Some(i) = self.stops.iter().position(|s| s.0.number == target) {
                        self.stops.remove(i);
                        self.orders.get_mut(&target).unwrap().2 = true;
                        return;
                    }
                    match self.resting.iter().position(|r| r.number == target) {
                        Some(i) => self.remove(i),
                        None => {
                            self.refused.insert(number);
                        }
                    }
                }
                Command::Modify {
                    target,
                    quantity,
                    price,
                } => {
                    let Some(i) = self.resting.iter().position(|r| r.number == target) else {
                        self.refused.insert(number);
                        return;
                    };
                    let old = self.resting[i].clone();
                    let new_quantity = quantity.unwrap_or(old.quantity);
                    let new_price = price.map_or(old.price, Price::cents);
                    let moved = Resting {
                        quantity: new_quantity,
                        price: new_price,
                        ..old.clone()
                    };
                    if new_quantity <= old.filled || (old.post_only && self.best(&moved).is_some())
                    {
                        self.refused.insert(number);
                        return;
                    }
                    let entry = self.orders.get_mut(&target).unwrap();
                    entry.0 = new_quantity;
                    entry.4 = new_price;
                    if new_price == old.price && new_quantity <= old.quantity {
                        let kept = &mut self.resting[i];
                        kept.quantity = new_quantity;
                        kept.shown = kept.shown.min(new_quantity - kept.filled);
                    } else {
                        self.resting.remove(i);
                        self.enter(moved, number, true);
                    }
                }
            }
        }

        fn depth(&self, side: Side) -> Vec<DepthLevel> {
            let mut levels: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
            for r in self.resting.iter().filter(|r| r.side == side) {
                let level = levels.entry(r.price).or_default();
                level.0 += u64::from(r.visible());
                level.1 += 1;
            }
            let levels = levels
                .into_iter()
                .map(|(price, (quantity, orders))| DepthLevel {
                    price: Price::from_cents(price),
                    quantity,
                    orders,
                });
            match side {
                Side::Buy => levels.rev().collect(),
                Side::Sell => levels.collect(),
            }
        }
    }

    fn command(max_target: u64) -> impl Strategy<Value = Command> {
        let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
        let price = (95u64..=105).prop_map(Price::from_cents);
        // Mostly good till cancelled; times are those of entries 1 to 80 (see `stamped`).
        let terms = (
            prop_oneof![6 => Just(TimeInForce::Gtc), 1 => Just(TimeInForce::Ioc),
                1 => Just(TimeInForce::Fok), 1 => Just(TimeInForce::Day), 1 => Just(TimeInForce::Gtd)],
            1u64..80,
            proptest::bool::weighted(0.15),
            proptest::sample::select(SelfTrade::ALL.to_vec()),
            proptest::option::weighted(0.2, 95u64..=105),
        )
            .prop_map(|(time_in_force, at, post_only, self_trade, stop)| {
                let post_only =
                    post_only && !matches!(time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
                // Stop orders where the terms allow one.
                let stop = stop.filter(|_| {
                    !post_only && !matches!(time_in_force, TimeInForce::Day | TimeInForce::Gtd)
                });
                Terms {
                    time_in_force,
                    expire_at: (time_in_force == TimeInForce::Gtd)
                        .then_some(at * stocknet_common::clock::DAY_MS / 10),
                    post_only,
                    self_trade,
                    display_quantity: None,
                    stop_price: stop.map(Price::from_cents),
                }
            });
        prop_oneof![
            6 => (side.clone(), 1u32..10, price.clone(), terms, proptest::option::weighted(0.3, 0..3u8), proptest::option::weighted(0.2, 1u32..4))
                .prop_map(|(side, quantity, price, terms, id, display)| Command::Place {
                    side,
                    quantity,
                    limit: Some(price),
                    options: OrderOptions::boxed(
                        // Icebergs where the terms allow one.
                        Terms {
                            display_quantity: display.filter(|display| {
                                *display < quantity && terms.check(Some(price), quantity).is_ok()
                                    && !matches!(terms.time_in_force, TimeInForce::Ioc | TimeInForce::Fok)
                                    && terms.stop_price.is_none()
                            }),
                            ..terms
                        },
                        // Few ids, so that some are taken by an open order of the same user.
                        id.map(|id| format!("c{id}")),
                    ),
                }),
            1 => Just(Command::Expire),
            1 => (
                side.clone(),
                1u32..20,
                0u32..300,
                proptest::bool::ANY,
                proptest::sample::select(SelfTrade::ALL.to_vec()),
                proptest::option::weighted(0.3, 95u64..=105),
            )
                .prop_map(|(side, quantity, protection_bps, fok, self_trade, stop)| Command::Sweep {
                    side,
                    quantity,
                    protection_bps,
                    options: OrderOptions::boxed(
                        Terms {
                            time_in_force: if fok { TimeInForce::Fok } else { TimeInForce::Ioc },
                            self_trade,
                            stop_price: stop.map(Price::from_cents),
                            ..Terms::default()
                        },
                        None,
                    ),
                }),
            1 => (side, 1u32..10).prop_map(|(side, quantity)| Command::Place {
                side,
                quantity,
                limit: None,
                options: None,
            }),
            2 => (1..=max_target).prop_map(|target| Command::Cancel { target }),
            2 => (1..=max_target, proptest::option::of(1u32..12), proptest::option::of(price))
                .prop_map(|(target, quantity, price)| Command::Modify { target, quantity, price }),
        ]
    }

    /// Everything a client or a later command can observe of a book.
    fn observable(book: &Book) -> impl PartialEq + std::fmt::Debug {
        let parts = book.parts();
        let mut names: Vec<&String> = book.stock_places.keys().collect();
        names.sort();
        let orders: Vec<LimitOrder> = (1..=parts.applied).filter_map(|n| book.order(n)).collect();
        // Listed newest first, whole and page by page (pages of two, looking at three orders
        // at most): the same orders.
        let (listed, end) = book.orders_page(u64::MAX, (usize::MAX, usize::MAX), |_| true);
        let mut paged = Vec::new();
        let mut before = Some(u64::MAX);
        while let Some(below) = before {
            let (page, next) = book.orders_page(below, (2, 3), |o| o.number % 3 != 0);
            paged.extend(page);
            before = next;
        }
        let every_third_kept: Vec<&LimitOrder> =
            listed.iter().filter(|o| o.number % 3 != 0).collect();
        assert_eq!(paged.iter().collect::<Vec<_>>(), every_third_kept);
        assert_eq!(end, None);
        assert_eq!(listed.iter().rev().cloned().collect::<Vec<_>>(), orders);
        // Every trade and fill, wherever it is kept (memory or archive).
        let views: Vec<OrderView> = orders.iter().map(|o| book.limit_view(o)).collect();
        let prices: Vec<Option<Price>> = (1..=parts.applied).map(|n| book.entry_price(n)).collect();
        let of_stock: Vec<Vec<Trade>> = ["A", "B"]
            .iter()
            .map(|name| book.trades(Some(name), 0, usize::MAX))
            .collect();
        (
            (parts.applied, parts.next_slot, orders, views, prices),
            (book.trades(None, 0, usize::MAX), of_stock),
            (1..=parts.applied)
                .filter_map(|n| Some((n, book.refusal(n)?)))
                .collect::<Vec<_>>(),
            parts.portfolios.clone(),
            parts.reports.clone(),
            parts
                .candles
                .iter()
                .map(|(name, minutes)| (name.to_string(), minutes.to_vec()))
                .collect::<Vec<_>>(),
            // A stock whose book is empty and never traded looks like one never seen.
            names
                .into_iter()
                .map(|name| book.depth(name, usize::MAX))
                .filter(|d| !d.bids.is_empty() || !d.asks.is_empty() || d.last_price.is_some())
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn a_restored_snapshot_goes_on_like_the_book_it_was_taken_of(
            commands in proptest::collection::vec(command(60), 1..80),
            cut in 0usize..80,
        ) {
            let entries: Vec<Order> = commands
                .iter()
                .enumerate()
                .map(|(i, command)| {
                    stamped(i as u64 + 1, if i % 4 == 0 { "B" } else { "A" }, command.clone())
                })
                .collect();
            let cut = cut.min(entries.len());
            // The book keeps three trades in memory, the rest in its archive; the reference
            // keeps them all.
            let dir = tempfile::tempdir().expect("temp dir");
            let archive = Arc::new(Archive::open(dir.path(), 1).expect("archive"));
            let in_memory = InMemory { trades: 3, orders: 3 };
            let mut original = Book::default().with_archive(archive.clone(), in_memory);
            let mut reference = Book::default();
            for entry in &entries[..cut] {
                prop_assert_eq!(original.apply(entry), reference.apply(entry));
            }
            let bytes = crate::snapshot::encode(&original).expect("encode");
            let restored = crate::snapshot::decode(&bytes).expect("decode");
            let mut restored = restored.with_archive(archive.clone(), in_memory);
            prop_assert_eq!(observable(&restored), observable(&reference));
            prop_assert_eq!(observable(&original), observable(&reference));
            for entry in &entries[cut..] {
                prop_assert_eq!(restored.apply(entry), reference.apply(entry));
            }
            prop_assert_eq!(observable(&restored), observable(&reference));
            prop_assert_eq!(archive.failed_reads(), 0);
        }

        #[test]
        fn the_book_agrees_with_the_model(commands in proptest::collection::vec(command(60), 1..60)) {
            let mut book = Book::default();
            let mut model = Model::default();
            for (i, command) in commands.iter().enumerate() {
                let number = i as u64 + 1;
                let before = book.trades.len() as u64;
                let entry = stamped(number, "A", command.clone());
                book.apply(&entry);
                model.apply(&entry);
                // No trade crosses a limit: both sides' prices are as they were at the trade.
                for trade in book.trades(None, before, usize::MAX) {
                    let buy = book.order(trade.buy_order).expect("buyer");
                    let sell = book.order(trade.sell_order).expect("seller");
                    prop_assert!(sell.price <= trade.price && trade.price <= buy.price);
                }
            }
            let trades: Vec<(u64, u32, u64, u64, u64)> = book
                .trades(None, 0, usize::MAX)
                .iter()
                .map(|t| (t.price.cents(), t.quantity, t.buy_order, t.sell_order, t.entry))
                .collect();
            prop_assert_eq!(trades, model.trades.clone());
            let depth = book.depth("A", usize::MAX);
            prop_assert_eq!(depth.bids, model.depth(Side::Buy));
            prop_assert_eq!(depth.asks, model.depth(Side::Sell));
            for (number, (quantity, filled, cancelled, side, price)) in &model.orders {
                let order = book.order(*number).expect("every limit order is kept");
                prop_assert_eq!(
                    (order.quantity, order.filled, order.removal.is_some(), order.side, order.price.cents()),
                    (*quantity, *filled, *cancelled, *side, *price)
                );
                // Never filled beyond its quantity; every trade within its limit.
                prop_assert!(order.filled <= order.quantity);
            }
            let kept = (1..=commands.len() as u64).filter(|&n| book.order(n).is_some()).count();
            prop_assert_eq!(kept, model.orders.len());
            let refused: BTreeSet<u64> = (1..=commands.len() as u64)
                .filter(|&n| book.refusal(n).is_some())
                .collect();
            prop_assert_eq!(refused, model.refused.clone());
            // A user's orders trade with each other only when the taker allowed it.
            let user = |number: u64| stamped(number, "A", Command::Expire).user;
            let stp = |number: u64| commands[number as usize - 1].terms().self_trade;
            for trade in book.trades(None, 0, usize::MAX) {
                if user(trade.buy_order).is_some() && user(trade.buy_order) == user(trade.sell_order) {
                    let taker = match trade.taker_side {
                        Side::Buy => trade.buy_order,
                        Side::Sell => trade.sell_order,
                    };
                    prop_assert_eq!(stp(taker), SelfTrade::None);
                }
            }
            // Every user's position is the sum of their fills: book trades and market orders.
            for user in [0, 1] {
                let owner = |number: u64| stamped(number, "A", Command::Cancel { target: 0 }).user;
                let (mut bought, mut sold) = (0u64, 0u64);
                for trade in &book.trades {
                    if owner(trade.buy_order) == Some(user) {
                        bought += u64::from(trade.quantity);
                    }
                    if owner(trade.sell_order) == Some(user) {
                        sold += u64::from(trade.quantity);
                    }
                }
                for (i, command) in commands.iter().enumerate() {
                    let number = i as u64 + 1;
                    match *command {
                        Command::Place { side, quantity, limit: None, .. } if owner(number) == Some(user) => {
                            match side {
                                Side::Buy => bought += u64::from(quantity),
                                Side::Sell => sold += u64::from(quantity),
                            }
                        }
                        _ => {}
                    }
                }
                let held = book.holdings(user);
                let shares: i64 = held.iter().map(|h| h.shares).sum();
                prop_assert_eq!(held.iter().map(|h| h.bought).sum::<u64>(), bought);
                prop_assert_eq!(held.iter().map(|h| h.sold).sum::<u64>(), sold);
                prop_assert_eq!(shares, bought as i64 - sold as i64);
            }
        }
    }
}
