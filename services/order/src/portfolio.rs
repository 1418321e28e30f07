//! Users' holdings: per user and stock, the position and its cost from the user's own fills,
//! kept as the book applies committed entries, so every replica holds the same and a fresh
//! replay of the log gives it again. A row belongs to one stock, like everything else the log
//! derives (I10, docs/ARCHITECTURE.md).
//!
//! Cost is the average-cost method in integer cents: a fill that grows a position adds its
//! price to the cost basis; one that shrinks it takes out the average cost of the shares it
//! closes (rounded toward zero) and realises the difference; one that crosses zero closes the
//! position and opens the other way at the fill's price. Short positions are allowed: the
//! seed's market orders sell to the house whatever the caller names. Amounts are i128 cents:
//! one fill of the most shares an order may name at the highest price is past i64.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use stocknet_common::wire::Holding;
use stocknet_common::{Price, Side};

/// One user's position in one stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Shares held; negative when short.
    pub shares: i64,
    /// What the open shares cost, in cents, with the sign of `shares`.
    pub cost: i128,
    /// Profit taken by closing shares, in cents.
    pub realized: i128,
    pub bought: u64,
    pub sold: u64,
}

impl Position {
    /// Books one fill of `quantity` shares at `price`.
    pub fn fill(&mut self, side: Side, quantity: u32, price: Price) {
        let price = i128::from(price.cents());
        let (direction, counter) = match side {
            Side::Buy => (1, &mut self.bought),
            Side::Sell => (-1, &mut self.sold),
        };
        *counter += u64::from(quantity);
        let quantity = i64::from(quantity);
        if self.shares == 0 || self.shares.signum() == direction {
            self.shares += direction * quantity;
            self.cost += i128::from(direction * quantity) * price;
            return;
        }
        let held = self.shares.abs();
        let closing = quantity.min(held);
        let removed = self.cost * i128::from(closing) / i128::from(held);
        self.realized += i128::from(self.shares.signum() * closing) * price - removed;
        self.cost -= removed;
        self.shares += direction * closing;
        let opening = quantity - closing;
        if opening > 0 {
            self.shares = direction * opening;
            self.cost = i128::from(direction * opening) * price;
        }
    }

    /// Average cost per open share in cents, rounded to the nearest; `None` when flat.
    pub fn average_cost(&self) -> Option<u64> {
        (self.shares != 0).then(|| {
            let average = (self.cost as f64 / self.shares as f64).round();
            average.max(0.0) as u64
        })
    }
}

/// Every user's positions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Portfolios {
    users: HashMap<u64, BTreeMap<String, Position>>,
}

impl Portfolios {
    pub fn fill(&mut self, user: u64, name: &str, side: Side, quantity: u32, price: Price) {
        let positions = self.users.entry(user).or_default();
        match positions.get_mut(name) {
            Some(position) => position.fill(side, quantity, price),
            None => {
                let mut position = Position::default();
                position.fill(side, quantity, price);
                positions.insert(name.to_owned(), position);
            }
        }
    }

    /// `user`'s positions in name order (stocks the user traded, flat ones included).
    pub fn holdings(&self, user: u64) -> Vec<Holding> {
        self.users
            .get(&user)
            .into_iter()
            .flatten()
            .map(|(name, p)| Holding {
                name: name.clone(),
                shares: p.shares,
                cost_cents: p.cost,
                average_cost: p.average_cost().map(Price::from_cents),
                realized_cents: p.realized,
                bought: p.bought,
                sold: p.sold,
            })
            .collect()
    }

