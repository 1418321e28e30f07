//! A replica's book, its snapshot file and its archive: the book advances through committed
//! log entries, sending older trades and closed orders to the archive, and every
//! `snapshot_every` entries it is written to disk, so that a restart loads the snapshot and
//! applies only what follows it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::archive::{self, Archive, Counts};
use crate::book::InMemory;
use crate::book::{Book, LimitOrder};
use crate::error::OrderError;
use crate::feed::Feed;
use crate::log::OrderLog;
use crate::snapshot;
use stocknet_common::Order;

/// Entries applied between two snapshots, unless configured otherwise.
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// Trades and limit orders kept in memory, unless configured otherwise: the newest, which the
/// streams and most reads want (open orders are kept whatever their age).
pub const TRADES_IN_MEMORY: usize = 100_000;
pub const ORDERS_IN_MEMORY: usize = 100_000;

/// How a replica keeps its book.
#[derive(Debug, Clone, Copy)]
pub struct BookSettings {
    /// Entries applied between two snapshots.
    pub snapshot_every: u64,
    /// The newest trades and limit orders kept in memory; older ones are read from the
    /// archive.
    pub in_memory: InMemory,
}

impl Default for BookSettings {
    fn default() -> Self {
        Self {
            snapshot_every: SNAPSHOT_EVERY,
            in_memory: InMemory {
                trades: TRADES_IN_MEMORY,
                orders: ORDERS_IN_MEMORY,
            },
        }
    }
}

/// Most entries read from the log at once while advancing.
const READ_BATCH: usize = 10_000;

/// The book as a snapshot's bytes, the last line it holds, and how many archived records it
/// continues: with those records, what another replica installs.
pub struct BookImage {
    pub bytes: Vec<u8>,
    pub line: u64,
    pub archived: Counts,
}

pub struct BookStore {
    book: Mutex<Book>,
    /// The events of the entries applied lately, for frontends' streams.
    feed: Feed,
    path: PathBuf,
    archive: Arc<Archive>,
    snapshot_every: u64,
    /// One snapshot written at a time.
    writing: Mutex<()>,
    /// Set (under the book's lock) when an apply stopped part way: the book may hold an entry
    /// decided otherwise than on every other replica, so it answers nothing more until the
    /// process restarts and applies it again from its log.
    stopped: AtomicBool,
}

