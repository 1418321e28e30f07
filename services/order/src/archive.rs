//! What left the book's memory: two files of fixed-size records beside the log, so that a
//! record is found by one read and neither file needs an index.
//! - `trades-<id>.bin`: trade `id` at record `id - 1` ([`TRADE`] bytes each).
//! - `order-records-<id>.bin`: the limit order at place `p` of the book (the `p`th limit order
//!   of the log) at record `p` ([`ORDER`] bytes each): its number, then its record.
//! - `refusals-<id>.bin`: the `i`th command the book refused at record `i` ([`REFUSAL`] bytes
//!   each): its number, then the refusal.
//!
//! They are derived state, like the book: each replica writes the records as its book sends
//! them out of memory, and a replica that replays its log writes the same records again at
//! the same places. Both are fsync'd before each book snapshot, which holds only what the
//! files do not; a snapshot whose records the files do not reach is not used.
//!
//! Readers read the archive under the book's lock, which the applier needs for every entry.
//! So a read that would wait for the disk does not: within [`cached_only`] a record the page
//! cache lacks is noted instead of read (`preadv2` with `RWF_NOWAIT`), the reader lets the
//! lock go, [`Archive::warm`]s what it noted, and reads again (`book_store.rs`). A bisect
//! over ten million cold records would otherwise hold every commit for two dozen disk reads.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stocknet_common::file::FileFailure;
use stocknet_common::{Price, SelfTrade, Side, TimeInForce};

use crate::book::{Extras, LimitOrder, Matched, Refusal, Removal};
use crate::error::OrderError;

/// Bytes of one trade's record: eight little-endian words (id, entry, price in cents, buy
/// order, sell order, the previous trades of the buy order, of the sell order and of the
/// stock), then the stock's place, the quantity and the taker's side.
const TRADE: u64 = 80;

/// Bytes of one order's record: its number (a little-endian word, so that the book can bisect
/// the file by number), the length of what follows, and its record in postcard.
const ORDER: u64 = 192;

/// Bytes [`Archive::warm`] reads around a record the page cache lacked: the aligned stretch
/// it is in (341 orders' records, 819 trades').
const WARM_AHEAD: u64 = 64 * 1024;

/// Bytes an install copies at a time.
const COPY_CHUNK: usize = 1 << 20;

/// Bytes of one refusal's record: the command's number, the length of what follows, and the
/// refusal in postcard.
const REFUSAL: u64 = 32;

/// How many records, from the first, each file holds (or the book has sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub trades: u64,
    pub orders: u64,
    pub refusals: u64,
}

impl Counts {
    /// Whether every file holds at least what `other` counts.
    pub fn covers(&self, other: &Counts) -> bool {
        self.trades >= other.trades
            && self.orders >= other.orders
            && self.refusals >= other.refusals
    }
}

/// Which of the archive's files a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Trades,
    Orders,
    Refusals,
}

/// A record a read within [`cached_only`] found outside the page cache and did not wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uncached {
    kind: Kind,
    index: u64,
    length: usize,
}

thread_local! {
    /// Set within [`cached_only`]: the records this thread's reads found uncached.
    static UNCACHED: RefCell<Option<Vec<Uncached>>> = const { RefCell::new(None) };
}

/// Runs `read` with this thread's archive reads taking only what the page cache holds: a
/// record the disk would have to give is noted, not waited for, and its read answers nothing
/// (not counted as failed). Returns `read`'s answer, not to be used if any record was noted,
/// and the records noted. Where the kernel cannot tell (no `RWF_NOWAIT`), reads wait.
pub fn cached_only<T>(read: impl FnOnce() -> T) -> (T, Vec<Uncached>) {
    /// Ends the scope however `read` ends, a panic included: what it noted goes back to the
    /// scope around it, if any, whose answer is not to be used either.
    struct Scope(Option<Vec<Uncached>>);
    impl Drop for Scope {
        fn drop(&mut self) {
            UNCACHED.with(|uncached| {
                let mut uncached = uncached.borrow_mut();
                let noted = uncached.take().unwrap_or_default();
                *uncached = self.0.take().map(|mut outer| {
                    outer.extend(noted);
                    outer
                });
            });
        }
    }
    let outer = UNCACHED.with(|uncached| uncached.borrow_mut().replace(Vec::new()));
    let scope = Scope(outer);
    let answer = read();
    let noted = UNCACHED.with(|uncached| uncached.borrow().clone().unwrap_or_default());
    drop(scope);
    (answer, noted)
}

