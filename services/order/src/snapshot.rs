//! Book snapshots on disk: the book as of one committed log entry, so that a replica that
//! restarts loads it and applies only the entries after it instead of its whole log.
//!
//! The file (`book-<id>.snap`) is a magic line and a postcard encoding of [`Image`], written
//! atomically (temporary file, fsync, rename, directory fsync). Its own types, with prices in
//! cents, keep the disk format apart from the wire's and from the book's internals; a trade,
//! which is plain numbers, is written as the book keeps it ([`Matched`], prices [`in_cents`]).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stocknet_common::wire::Ohlcv;
use stocknet_common::{file, Price};

use crate::archive::OrderRecord;
use crate::book::{Book, LimitOrder, Matched, Refusal, StockTrades};
use crate::candles::Candle;
use crate::portfolio::{Portfolios, Position};
use crate::report::{Reports, StockTally};

/// First bytes of a snapshot file; the digit is the format's version.
const MAGIC: &[u8] = b"stocknet book snapshot 4\n";

#[derive(Serialize, Deserialize)]
struct Image<'a> {
    applied: u64,
    next_slot: u64,
    /// By place: archived trades name their stock by it.
    stocks: Vec<StockImage>,
    /// The orders in memory; those placed before this mark are in the archive too.
    orders_archived: u32,
    #[serde(borrow)]
    orders: Vec<OrderImage<'a>>,
    /// The trades before these are in the trade archive (`trades-<id>.bin`).
    trades_archived: u64,
    trades: Vec<Matched>,
    /// The refusals in memory; the ones before are in the archive.
    refusals_archived: u64,
    refusals: Vec<(u64, Refusal)>,
    positions: Vec<PositionImage>,
    stock_days: Vec<StockDayImage>,
    user_days: Vec<(u32, u64, u64)>,
    candles: Vec<(String, Vec<CandleImage>)>,
}

#[derive(Serialize, Deserialize)]
struct StockImage {
    name: String,
    last_cents: Option<u64>,
    /// How many trades it has had, the id of its last, and the ids of every 1,024th.
    trades: u64,
    last_trade: u64,
    checkpoints: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct CandleImage {
    start: u64,
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    volume: u64,
    trades: u32,
}

/// A limit order's record as the archive keeps it, with its place and number.
#[derive(Serialize, Deserialize)]
struct OrderImage<'a> {
    place: u32,
    number: u64,
    #[serde(borrow)]
    record: OrderRecord<'a>,
}

#[derive(Serialize, Deserialize)]
struct PositionImage {
    user: u64,
    name: String,
    shares: i64,
    // i128 since positions are: postcard writes every integer as a varint, so snapshots
    // written with i64 read the same.
    cost: i128,
    realized: i128,
    bought: u64,
    sold: u64,
}

#[derive(Serialize, Deserialize)]
struct StockDayImage {
    day: u32,
    name: String,
    executions: u64,
    volume: u64,
    bought: u64,
    sold: u64,
    notional: u128,
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    refused: Vec<(String, u64)>,
}

/// A price as its cents, as the snapshot keeps prices (`#[serde(with)]` on the book's trades).
pub(crate) mod in_cents {
    use serde::{Deserialize, Deserializer, Serializer};
    use stocknet_common::Price;

