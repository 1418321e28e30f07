//! Exchange-core's published benchmark mix for one order book, generated the same way every
//! run (xorshift64) as the book applies it: 82% moves (an open order's new price), 9% new limit
//! orders, 6% cancels and 3% orders that sweep the opposite side (limit orders priced through
//! the book: the book's market orders trade with the house, not the book), over a book kept
//! near 10,000 resting orders on 40 levels.

use stocknet_common::{Command, Order, Price, Side, Stamp};
use stocknet_order::book::Book;

/// The book the mix keeps: resting orders it stays near, price levels each side.
const RESTING: usize = 10_000;
pub const LEVELS: u64 = 20;
pub const CENTER: u64 = 10_000;

pub struct Random(pub u64);

impl Random {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    pub fn side(&mut self) -> Side {
        if self.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }
}

pub fn entry(number: u64, command: Command) -> Order {
    Order {
        number,
        term: 1,
        name: "GameStart".into(),
        key: None,
        // Buyers and sellers are different users, so that no order meets one of its own
        // user's: the mix trades as exchange-core's, which has no self-trade prevention.
        user: Some(match command {
            Command::Place {
                side: Side::Sell, ..
            } => 50 + number % 50,
            _ => number % 50,
        }),
        stamp: Stamp::default(),
        command,
    }
}

/// A price on `side`'s own half of the book: bids below the centre, asks above.
fn resting_price(random: &mut Random, side: Side) -> Price {
    let offset = 1 + random.below(LEVELS);
    Price::from_cents(match side {
        Side::Buy => CENTER - offset,
        Side::Sell => CENTER + offset,
    })
}

/// The mix's commands, one after another.
pub struct Mix {
    random: Random,
    /// Orders placed to rest, some closed since (dropped when picked).
    open: Vec<u64>,
    number: u64,
}

impl Mix {
    pub fn new() -> Self {
        Self {
            random: Random(0x9e37_79b9_7f4a_7c15),
            open: Vec::new(),
            number: 0,
        }
    }

    /// The next command, for `book`, which has applied every one before it, so that moves and
    /// cancels name open orders.
    pub fn next(&mut self, book: &Book) -> Order {
        self.number += 1;
        let number = self.number;
        let roll = self.random.below(100);
        let command = match roll {
            0..82 if self.open.len() > RESTING / 10 => {
                let (target, side) = self.pick(book);
                let price = resting_price(&mut self.random, side);
                Command::Modify {
                    target,
                    quantity: None,
                    price: Some(price),
                }
            }
            82..97 if self.open.len() > RESTING => {
                let (target, _) = self.pick(book);
                Command::Cancel { target }
            }
            97.. => {
                let side = self.random.side();
                let through = match side {
                    Side::Buy => CENTER + LEVELS,
                    Side::Sell => CENTER - LEVELS,
                };
                Command::Place {
                    side,
                    quantity: 1 + self.random.below(400) as u32,
                    limit: Some(Price::from_cents(through)),
                    options: None,
                }
            }
            _ => {
                let side = self.random.side();
                self.open.push(number);
                Command::Place {
                    side,
                    quantity: 1 + self.random.below(100) as u32,
                    limit: Some(resting_price(&mut self.random, side)),
                    options: None,
                }
            }
        };
        entry(number, command)
    }

    /// An open order, picked at random (closed ones are dropped on the way). The mix keeps
    /// over a thousand open when it picks.
    fn pick(&mut self, book: &Book) -> (u64, Side) {
        loop {
            let index = self.random.below(self.open.len() as u64) as usize;
            match book.order(self.open[index]) {
                Some(order) if order.is_open() => return (order.number, order.side),
                _ => {
                    self.open.swap_remove(index);
                }
            }
        }
    }
}
