//! What the book answers: an order's view with its fills, pages of orders and trades, depth,
//! candles, a user's holdings, the daily report, and the events and order updates each entry
//! made, for the streams.

use stocknet_common::clock::rfc3339;
use stocknet_common::wire::{
    DailyReport, Depth, DepthLevel, Fill, Holding, LevelChange, MarketEvent, OrderEvent, OrderType,
    OrderUpdate, OrderView, Trade, FILLS_SHOWN,
};
use stocknet_common::{Command, Order, Price, Side, Status};

use super::{Book, Level, LimitOrder, Matched, Refusal};
use crate::candles::Candle;

impl Book {
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

    /// `matched` as the wire names it.
    /// The last `most` trades `order` took part in, oldest first, and whether it took part in
    /// more.
    pub(super) fn order_trades(&self, order: &LimitOrder, most: usize) -> (Vec<Matched>, bool) {
        let mut trades = Vec::new();
        let mut id = order.last_trade;
        while let Some(trade) = self.matched(id) {
            if trades.len() == most {
                trades.reverse();
                return (trades, true);
            }
            trades.push(trade);
            id = match trade.buy_order == order.number {
                true => trade.buy_previous,
                false => trade.sell_previous,
            };
        }
        trades.reverse();
        (trades, false)
    }

    pub(super) fn wire(&self, matched: &Matched) -> Trade {
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
            order_type,
            price: limit,
            filled_quantity,
            client_order_id: client_order_id.clone(),
            ..OrderView::new(entry.number, entry.name.clone(), side, quantity, status)
        };
        // Refused by the leader (its price moved) or by the book (fill or kill, post-only, a
        // passed expiry, no liquidity...): it never rested, and shows the terms it came with.
        let refused = || match order_type {
            None => done(Status::Rejected, 0),
            Some(_) => OrderView {
                time_in_force: Some(terms.time_in_force),
                expire_at: terms.expire_at.map(rfc3339),
                post_only: Some(terms.post_only),
                stp: Some(terms.self_trade),
                display_quantity: terms.display_quantity,
                stop_price: terms.stop_price,
                ..done(Status::Rejected, 0)
            },
        };
        match order_type {
            _ if entry.stamp.rejected.is_some() => Some(refused()),
            // The house executed it.
            None => Some(done(Status::Filled, quantity)),
            Some(_) if self.refusal(entry.number).is_some() => Some(refused()),
            Some(_) => self.order(entry.number).map(|o| self.limit_view(&o)),
        }
    }

    /// `order` as the API shows it, with its last [`FILLS_SHOWN`] fills.
    pub fn limit_view(&self, order: &LimitOrder) -> OrderView {
        let (trades, fills_truncated) = self.order_trades(order, FILLS_SHOWN);
        OrderView {
            fills: trades
                .into_iter()
                .map(|t| Fill {
                    trade: t.id,
                    price: t.price,
                    quantity: t.quantity,
                })
                .collect(),
            fills_truncated,
            ..self.limit_view_without_fills(order)
        }
    }

    /// [`limit_view`](Self::limit_view) without the fill list, which grows with every trade
    /// of the order (an order update carries its own entry's fills instead).
    pub(super) fn limit_view_without_fills(&self, order: &LimitOrder) -> OrderView {
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
            // A stop market order's protection limit is worked out once it triggers; until
            // then (and if it never does) it has none.
            price: (order.price.cents() > 0).then_some(order.price),
            status: order.status(),
            filled_quantity: order.filled,
            remaining_quantity: order.remaining(),
            fills: Vec::new(),
            fills_truncated: false,
            time_in_force: Some(order.time_in_force),
            expire_at: order.expires().map(rfc3339),
            post_only: Some(order.post_only),
            stp: Some(order.self_trade),
            client_order_id: order.client_order_id().map(str::to_owned),
            // Modified down to its display size or below, nothing of it is hidden: it shows
            // whole until a modify makes it larger again.
            display_quantity: order.display().filter(|&display| display < order.quantity),
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
}
