//! The matching engine against a model that is obviously right and slow: resting orders in
//! one vector, the best one found by a full scan each time.

use proptest::prelude::*;
use stocknet_common::wire::{DepthLevel, OrderView, Trade};
use stocknet_common::{Command, Order, OrderOptions, Stamp};

use super::*;

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

    /// Whether a trade from index `first` on reached `stop` for a stop order of `side`.
    fn reached(&self, side: Side, stop: u64, first: usize) -> bool {
        self.trades[first..].iter().any(|&(price, ..)| match side {
            Side::Buy => price >= stop,
            Side::Sell => price <= stop,
        })
    }

    /// Enters the oldest stop order a trade of this entry (from index `first` on) reached, and
    /// again, while there is one.
    fn trigger(&mut self, entry: u64, first: usize) {
        while let Some(i) = (0..self.stops.len())
            .filter(|&i| self.reached(self.stops[i].0.side, self.stops[i].1, first))
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
            if !self.reached(side, stop, self.trades.len().saturating_sub(1)) {
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
            self.trigger(entry.number, before);
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
                if new_quantity <= old.filled || (old.post_only && self.best(&moved).is_some()) {
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
    let every_third_kept: Vec<&LimitOrder> = listed.iter().filter(|o| o.number % 3 != 0).collect();
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
