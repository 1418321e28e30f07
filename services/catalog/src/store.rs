//! The catalog table: stocks by name, changed only by applying committed orders in
//! transaction order.
//!
//! Persistence is a snapshot plus a journal. The snapshot (`catalog.csv`) is a seed-compatible
//! `name,price,quantity` CSV, preceded (once the catalog has applied anything) by one line
//! `# stocknet applied=N term=T`, rewritten atomically. Each apply appends its trades to the
//! journal (`catalog.wal`), and [`CatalogStore::sync`] makes them durable with one `fdatasync`
//! (about 0.14 ms here, where the atomic rewrite took 0.56); the two are separate so that the
//! service can push its cache invalidations while the disk works. Every [`COMPACT_EVERY`]
//! journal records the snapshot is rewritten and the journal emptied. Replaying the journal is idempotent (trades carry their transaction
//! numbers), so a crash between the two steps of a compaction is harmless, and a torn last
//! journal record was never acknowledged.
//!
//! Trades are answered before their fsync: they are committed entries of the order log,
//! durable on a majority of the order group, and the catalog's table is a function of them.
//! Written pages outlive a killed process; only a power loss (a new boot of the machine,
//! which the kernel names) can take unsynced trades away, and a catalog that finds itself in
//! a new boot stays [`behind`](CatalogStore::is_behind) until a leader has brought it to where
//! the leader's book stands. Where the kernel names no boot, trades wait for their fsync.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use stocknet_common::file::FileFailure;
use stocknet_common::wire::{is_term_jump, ApplyOutcome, ApplyRequest, CatalogTrade, Snapshot};
use stocknet_common::{catalog_file, file, Price, Stock};

use crate::error::CatalogError;

/// Journal records between snapshot rewrites.
pub const COMPACT_EVERY: usize = 10_000;

/// While applies come, the longest an apply's journal lines that change no stock stay
/// unsynced: they need no fsync of their own, and a catalog whose machine fails loses only
/// its position through them (the leader sends them again). The lines of the last applies
/// before a pause wait for the next apply, or for the kernel's writeback.
pub const QUIET_SYNC_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Table {
    stocks: BTreeMap<String, Stock>,
    /// Highest transaction number whose trade is reflected in `stocks`.
    applied: u64,
    /// Highest leader term seen; older leaders are refused.
    term: u64,
    /// Whether trades it acknowledged may be missing (a power loss since): lookups wait until
    /// a leader brings it to where its book stands.
    behind: bool,
}

#[derive(Debug)]
pub struct CatalogStore {
    path: PathBuf,
    /// The kernel's name for this boot of the machine, kept in [`kernel_boot_path`] once the
    /// catalog holds every trade it acknowledged.
    boot: Option<String>,
    table: RwLock<Table>,
    /// Locked after the table's lock when both are held.
    journal: Mutex<Journal>,
}

/// The applies since the last snapshot, one CSV record each: `term,T` when a new leader
/// term is accepted, `trade,N,DELTA,NAME[,PRICE]` for entry number N (PRICE when it traded
/// in the book, which makes it the stock's price).
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    /// Shared with [`CatalogStore::sync`], which fsyncs without holding the journal.
    file: Arc<File>,
    len: u64,
    records: usize,
    /// Through where the file must be durable before an apply is answered: its last term
    /// record, and where the kernel names no boot its last trade that changes a stock.
    must_sync: u64,
    /// Whether a trade that changes a stock must be durable before it is answered: where the
    /// kernel names no boot, a catalog back from a power loss could not tell what it lost.
    sync_trades: bool,
    /// Through where the last fsync made it durable, and when that fsync ended.
    synced: u64,
    synced_at: Instant,
    /// Counts the times it was emptied: a sync that began before is not one of this file.
    generation: u64,
}

const MARK_PREFIX: &str = "# stocknet";

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: ApplyOutcome,
    /// Whether it brought a catalog [`behind`](CatalogStore::is_behind) to where the leader's
    /// book stands: its stocks may be shown again.
    pub caught_up: bool,
}

/// Where the store at `path` (or its journal) keeps the boot in which it last held every trade
/// it acknowledged.
fn kernel_boot_path(path: &Path) -> PathBuf {
    path.with_extension("kernel-boot")
}

/// What the boot file says after a failed fsync: no boot is named so.
const FSYNC_FAILED: &str = "fsync-failed";

/// Makes the journal `file` at `path` durable, or ends the process (exit 70, as
/// [`file::sync_data_or_exit`]) once [`note_failed_fsync`] has run: the kernel may have dropped
/// the pages the fsync did not write, trades already acknowledged among them.
fn sync_journal_or_exit(file: &File, path: &Path) {
    if let Err(e) = file.sync_data() {
        note_failed_fsync(path);
        tracing::error!(path = %path.display(), "fsync failed, exiting to recover: {e}");
        std::process::exit(70);
    }
}

