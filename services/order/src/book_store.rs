//! A replica's book and its snapshot file: the book advances through committed log entries,
//! and every `snapshot_every` entries it is written to disk, so that a restart loads the
//! snapshot and applies only what follows it.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::book::Book;
use crate::error::OrderError;
use crate::feed::Feed;
use crate::log::OrderLog;
use crate::snapshot;
use stocknet_common::Order;

/// Entries applied between two snapshots, unless configured otherwise.
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// Most entries read from the log at once while advancing.
const READ_BATCH: usize = 10_000;

pub struct BookStore {
    book: Mutex<Book>,
    /// The events of the entries applied lately, for frontends' streams.
    feed: Feed,
    path: PathBuf,
    snapshot_every: u64,
    /// One snapshot written at a time.
    writing: Mutex<()>,
}

impl BookStore {
    /// Loads the snapshot at `path` if there is a usable one: readable, and not past the end
    /// of the log it must continue from (`log_last`). Anything else starts an empty book that
    /// the log rebuilds; a snapshot is never needed for correctness.
    pub fn open(path: PathBuf, snapshot_every: u64, log_last: u64) -> Self {
        let book = match std::fs::read(&path) {
            Ok(bytes) => match snapshot::decode(&bytes) {
                Ok(book) if book.applied() <= log_last => {
                    tracing::info!(applied = book.applied(), "book loaded from its snapshot");
                    book
                }
                Ok(book) => {
                    tracing::warn!(
                        path = %path.display(),
                        applied = book.applied(),
                        log_last,
                        "book snapshot is ahead of the log; rebuilding from the log"
                    );
                    Book::default()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "unusable book snapshot, rebuilding from the log: {e}");
                    Book::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the book snapshot, rebuilding from the log: {e}");
                Book::default()
            }
        };
        Self {
            feed: Feed::new(book.applied()),
            book: Mutex::new(book),
            path,
            snapshot_every: snapshot_every.max(1),
            writing: Mutex::new(()),
        }
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn lock(&self) -> MutexGuard<'_, Book> {
        // The book is changed only by `apply`, which finishes every change it starts.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `log`'s entries after the book's last through `through`, which must all be
    /// committed (the book never takes one back). Blocking: call from `spawn_blocking`.
    pub fn advance(&self, log: &Mutex<OrderLog>, through: u64) -> Result<(), OrderError> {
        loop {
            let applied = self.lock().applied();
            if applied >= through {
                return Ok(());
            }
            let count = usize::try_from(through - applied)
                .unwrap_or(READ_BATCH)
                .min(READ_BATCH);
            let entries = log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .after(applied, count)?;
            if entries.is_empty() {
                return Err(OrderError::Gap { last: applied });
            }
            self.apply(&entries);
        }
    }

    /// Applies `entries`, the committed entries that follow the book's last, and writes a
    /// snapshot when that crosses a multiple of `snapshot_every`.
    pub fn apply(&self, entries: &[Order]) {
        if let Some(image) = self.apply_in_memory(entries) {
            self.write_snapshot(&image);
        }
    }

    /// Like [`apply`](Self::apply), but returns the snapshot that is due instead of writing
    /// it, so that an async caller writes it off its threads; memory only.
    pub fn apply_in_memory(&self, entries: &[Order]) -> Option<Vec<u8>> {
        let image = {
            let mut book = self.lock();
            let before = book.applied();
            let (mut events, mut updates) = (Vec::new(), Vec::new());
            for entry in entries {
                if entry.number <= book.applied() {
                    continue;
                }
                book.apply(entry);
                events.extend(book.last_changes(entry));
                updates.extend(book.last_order_updates(entry));
            }
            self.feed.push(events, updates, book.applied());
            let due = book.applied() / self.snapshot_every > before / self.snapshot_every;
            // Encoded under the lock (memory only), written after it.
            due.then(|| snapshot::encode(&book))
        };
        match image {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(e)) => {
                tracing::warn!("book snapshot not encoded: {e}");
                None
            }
            None => None,
        }
    }

    /// The book as a snapshot's bytes, and the last entry it holds.
    pub fn encode(&self) -> Result<(Vec<u8>, u64), OrderError> {
        let book = self.lock();
        let bytes = snapshot::encode(&book).map_err(OrderError::Corrupt)?;
        Ok((bytes, book.applied()))
    }

    /// Replaces the book with the one `bytes` encode (a snapshot from the leader), and keeps
    /// them as this replica's snapshot.
    pub fn install(&self, bytes: &[u8]) -> Result<(), OrderError> {
        let book = snapshot::decode(bytes).map_err(OrderError::Corrupt)?;
        let applied = book.applied();
        *self.lock() = book;
        self.feed.restart(applied);
        self.write_snapshot(bytes);
        Ok(())
    }

    /// Writes `bytes` as this replica's book snapshot. Blocking.
    pub fn write_snapshot(&self, bytes: &[u8]) {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = snapshot::write(&self.path, bytes) {
            tracing::warn!(path = %self.path.display(), "book snapshot not written: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Line;
    use stocknet_common::{Command, Order, Price, Side, Stamp};

    fn limit(number: u64, side: Side, cents: u64) -> Order {
        Order {
            number,
            term: 1,
            name: "A".into(),
            key: None,
            user: None,
            stamp: Stamp::default(),
            command: Command::Place {
                side,
                quantity: 2,
                limit: Some(Price::from_cents(cents)),
                options: None,
            },
        }
    }

    #[test]
    fn a_restart_loads_the_last_snapshot_and_applies_only_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("orders-1.csv");
        let snap = dir.path().join("book-1.snap");
        let mut log = OrderLog::open(&log_path).unwrap();
        let entries: Vec<Order> = (1..=7)
            .map(|n| limit(n, if n % 2 == 0 { Side::Buy } else { Side::Sell }, 100 + n))
            .collect();
        let lines: Vec<Line> = entries.iter().cloned().map(Line::alone).collect();
        log.append(&lines).unwrap();
        let log = Mutex::new(log);
        let store = BookStore::open(snap.clone(), 3, 7);
        store.advance(&log, 5).unwrap();
        let expected = store.lock().depth("A", 10);
        // Going from 0 to 5 crosses a multiple of 3: the book as of 5 is written.
        let loaded = BookStore::open(snap.clone(), 3, 7);
        assert_eq!(loaded.lock().applied(), 5);
        assert_eq!(loaded.lock().depth("A", 10), expected);
        loaded.advance(&log, 7).unwrap();
        store.advance(&log, 7).unwrap();
        assert_eq!(loaded.lock().depth("A", 10), store.lock().depth("A", 10));
        assert_eq!(
            loaded.lock().trades(None, 0, 10),
            store.lock().trades(None, 0, 10)
        );

        // A snapshot past the end of the log (the log was replaced), or one that is not a
        // snapshot, is not used: the book starts empty and the log rebuilds it.
        assert_eq!(BookStore::open(snap.clone(), 3, 4).lock().applied(), 0);
        std::fs::write(&snap, b"garbage").unwrap();
        assert_eq!(BookStore::open(snap, 3, 7).lock().applied(), 0);
    }
}