impl BookStore {
    /// Loads the snapshot at `path` if there is a usable one: readable, not past the end of
    /// the log it must continue from (`log_last`), and continuing what `archive` holds.
    /// Anything else starts an empty book that the log rebuilds; a snapshot is never needed
    /// for correctness. Older records than `settings` keep in memory go to `archive`.
    pub fn open(path: PathBuf, archive: Archive, settings: BookSettings, log_last: u64) -> Self {
        let held = archive.held().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            Counts::default()
        });
        let continues = |book: &Book| held.covers(&book.archived());
        let book = match std::fs::read(&path) {
            Ok(bytes) => match snapshot::decode(&bytes) {
                Ok(book) if book.applied() <= log_last && continues(&book) => {
                    tracing::info!(applied = book.applied(), "book loaded from its snapshot");
                    book
                }
                Ok(book) if book.applied() <= log_last => {
                    tracing::warn!(
                        path = %path.display(),
                        archived = ?book.archived(),
                        archive = archive.describe(),
                        ?held,
                        "book snapshot continues records the archive lacks; rebuilding from the log"
                    );
                    Book::default()
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
        // A snapshot passed over goes: the book rebuilt from the log writes the archive's
        // records again, and a later start must not load the old snapshot over them.
        if book.applied() == 0 {
            if let Err(e) = stocknet_common::file::remove_durably(&path) {
                tracing::warn!(path = %path.display(), "book snapshot not removed: {e}");
            }
        }
        let archive = Arc::new(archive);
        let book = book.with_archive(archive.clone(), settings.in_memory);
        Self {
            feed: Feed::new(book.applied()),
            book: Mutex::new(book),
            path,
            archive,
            snapshot_every: settings.snapshot_every.max(1),
            writing: Mutex::new(()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Runs `read` on the book; an error if it needed an archived record that could not be
    /// read, since its answer would then not be true. Archived records the page cache lacks
    /// are read with the book's lock let go (`archive.rs`), and `read` runs again, as often
    /// as it finds records it has not had warmed: the applier never waits for a reader's disk.
    pub fn read<T>(&self, read: impl Fn(&Book) -> T) -> Result<T, OrderError> {
        let mut warmed = std::collections::HashSet::new();
        loop {
            let (answer, uncached) =
                self.read_locked(|book| archive::cached_only(|| read(book)))?;
            if uncached.is_empty() {
                return Ok(answer);
            }
            // Each run gets further (a bisect, a chain, a listing goes on from the record
            // warmed last) unless the cache lets go of what is warmed as fast as it is read:
            // then read waiting.
            let new = uncached
                .iter()
                .filter(|record| warmed.insert(**record))
                .count();
            if new == 0 {
                return self.read_locked(read);
            }
            self.archive.warm(&uncached);
        }
    }

    /// Runs `read` under the book's lock; an error if an archived record failed meanwhile.
    fn read_locked<T>(&self, read: impl FnOnce(&Book) -> T) -> Result<T, OrderError> {
        // Counted under the book's lock, which every reader and the applier hold while they
        // read the archive: a failure counted meanwhile is this read's.
        let book = self.usable()?;
        let failed = self.archive.failed_reads();
        let answer = read(&book);
        let failed_now = self.archive.failed_reads();
        drop(book);
        match failed_now == failed {
            true => Ok(answer),
            false => Err(OrderError::Corrupt(format!(
                "{}: an archived record could not be read",
                self.archive.describe()
            ))),
        }
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// A page of the order listing ([`Book::orders_page`]: up to `limit` orders below
    /// `before` that `wanted` takes, each as `view` makes it, looking at most at `scanned`
    /// records), read `at_once` records per hold of the book's lock, so that a filter that
    /// matches little does not hold up the applier for the whole scan.
    pub fn orders_page<T>(
        &self,
        before: u64,
        (limit, scanned, at_once): (usize, usize, usize),
        wanted: impl Fn(&LimitOrder) -> bool,
        view: impl Fn(&Book, &LimitOrder) -> T,
    ) -> Result<(Vec<T>, Option<u64>), OrderError> {
        let (mut page, mut before, mut looked) = (Vec::new(), before, 0);
        loop {
            let stretch = at_once.min(scanned - looked);
            let wanted_now = limit - page.len();
            let (views, next) = self.read(|book| {
                let (found, next) = book.orders_page(before, (wanted_now, stretch), &wanted);
                let views: Vec<T> = found.iter().map(|order| view(book, order)).collect();
                (views, next)
            })?;
            let full = views.len() == wanted_now;
            page.extend(views);
            looked += stretch;
            match next {
                Some(next) if !full && looked < scanned => before = next,
                next => return Ok((page, next)),
            }
        }
    }

    /// The book under its lock, unless an apply stopped part way.
    fn usable(&self) -> Result<MutexGuard<'_, Book>, OrderError> {
        let book = self.lock();
        if self.stopped.load(Ordering::Acquire) {
            return Err(OrderError::Corrupt(
                "the book stopped applying part way through an entry: this replica restarts".into(),
            ));
        }
        Ok(book)
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
            self.apply(&entries)?;
        }
    }

    /// Applies `entries`, the committed entries that follow the book's last, and writes a
    /// snapshot when that crosses a multiple of `snapshot_every`.
    pub fn apply(&self, entries: &[Order]) -> Result<(), OrderError> {
        if let Some(image) = self.apply_in_memory(entries)? {
            self.write_snapshot(&image);
        }
        Ok(())
    }

    /// Like [`apply`](Self::apply), but returns the snapshot that is due instead of writing
    /// it, so that an async caller writes it off its threads; memory only. An entry whose
    /// outcome rested on an archived record that could not be read is an error: the book may
    /// have decided it otherwise than every other replica (I8), so this replica must stop and
    /// apply it again from its log when it restarts.
    pub fn apply_in_memory(&self, entries: &[Order]) -> Result<Option<Vec<u8>>, OrderError> {
        let (image, changes) = {
            let mut book = self.usable()?;
            let before = book.applied();
            let failed = self.archive.failed_reads();
            let (mut events, mut updates) = (Vec::new(), Vec::new());
            for entry in entries {
                if entry.number <= book.applied() {
                    continue;
                }
                book.apply(entry);
                if self.archive.failed_reads() != failed {
                    self.stopped.store(true, Ordering::Release);
                    return Err(OrderError::Corrupt(format!(
                        "{}: an archived record could not be read while applying line {}",
                        self.archive.describe(),
                        entry.number
                    )));
                }
                events.extend(book.last_changes(entry));
                updates.extend(book.last_order_updates(entry));
            }
            let due = book.applied() / self.snapshot_every > before / self.snapshot_every;
            // Encoded under the lock (memory only), written after it.
            let image = due.then(|| snapshot::encode(&book));
            (image, (events, updates, book.applied()))
        };
        // Pushed once the book's lock is free: it wakes every poll of the feed (a stream's
        // each), which the lock's other users need not wait for. Only this applier pushes, so
        // entries still reach the feed in order.
        let (events, updates, applied) = changes;
        self.feed.push(events, updates, applied);
        match image {
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(e)) => {
                tracing::warn!("book snapshot not encoded: {e}");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The book as a snapshot's bytes, and the last line it holds.
    pub fn encode(&self) -> Result<(Vec<u8>, u64), OrderError> {
        let book = self.usable()?;
        let bytes = snapshot::encode(&book).map_err(OrderError::Corrupt)?;
        Ok((bytes, book.applied()))
    }

    /// The book as another replica installs it (under the book's lock: memory only).
    pub fn image(&self) -> Result<BookImage, OrderError> {
        let book = self.usable()?;
        Ok(BookImage {
            bytes: snapshot::encode(&book).map_err(OrderError::Corrupt)?,
            line: book.applied(),
            archived: book.archived(),
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Replaces the book with the one `bytes` encode, which must end at line `line`, and the
    /// archive's first records with those `sections` of `source` hold (another replica's
    /// [`image`](Self::image) and records), and keeps the book as this replica's snapshot.
    /// Blocking.
    pub fn install(
        &self,
        bytes: &[u8],
        line: u64,
        (source, sections): (&std::fs::File, [(u64, u64); 3]),
    ) -> Result<(), OrderError> {
        let book = snapshot::decode(bytes).map_err(OrderError::Corrupt)?;
        if book.applied() != line {
            return Err(OrderError::Corrupt(format!(
                "a snapshot of the book through line {} where {line} was expected",
                book.applied()
            )));
        }
        // The snapshot held now continues the archive about to be written over: should this
        // stop part way, a start must not load it over the new records.
        stocknet_common::file::remove_durably(&self.path)
            .map_err(|e| stocknet_common::file::FileError::new(&self.path, e))?;
        self.archive.install(source, sections)?;
        let archived = book.archived();
        if !self.archive.held()?.covers(&archived) {
            return Err(OrderError::Corrupt(format!(
                "the snapshot continues archived records ({archived:?}) which {} lack",
                self.archive.describe()
            )));
        }
        let applied = book.applied();
        let in_memory = self.lock().in_memory();
        *self.lock() = book.with_archive(self.archive.clone(), in_memory);
        self.feed.restart(applied);
        self.write_snapshot(bytes);
        Ok(())
    }

    /// Writes `bytes` as this replica's book snapshot, once the records it does not hold are
    /// durable in the archive. Blocking.
    pub fn write_snapshot(&self, bytes: &[u8]) {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.archive.sync() {
            // A later fsync may succeed over records the kernel dropped: no snapshot may
            // vouch for them, and the next start rebuilds the book and its records.
            let what = self.archive.describe();
            stocknet_common::file::exit_distrusting(&what, &e, &self.path);
        }
        if let Err(e) = snapshot::write(&self.path, bytes) {
            tracing::warn!(path = %self.path.display(), "book snapshot not written: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Line;
    use stocknet_common::wire::Outcome;
    use stocknet_common::{Command, Order, Price, Side};

    fn limit(number: u64, side: Side, cents: u64) -> Order {
        let command = Command::Place {
            side,
            quantity: 2,
            limit: Some(Price::from_cents(cents)),
            options: None,
        };
        crate::book::tests::entry(number, command)
    }

    /// The store of replica 1 in `dir`, keeping `in_memory` trades and orders in memory.
    fn open(dir: &std::path::Path, in_memory: usize, log_last: u64) -> BookStore {
        let archive = Archive::open(dir, 1).unwrap();
        let settings = BookSettings {
            snapshot_every: 3,
            in_memory: InMemory {
                trades: in_memory,
                orders: in_memory,
            },
        };
        BookStore::open(dir.join("book-1.snap"), archive, settings, log_last)
    }

    /// Everything a reader can see of `book`'s orders and trades through entry `last`.
    fn seen(book: &Book, last: u64) -> String {
        let orders: Vec<_> = (1..=last)
            .map(|n| {
                let view = book.order(n).map(|o| book.limit_view(&o));
                (view, book.entry_price(n))
            })
            .collect();
        let trades = book.trades(None, 0, 1000);
        let ids: Vec<_> = (0..=trades.len() as u64 + 1)
            .map(|id| book.trade(id))
            .collect();
        let pages: Vec<_> = (0..4)
            .map(|after| book.trades(Some("A"), after, 2))
            .collect();
        format!(
            "{orders:?} {trades:?} {ids:?} {pages:?} {:?}",
            book.depth("A", 10)
        )
    }

    /// A snapshot passed over at a start is removed: the book rebuilt from the log writes
    /// the archive's records again, which the old snapshot would not continue.
    #[test]
    fn a_snapshot_passed_over_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2, 9);
        let entries: Vec<Order> = (1..=9)
            .map(|n| limit(n, if n % 2 == 0 { Side::Buy } else { Side::Sell }, 100 + n))
            .collect();
        store.apply(&entries).unwrap();
        drop(store);
        let snapshot = dir.path().join("book-1.snap");
        assert!(snapshot.exists(), "one every 3 entries");
        // The log now ends before it (an unreadable last line cut off, say).
        let store = open(dir.path(), 2, 4);
        assert_eq!(store.lock().applied(), 0);
        assert!(!snapshot.exists());
    }

    #[test]
    fn a_restart_loads_the_last_snapshot_and_applies_only_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("orders-1.csv");
        let mut log = OrderLog::open(&log_path).unwrap();
        // Each buy crosses the sell before it: a trade every other entry.
        let entries: Vec<Order> = (1..=40)
            .map(|n| limit(n, if n % 2 == 0 { Side::Buy } else { Side::Sell }, 100 + n))
            .collect();
        let lines: Vec<Line> = entries.iter().cloned().map(Line::alone).collect();
        log.append(&lines).unwrap();
        let log = Mutex::new(log);
        let mut everything = Book::default();
        for entry in &entries {
            everything.apply(entry);
        }
        let store = open(dir.path(), 2, 40);
        store.advance(&log, 29).unwrap();
        let archived = store.lock().archived();
        assert!(
            archived.trades >= 10 && archived.orders >= 20,
            "{archived:?}"
        );
        let expected = store.read(|book| seen(book, 29)).unwrap();
        // Going from 0 to 29 crosses multiples of 3: the book as of 29 is written, and the
        // trades it no longer holds are in the archive.
        let loaded = open(dir.path(), 2, 40);
        assert_eq!(loaded.lock().applied(), 29);
        assert_eq!(loaded.read(|book| seen(book, 29)).unwrap(), expected);
        loaded.advance(&log, 40).unwrap();
        store.advance(&log, 40).unwrap();
        let all = seen(&everything, 40);
        assert_eq!(loaded.read(|book| seen(book, 40)).unwrap(), all);
        assert_eq!(store.read(|book| seen(book, 40)).unwrap(), all);

        // A snapshot past the end of the log (the log was replaced), one that continues trades
        // the archive lacks, or one that is not a snapshot, is not used: the book starts empty
        // and the log rebuilds it, the archive with it.
        drop((store, loaded));
        assert_eq!(open(dir.path(), 2, 28).lock().applied(), 0);
        let archive = dir.path().join("trades-1.bin");
        let bytes = std::fs::read(&archive).unwrap();
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
        let rebuilt = open(dir.path(), 2, 40);
        assert_eq!(rebuilt.lock().applied(), 0);
        rebuilt.advance(&log, 40).unwrap();
        assert_eq!(rebuilt.read(|book| seen(book, 40)).unwrap(), all);
        std::fs::write(dir.path().join("book-1.snap"), b"garbage").unwrap();
        assert_eq!(open(dir.path(), 2, 40).lock().applied(), 0);
    }

    /// A store in `dir` that keeps `in_memory` orders and has applied `count` limit orders,
    /// sells and buys by turns at rising prices: each buy takes the sell before it.
    fn crossed(dir: &std::path::Path, count: u64, in_memory: usize) -> BookStore {
        let entries: Vec<Order> = (1..=count)
            .map(|n| limit(n, if n % 2 == 0 { Side::Buy } else { Side::Sell }, 100 + n))
            .collect();
        let store = open(dir, in_memory, count);
        store.apply(&entries).unwrap();
        store
    }

    #[test]
    fn a_read_that_needs_an_unreadable_archived_trade_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = crossed(dir.path(), 20, 2);
        assert!(store.read(|book| book.trade(1)).unwrap().is_some());
        // The archive loses its records (a disk that returns nothing where they were).
        std::fs::write(dir.path().join("trades-1.bin"), b"").unwrap();
        assert!(store.read(|book| book.trade(1)).is_err());
        assert!(store.read(|book| book.trades(None, 0, 5)).is_err());
        // What is in memory is still answered.
        let in_memory = store.lock().archived().trades + 1;
        assert!(store.read(|book| book.trade(in_memory)).unwrap().is_some());
        assert!(store.read(|book| book.depth("A", 5)).is_ok());
    }

    /// A read that needs archived records the page cache lacks lets the book's lock go to
    /// read them (`archive.rs`) and runs again: the same answer as with them cached, after
    /// more than one run.
    #[test]
    fn a_read_of_uncached_archived_records_runs_again_once_they_are_read_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let store = crossed(dir.path(), 400, 2);
        let archived = store.lock().archived();
        assert!(
            archived.orders > 300 && archived.trades > 150,
            "{archived:?}"
        );
        store.archive().sync().unwrap();
        let everything = |book: &Book| (seen(book, 400), book.order(7), book.order(391));
        let expected = store.read(everything).unwrap();
        assert!(expected.1.is_some() && expected.2.is_some());
        // The kernel may keep a page it was asked to drop (the archive's test says when):
        // evicted again, a few times at most, until a read finds a record missing.
        let mut runs = 0;
        for _ in 0..5 {
            if !crate::archive::tests::evicted(store.archive()) {
                return; // tmpfs: reads never wait there (the archive's own test says so).
            }
            let counted = std::sync::atomic::AtomicUsize::new(0);
            let answer = store
                .read(|book| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    everything(book)
                })
                .unwrap();
            assert_eq!(answer, expected);
            runs = counted.into_inner();
            if runs > 1 {
                break;
            }
        }
        assert!(runs > 1, "no record was read with the lock let go");
    }

    /// A listing read a stretch of records per hold of the book's lock lists, page by page,
    /// what one hold per page lists: every wanted order once, newest first, pages of at most
    /// `limit`, however the stretches fall.
    #[test]
    fn an_order_listing_in_stretches_lists_what_the_listing_in_one_go_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = crossed(dir.path(), 60, 4);
        let number = |_: &Book, order: &LimitOrder| order.number;
        // Every page from the first, following the cursors.
        let follow = |page: &dyn Fn(u64) -> (Vec<u64>, Option<u64>), limit: usize| {
            let (mut listed, mut before) = (Vec::new(), u64::MAX);
            loop {
                let (numbers, next) = page(before);
                assert!(numbers.len() <= limit);
                listed.extend(numbers);
                match next {
                    Some(next) => before = next,
                    None => return listed,
                }
            }
        };
        for wanted in [
            |o: &LimitOrder| o.number.is_multiple_of(7),
            |_: &LimitOrder| true,
        ] {
            let every: Vec<u64> = (1..=60)
                .rev()
                .filter(|n| wanted(&store.lock().order(*n).unwrap()))
                .collect();
            for (limit, scanned) in [(3, 60), (5, 20), (100, 45)] {
                let whole = |before| {
                    let (found, next) = store
                        .read(|book| book.orders_page(before, (limit, scanned), wanted))
                        .unwrap();
                    (found.iter().map(|o| o.number).collect(), next)
                };
                assert_eq!(follow(&whole, limit), every, "{limit} of {scanned}");
                for at_once in [1, 4, 7, 1000] {
                    let budget = (limit, scanned, at_once);
                    let stretches =
                        |before| store.orders_page(before, budget, wanted, number).unwrap();
                    assert_eq!(
                        follow(&stretches, limit),
                        every,
                        "{limit} of {scanned}, {at_once} at once"
                    );
                }
            }
        }
    }

    /// An entry whose outcome rests on an archived record that cannot be read stops the apply:
    /// decided on nothing (a cancel of a closed order refused as "not a limit order" instead of
    /// "not open"), this replica's book would differ from every other's (I8).
    #[test]
    fn an_entry_that_needs_an_unreadable_archived_order_is_an_error_not_applied_silently() {
        let dir = tempfile::tempdir().unwrap();
        let store = crossed(dir.path(), 20, 2);
        assert!(store.lock().archived().orders > 0);
        let cancel = crate::book::tests::entry(21, Command::Cancel { target: 1 });
        // The archive loses its order records.
        std::fs::write(dir.path().join("order-records-1.bin"), b"").unwrap();
        assert!(store.apply(&[cancel]).is_err());
        // Until the process restarts, the half-decided book answers nothing.
        assert!(store.read(|book| book.applied()).is_err());
        assert!(store.image().is_err());
    }

    /// The audit trail of a refused command whose archived refusal cannot be read is an error:
    /// read past the book's check it said "accepted".
    #[test]
    fn an_audit_that_needs_an_unreadable_archived_refusal_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        // Cancels of an order that never was: each refused.
        let entries: Vec<Order> = (1..=20)
            .map(|n| crate::book::tests::entry(n, Command::Cancel { target: 999 }))
            .collect();
        let mut log = OrderLog::open(dir.path().join("orders-1.csv")).unwrap();
        let lines: Vec<Line> = entries.iter().cloned().map(Line::alone).collect();
        log.append(&lines).unwrap();
        let log = Mutex::new(log);
        let store = open(dir.path(), 2, 20);
        store.apply(&entries).unwrap();
        let filter = crate::audit::AuditFilter::default();
        let page = crate::audit::page(&log, &store, &filter, u64::MAX, 50).unwrap();
        assert_eq!(page.records.len(), 20);
        assert!(page.records.iter().all(|r| r.outcome == Outcome::Refused));
        std::fs::write(dir.path().join("refusals-1.bin"), b"").unwrap();
        assert!(crate::audit::page(&log, &store, &filter, u64::MAX, 50).is_err());
    }
}