/// The files of replica `id`.
#[derive(Debug)]
pub struct Archive {
    trades: RecordFile,
    orders: RecordFile,
    refusals: RecordFile,
}

impl Archive {
    pub fn open(dir: &Path, id: u32) -> Result<Self, OrderError> {
        Ok(Self {
            trades: RecordFile::open(dir.join(format!("trades-{id}.bin")), TRADE, Kind::Trades)?,
            orders: RecordFile::open(
                dir.join(format!("order-records-{id}.bin")),
                ORDER,
                Kind::Orders,
            )?,
            refusals: RecordFile::open(
                dir.join(format!("refusals-{id}.bin")),
                REFUSAL,
                Kind::Refusals,
            )?,
        })
    }

    /// Reads `uncached`, and the records around each (the [`WARM_AHEAD`] bytes it is in,
    /// where a walk back through a listing or a chain goes next), from the disk into the page
    /// cache, waiting: what a reader does with the book's lock let go. What cannot be read is
    /// left for the read after, which counts it.
    pub fn warm(&self, uncached: &[Uncached]) {
        // Readers waiting on the same record (every bisect starts at the same middle) note it
        // alike: each stretch is read once.
        let stretches: std::collections::BTreeSet<(Kind, u64, u64)> = uncached
            .iter()
            .map(|record| {
                let at = record.index * self.file(record.kind).size;
                let start = at / WARM_AHEAD * WARM_AHEAD;
                let end = (at + record.length as u64).max(start + WARM_AHEAD);
                (record.kind, start, end)
            })
            .collect();
        let mut bytes = Vec::new();
        for (kind, start, end) in stretches {
            bytes.resize(usize::try_from(end - start).unwrap_or(0), 0);
            // Short at the file's end: what is there is read.
            let _ = self.file(kind).file.read_at(&mut bytes, start);
        }
    }

    fn file(&self, kind: Kind) -> &RecordFile {
        match kind {
            Kind::Trades => &self.trades,
            Kind::Orders => &self.orders,
            Kind::Refusals => &self.refusals,
        }
    }

    /// How many records the files hold.
    pub fn held(&self) -> Result<Counts, OrderError> {
        Ok(Counts {
            trades: self.trades.count()?,
            orders: self.orders.count()?,
            refusals: self.refusals.count()?,
        })
    }

    /// Handles on the files as they are now (trades, orders, refusals), each with the length
    /// of its first `counts` records: what a snapshot sent to a replica reads. A trade's or a
    /// refusal's record is never rewritten; an order's is when the book archived it while it
    /// was open (its copy in the book's memory counts until it closes) and rewrites it as it
    /// closes, so a snapshot may carry either version, and the replica that installs it
    /// rewrites it as it closes there too.
    pub fn record_files(&self, counts: &Counts) -> Result<[(File, u64); 3], OrderError> {
        Ok([
            self.trades.open_prefix(counts.trades)?,
            self.orders.open_prefix(counts.orders)?,
            self.refusals.open_prefix(counts.refusals)?,
        ])
    }

    /// Writes the records that `sections` of `source` hold (trades, orders, refusals, each an
    /// offset and a length, as [`record_files`](Self::record_files) gave them) from each
    /// file's first record on, durably.
    pub fn install(&self, source: &File, sections: [(u64, u64); 3]) -> Result<(), OrderError> {
        let [trades, orders, refusals] = sections;
        self.trades.copy_prefix(source, trades)?;
        self.orders.copy_prefix(source, orders)?;
        self.refusals.copy_prefix(source, refusals)?;
        self.sync()
    }

    /// Writes `trade` at its place (not durably: see [`sync`](Self::sync)).
    pub(crate) fn write_trade(&self, trade: &Matched) -> Result<(), OrderError> {
        self.trades.write(trade.id - 1, &encode_trade(trade))
    }

    /// Trade `id`, which the book sent here.
    pub(crate) fn trade(&self, id: u64, stocks: usize) -> Option<Matched> {
        let mut bytes = [0; TRADE as usize];
        self.trades.read(id.checked_sub(1)?, &mut bytes)?;
        // A record that names no stock of the book's `stocks` is as unreadable as a torn one.
        let trade =
            decode_trade(&bytes).filter(|trade| trade.id == id && (trade.stock as usize) < stocks);
        self.trades.found(trade, id)
    }