/// Notes beside the journal at `path` that acknowledged trades may be lost, so that the next
/// start, in this same boot, is behind as after a power loss. (Not by removing the boot file:
/// without one a start counts as the first.)
fn note_failed_fsync(path: &Path) {
    let boot_path = kernel_boot_path(path);
    let noted = file::replace_atomically(&boot_path, |f| writeln!(f, "{FSYNC_FAILED}"));
    if let Err(e) = noted {
        tracing::error!(path = %boot_path.display(), "could not note a failed fsync: {e}");
    }
}

impl CatalogStore {
    /// Opens the snapshot at `path` and replays its journal beside it; if there is no
    /// snapshot yet, seeds it from `initial` (CSV text).
    pub fn open(path: impl Into<PathBuf>, initial: &str) -> Result<Self, CatalogError> {
        Self::open_in_boot(path, initial, file::kernel_boot_id())
    }

    /// [`open`](Self::open) in the machine's boot named `boot`.
    pub fn open_in_boot(
        path: impl Into<PathBuf>,
        initial: &str,
        boot: Option<String>,
    ) -> Result<Self, CatalogError> {
        let path = path.into();
        let mut table = if path.exists() {
            let file = File::open(&path).map_err(|e| CatalogError::io(&path, e))?;
            parse(BufReader::new(file), Names::AsSaved).map_err(|e| e.in_file(&path))?
        } else {
            let table = parse(initial.as_bytes(), Names::Addressable)?;
            write_atomically(&path, &table)?;
            table
        };
        let mut journal = Journal::open(path.with_extension("wal"), boot.is_none())?;
        journal
            .replay(&mut table)
            .map_err(|e| e.in_file(&journal.path))?;
        if journal.records > 0 {
            write_atomically(&path, &table)?;
            journal.clear()?;
        }
        // Written in another boot (no file: a first start, or a version that synced every
        // trade before answering it).
        let boot_path = kernel_boot_path(&path);
        let recorded = match std::fs::read_to_string(&boot_path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CatalogError::io(&boot_path, e)),
        };
        table.behind = recorded.is_some() && recorded != boot;
        let store = Self {
            path,
            boot,
            table: RwLock::new(table),
            journal: Mutex::new(journal),
        };
        if store.is_behind() {
            tracing::warn!(
                applied = store.position().0,
                "the machine restarted since the catalog last wrote: trades it acknowledged may \
                 be lost, so lookups wait until the order group's leader catches it up"
            );
        } else if recorded != store.boot {
            // Before any trade is answered unsynced in this boot.
            store.record_boot()?;
        }
        Ok(store)
    }

    /// Whether trades it acknowledged may be missing since a power loss, until a leader
    /// catches it up: its stocks must not be shown.
    pub fn is_behind(&self) -> bool {
        self.read().behind
    }

    /// Notes that the catalog holds every trade it acknowledged in this boot.
    fn record_boot(&self) -> Result<(), CatalogError> {
        let path = kernel_boot_path(&self.path);
        match &self.boot {
            Some(boot) => file::replace_atomically(&path, |file| writeln!(file, "{boot}")),
            None => file::remove_durably(&path),
        }
        .map_err(|e| CatalogError::io(&path, e))
    }

    /// The stock `name` as the table holds it, shown or not ([`lookup`](Self::lookup) is what
    /// clients see).
    pub fn get(&self, name: &str) -> Option<Stock> {
        self.read().stocks.get(name).cloned()
    }

    /// The stock `name` as a lookup shows it: none while the catalog is behind.
    pub fn lookup(&self, name: &str) -> Result<Stock, CatalogError> {
        let table = self.shown()?;
        let stock = table.stocks.get(name).cloned();
        stock.ok_or_else(|| CatalogError::StockNotFound(name.to_owned()))
    }

    /// The named stocks that exist, and the last transaction applied to them, read together;
    /// `None` while the catalog is behind (they may be older than stocks shown before).
    pub fn stocks_as_of(&self, names: &[String]) -> Option<(u64, Vec<Stock>)> {
        let table = self.shown().ok()?;
        let stocks = names.iter().filter_map(|name| table.stocks.get(name));
        Some((table.applied, stocks.cloned().collect()))
    }

    /// Up to `limit` stocks in name order after the name `after`, whose names contain
    /// `search` (ignoring case; empty matches all), and whether more follow; none while the
    /// catalog is behind.
    pub fn list(
        &self,
        search: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Stock>, bool), CatalogError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let lowercase = search.to_lowercase();
        let table = self.shown()?;
        let start = after.map_or(Unbounded, Excluded);
        let mut matches = table
            .stocks
            .range::<str, _>((start, Unbounded))
            .map(|(_, stock)| stock)
            .filter(|stock| contains_ignoring_case(&stock.name, search, &lowercase));
        let page: Vec<Stock> = matches.by_ref().take(limit).cloned().collect();
        let more = matches.next().is_some();
        Ok((page, more))
    }

    /// The table, if its stocks may be shown: not while the catalog is behind.
    fn shown(&self) -> Result<std::sync::RwLockReadGuard<'_, Table>, CatalogError> {
        let table = self.read();
        if table.behind {
            return Err(CatalogError::Behind);
        }
        Ok(table)
    }

    /// The term of the last leader that applied here.
    pub fn term(&self) -> u64 {
        self.read().term
    }

    /// The last trade applied, and the term of the last leader that applied here: what a
    /// probe asks for several times a second per frontend, without a copy of every stock.
    pub fn position(&self) -> (u64, u64) {
        let table = self.read();
        (table.applied, table.term)
    }

    pub fn snapshot(&self) -> Snapshot {
        let table = self.read();
        Snapshot {
            applied: table.applied,
            term: table.term,
            stocks: table.stocks.values().cloned().collect(),
            boot: 0,
            behind: table.behind,
        }
    }

    /// Applies `request` all-or-nothing: trades already applied are skipped (so a retry is
    /// harmless), a gap is refused with the current position, and no quantity may go negative.
    /// The trades are in the journal's file and visible to lookups when this returns, durable
    /// after [`sync`](Self::sync), which [`needs_sync`](Self::needs_sync) says when to wait
    /// for. Trades are committed orders, so a lookup that sees one before it is durable sees
    /// no dirty read: if the catalog's machine fails first, the leader applies them again.
    pub fn apply(&self, request: &ApplyRequest) -> Result<Applied, CatalogError> {
        let mut table = self.write();
        let outcome = self.apply_to(&mut table, request)?;
        let caught_up = table.behind
            && request
                .leader_applied
                .is_some_and(|through| outcome.applied >= through);
        if caught_up {
            // (Not writing it keeps the catalog behind: the next round tries again.)
            match self.record_boot() {
                Ok(()) => {
                    table.behind = false;
                    tracing::info!(
                        applied = outcome.applied,
                        "the order group's leader caught the catalog up: lookups are answered"
                    );
                }
                Err(e) => tracing::warn!("the catalog caught up and could not note it: {e}"),
            }
        }
        Ok(Applied {
            outcome,
            caught_up: caught_up && !table.behind,
        })
    }

    fn apply_to(
        &self,
        table: &mut Table,
        request: &ApplyRequest,
    ) -> Result<ApplyOutcome, CatalogError> {
        if is_term_jump(table.term, request.term) {
            tracing::warn!(
                term = request.term,
                current = table.term,
                "refused a term no election produces"
            );
            return Err(CatalogError::TermJump {
                term: request.term,
                current: table.term,
            });
        }
        if request.term < table.term {
            return Err(CatalogError::StaleTerm {
                term: request.term,
                current: table.term,
            });
        }
        let mut applied = table.applied;
        let mut staged: HashMap<&str, (u64, Price)> = HashMap::new();
        for trade in &request.trades {
            if trade.number <= applied {
                continue;
            }
            if trade.number != applied + 1 {
                return Err(CatalogError::Gap {
                    applied,
                    next: trade.number,
                });
            }
            if trade.is_group_entry() {
                applied = trade.number;
                continue;
            }
            let (quantity, price) = match staged.get(trade.name.as_str()) {
                Some(current) => *current,
                None => {
                    let stock = table
                        .stocks
                        .get(&trade.name)
                        .ok_or_else(|| CatalogError::StockNotFound(trade.name.clone()))?;
                    (stock.quantity, stock.price)
                }
            };
            let quantity = quantity
                .checked_add_signed(trade.delta)
                .ok_or(CatalogError::InsufficientQuantity)?;
            staged.insert(&trade.name, (quantity, trade.price.unwrap_or(price)));
            applied = trade.number;
        }
        if applied == table.applied && request.term == table.term {
            return Ok(ApplyOutcome {
                applied,
                changed: Vec::new(),
            });
        }
        let mut journal = lock(&self.journal);
        let new_trades = request.trades.iter().filter(|t| t.number > table.applied);
        let term = (request.term != table.term).then_some(request.term);
        journal.append(term, new_trades)?;
        table.term = request.term;
        table.applied = applied;
        for (name, (quantity, price)) in &staged {
            if let Some(stock) = table.stocks.get_mut(*name) {
                stock.quantity = *quantity;
                stock.price = *price;
            }
        }
        let mut changed: Vec<String> = staged.into_keys().map(str::to_owned).collect();
        changed.sort();
        Ok(ApplyOutcome { applied, changed })
    }

    /// Makes every apply so far durable (one `fdatasync` of the journal; a failure exits the
    /// process, see [`file::sync_data_or_exit`]), and rewrites the snapshot once the journal
    /// holds [`COMPACT_EVERY`] records. Blocking: call from `spawn_blocking`.
    pub fn sync(&self) {
        let (file, path, len, generation) = {
            let journal = lock(&self.journal);
            let file = journal.file.clone();
            (file, journal.path.clone(), journal.len, journal.generation)
        };
        // Without the journal's lock: applies go on meanwhile, and the next sync covers them.
        sync_journal_or_exit(&file, &path);
        let mut journal = lock(&self.journal);
        if journal.generation == generation {
            journal.synced = journal.synced.max(len);
            journal.synced_at = Instant::now();
        }
        if journal.records >= COMPACT_EVERY {
            drop(journal);
            self.compact();
        }
    }

    /// Whether an apply answered now needs a [`sync`](Self::sync): something it must not answer
    /// before is not durable yet (a term record, or where the kernel names no boot a trade that
    /// changes a stock; also one that a sync still running covers), or the journal is due to
    /// be compacted (a long run of entries would grow it without end), or lines wait for longer
    /// than [`QUIET_SYNC_AFTER`].
    pub fn needs_sync(&self, now: Instant) -> bool {
        let journal = lock(&self.journal);
        journal.synced < journal.must_sync
            || journal.records >= COMPACT_EVERY
            || (journal.synced < journal.len
                && now.saturating_duration_since(journal.synced_at) >= QUIET_SYNC_AFTER)
    }

    /// Sets the leader term the catalog has seen to `term`: how an operator recovers a catalog
    /// that accepted a bogus term. The catalog service must be stopped.
    pub fn reset_term(&self, term: u64) -> Result<(), CatalogError> {
        let mut table = self.write();
        let mut journal = lock(&self.journal);
        // The journal into the snapshot first: its term records would otherwise raise the term
        // again at the next start, were this stopped between the two steps.
        write_atomically(&self.path, &table)?;
        journal.clear()?;
        let reset = Table {
            term,
            ..table.clone()
        };
        write_atomically(&self.path, &reset)?;
        *table = reset;
        Ok(())
    }

    fn compact(&self) {
        // The table's read lock keeps applies out between the snapshot and emptying the journal.
        let table = self.read();
        let mut journal = lock(&self.journal);
        if journal.records < COMPACT_EVERY {
            return; // another sync compacted meanwhile
        }
        // The applies are durable in the journal already; a failed compaction is retried at the
        // next sync and never fails an apply.
        if let Err(e) = write_atomically(&self.path, &table).and_then(|()| journal.clear()) {
            tracing::warn!("catalog snapshot failed, keeping the journal: {e}");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-changed (nothing can
        // panic between the first and last change to it), so a poisoned lock is consistent.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Journal {
    fn open(path: PathBuf, sync_trades: bool) -> Result<Self, CatalogError> {
        let file = file::open_append(&path).map_err(|e| CatalogError::io(&path, e))?;
        // The journal may be new: its name must be on disk before an apply in it is answered.
        file::sync_dir(&path).map_err(|e| CatalogError::io(&path, e))?;
        Ok(Self {
            path,
            file: Arc::new(file),
            len: 0,
            records: 0,
            must_sync: 0,
            sync_trades,
            synced: 0,
            synced_at: Instant::now(),
            generation: 0,
        })
    }

    /// Applies every complete record to `table`, cutting off a torn last one.
    fn replay(&mut self, table: &mut Table) -> Result<(), CatalogError> {
        let io = |e| CatalogError::io(&self.path, e);
        let mut text = Vec::new();
        (&*self.file).read_to_end(&mut text).map_err(io)?;
        // What follows the last newline is an append that never finished.
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&text[..complete]);
        let mut record = csv::StringRecord::new();
        let mut good = 0;
        loop {
            let line = reader.position().line();
            let replayed = match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => replay_record(table, &record),
                Err(e) => Err(e.to_string()),
            };
            match replayed {
                Ok(()) => {
                    good = reader.position().byte();
                    self.records += 1;
                }
                Err(_) if reader.position().byte() as usize >= complete => break,
                Err(e) => return Err(CatalogError::Corrupt(format!("line {line}: {e}"))),
            }
        }
        if good < text.len() as u64 {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = text.len() as u64 - good,
                "truncating a torn last record of the catalog journal"
            );
            self.file.set_len(good).map_err(io)?;
        }
        self.len = good;
        Ok(())
    }

    /// Appends a term change and trades (durable after the next fsync); on failure nothing of
    /// them remains.
    fn append<'a>(
        &mut self,
        term: Option<u64>,
        trades: impl Iterator<Item = &'a CatalogTrade>,
    ) -> Result<(), CatalogError> {
        let corrupt = |e: &dyn std::fmt::Display| CatalogError::Corrupt(e.to_string());
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_writer(Vec::new());
        let (mut records, mut must_sync) = (0, term.is_some());
        if let Some(term) = term {
            writer
                .write_record(["term", &term.to_string()])
                .map_err(|e| corrupt(&e))?;
            records += 1;
        }
        for trade in trades {
            must_sync |= self.sync_trades && trade.changes_stock();
            let (number, delta) = (trade.number.to_string(), trade.delta.to_string());
            let mut record = vec!["trade", &number, &delta, &trade.name];
            let price = trade.price.map(|p| p.to_string());
            record.extend(price.as_deref());
            writer.write_record(record).map_err(|e| corrupt(&e))?;
            records += 1;
        }
        let text = writer.into_inner().map_err(|e| corrupt(&e))?;
        let io = |e| CatalogError::io(&self.path, e);
        if let Err(e) = (&*self.file).write_all(&text) {
            if let Err(cut) = self.file.set_len(self.len) {
                // A start cuts a torn last record off; an append after it would not be.
                tracing::error!(path = %self.path.display(), "could not cut a failed write off ({cut}), exiting to recover");
                std::process::exit(70);
            }
            return Err(io(e));
        }
        self.len += text.len() as u64;
        self.records += records;
        if must_sync {
            self.must_sync = self.len;
        }
        Ok(())
    }

    /// Empties the journal once the snapshot holds everything in it.
    fn clear(&mut self) -> Result<(), CatalogError> {
        let io = |e| CatalogError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.len = 0;
        self.records = 0;
        (self.must_sync, self.synced, self.generation) = (0, 0, self.generation + 1);
        // A failed fsync is never retried: what it left unwritten is unknown.
        sync_journal_or_exit(&self.file, &self.path);
        Ok(())
    }
}

