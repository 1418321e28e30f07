//! A snapshot as one replica sends it to another that lacks entries the log no longer offers
//! (Raft's InstallSnapshot): the book as of an entry, the archived records the book continues,
//! and the log's lines through that entry. The log is also the audit trail and the store of the
//! idempotency keys, so a replica that installs a snapshot holds the same log as the sender,
//! from line 1, and answers every read and duplicate key as it would have after replaying it.

use serde::{Deserialize, Serialize};

use super::LogStore;
use crate::archive::Records;
use crate::book_store::{BookImage, BookStore};
use crate::error::OrderError;
use crate::log::{parse_copy, OrderLog};

/// First bytes of a transfer; the digit is the format's version.
const MAGIC: &[u8] = b"stocknet snapshot transfer 1\n";

#[derive(Serialize, Deserialize)]
struct Transfer {
    /// The book's snapshot image (`snapshot.rs`), as of its last line.
    image: Vec<u8>,
    /// The archive's records the image continues: trades, orders, refusals
    /// (`Archive::records`).
    records: Records,
    /// The log file's bytes through the image's last line (`OrderLog::copy_through`).
    log: Vec<u8>,
}

/// What replica sends of `book` as applied now and of `log`, and the last line it holds.
/// Blocking.
pub fn assemble(
    book: &BookStore,
    log: &std::sync::Mutex<OrderLog>,
) -> Result<(Vec<u8>, u64), OrderError> {
    let BookImage {
        bytes: image,
        line,
        records,
    } = book.image()?;
    // The lines through the book's last are committed, so no other write changes them.
    let log = log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .copy_through(line)?;
    let transfer = Transfer {
        image,
        records,
        log,
    };
    let mut bytes = MAGIC.to_vec();
    postcard::to_io(&transfer, &mut bytes)
        .map_err(|e| OrderError::Task(format!("a snapshot transfer: {e}")))?;
    Ok((bytes, line))
}

/// Installs `bytes`, which [`assemble`] gave on another replica as of entry `through`: the log
/// first, then the archive and the book, each durable before the next, so that a replica
/// stopped in between opens a log that its book can follow. Blocking.
pub fn install(
    bytes: &[u8],
    book: &BookStore,
    store: &LogStore,
    through: Option<u64>,
) -> Result<(), OrderError> {
    let corrupt = |what: String| OrderError::Corrupt(format!("a snapshot transfer: {what}"));
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not one, or of another version".into()))?;
    let transfer: Transfer = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    let lines = parse_copy(&transfer.log)?;
    let last = lines.last().map(|line| line.entry);
    if last != through {
        return Err(corrupt(format!(
            "its log ends at entry {last:?}, its snapshot at {through:?}"
        )));
    }
    store.install_lines(&lines)?;
    let lines_end = lines.last().map_or(0, |line| line.order.number);
    book.install(&transfer.image, &transfer.records, lines_end)
}
