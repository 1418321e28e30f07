//! The order book and users' portfolios as replicas serve them, and as a fresh replay of a
//! committed log builds them, in one comparable form (I8).

use std::time::Duration;

use serde_json::Value;
use stocknet_common::clock::{day_of, day_text, parse_day};
use stocknet_common::{Command, Order, SelfTrade, Side, Status, TimeInForce};
use stocknet_order::book::Book;
use tokio::time::{sleep, Instant};

use super::Cluster;

/// Every limit order (newest first), every trade, each stock's depth, the portfolios of
/// [`USERS`] and the daily report of every day the log spans, as JSON values.
#[derive(Debug, PartialEq)]
pub struct BookState {
    pub orders: Vec<Value>,
    pub trades: Vec<Value>,
    pub depths: Vec<Value>,
    pub portfolios: Vec<Value>,
    pub reports: Vec<Value>,
}

impl BookState {
    /// Where `self` first differs from `other`, part by part, with both values: for a failure
    /// message that says what differs, not only that something does.
    pub fn differences(&self, other: &BookState) -> Vec<String> {
        let parts = [
            ("orders", &self.orders, &other.orders),
            ("trades", &self.trades, &other.trades),
            ("depths", &self.depths, &other.depths),
            ("portfolios", &self.portfolios, &other.portfolios),
            ("reports", &self.reports, &other.reports),
        ];
        let mut found = Vec::new();
        for (part, mine, theirs) in parts {
            if mine.len() != theirs.len() {
                found.push(format!("{part}: {} against {}", mine.len(), theirs.len()));
            }
            if let Some((index, (a, b))) = mine
                .iter()
                .zip(theirs.iter())
                .enumerate()
                .find(|(_, (a, b))| a != b)
            {
                found.push(format!("{part}[{index}]: {a} against {b}"));
            }
        }
        found
    }
}

/// The UTC days (`YYYY-MM-DD`) a log's entries were stamped on.
pub fn days(log: &[Value]) -> Vec<String> {
    let mut days: Vec<String> = super::orders_only(log)
        .iter()
        .map(|entry| day_text(day_of(entry["time"].as_u64().expect("a stamped entry"))))
        .collect();
    days.dedup();
    days
}

/// The users whose portfolios are compared.
pub const USERS: [u64; 2] = [1, 2];

/// Replays `log` into a new book, checking on the way that no trade crosses a limit price
/// (both orders' prices as they stood when it happened) and that a user's orders trade with
/// each other only where the taker's `stp` is `none`, and at the end that no order is filled
/// beyond its quantity, that fills add up on both sides of every trade, that every user's
/// position in every stock is the sum of their own fills, that a fok order is filled entirely
/// or was refused, and that an expired order was due at an expiry entry of its stock after it.
pub fn check_replay(log: &[Value]) -> BookState {
    let days = days(log);
    let mut book = Book::default();
    let mut stocks: Vec<String> = Vec::new();
    // (user, stock) → shares bought minus sold, counted from fills alone.
    let mut fills: std::collections::HashMap<(u64, String), i64> = Default::default();
    let mut owners: std::collections::HashMap<u64, u64> = Default::default();
    // Each stock's expiry entries: (number, cutoff).
    let mut expiries: Vec<(String, u64, u64)> = Vec::new();
    for value in log {
        let entry: Order = serde_json::from_value(value.clone()).expect("a log entry");
        // The group's own entries change nothing but how far the book has applied.
        if matches!(entry.command, Command::Group(_)) {
            book.apply(&entry);
            continue;
        }
        if entry.command == Command::Expire {
            expiries.push((entry.name.clone(), entry.number, entry.stamp.time));
        }
        if !stocks.contains(&entry.name) {
            stocks.push(entry.name.clone());
        }
        if let Some(user) = entry.user {
            owners.insert(entry.number, user);
            if let Some((side, quantity)) = entry.market() {
                *fills.entry((user, entry.name.clone())).or_default() += signed(side, quantity);
            }
        }
        let before = book.trades(None, 0, usize::MAX).len() as u64;
        book.apply(&entry);
        for trade in book.trades(None, before, usize::MAX) {
            let buy = book
                .order(trade.buy_order)
                .expect("the buyer is a limit order");
            let sell = book
                .order(trade.sell_order)
                .expect("the seller is a limit order");
            assert!(
                sell.price <= trade.price && trade.price <= buy.price,
                "trade {trade:?} crosses a limit: buy {buy:?}, sell {sell:?}"
            );
            assert_eq!((buy.side, sell.side), (Side::Buy, Side::Sell));
            let (buyer, seller) = (owners.get(&trade.buy_order), owners.get(&trade.sell_order));
            if buyer.is_some() && buyer == seller {
                let taker = match trade.taker_side {
                    Side::Buy => &buy,
                    Side::Sell => &sell,
                };
                assert_eq!(
                    taker.self_trade,
                    SelfTrade::None,
                    "trade {trade:?} between one user's orders"
                );
            }
            for (side, order) in [(Side::Buy, trade.buy_order), (Side::Sell, trade.sell_order)] {
                if let Some(&user) = owners.get(&order) {
                    *fills.entry((user, trade.name.clone())).or_default() +=
                        signed(side, trade.quantity);
                }
            }
        }
    }
    for ((user, name), shares) in &fills {
        let held = book.holdings(*user);
        let holding = held.iter().find(|h| &h.name == name).expect("a holding");
        assert_eq!(holding.shares, *shares, "user {user}'s {name}: {holding:?}");
    }
    let trades = book.trades(None, 0, usize::MAX);
    let traded: u64 = trades.iter().map(|t| u64::from(t.quantity)).sum();
    let (mut bought, mut sold) = (0u64, 0u64);
    let mut orders = Vec::new();
    let (listed, more) = book.orders_page(u64::MAX, (usize::MAX, usize::MAX), |_| true);
    assert_eq!(more, None);
    for order in listed {
        let view = book.limit_view(&order);
        let fills: u32 = view.fills.iter().map(|f| f.quantity).sum();
        assert!(
            view.filled_quantity <= view.quantity,
            "overfilled: {view:?}"
        );
        assert_eq!(view.filled_quantity, fills, "fills do not add up: {view:?}");
        if order.time_in_force == TimeInForce::Fok {
            assert_eq!(
                order.filled, order.quantity,
                "a fok order filled in part: {view:?}"
            );
        }
        // A triggered stop order was triggered by a trade of its stock at or past its stop.
        if let (Some(entry), Some(stop)) = (order.triggered(), order.stop_price()) {
            let reached = trades.iter().any(|t| {
                t.entry == entry
                    && *t.name == *order.name
                    && match order.side {
                        Side::Buy => t.price >= stop,
                        Side::Sell => t.price <= stop,
                    }
            });
            assert!(
                reached,
                "order {} triggered at {entry} by no trade reaching its stop",
                order.number
            );
        }
        if view.status == Status::Expired {
            let expires = order.expires().expect("an expired order has an expiry");
            assert!(
                expiries
                    .iter()
                    .any(|(name, number, cutoff)| *name == *order.name
                        && *number > order.number
                        && *cutoff >= expires),
                "order {} expired without an expiry entry due for it",
                order.number
            );
        }
        match view.side {
            Side::Buy => bought += u64::from(fills),
            Side::Sell => sold += u64::from(fills),
        }
        orders.push(serde_json::to_value(view).expect("JSON"));
    }
    assert_eq!(
        (bought, sold),
        (traded, traded),
        "filled quantities per side"
    );
    stocks.sort();
    BookState {
        orders,
        trades: trades
            .iter()
            .map(|t| serde_json::to_value(t).expect("JSON"))
            .collect(),
        depths: stocks
            .iter()
            .map(|name| serde_json::to_value(book.depth(name, 1_000)).expect("JSON"))
            .collect(),
        portfolios: USERS
            .iter()
            .map(|&user| serde_json::to_value(book.holdings(user)).expect("JSON"))
            .collect(),
        reports: days
            .iter()
            .map(|day| {
                let day = parse_day(day).expect("a day");
                serde_json::to_value(book.daily_report(day)).expect("JSON")
            })
            .collect(),
    }
}

