//! Closed orders and older trades leave memory for the archive (`crate::archive`), so that the
//! book holds only open orders, recent trades and the tallies.

use std::sync::Arc;

use super::{Book, InMemory, LimitOrder};
use crate::archive::{Archive, Counts};
use crate::error::OrderError;

impl Book {
    /// Sends the oldest trades and limit orders' records to the archive once twice as many as
    /// are to stay in memory are held (so that each is moved once), keeping the newest. Called
    /// before an entry is applied: what it touches stays in memory while it is. A record that
    /// cannot be written stays in memory, with those after it.
    pub(super) fn archive_old(&mut self) {
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
    pub(super) fn archive_orders(&mut self, archive: &Archive) -> Result<(), OrderError> {
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
}