/// Replays one journal record; trades the table already holds are skipped.
fn replay_record(table: &mut Table, record: &csv::StringRecord) -> Result<(), String> {
    let field = |i: usize| record.get(i).ok_or(format!("missing field {i}"));
    let number = |i: usize| -> Result<u64, String> {
        field(i)?.parse().map_err(|e| format!("field {i}: {e}"))
    };
    match field(0)? {
        "term" if record.len() == 2 => {
            table.term = table.term.max(number(1)?);
            Ok(())
        }
        "trade" if record.len() == 4 || record.len() == 5 => {
            let trade = number(1)?;
            if trade <= table.applied {
                return Ok(());
            }
            if trade != table.applied + 1 {
                return Err(format!("trade {trade} follows {}", table.applied));
            }
            if field(3)?.is_empty() {
                // The order group's own entry: it changes no stock.
                table.applied = trade;
                return Ok(());
            }
            let delta: i64 = field(2)?.parse().map_err(|e| format!("delta: {e}"))?;
            let stock = table
                .stocks
                .get_mut(field(3)?)
                .ok_or(format!("unknown stock {:?}", field(3)?))?;
            stock.quantity = stock
                .quantity
                .checked_add_signed(delta)
                .ok_or(format!("trade {trade} overdraws {}", stock.name))?;
            if let Some(price) = record.get(4) {
                stock.price = price.parse().map_err(|e| format!("price: {e}"))?;
            }
            table.applied = trade;
            Ok(())
        }
        _ => Err("expected a term or a trade record".into()),
    }
}