fn signed(side: Side, quantity: u32) -> i64 {
    match side {
        Side::Buy => i64::from(quantity),
        Side::Sell => -i64::from(quantity),
    }
}

/// Every replica's book once each has applied `applied` entries, or `None` if one has
/// applied more, before its book was read or while it was (the leader may write an entry of
/// its own at any time: it expires orders whose time ran out, and a new term begins with one).
pub async fn books_at(
    cluster: &Cluster,
    applied: u64,
    stocks: &[&str],
    days: &[String],
) -> Option<Vec<BookState>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for index in 0..cluster.order_urls.len() {
        loop {
            let now = cluster.replica_health(index).await["applied"].as_u64();
            match now {
                Some(now) if now == applied => break,
                Some(now) if now > applied => return None,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "replica {}'s book has applied {now:?} entries, not {applied}",
                index + 1
            );
            sleep(Duration::from_millis(25)).await;
        }
    }
    let mut stocks: Vec<&str> = stocks.to_vec();
    stocks.sort();
    let mut books = Vec::new();
    for base in &cluster.order_urls {
        books.push(replica_book(cluster, base, &stocks, days).await);
    }
    for index in 0..cluster.order_urls.len() {
        if cluster.replica_health(index).await["applied"] != applied {
            return None;
        }
    }
    Some(books)
}

async fn replica_book(
    cluster: &Cluster,
    base: &str,
    stocks: &[&str],
    days: &[String],
) -> BookState {
    let mut orders = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = cluster
            .get(&format!("{base}/orders?limit=1000{cursor}"))
            .await;
        assert_eq!(status, 200, "{body}");
        orders.extend(body["data"]["orders"].as_array().expect("orders").clone());
        match body["data"]["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let mut trades: Vec<Value> = Vec::new();
    loop {
        let after = trades.last().map_or(0, |t| t["id"].as_u64().expect("id"));
        let (status, body) = cluster
            .get(&format!("{base}/trades?after={after}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{body}");
        let page = body["data"].as_array().expect("trades").clone();
        if page.is_empty() {
            break;
        }
        trades.extend(page);
    }
    let mut depths = Vec::new();
    for name in stocks {
        let (status, body) = cluster.get(&format!("{base}/book/{name}?depth=1000")).await;
        assert_eq!(status, 200, "{body}");
        depths.push(body["data"].clone());
    }
    let mut portfolios = Vec::new();
    for user in USERS {
        let (status, body) = cluster.get(&format!("{base}/portfolios/{user}")).await;
        assert_eq!(status, 200, "{body}");
        portfolios.push(body["data"].clone());
    }
    let mut reports = Vec::new();
    for day in days {
        let (status, body) = cluster
            .get(&format!("{base}/reports/daily?date={day}"))
            .await;
        assert_eq!(status, 200, "{body}");
        reports.push(body["data"].clone());
    }
    BookState {
        orders,
        trades,
        depths,
        portfolios,
        reports,
    }
}