    /// Every row, for a snapshot: sorted, so equal portfolios give equal snapshots.
    pub(crate) fn rows(&self) -> Vec<(u64, &str, Position)> {
        let mut rows: Vec<_> = self
            .users
            .iter()
            .flat_map(|(&user, positions)| {
                positions
                    .iter()
                    .map(move |(name, p)| (user, name.as_str(), *p))
            })
            .collect();
        rows.sort_unstable_by_key(|&(user, name, _)| (user, name));
        rows
    }

    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (u64, String, Position)>) -> Self {
        let mut portfolios = Self::default();
        for (user, name, position) in rows {
            let positions = portfolios.users.entry(user).or_default();
            positions.insert(name, position);
        }
        portfolios
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_cost_grows_with_buys_and_sells_realise_against_it() {
        let mut p = Position::default();
        p.fill(Side::Buy, 10, Price::from_cents(1000));
        p.fill(Side::Buy, 10, Price::from_cents(2000));
        assert_eq!(
            (p.shares, p.cost, p.average_cost()),
            (20, 30_000, Some(1500))
        );
        p.fill(Side::Sell, 5, Price::from_cents(1800));
        // 5 shares at average 15.00 sold at 18.00: 15.00 realised.
        assert_eq!((p.shares, p.cost, p.realized), (15, 22_500, 1500));
        p.fill(Side::Sell, 15, Price::from_cents(1000));
        assert_eq!((p.shares, p.cost, p.realized), (0, 0, 1500 - 7500));
        assert_eq!(p.average_cost(), None);
        assert_eq!((p.bought, p.sold), (20, 20));
    }

    #[test]
    fn a_fill_through_zero_closes_and_opens_the_other_way() {
        let mut p = Position::default();
        p.fill(Side::Buy, 4, Price::from_cents(500));
        p.fill(Side::Sell, 10, Price::from_cents(600));
        // 4 closed at +1.00 each; 6 short opened at 6.00.
        assert_eq!((p.shares, p.cost, p.realized), (-6, -3600, 400));
        assert_eq!(p.average_cost(), Some(600));
        p.fill(Side::Buy, 2, Price::from_cents(400));
        // Covering 2 short shares bought at 4.00 that were sold at 6.00: 4.00 gained.
        assert_eq!((p.shares, p.cost, p.realized), (-4, -2400, 800));
    }

    #[test]
    fn rounding_of_the_closed_cost_never_loses_a_cent_overall() {
        let mut p = Position::default();
        p.fill(Side::Buy, 2, Price::from_cents(100));
        p.fill(Side::Buy, 1, Price::from_cents(0));
        p.fill(Side::Sell, 1, Price::from_cents(0));
        // A third of 2.00 is 66 cents rounded down; the rest stays in the basis.
        assert_eq!((p.shares, p.cost, p.realized), (2, 134, -66));
        p.fill(Side::Sell, 2, Price::from_cents(0));
        // 3 shares for 2.00 sold for nothing: exactly 2.00 lost, however it was split.
        assert_eq!((p.shares, p.cost, p.realized), (0, 0, -200));
    }

    #[test]
    fn the_largest_fills_the_api_takes_are_booked_exactly() {
        let most = Price::from_cents(100_000_000_000);
        let mut p = Position::default();
        // One fill of every share an order may name at the highest price is past i64 cents.
        for _ in 0..3 {
            p.fill(Side::Sell, u32::MAX, most);
        }
        let shares = 3 * i64::from(u32::MAX);
        let value = i128::from(u32::MAX) * 100_000_000_000;
        assert_eq!((p.shares, p.cost), (-shares, -3 * value));
        p.fill(Side::Buy, u32::MAX, Price::from_cents(0));
        assert_eq!((p.cost, p.realized), (-2 * value, value));
        assert_eq!(p.average_cost(), Some(100_000_000_000));
        let mut all = Portfolios::default();
        all.fill(1, "A", Side::Buy, u32::MAX, most);
        assert_eq!(all.holdings(1)[0].cost_cents, value);
    }

    #[test]
    fn holdings_are_per_user_and_stock_in_name_order() {
        let mut all = Portfolios::default();
        all.fill(1, "B", Side::Buy, 2, Price::from_cents(100));
        all.fill(1, "A", Side::Sell, 1, Price::from_cents(300));
        all.fill(2, "A", Side::Buy, 7, Price::from_cents(300));
        let names: Vec<_> = all.holdings(1).into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(all.holdings(2)[0].shares, 7);
        assert!(all.holdings(3).is_empty());
        let copy =
            Portfolios::from_rows(all.rows().into_iter().map(|(u, n, p)| (u, n.to_owned(), p)));
        assert_eq!(copy, all);
    }
}