/// Whether `name` contains `search` (whose lowercase is `lowercase`), ignoring case. ASCII
/// searches compare bytes in place: a search scans every name, and lowercasing each one
/// allocated (a search of 10,000 names through the frontend: median 1.14 ms, 0.57 without).
fn contains_ignoring_case(name: &str, search: &str, lowercase: &str) -> bool {
    if search.is_empty() {
        return true;
    }
    if search.is_ascii() {
        return name
            .as_bytes()
            .windows(search.len())
            .any(|window| window.eq_ignore_ascii_case(search.as_bytes()));
    }
    name.to_lowercase().contains(lowercase)
}

fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    // No panic can come between the journal's file and its counters changing together.
    journal.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which stock names a table may hold: a new catalog's only those the API can address; a saved
/// one also those it held before names were checked.
#[derive(Clone, Copy)]
enum Names {
    Addressable,
    AsSaved,
}

fn parse(reader: impl BufRead, names: Names) -> Result<Table, CatalogError> {
    let mut lines = reader.lines();
    let mut body = String::new();
    let (mut applied, mut term) = (0, 0);
    if let Some(first) = lines.next() {
        let first = first.map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        if let Some(mark) = first.strip_prefix(MARK_PREFIX) {
            (applied, term) = parse_mark(mark)?;
            // A blank line in its place (the parser skips it) keeps line numbers the file's.
            body.push('\n');
        } else {
            body.push_str(&first);
            body.push('\n');
        }
    }
    for line in lines {
        body.push_str(&line.map_err(|e| CatalogError::Corrupt(e.to_string()))?);
        body.push('\n');
    }
    let parsed = match names {
        Names::Addressable => catalog_file::parse(&body),
        Names::AsSaved => catalog_file::parse_saved(&body),
    };
    let stocks = parsed.map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    Ok(Table {
        stocks,
        applied,
        term,
        behind: false,
    })
}

