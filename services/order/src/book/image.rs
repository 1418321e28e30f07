//! The book as parts and back: what a book snapshot and a snapshot sent to another replica
//! hold (see `crate::snapshot`), and the candles' minutes restored beside it.

use std::sync::Arc;

use stocknet_common::Price;

use super::{Book, LimitOrder, Matched, Parts, Refusal, StockPart, StockTrades, CHECKPOINT_EVERY};
use crate::candles::{Candle, Minutes};
use crate::portfolio::Portfolios;
use crate::report::Reports;

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
}