    /// Writes `order`, at `place` of the book, of the stock at `stock`; `false` if its record
    /// is too long for the file (a long client order id and every extra): then only its
    /// number is written, and the book keeps the record.
    pub(crate) fn write_order(
        &self,
        place: u32,
        stock: u32,
        order: &LimitOrder,
    ) -> Result<bool, OrderError> {
        let mut bytes = [0; ORDER as usize];
        bytes[..8].copy_from_slice(&order.number.to_le_bytes());
        let record = OrderRecord::of(stock, order);
        let whole = match postcard::to_slice(&record, &mut bytes[9..]) {
            Ok(written) => {
                // At most ORDER - 9 bytes, which fits the length byte.
                bytes[8] = written.len() as u8;
                true
            }
            Err(_) => false,
        };
        if !whole {
            bytes[8..].fill(0);
        }
        self.orders.write(u64::from(place), &bytes)?;
        Ok(whole)
    }

    /// The number of the order at `place`, which the book sent here.
    pub(crate) fn order_number(&self, place: u32) -> Option<u64> {
        let mut bytes = [0; 8];
        self.orders.read(u64::from(place), &mut bytes)?;
        let number = u64::from_le_bytes(bytes);
        self.orders.found(Some(number).filter(|&n| n > 0), place)
    }

    /// The order at `place`, whose record the book sent here, with its stock's place; named
    /// by `name` of that place.
    pub(crate) fn order(
        &self,
        place: u32,
        name: impl FnOnce(u32) -> Option<Arc<str>>,
    ) -> Option<LimitOrder> {
        let mut bytes = [0; ORDER as usize];
        self.orders.read(u64::from(place), &mut bytes)?;
        let mut number = [0; 8];
        number.copy_from_slice(&bytes[..8]);
        let length = usize::from(bytes[8]);
        // A length past the record (a corrupt byte) is an unreadable record, not a panic.
        let order = bytes
            .get(9..9 + length)
            .filter(|_| length > 0)
            .and_then(|record| postcard::from_bytes::<OrderRecord>(record).ok())
            .and_then(|record| {
                let name = name(record.stock)?;
                Some(record.into_order(u64::from_le_bytes(number), name))
            });
        self.orders.found(order, place)
    }

    /// Writes the `index`th refusal: the command `number` was refused as `refusal` says.
    pub(crate) fn write_refusal(
        &self,
        index: u64,
        number: u64,
        refusal: &Refusal,
    ) -> Result<(), OrderError> {
        let mut bytes = [0; REFUSAL as usize];
        bytes[..8].copy_from_slice(&number.to_le_bytes());
        let written = postcard::to_slice(refusal, &mut bytes[9..])
            .map_err(|e| OrderError::Corrupt(format!("refusal of {number}: {e}")))?;
        // At most REFUSAL - 9 bytes, which fits the length byte.
        bytes[8] = written.len() as u8;
        self.refusals.write(index, &bytes)
    }

    /// The `index`th refusal, which the book sent here: the command's number and the refusal.
    pub(crate) fn refusal(&self, index: u64) -> Option<(u64, Refusal)> {
        let mut bytes = [0; REFUSAL as usize];
        self.refusals.read(index, &mut bytes)?;
        let mut number = [0; 8];
        number.copy_from_slice(&bytes[..8]);
        let length = usize::from(bytes[8]).min(bytes.len() - 9);
        let refusal = postcard::from_bytes(&bytes[9..9 + length]).ok();
        let found = refusal
            .filter(|_| length > 0)
            .map(|refusal| (u64::from_le_bytes(number), refusal));
        self.refusals.found(found, index)
    }

    /// Reads that failed so far: one more after a read means its answer is not true.
    pub fn failed_reads(&self) -> u64 {
        [&self.trades, &self.orders, &self.refusals]
            .iter()
            .map(|file| file.failed_reads.load(Ordering::Relaxed))
            .sum()
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<(), OrderError> {
        self.trades.sync()?;
        self.orders.sync()?;
        self.refusals.sync()
    }

    /// The files, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} and {}",
            self.trades.path.display(),
            self.orders.path.display(),
            self.refusals.path.display()
        )
    }
}

