//! The book entry by entry: matching, each term, views, pages, the events and updates an
//! entry makes, and the archive behind them.

use stocknet_common::wire::{DepthLevel, LevelChange, OrderEvent, OrderType, Trade};
use stocknet_common::{Command, Order, OrderOptions, Stamp};

use super::*;

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

/// A modify of order `target` to a total of `quantity`, at its price.
fn resize(target: u64, quantity: u32) -> Command {
    Command::Modify {
        target,
        quantity: Some(quantity),
        price: None,
    }
}

/// A modify of order `target` to the price `cents`, its quantity as it is.
fn reprice(target: u64, cents: u64) -> Command {
    Command::Modify {
        target,
        quantity: None,
        price: Some(Price::from_cents(cents)),
    }
}

/// The seller and quantity of each of the book's first ten trades.
fn sellers(book: &Book) -> Vec<(u64, u32)> {
    book.trades(None, 0, 10)
        .iter()
        .map(|t| (t.sell_order, t.quantity))
        .collect()
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
        resize(1, 2),
    ]);
    assert_eq!(book.depth("A", 1).asks, [level(1000, 7, 2)]);
    book.apply(&entry(4, limit(Side::Buy, 3, 1000)));
    assert_eq!(sellers(&book), [(1, 2), (2, 1)]);

    // A larger quantity goes to the back: order 2 (4 left) moves behind order 5.
    book.apply(&entry(5, limit(Side::Sell, 1, 1000)));
    let modify = resize(2, 9);
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
    let applied = book.apply(&entry(3, reprice(2, 1000)));
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
    let repriced = book.apply(&entry(4, reprice(3, 1000)));
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

/// An iceberg's terms: `display` of it shows at a time.
fn iceberg(display: u32) -> Terms {
    Terms {
        display_quantity: Some(display),
        ..Terms::default()
    }
}

