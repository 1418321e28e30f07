//! The trades that left the book's memory: a file of fixed-size records beside the log
//! (`trades-<id>.bin`), trade `id` at byte `(id - 1) × RECORD`, so that a trade is found by
//! one read and the file needs no index.
//!
//! It is derived state, like the book: each replica writes the records as its book sends
//! trades out of memory, and a replica that replays its log writes the same records again at
//! the same places. The file is fsync'd before each book snapshot, which holds only the trades
//! after the archive's; a snapshot whose trades the file does not reach is not used.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use stocknet_common::{Price, Side};

use crate::book::Matched;
use crate::error::OrderError;

/// Bytes of one trade's record: eight little-endian words (id, entry, price in cents, buy
/// order, sell order, the previous trades of the buy and of the sell order) and the stock's
/// place, the quantity and the taker's side in the ninth.
const RECORD: u64 = 72;

#[derive(Debug)]
pub struct TradeArchive {
    path: PathBuf,
    file: File,
    /// Reads that failed (the file could not be read where a trade must be): a read that
    /// counted one cannot be answered truly.
    failed_reads: AtomicU64,
}

impl TradeArchive {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, OrderError> {
        let path = path.into();
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
            failed_reads: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many trades, from the first, the file holds.
    pub fn count(&self) -> Result<u64, OrderError> {
        let bytes = self
            .file
            .metadata()
            .map_err(|e| OrderError::io(&self.path, e))?
            .len();
        Ok(bytes / RECORD)
    }

    /// Writes `trade` at its place (not durably: see [`sync`](Self::sync)).
    pub(crate) fn write(&self, trade: &Matched) -> Result<(), OrderError> {
        self.file
            .write_all_at(&encode(trade), (trade.id - 1) * RECORD)
            .map_err(|e| OrderError::io(&self.path, e))
    }

    /// Trade `id`, which the book sent here. One the file does not hold (unreadable, past
    /// its end, never written) is logged and counted ([`failed_reads`](Self::failed_reads)).
    pub(crate) fn read(&self, id: u64) -> Option<Matched> {
        let mut bytes = [0; RECORD as usize];
        let read = id
            .checked_sub(1)
            .ok_or_else(|| "no trade has id 0".to_owned())
            .and_then(|index| {
                self.file
                    .read_exact_at(&mut bytes, index * RECORD)
                    .map_err(|e| e.to_string())
            })
            .and_then(|()| {
                decode(&bytes)
                    .filter(|trade| trade.id == id)
                    .ok_or_else(|| "no such record".to_owned())
            });
        read.inspect_err(|e| {
            tracing::error!(path = %self.path.display(), id, "trade archive: {e}");
            self.failed_reads.fetch_add(1, Ordering::Relaxed);
        })
        .ok()
    }

    /// Reads that failed so far: one more after a read means its answer is not true.
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads.load(Ordering::Relaxed)
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<(), OrderError> {
        self.file
            .sync_data()
            .map_err(|e| OrderError::io(&self.path, e))
    }
}

fn encode(trade: &Matched) -> [u8; RECORD as usize] {
    let mut bytes = [0; RECORD as usize];
    let words = [
        trade.id,
        trade.entry,
        trade.price.cents(),
        trade.buy_order,
        trade.sell_order,
        trade.buy_previous,
        trade.sell_previous,
    ];
    for (at, word) in words.into_iter().enumerate() {
        bytes[at * 8..at * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    bytes[56..60].copy_from_slice(&trade.stock.to_le_bytes());
    bytes[60..64].copy_from_slice(&trade.quantity.to_le_bytes());
    bytes[64] = match trade.taker_side {
        Side::Buy => 1,
        Side::Sell => 2,
    };
    bytes
}

/// The trade `bytes` hold; `None` for a record never written (zeros).
fn decode(bytes: &[u8; RECORD as usize]) -> Option<Matched> {
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
    let taker_side = match bytes[64] {
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
        stock: half(56),
        quantity: half(60),
        taker_side,
    })
}

#[cfg(test)]
mod tests {
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
        }
    }

    #[test]
    fn trades_are_read_back_by_id_and_absent_ones_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let archive = TradeArchive::open(dir.path().join("trades-1.bin")).unwrap();
        for id in [1, 2, 3, 5] {
            archive.write(&trade(id)).unwrap();
        }
        archive.sync().unwrap();
        assert_eq!(archive.count().unwrap(), 5);
        for id in [1, 2, 3, 5] {
            assert_eq!(archive.read(id), Some(trade(id)));
        }
        // Never written (a hole), past the end, and the id no trade has: each a failed read.
        assert_eq!(archive.failed_reads(), 0);
        assert_eq!(archive.read(4), None);
        assert_eq!(archive.read(6), None);
        assert_eq!(archive.read(0), None);
        assert_eq!(archive.failed_reads(), 3);

        // Written again at the same place (a replay), and read after a reopen.
        archive.write(&trade(3)).unwrap();
        drop(archive);
        let archive = TradeArchive::open(dir.path().join("trades-1.bin")).unwrap();
        assert_eq!(archive.read(3), Some(trade(3)));
        assert_eq!(archive.count().unwrap(), 5);
    }
}