/// A file of records of `size` bytes, record `i` at byte `i × size`.
#[derive(Debug)]
struct RecordFile {
    path: PathBuf,
    file: File,
    size: u64,
    kind: Kind,
    /// Reads that failed (the file could not give a record the book sent it).
    failed_reads: AtomicU64,
}

impl RecordFile {
    fn open(path: PathBuf, size: u64, kind: Kind) -> Result<Self, OrderError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| OrderError::io(&path, e))?;
        Ok(Self {
            path,
            file,
            size,
            kind,
            failed_reads: AtomicU64::new(0),
        })
    }

    /// How many records, from the first, the file holds.
    fn count(&self) -> Result<u64, OrderError> {
        let bytes = self
            .file
            .metadata()
            .map_err(|e| OrderError::io(&self.path, e))?
            .len();
        Ok(bytes / self.size)
    }

    fn write(&self, index: u64, bytes: &[u8]) -> Result<(), OrderError> {
        self.file
            .write_all_at(bytes, index * self.size)
            .map_err(|e| OrderError::io(&self.path, e))
    }

    /// Copies the whole records `length` bytes of `source` at `offset` hold to the start.
    fn copy_prefix(&self, source: &File, (offset, length): (u64, u64)) -> Result<(), OrderError> {
        if !length.is_multiple_of(self.size) {
            return Err(OrderError::Corrupt(format!(
                "{}: {length} bytes are not whole records of {}",
                self.path.display(),
                self.size
            )));
        }
        let mut chunk = vec![0; COPY_CHUNK];
        let mut done = 0;
        while done < length {
            let part =
                usize::try_from(length - done).map_or(COPY_CHUNK, |left| left.min(COPY_CHUNK));
            source
                .read_exact_at(&mut chunk[..part], offset + done)
                .map_err(|e| OrderError::Corrupt(format!("a snapshot's records: {e}")))?;
            self.file
                .write_all_at(&chunk[..part], done)
                .map_err(|e| OrderError::io(&self.path, e))?;
            done += part as u64;
        }
        Ok(())
    }

    /// A handle on the file as it is now, and the length of its first `count` records.
    fn open_prefix(&self, count: u64) -> Result<(File, u64), OrderError> {
        let io = |e| OrderError::io(&self.path, e);
        let file = File::open(&self.path).map_err(io)?;
        let length = count * self.size;
        if file.metadata().map_err(io)?.len() < length {
            return Err(OrderError::Corrupt(format!(
                "{} holds fewer than the {count} records the book sent it",
                self.path.display()
            )));
        }
        Ok((file, length))
    }

    /// Fills `bytes` from the start of record `index`; `None` (a failed read) if it cannot,
    /// or (noted, not failed) within [`cached_only`] if the page cache lacks it.
    fn read(&self, index: u64, bytes: &mut [u8]) -> Option<()> {
        let offset = index * self.size;
        let cached = UNCACHED.with(|uncached| {
            let mut uncached = uncached.borrow_mut();
            let noted = uncached.as_mut()?;
            let cached = read_cached(&self.file, bytes, offset)?;
            if !cached {
                noted.push(Uncached {
                    kind: self.kind,
                    index,
                    length: bytes.len(),
                });
            }
            Some(cached)
        });
        match cached {
            Some(true) => Some(()),
            Some(false) => None,
            None => {
                let read = self.file.read_exact_at(bytes, offset);
                self.found(read.ok(), index)
            }
        }
    }

    /// `found`, counting and logging a failed read where it is `None`.
    fn found<T>(&self, found: Option<T>, index: impl Into<u64>) -> Option<T> {
        if found.is_none() {
            let index = index.into();
            tracing::error!(path = %self.path.display(), index, "archive record unreadable");
            self.failed_reads.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn sync(&self) -> Result<(), OrderError> {
        self.file
            .sync_data()
            .map_err(|e| OrderError::io(&self.path, e))
    }
}

/// Fills `bytes` from `offset` of `file` if the page cache holds them all: `Some(true)`
/// read, `Some(false)` the disk would have to give some; `None` where the kernel cannot tell,
/// or the read fails otherwise (a waiting read then reports it).
#[cfg(target_os = "linux")]
fn read_cached(file: &File, bytes: &mut [u8], offset: u64) -> Option<bool> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    use std::io::IoSliceMut;
    let mut done = 0;
    while done < bytes.len() {
        let part = &mut [IoSliceMut::new(&mut bytes[done..])];
        match preadv2(file, part, offset + done as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => return None,
            Ok(read) => done += read,
            Err(Errno::AGAIN) => return Some(false),
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(true)
}

/// Elsewhere the kernel cannot tell: reads wait.
#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _bytes: &mut [u8], _offset: u64) -> Option<bool> {
    None
}

fn encode_trade(trade: &Matched) -> [u8; TRADE as usize] {
    let mut bytes = [0; TRADE as usize];
    let words = [
        trade.id,
        trade.entry,
        trade.price.cents(),
        trade.buy_order,
        trade.sell_order,
        trade.buy_previous,
        trade.sell_previous,
        trade.stock_previous,
    ];
    for (at, word) in words.into_iter().enumerate() {
        bytes[at * 8..at * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    bytes[64..68].copy_from_slice(&trade.stock.to_le_bytes());
    bytes[68..72].copy_from_slice(&trade.quantity.to_le_bytes());
    bytes[72] = match trade.taker_side {
        Side::Buy => 1,
        Side::Sell => 2,
    };
    bytes
}

/// The trade `bytes` hold; `None` for a record never written (zeros).
fn decode_trade(bytes: &[u8; TRADE as usize]) -> Option<Matched> {
    let word = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at * 8..at * 8 + 8]);
        u64::from_le_bytes(word)
    };
    let half = |at: usize| {
        let mut half = [0; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(half)
    };
    let taker_side = match bytes[72] {
        1 => Side::Buy,
        2 => Side::Sell,
        _ => return None,
    };
    Some(Matched {
        id: word(0),
        entry: word(1),
        price: Price::from_cents(word(2)),
        buy_order: word(3),
        sell_order: word(4),
        buy_previous: word(5),
        sell_previous: word(6),
        stock_previous: word(7),
        stock: half(64),
        quantity: half(68),
        taker_side,
    })
}

/// A limit order's record on disk (in the archive and in snapshots): its stock by place,
/// prices in cents.
#[derive(Serialize, Deserialize)]
pub(crate) struct OrderRecord<'a> {
    pub stock: u32,
    user: Option<u64>,
    side: Side,
    cents: u64,
    quantity: u32,
    filled: u32,
    removal: Option<Removal>,
    time_in_force: TimeInForce,
    post_only: bool,
    self_trade: SelfTrade,
    market: bool,
    shown: u32,
    pending: bool,
    expires: Option<u64>,
    #[serde(borrow)]
    client_order_id: Option<Cow<'a, str>>,
    display: Option<u32>,
    stop: Option<u64>,
    protection_bps: Option<u32>,
    triggered: Option<u64>,
    last_trade: u64,
    slot: u64,
}