#[test]
fn an_iceberg_shows_a_slice_and_each_refill_goes_to_the_back_of_its_level() {
    let mut book = book(&[]);
    book.apply(&with_terms(1, 1, 0, (Side::Sell, 5, 1000), iceberg(2)));
    book.apply(&entry(2, limit(Side::Sell, 3, 1000)));
    assert_eq!(
        book.depth("A", 5).asks,
        [level(1000, 5, 2)],
        "2 of 5 show, and 3"
    );
    // A buy of 3 takes the iceberg's slice of 2, whose next slice goes behind order 2,
    // then 1 of order 2.
    book.apply(&with_terms(3, 2, 0, (Side::Buy, 3, 1000), Terms::default()));
    assert_eq!(sellers(&book), [(1, 2), (2, 1)]);
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

/// An iceberg modified to its display size or below hides nothing, and its view does not
/// claim a display size above its quantity; made larger again, it is an iceberg again.
#[test]
fn an_iceberg_shrunk_below_its_slice_shows_whole_and_says_so() {
    let mut book = book(&[]);
    book.apply(&with_terms(1, 1, 0, (Side::Sell, 10, 1000), iceberg(4)));
    let display = |book: &Book| book.limit_view(&book.order(1).unwrap()).display_quantity;
    assert_eq!(display(&book), Some(4));
    book.apply(&entry(2, resize(1, 3)));
    assert_eq!(book.depth("A", 5).asks, [level(1000, 3, 1)]);
    assert_eq!(display(&book), None, "3 of 3 show");
    book.apply(&entry(3, resize(1, 8)));
    assert_eq!(book.depth("A", 5).asks, [level(1000, 4, 1)]);
    assert_eq!(display(&book), Some(4));
}

/// A limit order the leader refused (its price moved) shows the terms it came with, as one
/// the book refused does.
#[test]
fn a_limit_order_the_leader_refused_shows_its_terms() {
    let post_only = Terms {
        post_only: true,
        ..Terms::default()
    };
    let mut refused = with_terms(1, 1, 0, (Side::Buy, 5, 1000), post_only);
    refused.stamp.rejected = Some(Rejection::PriceMoved);
    let mut book = book(&[]);
    book.apply(&refused);
    let view = book.view(&refused).unwrap();
    assert_eq!(view.status, Status::Rejected);
    assert_eq!(
        (view.post_only, view.time_in_force),
        (Some(true), Some(TimeInForce::Gtc))
    );
}

/// An order's view lists its last `FILLS_SHOWN` fills and says there are more: each older
/// one would be a read under the book's lock on every look at the order.
#[test]
fn an_order_view_lists_its_last_fills_and_says_when_there_are_more() {
    use stocknet_common::wire::FILLS_SHOWN;

    let buys = u32::try_from(FILLS_SHOWN).unwrap() + 1;
    let mut commands = vec![limit(Side::Sell, buys + 5, 1000)];
    commands.extend((0..buys).map(|_| limit(Side::Buy, 1, 1000)));
    let book = book(&commands);
    let view = book.limit_view(&book.order(1).unwrap());
    assert_eq!(view.filled_quantity, buys);
    assert_eq!(view.fills.len(), FILLS_SHOWN);
    assert!(view.fills_truncated);
    // The newest, oldest first: the first trade is the one left out.
    let trades: Vec<u64> = view.fills.iter().map(|fill| fill.trade).collect();
    assert_eq!(trades, (2..=u64::from(buys)).collect::<Vec<_>>());
    let buyer = book.limit_view(&book.order(2).unwrap());
    assert_eq!((buyer.fills.len(), buyer.fills_truncated), (1, false));
}

#[test]
fn each_entry_tells_its_users_what_it_did_to_their_orders() {
    let said = |book: &Book, entry: &Order| -> Vec<(u64, u64, OrderEvent, usize, Option<String>)> {
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

/// A stop order's terms: it waits until a trade reaches `cents`.
fn stop(cents: u64) -> Terms {
    Terms {
        stop_price: Some(Price::from_cents(cents)),
        ..Terms::default()
    }
}

#[test]
fn a_stop_order_waits_off_the_book_until_a_trade_reaches_its_stop() {
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
    // The stop limit shows its price; the stop market none until it triggers.
    let price = |number| book.limit_view(&book.order(number).unwrap()).price;
    assert_eq!((price(3), price(4)), (Some(Price::from_cents(1050)), None));
    let refused = book.apply(&entry(5, resize(3, 1)));
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
    assert_eq!(book.limit_view(&book.order(4).unwrap()).price, None);
}

#[test]
fn a_stop_is_reached_by_any_trade_of_the_entry_not_only_its_last() {
    // A sweep that trades at 10.00 and then at 11.00 passes a sell stop at 10.00.
    let mut sweep = book(&[limit(Side::Sell, 1, 1000), limit(Side::Sell, 1, 1100)]);
    sweep.apply(&with_terms(3, 7, 0, (Side::Sell, 1, 900), stop(1000)));
    assert_eq!(sweep.order(3).unwrap().status(), Status::Untriggered);
    sweep.apply(&entry(4, limit(Side::Buy, 2, 1100)));
    let triggered = sweep.order(3).unwrap();
    assert_eq!(
        (triggered.status(), triggered.triggered()),
        (Status::Open, Some(4))
    );
    // Two buy stops at 10.00 reached by one trade both enter, though the first one's trade
    // (at 9.00) is below the stop by the time the second is looked at.
    let mut cascade = book(&[limit(Side::Buy, 1, 1000)]);
    cascade.apply(&with_terms(2, 7, 0, (Side::Buy, 1, 900), stop(1000)));
    cascade.apply(&with_terms(3, 8, 0, (Side::Buy, 1, 900), stop(1000)));
    cascade.apply(&entry(4, limit(Side::Sell, 2, 900)));
    for number in [2, 3] {
        assert_eq!(
            cascade.order(number).unwrap().triggered(),
            Some(4),
            "{number}"
        );
    }
    assert_eq!(cascade.order(2).unwrap().status(), Status::Filled);
    assert_eq!(cascade.order(3).unwrap().status(), Status::Open);
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
    let shrink = resize(7, 2);
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
    let (mut book, archive) = archiving_book(dir.path());
    let in_memory = book.in_memory();
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

/// A view is in memory for a recent order (its record and the trades since it entered are
/// kept), not for one whose record or trades went to the archive.
#[test]
fn only_a_recent_order_s_view_is_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut book, _) = archiving_book(dir.path());
    assert!(book.view_in_memory(1), "nothing archived yet");
    let mut number = 0;
    for pair in 0..300 {
        for side in [Side::Sell, Side::Buy] {
            number += 1;
            book.apply(&entry(number, limit(side, 1, 100 + pair % 7)));
        }
    }
    assert!(book.archived().trades > 0);
    assert!(book.view_in_memory(number));
    assert!(book.view_in_memory(number - 1));
    assert!(!book.view_in_memory(1));
    assert!(!book.view_in_memory(2));
}

/// A book that keeps its newest 100 trades and orders in memory and the rest in an archive in
/// `dir`, and that archive.
fn archiving_book(dir: &std::path::Path) -> (Book, Arc<Archive>) {
    let archive = Arc::new(Archive::open(dir, 1).unwrap());
    let in_memory = InMemory {
        trades: 100,
        orders: 100,
    };
    (
        Book::default().with_archive(archive.clone(), in_memory),
        archive,
    )
}
