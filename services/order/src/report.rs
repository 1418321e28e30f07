//! The daily report, kept as entries apply: per UTC day and stock, the executions (book trades
//! and market orders), volume bought and sold, VWAP, open/high/low/close and the refused
//! commands by reason; per day, each user's traded volume. Serving a day costs its stocks and
//! users, never a scan of the log, and a replay of the log gives the same report (it is part of
//! the book's state, I8). Rows are keyed by stock, like everything the log derives (I10).

use std::collections::BTreeMap;

use hashbrown::HashMap;

use stocknet_common::clock::day_text;
use stocknet_common::wire::{DailyReport, StockDay, UserVolume};
use stocknet_common::{Price, Side};

/// Users a report ranks.
pub const TOP_USERS: usize = 10;

/// One stock's day so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockTally {
    pub executions: u64,
    /// Shares executed.
    pub volume: u64,
    /// Shares clients bought and sold: a book trade counts on both sides, a market order on its
    /// own (the house is the other side).
    pub bought: u64,
    pub sold: u64,
    /// Sum of price × shares, in cents.
    pub notional: u128,
    /// First, highest, lowest and last execution price, in cents.
    pub open: u64,
    pub high: u64,
    pub low: u64,
    pub close: u64,
    pub refused: BTreeMap<String, u64>,
}

impl StockTally {
    fn execute(&mut self, quantity: u32, price: Price) {
        let cents = price.cents();
        if self.executions == 0 {
            (self.open, self.high, self.low) = (cents, cents, cents);
        }
        self.executions += 1;
        self.volume += u64::from(quantity);
        self.notional += u128::from(cents) * u128::from(quantity);
        self.high = self.high.max(cents);
        self.low = self.low.min(cents);
        self.close = cents;
    }
}

/// Every day's tallies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reports {
    days: BTreeMap<u32, Day>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Day {
    stocks: BTreeMap<String, StockTally>,
    /// Shares each user bought and sold that day.
    users: HashMap<u64, u64>,
}

impl Day {
    fn stock(&mut self, name: &str) -> &mut StockTally {
        if !self.stocks.contains_key(name) {
            self.stocks.insert(name.to_owned(), StockTally::default());
        }
        self.stocks.get_mut(name).expect("inserted above")
    }

    fn user_traded(&mut self, user: Option<u64>, quantity: u32) {
        if let Some(user) = user {
            *self.users.entry(user).or_default() += u64::from(quantity);
        }
    }
}

impl Reports {
    fn stock(&mut self, day: u32, name: &str) -> &mut StockTally {
        self.day(day).stock(name)
    }

    fn day(&mut self, day: u32) -> &mut Day {
        self.days.entry(day).or_default()
    }

    /// A market order executed against the house.
    pub fn market(
        &mut self,
        day: u32,
        name: &str,
        user: Option<u64>,
        side: Side,
        quantity: u32,
        price: Price,
    ) {
        let day = self.day(day);
        let tally = day.stock(name);
        tally.execute(quantity, price);
        match side {
            Side::Buy => tally.bought += u64::from(quantity),
            Side::Sell => tally.sold += u64::from(quantity),
        }
        day.user_traded(user, quantity);
    }

    /// A trade on the book between two orders (of `buyer` and `seller`, if users placed them).
    pub fn trade(
        &mut self,
        day: u32,
        name: &str,
        quantity: u32,
        price: Price,
        buyer: Option<u64>,
        seller: Option<u64>,
    ) {
        let day = self.day(day);
        let tally = day.stock(name);
        tally.execute(quantity, price);
        tally.bought += u64::from(quantity);
        tally.sold += u64::from(quantity);
        day.user_traded(buyer, quantity);
        day.user_traded(seller, quantity);
    }