impl<'a> OrderRecord<'a> {
    pub(crate) fn of(stock: u32, order: &'a LimitOrder) -> Self {
        let extras = order.extras.as_deref().cloned().unwrap_or_default();
        Self {
            stock,
            user: order.user,
            side: order.side,
            cents: order.price.cents(),
            quantity: order.quantity,
            filled: order.filled,
            removal: order.removal,
            time_in_force: order.time_in_force,
            post_only: order.post_only,
            self_trade: order.self_trade,
            market: order.market,
            shown: order.shown,
            pending: order.pending,
            expires: extras.expires,
            client_order_id: order.client_order_id().map(Cow::Borrowed),
            display: extras.display,
            stop: extras.stop_price.map(Price::cents),
            protection_bps: extras.protection_bps,
            triggered: extras.triggered,
            last_trade: order.last_trade,
            slot: order.slot,
        }
    }

    pub(crate) fn into_order(self, number: u64, name: Arc<str>) -> LimitOrder {
        LimitOrder {
            number,
            name,
            user: self.user,
            side: self.side,
            price: Price::from_cents(self.cents),
            quantity: self.quantity,
            filled: self.filled,
            removal: self.removal,
            time_in_force: self.time_in_force,
            post_only: self.post_only,
            self_trade: self.self_trade,
            market: self.market,
            shown: self.shown,
            pending: self.pending,
            extras: Extras {
                expires: self.expires,
                client_order_id: self.client_order_id.map(|id| Arc::from(&*id)),
                display: self.display,
                stop_price: self.stop.map(Price::from_cents),
                protection_bps: self.protection_bps,
                triggered: self.triggered,
            }
            .boxed(),
            last_trade: self.last_trade,
            slot: self.slot,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn trade(id: u64) -> Matched {
        Matched {
            id,
            entry: id * 3,
            stock: 7,
            price: Price::from_cents(12_345 + id),
            quantity: 40,
            buy_order: id * 3 - 1,
            sell_order: id * 3 - 2,
            taker_side: if id.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            buy_previous: id - 1,
            sell_previous: 0,
            stock_previous: id / 2,
        }
    }

    fn order(number: u64, client_order_id: Option<&str>) -> LimitOrder {
        LimitOrder {
            number,
            name: "FishCo".into(),
            user: Some(u64::MAX),
            side: Side::Sell,
            price: Price::from_cents(u64::MAX / 3),
            quantity: u32::MAX,
            filled: u32::MAX - 1,
            removal: Some(Removal::Expired),
            time_in_force: TimeInForce::Gtd,
            post_only: true,
            self_trade: SelfTrade::CancelBoth,
            market: true,
            shown: u32::MAX,
            pending: true,
            extras: Extras {
                expires: Some(u64::MAX),
                client_order_id: client_order_id.map(Into::into),
                display: Some(u32::MAX),
                stop_price: Some(Price::from_cents(u64::MAX / 7)),
                protection_bps: Some(u32::MAX),
                triggered: Some(u64::MAX),
            }
            .boxed(),
            last_trade: u64::MAX,
            slot: u64::MAX,
        }
    }

    /// Drops `archive`'s records from the page cache (written and fsync'd, they are clean);
    /// whether the file system let it, as a read of the refusals' file finds (tmpfs keeps its
    /// pages, and there no read waits; a file system without `RWF_NOWAIT` cannot tell). The
    /// probe may start the kernel's readahead of that file: tests read the others.
    /// Asked to drop a page, the kernel may keep one it holds at the moment (a loaded machine
    /// showed it, also after ten asks in a row while a full suite ran), so this asks again for
    /// up to two seconds before it says no.
    #[cfg(target_os = "linux")]
    pub(crate) fn evicted(archive: &Archive) -> bool {
        use rustix::fs::{fadvise, Advice};
        archive.write_refusal(0, 1, &Refusal::NotFound(1)).unwrap();
        archive.sync().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            for file in [&archive.trades, &archive.orders, &archive.refusals] {
                fadvise(&file.file, 0, None, Advice::DontNeed).unwrap();
            }
            let mut first = [0; 8];
            if read_cached(&archive.refusals.file, &mut first, 0) == Some(false) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Within `cached_only`, a record the page cache lacks is noted, not read, and counts as
    /// no failure; warmed, it is read at once. Outside, reads wait as they always did.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_record_the_page_cache_lacks_is_noted_and_read_once_warmed() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 1).unwrap();
        for id in 1..=200 {
            archive.write_trade(&trade(id)).unwrap();
        }
        archive.write_order(0, 0, &order(5, None)).unwrap();
        archive.sync().unwrap();
        let (read, uncached) = cached_only(|| archive.trade(150, 8));
        assert_eq!((read, uncached), (Some(trade(150)), Vec::new()));
        if !evicted(&archive) {
            // tmpfs: nothing to wait for, nothing noted.
            assert_eq!(cached_only(|| archive.trade(150, 8)).1, Vec::new());
            return;
        }
        // The records' own pages may be kept though the refusals' went (see `evicted`):
        // evicted again, a few times at most.
        let mut tries = 1;
        let (read, uncached) = loop {
            let attempt = cached_only(|| (archive.trade(150, 8), archive.order_number(0)));
            if attempt.0 == (None, None) || tries == 5 {
                break attempt;
            }
            tries += 1;
            assert!(evicted(&archive));
        };
        assert_eq!(read, (None, None));
        assert_eq!(uncached.len(), 2, "{uncached:?}");
        assert_eq!(archive.failed_reads(), 0);
        archive.warm(&uncached);
        let (read, uncached) = cached_only(|| (archive.trade(150, 8), archive.order_number(0)));
        assert_eq!((read, uncached), ((Some(trade(150)), Some(5)), Vec::new()));
        assert!(evicted(&archive));
        assert_eq!(archive.trade(150, 8), Some(trade(150)));
        // A scope within a scope: what the inner one notes, the outer one notes too.
        assert!(evicted(&archive));
        let ((inner, noted), outer) = cached_only(|| cached_only(|| archive.order_number(0)));
        assert_eq!((inner, noted.len()), (None, 1));
        assert_eq!(outer, noted);
    }

    #[test]
    fn trades_are_read_back_by_id_and_absent_ones_are_failed_reads() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 1).unwrap();
        for id in [1, 2, 3, 5] {
            archive.write_trade(&trade(id)).unwrap();
        }
        archive.sync().unwrap();
        assert_eq!(archive.held().unwrap().trades, 5);
        for id in [1, 2, 3, 5] {
            assert_eq!(archive.trade(id, 8), Some(trade(id)));
        }
        // Never written (a hole), past the end, and the id no trade has.
        assert_eq!(archive.failed_reads(), 0);
        assert_eq!(archive.trade(4, 8), None);
        assert_eq!(archive.trade(6, 8), None);
        assert_eq!(archive.trade(0, 8), None);
        assert_eq!(archive.failed_reads(), 2, "id 0 is no read at all");

        // Written again at the same place (a replay), and read after a reopen.
        archive.write_trade(&trade(3)).unwrap();
        drop(archive);
        let archive = Archive::open(dir.path(), 1).unwrap();
        assert_eq!(archive.trade(3, 8), Some(trade(3)));
        assert_eq!(archive.held().unwrap().trades, 5);
    }