    pub fn serialize<S: Serializer>(price: &Price, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(price.cents())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Price, D::Error> {
        u64::deserialize(deserializer).map(Price::from_cents)
    }
}

/// The snapshot of `book`, ready to be written.
pub fn encode(book: &Book) -> Result<Vec<u8>, String> {
    let parts = book.parts();
    let orders: Vec<(u32, u32, LimitOrder)> = parts.orders.collect();
    let (stock_days, user_days) = (parts.reports.stock_rows(), parts.reports.user_rows());
    let image = Image {
        applied: parts.applied,
        next_slot: parts.next_slot,
        stocks: parts
            .stocks
            .iter()
            .map(|stock| StockImage {
                name: stock.name.to_owned(),
                last_cents: stock.last_price.map(Price::cents),
                trades: stock.trades.count,
                last_trade: stock.trades.last,
                checkpoints: stock.trades.checkpoints.clone(),
            })
            .collect(),
        orders_archived: parts.orders_archived,
        orders: orders
            .iter()
            .map(|(place, stock, order)| OrderImage {
                place: *place,
                number: order.number,
                record: OrderRecord::of(*stock, order),
            })
            .collect(),
        trades_archived: parts.trades_archived,
        trades: parts.trades.to_vec(),
        refusals_archived: parts.refusals.0,
        refusals: parts.refusals.1.to_vec(),
        positions: parts
            .portfolios
            .rows()
            .into_iter()
            .map(|(user, name, p)| PositionImage {
                user,
                name: name.to_owned(),
                shares: p.shares,
                cost: p.cost,
                realized: p.realized,
                bought: p.bought,
                sold: p.sold,
            })
            .collect(),
        stock_days: stock_days
            .into_iter()
            .map(|(day, name, t)| StockDayImage {
                day,
                name: name.to_owned(),
                executions: t.executions,
                volume: t.volume,
                bought: t.bought,
                sold: t.sold,
                notional: t.notional,
                open: t.open,
                high: t.high,
                low: t.low,
                close: t.close,
                refused: t.refused.iter().map(|(r, n)| (r.clone(), *n)).collect(),
            })
            .collect(),
        user_days,
        candles: parts
            .candles
            .iter()
            .map(|(name, minutes)| {
                let minutes = minutes
                    .iter()
                    .map(|c| CandleImage {
                        start: c.start,
                        open: c.traded.open.cents(),
                        high: c.traded.high.cents(),
                        low: c.traded.low.cents(),
                        close: c.traded.close.cents(),
                        volume: c.traded.volume,
                        trades: c.traded.trades,
                    })
                    .collect();
                ((*name).to_owned(), minutes)
            })
            .collect(),
    };
    let mut bytes = MAGIC.to_vec();
    postcard::to_io(&image, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The book a snapshot holds.
pub fn decode(bytes: &[u8]) -> Result<Book, String> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a book snapshot of this version")?;
    let image: Image = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    let names: Vec<Arc<str>> = image
        .stocks
        .iter()
        .map(|s| s.name.as_str().into())
        .collect();
    let orders = image
        .orders
        .into_iter()
        .map(|o| {
            let name = names.get(o.record.stock as usize).cloned();
            let name = name.ok_or_else(|| format!("order {} names no stock", o.number))?;
            Ok((o.place, o.record.into_order(o.number, name)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let stocks = image.stocks.into_iter().map(|stock| {
        let trades = StockTrades {
            count: stock.trades,
            last: stock.last_trade,
            checkpoints: stock.checkpoints,
        };
        (stock.name, stock.last_cents.map(Price::from_cents), trades)
    });
    let mut book = Book::from_parts(
        image.applied,
        image.next_slot,
        stocks.collect(),
        (image.orders_archived, orders.into_iter()),
        (image.trades_archived, image.trades),
        (image.refusals_archived, image.refusals),
        Portfolios::from_rows(image.positions.into_iter().map(|p| {
            let position = Position {
                shares: p.shares,
                cost: p.cost,
                realized: p.realized,
                bought: p.bought,
                sold: p.sold,
            };
            (p.user, p.name, position)
        })),
        Reports::from_rows(
            image.stock_days.into_iter().map(|d| {
                let tally = StockTally {
                    executions: d.executions,
                    volume: d.volume,
                    bought: d.bought,
                    sold: d.sold,
                    notional: d.notional,
                    open: d.open,
                    high: d.high,
                    low: d.low,
                    close: d.close,
                    refused: d.refused.into_iter().collect(),
                };
                (d.day, d.name, tally)
            }),
            image.user_days,
        ),
    )?;
    for (name, minutes) in image.candles {
        let minutes = minutes
            .into_iter()
            .map(|c| Candle {
                start: c.start,
                traded: Ohlcv {
                    open: Price::from_cents(c.open),
                    high: Price::from_cents(c.high),
                    low: Price::from_cents(c.low),
                    close: Price::from_cents(c.close),
                    volume: c.volume,
                    trades: c.trades,
                },
            })
            .collect();
        book.restore_minutes(&name, minutes)?;
    }
    Ok(book)
}

/// Replaces the snapshot at `path` with `bytes`, atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    file::replace_atomically(path, |out| out.write_all(bytes))
}
