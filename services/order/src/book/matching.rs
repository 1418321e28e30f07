//! Applying an entry: new orders matched with price-time priority (limit, market on the book,
//! stop, iceberg, with their terms and self-trade prevention), modifies, cancels and expiries.

use std::collections::VecDeque;
use std::sync::Arc;

use stocknet_common::clock::day_of;
use stocknet_common::{Command, Order, Price, SelfTrade, Side, Terms, TimeInForce};

use super::{
    record_in, spare, Applied, Book, Extras, Level, LimitOrder, Live, Matched, Refusal, Removal,
};

impl Book {
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
            } => self.place_limit(entry, (side, quantity, price)),
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
                        self.trigger_stops(stock, entry, before);
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
    pub(super) fn book_fills(&mut self, first: usize, time: u64) {
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
    pub(super) fn open_order(&self, target: u64) -> Result<u32, Refusal> {
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
    pub(super) fn place_limit(
        &mut self,
        entry: &Order,
        (side, quantity, price): (Side, u32, Price),
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
    pub(super) fn new_order(
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
    pub(super) fn sweep(
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
        self.place_limit(entry, (side, quantity, limit))
    }

    /// The limit of a market order of `side` on the book at `stock` with `protection_bps`:
    /// the opposite side's best price now, moved that far against it (rounded to the cent
    /// towards the best price); `None` if that side is empty.
    pub(super) fn protection_limit(
        &self,
        stock: u32,
        side: Side,
        protection_bps: u32,
    ) -> Option<Price> {
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
    pub(super) fn stop_reached(&self, stock: u32, side: Side, stop: Price) -> bool {
        self.stocks[stock as usize]
            .last_price
            .is_some_and(|last| match side {
                Side::Buy => last >= stop,
                Side::Sell => last <= stop,
            })
    }

    /// Keeps stop order `entry` (`side`, `quantity`, limit `price`; a market order on the book
    /// with `protection` instead) off the book until a trade reaches its stop.
    pub(super) fn hold(
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

    /// Enters, oldest first, every stop order of the stock at `stock` that a trade of entry
    /// `entry` has reached (its trades are those from index `first` of the trades): not only
    /// the last, since a sweep through several levels passes stops it does not end at. Each
    /// stop entered may trade and reach more.
    pub(super) fn trigger_stops(&mut self, stock: u32, entry: &Order, first: usize) {
        let (mut low, mut high) = (Price::MAX, Price::from_cents(0));
        let mut seen = first;
        loop {
            for trade in &self.trades[seen..] {
                low = low.min(trade.price);
                high = high.max(trade.price);
            }
            seen = self.trades.len();
            let book = &self.stocks[stock as usize];
            let buys = book.buy_stops.range(..=(high, u64::MAX));
            let sells = book.sell_stops.range((low, 0)..);
            let due = buys.chain(sells).map(|&(_, number)| number).min();
            let Some(number) = due else { return };
            self.trigger(stock, number, entry);
        }
    }

    /// Enters stop order `number` of the stock at `stock`, whose stop a trade of `entry` has
    /// reached: a market order at its protection limit now, a limit order at its limit.
    pub(super) fn trigger(&mut self, stock: u32, number: u64, entry: &Order) {
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
    pub(super) fn withdraw_stop(&mut self, stock: u32, number: u64, place: u32) {
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
    pub(super) fn crosses(&self, stock: u32, side: Side, limit: Price) -> bool {
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
    pub(super) fn fillable(
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
    pub(super) fn expire(&mut self, stock: u32, cutoff: u64) -> usize {
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
    pub(super) fn check_client_id(&self, entry: &Order) -> Result<(), Refusal> {
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
    pub(super) fn keep_client_id(&mut self, user: Option<u64>, id: Option<Arc<str>>, number: u64) {
        if let (Some(user), Some(id)) = (user, id) {
            self.client_ids.entry(user).or_default().insert(id, number);
        }
    }

    pub(super) fn cancel(&mut self, target: u64) -> Result<u64, Refusal> {
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
    pub(super) fn untriggered(&self, target: u64) -> Option<(u32, u32)> {
        let place = self.place(target)?;
        let record = self.record_at(place)?;
        if !record.pending || record.removal.is_some() {
            return None;
        }
        let stock = *self.stock_places.get(&*record.name)?;
        Some((stock, place))
    }

    /// Takes the open order at `live` off its level and closes it as `removal` says.
    pub(super) fn remove(&mut self, live: u32, removal: Removal) {
        self.unqueue(live);
        let place = self.live[live as usize].place;
        self.record_mut(place).removal = Some(removal);
        self.close(live);
    }

    /// A smaller quantity at the same price keeps the order's place; a new price or a larger
    /// quantity sends it to the back of its (new) level, after matching what it now crosses.
    pub(super) fn modify(
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
    pub(super) fn unqueue(&mut self, at: u32) {
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
    pub(super) fn enter(&mut self, at: u32, entry: u64, rests: bool) -> bool {
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