    #[test]
    fn corrupt_records_are_failed_reads_not_panics() {
        use std::os::unix::fs::FileExt;

        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 1).unwrap();
        archive.write_trade(&trade(1)).unwrap();
        assert!(archive.write_order(0, 9, &order(5, None)).unwrap());
        archive.sync().unwrap();
        // The trade's stock (7) is not one of a book of 7 stocks.
        assert_eq!(archive.trade(1, 7), None);
        assert_eq!(archive.failed_reads(), 1);
        // The order record's length byte says more than the record holds.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("order-records-1.bin"))
            .unwrap();
        file.write_all_at(&[u8::MAX], 8).unwrap();
        let name = |stock| (stock == 9).then(|| Arc::from("FishCo"));
        assert!(archive.order(0, name).is_none());
        assert_eq!(archive.failed_reads(), 2);
    }

    #[test]
    fn refusals_come_back_with_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 1).unwrap();
        let refusals = [
            (7, Refusal::NotOpen(u64::MAX)),
            (
                u64::MAX,
                Refusal::BelowFilled {
                    target: u64::MAX,
                    filled: u32::MAX,
                },
            ),
        ];
        for (index, (number, refusal)) in refusals.iter().enumerate() {
            archive
                .write_refusal(index as u64, *number, refusal)
                .unwrap();
        }
        for (index, expected) in refusals.iter().enumerate() {
            assert_eq!(archive.refusal(index as u64).as_ref(), Some(expected));
        }
        assert_eq!(archive.refusal(2), None);
        assert_eq!(archive.held().unwrap().refusals, 2);
    }

    #[test]
    fn orders_come_back_whole_even_at_every_field_s_largest() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 1).unwrap();
        let name = |stock| (stock == 9).then(|| Arc::from("FishCo"));
        let longest = "x".repeat(64);
        for (place, order) in [(0, order(5, None)), (1, order(u64::MAX, Some(&longest)))] {
            assert!(archive.write_order(place, 9, &order).unwrap());
            assert_eq!(archive.order_number(place), Some(order.number));
            assert_eq!(archive.order(place, name), Some(order));
        }
        // A stock the book does not know is a failed read, as is a place never written.
        assert_eq!(archive.failed_reads(), 0);
        assert_eq!(archive.order(0, |_| None), None);
        assert_eq!(archive.order_number(2), None);
        assert_eq!(archive.failed_reads(), 2);

        // A record too long for the file: its number is written, the record is not.
        let mut long = order(7, Some(&longest));
        long.extras.as_mut().unwrap().client_order_id = Some("y".repeat(200).into());
        assert!(!archive.write_order(2, 9, &long).unwrap());
        assert_eq!(archive.order_number(2), Some(7));
        assert_eq!(archive.order(2, name), None);
    }
}