fn parse_mark(mark: &str) -> Result<(u64, u64), CatalogError> {
    let (mut applied, mut term) = (None, None);
    for field in mark.split_whitespace() {
        let parsed = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|e| CatalogError::Corrupt(format!("mark {field}: {e}")))
        };
        if let Some(value) = field.strip_prefix("applied=") {
            applied = Some(parsed(value)?);
        } else if let Some(value) = field.strip_prefix("term=") {
            term = Some(parsed(value)?);
        }
    }
    match (applied, term) {
        (Some(applied), Some(term)) => Ok((applied, term)),
        _ => Err(CatalogError::Corrupt(format!("bad mark line: {mark}"))),
    }
}

/// Writes the snapshot of `table` to `path` atomically ([`file::replace_atomically`]).
fn write_atomically(path: &Path, table: &Table) -> Result<(), CatalogError> {
    let mut text = format!(
        "{MARK_PREFIX} applied={} term={}\n",
        table.applied, table.term
    );
    let mut writer = csv::Writer::from_writer(Vec::new());
    for stock in table.stocks.values() {
        writer
            .serialize(stock)
            .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    }
    let rows = writer
        .into_inner()
        .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    text.push_str(&String::from_utf8_lossy(&rows));

    file::replace_atomically(path, |file| file.write_all(text.as_bytes()))
        .map_err(|e| CatalogError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const INITIAL: &str = "name,price,quantity\nGameStart,15.99,100\nFishCo,9.5,100\n";

    fn trade(number: u64, name: &str, delta: i64) -> CatalogTrade {
        CatalogTrade {
            number,
            name: name.into(),
            delta,
            price: None,
            request_id: None,
        }
    }

    fn apply(
        store: &CatalogStore,
        term: u64,
        trades: Vec<CatalogTrade>,
    ) -> Result<ApplyOutcome, CatalogError> {
        let outcome = store.apply(&request(term, trades, None))?.outcome;
        store.sync();
        Ok(outcome)
    }

    fn request(term: u64, trades: Vec<CatalogTrade>, leader_applied: Option<u64>) -> ApplyRequest {
        ApplyRequest {
            term,
            trades,
            leader_applied,
        }
    }

    /// An apply needs a sync of its own while a term record is not durable, and a trade that
    /// changes a stock where the kernel names no boot; other lines only once they have waited
    /// long enough.
    #[test]
    fn an_apply_needs_a_sync_while_what_it_must_not_answer_before_is_not_durable() {
        for boot in [None, Some("5d1b".to_owned())] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("catalog.csv");
            let store = CatalogStore::open_in_boot(path, INITIAL, boot.clone()).unwrap();
            let now = Instant::now;
            let take = |term, trades| store.apply(&request(term, trades, None)).unwrap();
            assert!(!store.needs_sync(now()), "nothing written");
            take(1, vec![]);
            assert!(store.needs_sync(now()), "a new term");
            store.sync();
            assert!(!store.needs_sync(now()));
            take(1, vec![trade(1, "GameStart", 0), trade(2, "", 0)]);
            assert!(!store.needs_sync(now()), "no stock changed");
            assert!(
                store.needs_sync(now() + QUIET_SYNC_AFTER),
                "not for longer than this"
            );
            take(1, vec![trade(3, "FishCo", 0), trade(4, "GameStart", 2)]);
            assert_eq!(
                store.needs_sync(now()),
                boot.is_none(),
                "a trade in {boot:?}"
            );
            assert!(store.needs_sync(now() + QUIET_SYNC_AFTER), "{boot:?}");
            store.sync();
            assert!(!store.needs_sync(now()));
        }
    }

    /// A catalog that answered trades before their fsync and then lost them with its
    /// machine's power is behind in the next boot: it says so until an apply brings it to
    /// where the leader's book stands. A restart in the same boot loses nothing.
    #[test]
    fn a_catalog_back_from_a_power_loss_is_behind_until_a_leader_catches_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        let journal = path.with_extension("wal");
        let open = |boot: &str| CatalogStore::open_in_boot(&path, INITIAL, Some(boot.to_owned()));
        let store = open("first").unwrap();
        assert!(!store.is_behind(), "a first start lost nothing");
        apply(&store, 1, vec![trade(1, "GameStart", -1)]).unwrap();
        let synced = fs::metadata(&journal).unwrap().len();
        let unsynced = vec![trade(2, "GameStart", -2), trade(3, "FishCo", -3)];
        store.apply(&request(1, unsynced.clone(), None)).unwrap();
        assert!(
            !store.needs_sync(Instant::now()),
            "answered before its fsync"
        );
        let acknowledged = store.snapshot();
        // What its disk holds: the snapshot, and the journal through its last fsync.
        let mut on_disk = (fs::read(&path).unwrap(), fs::read(&journal).unwrap());
        on_disk.1.truncate(synced as usize);
        drop(store);

        // Killed: its pages outlive it.
        let store = open("first").unwrap();
        assert!(!store.is_behind());
        assert_eq!(store.snapshot(), acknowledged);
        drop(store);

        // Its power lost, before the two trades reached the disk.
        fs::write(&path, &on_disk.0).unwrap();
        fs::write(&journal, &on_disk.1).unwrap();
        let store = open("second").unwrap();
        assert!(store.is_behind(), "it may lack what it acknowledged");
        assert!(store.snapshot().behind);
        drop(store);
        let store = open("second").unwrap();
        assert!(
            store.is_behind(),
            "a restart before it caught up does not forget"
        );
        assert_eq!(store.get("GameStart").unwrap().quantity, 99);

        // Rounds that do not reach the leader's book, or do not say where it stands, leave
        // it behind; the one that reaches it catches it up.
        let first = request(1, unsynced[..1].to_vec(), Some(3));
        assert!(!store.apply(&first).unwrap().caught_up);
        assert!(
            !store
                .apply(&request(1, unsynced.clone(), None))
                .unwrap()
                .caught_up
        );
        assert!(store.is_behind());
        assert!(
            store
                .apply(&request(1, unsynced.clone(), Some(3)))
                .unwrap()
                .caught_up
        );
        assert!(!store.is_behind());
        assert_eq!(store.snapshot(), acknowledged);
        assert!(
            !store
                .apply(&request(1, unsynced, Some(3)))
                .unwrap()
                .caught_up,
            "once"
        );
        drop(store);
        assert!(!open("second").unwrap().is_behind(), "noted for this boot");

        // A failed fsync may have cost pages in this boot too.
        note_failed_fsync(&journal);
        assert!(open("second").unwrap().is_behind(), "after a failed fsync");
    }

    #[test]
    fn a_term_jump_is_refused_and_a_reset_term_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        apply(&store, 3, vec![trade(1, "GameStart", -1)]).unwrap();
        let jump = stocknet_common::wire::MAX_TERM_STEP + 4;
        assert!(matches!(
            apply(&store, jump, vec![trade(2, "GameStart", -1)]),
            Err(CatalogError::TermJump { current: 3, .. })
        ));
        assert_eq!(store.snapshot().term, 3);
        assert_eq!(store.get("GameStart").unwrap().quantity, 99);
        store.reset_term(1).unwrap();
        drop(store);
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!((store.snapshot().term, store.snapshot().applied), (1, 1));
        // The leader of term 2 is accepted again.
        apply(&store, 2, vec![trade(2, "GameStart", -1)]).unwrap();
    }

    #[test]
    fn lists_match_any_case_in_name_order_and_page_after_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let initial = "name,price,quantity\nAppleCo,1,1\nBoarCo,1,1\nappliance,1,1\nZed,1,1\n";
        let store = CatalogStore::open(dir.path().join("c.csv"), initial).unwrap();
        let names = |(stocks, more): (Vec<Stock>, bool)| {
            (stocks.into_iter().map(|s| s.name).collect::<Vec<_>>(), more)
        };
        assert_eq!(
            names(store.list("APP", None, 10).unwrap()),
            (vec!["AppleCo".to_owned(), "appliance".to_owned()], false)
        );
        assert_eq!(
            names(store.list("", None, 2).unwrap()),
            (vec!["AppleCo".to_owned(), "BoarCo".to_owned()], true)
        );
        assert_eq!(
            names(store.list("", Some("BoarCo"), 2).unwrap()),
            (vec!["Zed".to_owned(), "appliance".to_owned()], false)
        );
        assert_eq!(
            names(store.list("co", Some("AppleCo"), 5).unwrap()),
            (vec!["BoarCo".to_owned()], false)
        );
        assert_eq!(
            names(store.list("nothing", None, 5).unwrap()),
            (vec![], false)
        );
        assert!(contains_ignoring_case("Ünïcode", "ÜNÏ", "ünï"));
        assert!(!contains_ignoring_case("Ab", "abc", "abc"));
    }

    #[test]
    fn seeds_from_initial_and_reloads_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 100);
        apply(
            &store,
            1,
            vec![trade(1, "GameStart", -30), trade(2, "FishCo", 5)],
        )
        .unwrap();
        drop(store);

        let reopened = CatalogStore::open(&path, "name,price,quantity\nOther,1,1\n").unwrap();
        assert_eq!(reopened.get("GameStart").unwrap().quantity, 70);
        assert_eq!(reopened.get("FishCo").unwrap().quantity, 105);
        assert_eq!(reopened.get("Other"), None);
        let snapshot = reopened.snapshot();
        assert_eq!((snapshot.applied, snapshot.term), (2, 1));
    }

    #[test]
    fn applies_go_to_the_journal_and_compact_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        let journal = dir.path().join("catalog.wal");
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        let seeded = fs::read_to_string(&path).unwrap();
        apply(&store, 2, vec![trade(1, "GameStart", -1)]).unwrap();
        apply(
            &store,
            2,
            vec![trade(1, "GameStart", -1), trade(2, "FishCo", 4)],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            seeded,
            "no rewrite per apply"
        );
        assert_eq!(
            fs::read_to_string(&journal).unwrap(),
            "term,2\ntrade,1,-1,GameStart\ntrade,2,4,FishCo\n"
        );

        // Enough trades for a compaction: the snapshot takes them and the journal empties.
        let many: Vec<CatalogTrade> = (3..3 + COMPACT_EVERY as u64)
            .map(|n| trade(n, "FishCo", 1))
            .collect();
        apply(&store, 2, many).unwrap();
        let last = 2 + COMPACT_EVERY as u64;
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with(&format!("# stocknet applied={last} term=2\n")));
        assert_eq!(fs::metadata(&journal).unwrap().len(), 0);
        apply(&store, 3, vec![trade(last + 1, "GameStart", 10)]).unwrap();
        drop(store);

        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 109);
        assert_eq!(
            store.get("FishCo").unwrap().quantity,
            104 + COMPACT_EVERY as u64
        );
        let snapshot = store.snapshot();
        assert_eq!((snapshot.applied, snapshot.term), (last + 1, 3));
        // Opening compacted what it replayed.
        assert_eq!(fs::metadata(&journal).unwrap().len(), 0);
    }

    /// A catalog file holding `text`, in a directory of its own (kept while the directory is).
    fn catalog_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn replay_skips_what_the_snapshot_holds_and_drops_a_torn_tail() {
        // A compaction that renamed the snapshot (through trade 2) but crashed before emptying
        // the journal, which also ends in a torn record of trade 4.
        let (dir, path) = catalog_file(
            "# stocknet applied=2 term=1\nname,price,quantity\nGameStart,15.99,90\nFishCo,9.5,100\n",
        );
        fs::write(
            dir.path().join("catalog.wal"),
            "term,1\ntrade,1,-4,GameStart\ntrade,2,-6,GameStart\ntrade,3,7,\"FishCo\"\ntrade,4,-",
        )
        .unwrap();
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 90);
        assert_eq!(store.get("FishCo").unwrap().quantity, 107);
        assert_eq!(store.snapshot().applied, 3);
        apply(&store, 1, vec![trade(4, "GameStart", -1)]).unwrap();
        drop(store);
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 89);
    }

    #[test]
    fn a_corrupt_journal_record_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        drop(CatalogStore::open(&path, INITIAL).unwrap());
        let text = "trade,1,-1,GameStart\ntrade,3,-1,GameStart\ntrade,4,-1,GameStart\n";
        fs::write(dir.path().join("catalog.wal"), text).unwrap();
        let error = CatalogStore::open(&path, INITIAL).unwrap_err();
        assert!(error.to_string().contains("trade 3 follows 1"), "{error}");
        assert_eq!(
            fs::read_to_string(dir.path().join("catalog.wal")).unwrap(),
            text
        );
    }

    #[test]
    fn the_order_groups_own_entries_only_advance_the_position_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        let trades = vec![
            trade(1, "", 0),
            trade(2, "GameStart", -1),
            trade(3, "", 0),
            trade(4, "GameStart", -1),
        ];
        let outcome = apply(&store, 1, trades).unwrap();
        assert_eq!(outcome.applied, 4);
        assert_eq!(outcome.changed, vec!["GameStart".to_string()]);
        drop(store);
        let reopened = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(reopened.snapshot().applied, 4);
        assert_eq!(reopened.get("GameStart").unwrap().quantity, 98);
    }

    #[test]
    fn applying_twice_changes_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap();
        let first = apply(&store, 1, vec![trade(1, "GameStart", -10)]).unwrap();
        assert_eq!(first.changed, vec!["GameStart".to_string()]);
        let again = apply(&store, 1, vec![trade(1, "GameStart", -10)]).unwrap();
        assert_eq!(
            again,
            ApplyOutcome {
                applied: 1,
                changed: vec![]
            }
        );
        assert_eq!(store.get("GameStart").unwrap().quantity, 90);
    }

    #[test]
    fn refuses_gaps_negative_quantities_and_stale_terms_without_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap();
        assert!(matches!(
            apply(&store, 1, vec![trade(2, "GameStart", -1)]),
            Err(CatalogError::Gap {
                applied: 0,
                next: 2
            })
        ));
        // The first trade is fine, the second overdraws: neither may be applied.
        assert!(matches!(
            apply(
                &store,
                1,
                vec![trade(1, "FishCo", -1), trade(2, "GameStart", -101)]
            ),
            Err(CatalogError::InsufficientQuantity)
        ));
        assert!(matches!(
            apply(&store, 1, vec![trade(1, "Nope", 1)]),
            Err(CatalogError::StockNotFound(_))
        ));
        assert_eq!(store.snapshot().applied, 0);
        assert_eq!(store.get("FishCo").unwrap().quantity, 100);

        apply(&store, 3, vec![trade(1, "GameStart", -100)]).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 0);
        assert!(matches!(
            apply(&store, 2, vec![trade(2, "FishCo", 1)]),
            Err(CatalogError::StaleTerm {
                term: 2,
                current: 3
            })
        ));
    }

    #[test]
    fn errors_name_the_files_own_line_after_the_mark() {
        let (_dir, path) =
            catalog_file("# stocknet applied=1 term=1\nname,price,quantity\nA,1,1\nB,x,1\n");
        let error = CatalogStore::open(&path, INITIAL).unwrap_err();
        assert!(error.to_string().contains("line 4: price"), "{error}");
    }

    #[test]
    fn corrupt_files_are_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        fs::write(&path, "name,price,quantity\nGameStart,abc,100\n").unwrap();
        let error = CatalogStore::open(&path, INITIAL).unwrap_err();
        assert!(error.to_string().contains("line 2: price"), "{error}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "name,price,quantity\nGameStart,abc,100\n"
        );
    }

    #[test]
    fn concurrent_applies_conserve_quantity() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap());
        // Sixteen threads race to apply overlapping prefixes of one log; each trade lands once.
        let trades: Vec<CatalogTrade> = (1..=40)
            .map(|n| trade(n, "GameStart", if n % 2 == 0 { -3 } else { 1 }))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let store = store.clone();
                let trades = trades.clone();
                scope.spawn(move || {
                    for chunk in trades.chunks(5) {
                        let prefix = trades[..chunk[4].number as usize].to_vec();
                        store
                            .apply(&ApplyRequest {
                                term: 1,
                                trades: prefix,
                                leader_applied: None,
                            })
                            .unwrap();
                        store.sync();
                    }
                });
            }
        });
        assert_eq!(store.snapshot().applied, 40);
        assert_eq!(store.get("GameStart").unwrap().quantity, 100 + 20 - 60);
    }
}