    pub fn refused(&mut self, day: u32, name: &str, reason: &str) {
        *self
            .stock(day, name)
            .refused
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// The report of `day`: its stocks in name order, and its top users by volume.
    pub fn daily(&self, day: u32) -> DailyReport {
        let Some(tallies) = self.days.get(&day) else {
            return DailyReport {
                date: day_text(day),
                stocks: Vec::new(),
                top_users: Vec::new(),
            };
        };
        let stocks = tallies
            .stocks
            .iter()
            .map(|(name, t)| {
                let price = |cents: u64| (t.executions > 0).then(|| Price::from_cents(cents));
                StockDay {
                    name: name.clone(),
                    trades: t.executions,
                    volume: t.volume,
                    bought: t.bought,
                    sold: t.sold,
                    vwap: (t.volume > 0).then(|| {
                        // Rounded to the nearest cent.
                        let volume = u128::from(t.volume);
                        let cents = (t.notional + volume / 2) / volume;
                        Price::from_cents(u64::try_from(cents).unwrap_or(u64::MAX))
                    }),
                    open: price(t.open),
                    high: price(t.high),
                    low: price(t.low),
                    close: price(t.close),
                    refused: t.refused.clone(),
                }
            })
            .collect();
        let mut users: Vec<UserVolume> = tallies
            .users
            .iter()
            .map(|(&user, &volume)| UserVolume { user, volume })
            .collect();
        // Highest volume first; ties by user id, so every replica ranks alike. Only the top
        // ones are sorted (this runs under the book's lock, and a day may have many users).
        let ranked =
            |a: &UserVolume, b: &UserVolume| b.volume.cmp(&a.volume).then(a.user.cmp(&b.user));
        if users.len() > TOP_USERS {
            users.select_nth_unstable_by(TOP_USERS, ranked);
            users.truncate(TOP_USERS);
        }
        users.sort_unstable_by(ranked);
        DailyReport {
            date: day_text(day),
            stocks,
            top_users: users,
        }
    }

    /// Every day's stock rows (day, stock, tally), for a snapshot, sorted.
    pub(crate) fn stock_rows(&self) -> Vec<(u32, &str, &StockTally)> {
        self.days
            .iter()
            .flat_map(|(&day, t)| t.stocks.iter().map(move |(n, t)| (day, n.as_str(), t)))
            .collect()
    }

    /// Every day's user rows (day, user, volume), for a snapshot, sorted.
    pub(crate) fn user_rows(&self) -> Vec<(u32, u64, u64)> {
        let mut users: Vec<_> = self
            .days
            .iter()
            .flat_map(|(&day, t)| t.users.iter().map(move |(&u, &v)| (day, u, v)))
            .collect();
        users.sort_unstable();
        users
    }

    pub(crate) fn from_rows(
        stocks: impl IntoIterator<Item = (u32, String, StockTally)>,
        users: impl IntoIterator<Item = (u32, u64, u64)>,
    ) -> Self {
        let mut reports = Self::default();
        for (day, name, tally) in stocks {
            let that_day = reports.days.entry(day).or_default();
            that_day.stocks.insert(name, tally);
        }
        for (day, user, volume) in users {
            let that_day = reports.days.entry(day).or_default();
            that_day.users.insert(user, volume);
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of many users, the ten with the most volume, highest first, ties by user id: what a
    /// full sort would give.
    #[test]
    fn the_top_users_of_many_are_the_full_ranking_s_first_ten() {
        // Users 1–40 trade volumes that repeat, so that ties need the user id to order them.
        let users = (1..=40u64).map(|user| (5, user, (user * 7) % 13 + 1));
        let reports = Reports::from_rows(std::iter::empty(), users.clone());
        let mut expected: Vec<(u64, u64)> = users.map(|(_, user, volume)| (user, volume)).collect();
        expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        expected.truncate(TOP_USERS);
        let ranked: Vec<(u64, u64)> = reports
            .daily(5)
            .top_users
            .iter()
            .map(|u| (u.user, u.volume))
            .collect();
        assert_eq!(ranked, expected);
    }

    #[test]
    fn a_day_sums_its_executions_and_ranks_its_users() {
        let mut reports = Reports::default();
        reports.trade(5, "A", 10, Price::from_cents(1000), Some(1), None);
        reports.market(5, "A", Some(2), Side::Buy, 30, Price::from_cents(1200));
        reports.trade(5, "A", 5, Price::from_cents(900), Some(2), Some(1));
        reports.refused(5, "A", "price_moved");
        reports.refused(5, "B", "insufficient_quantity");
        reports.market(6, "A", Some(3), Side::Sell, 1, Price::from_cents(5000));

        let day = reports.daily(5);
        assert_eq!(day.date, "1970-01-06");
        let a = &day.stocks[0];
        assert_eq!((a.trades, a.volume, a.bought, a.sold), (3, 45, 45, 15));
        // (10 × 10.00 + 30 × 12.00 + 5 × 9.00) / 45 = 11.22
        assert_eq!(a.vwap, Some(Price::from_cents(1122)));
        assert_eq!(
            (a.open, a.high, a.low, a.close),
            (
                Some(Price::from_cents(1000)),
                Some(Price::from_cents(1200)),
                Some(Price::from_cents(900)),
                Some(Price::from_cents(900))
            )
        );
        assert_eq!(a.refused["price_moved"], 1);
        let b = &day.stocks[1];
        assert_eq!(
            (b.name.as_str(), b.trades, b.vwap, b.open),
            ("B", 0, None, None)
        );
        assert_eq!(b.refused["insufficient_quantity"], 1);
        let ranked: Vec<(u64, u64)> = day.top_users.iter().map(|u| (u.user, u.volume)).collect();
        assert_eq!(ranked, [(2, 35), (1, 15)]);
        assert_eq!(reports.daily(6).stocks[0].sold, 1);
        assert!(reports.daily(7).stocks.is_empty());

        let copy = Reports::from_rows(
            reports
                .stock_rows()
                .into_iter()
                .map(|(d, n, t)| (d, n.to_owned(), t.clone())),
            reports.user_rows(),
        );
        assert_eq!(copy, reports);
    }
}
