//! One replica's order log: an append-only CSV file, one line per order, each with the index of
//! the Raft entry it came in (a leader proposes the commands that arrive together as one entry,
//! so an entry holds one line or several). The layout of a line is `record.rs`'s.
//! The orders stay on disk; memory holds only what finds them again (`index.rs`): the offset
//! of every [`STRIDE`]th order, the runs of orders with one term, where the newest entries
//! start (older lines say theirs in the file), and the newest orders. The idempotency keys
//! are found through hash tables in a folder beside the log (`keys.rs`), derived from it and
//! checkpointed now and then with the rest of the index, so that opening a log reads only
//! the lines after its last checkpoint.
//! Appends are fsync'd before they return; a torn last record left by a crash mid-append is
//! cut off when the log is opened (it was never acknowledged).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stocknet_common::file::FileFailure;
use stocknet_common::{file, Order};

use crate::error::OrderError;

mod index;
mod keys;
mod read_at;
mod record;

use index::Index;
pub use keys::MAX_ORDER_NUMBER;
use keys::{Covered, KeyIndex};
pub use read_at::ReadAt;
use read_at::{Kept, Readers};

/// One offset is kept per this many orders: a lookup parses at most this many records (a few
/// KB), and a million orders cost 125 KB of offsets.
const STRIDE: u64 = 64;

/// The newest orders are also kept in memory: replication, catalog application and a client's
/// read-back ask for them, and a CSV reader per request showed in profiles (about 0.6 MB).
const RECENT: usize = 4096;

/// A line of the log: an order, or one of the group's own entries, and the index of the Raft
/// entry it belongs to. The lines of an entry are consecutive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub entry: u64,
    pub order: Order,
}

impl Line {
    /// `order` as the only line of its entry, as in a log from before entries held several
    /// lines, where line `n` is entry `n - 1`.
    pub fn alone(order: Order) -> Self {
        Self {
            entry: order.number.saturating_sub(1),
            order,
        }
    }
}

/// How much of its index a log keeps where: the defaults, but for tests that need the parts
/// kept on disk with few orders.
#[derive(Debug, Clone, Copy)]
pub struct IndexLimits {
    /// Buckets (of 8 keys) of the first key table; each next one has 4 times as many.
    pub first_key_buckets: u64,
    /// Runs of where entries start kept in memory (16 bytes each; at least this many, at
    /// most twice): every entry of several lines starts a run.
    pub entry_runs: usize,
    /// Lines between checkpoints of the key tables, and the least time between two: a log
    /// that opens after a crash inserts the keys of the lines after the last one again.
    pub key_checkpoint_every: u64,
    pub key_checkpoint_interval: std::time::Duration,
}

/// Lines between two checkpoints of a log's index, and the least seconds: the defaults.
pub const CHECKPOINT_EVERY: u64 = 1 << 16;
pub const CHECKPOINT_SECONDS: u64 = 30;

impl Default for IndexLimits {
    fn default() -> Self {
        Self {
            first_key_buckets: keys::FIRST_BUCKETS,
            entry_runs: 1 << 16,
            key_checkpoint_every: CHECKPOINT_EVERY,
            key_checkpoint_interval: std::time::Duration::from_secs(CHECKPOINT_SECONDS),
        }
    }
}

#[derive(Debug)]
pub struct OrderLog {
    path: PathBuf,
    file: Arc<File>,
    /// Readers of `file` for lookups.
    readers: Readers,
    /// Length of the file; every byte before it belongs to a complete record.
    len: u64,
    index: Index,
    /// Opening it dropped a complete line it could not read: lines this replica may have sent
    /// are gone.
    dropped_unreadable: bool,
    /// The file a failed fsync of the log leaves behind, as the log store's flusher does: the
    /// next start in the same boot must not resume leading its term on pages that were lost.
    failed_fsync_marker: Option<PathBuf>,
    /// Where opening it began to read the file (after a checkpoint's index, or 0).
    #[cfg(test)]
    read_from: u64,
}

impl OrderLog {
    /// Opens (or creates) the log at `path`, truncating a torn last record; its index is kept
    /// in the folder beside it with the extension `index`. One `OrderLog` at a time for a path.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, OrderError> {
        Self::open_with(path, IndexLimits::default())
    }

    pub fn open_with(path: impl Into<PathBuf>, limits: IndexLimits) -> Result<Self, OrderError> {
        let path = path.into();
        let io = |e| OrderError::io(&path, e);
        let file = file::open_append(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let complete = file::end_of_last_line(&file, size).map_err(io)?;
        let keys_dir = index_dir(&path);
        let keys_io = |e| OrderError::io(&keys_dir, e);
        let (mut keys, found) = KeyIndex::open(
            keys_dir.clone(),
            limits.first_key_buckets,
            (limits.key_checkpoint_every, limits.key_checkpoint_interval),
        )
        .map_err(keys_io)?;
        // The last checkpoint, whole, if the file still holds its line as it was: its index
        // and key tables are taken and only the lines after it are read. Otherwise the whole
        // file is read and the tables built again.
        let image = match found {
            Some(found) => {
                let image = checked_image(&file, complete, found);
                if image.is_none() {
                    tracing::info!(
                        dir = %keys_dir.display(),
                        "building the key index: the log differs from its checkpoint"
                    );
                    keys.reset().map_err(keys_io)?;
                }
                image
            }
            None => None,
        };
        let mut index = Index::new(keys, limits.entry_runs);
        let (from, keys_through) = match image {
            Some(image) => {
                let read_from = (image.len, image.last);
                index.restore(image);
                read_from
            }
            None => (0, 0),
        };
        let (good_len, dropped_unreadable) = index
            .load(&file, (from, complete), keys_through)
            .map_err(|e| e.in_file(&path))?;
        if dropped_unreadable {
            tracing::error!(
                path = %path.display(),
                "dropping a complete last line of the order log that cannot be read: a damaged disk, or a line of another version"
            );
        }
        if good_len < size {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = size - good_len,
                "truncating a torn last record, or an entry missing its last lines, of the order log"
            );
            file.set_len(good_len).map_err(io)?;
        }
        let mut len = good_len;
        if len == 0 {
            let header = record::header();
            (&file).write_all(header.as_bytes()).map_err(io)?;
            len = header.len() as u64;
        }
        // The file's own fsync is the replica's log store's, first thing (`LogStore::open_with`):
        // it notes a failure, which must not be reported here first and lost (the kernel
        // reports a failed write-back once), or a leader would resume a term whose lines the
        // disk may not hold.
        file::sync_dir(&path).map_err(io)?;
        let mut log = Self {
            path,
            file: Arc::new(file),
            readers: Readers::default(),
            len,
            index,
            dropped_unreadable,
            failed_fsync_marker: None,
            #[cfg(test)]
            read_from: from,
        };
        log.fill_recent()?;
        Ok(log)
    }

    /// Whether opening it dropped a complete line it could not read (not a torn append): the
    /// log may lack lines this replica sent, as after a failed fsync.
    pub fn dropped_unreadable(&self) -> bool {
        self.dropped_unreadable
    }

    /// Transaction number of the last order, 0 when empty.
    pub fn last(&self) -> u64 {
        self.index.last
    }

    /// Term of the last order, 0 when empty.
    pub fn last_term(&self) -> u64 {
        self.index.terms.last().map_or(0, |&(_, term)| term)
    }

    pub fn get(&self, number: u64) -> Result<Option<Order>, OrderError> {
        if number == 0 {
            return Ok(None);
        }
        Ok(self.read(number, 1)?.pop())
    }

    /// Up to `limit` orders with numbers greater than `after`.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Order>, OrderError> {
        self.read(after.saturating_add(1), limit)
    }

    /// The number of the order placed with idempotency `key`, if there is one.
    pub fn number_for_key(&self, key: &str) -> Result<Option<u64>, OrderError> {
        let candidates = self
            .index
            .keys
            .candidates(key)
            .map_err(|e| self.index_error(e))?;
        for number in candidates {
            if self.get(number)?.and_then(|o| o.key).as_deref() == Some(key) {
                return Ok(Some(number));
            }
        }
        Ok(None)
    }

    /// The last membership entry at or before `number`, if any.
    pub fn membership_through(&self, number: u64) -> Result<Option<Order>, OrderError> {
        let count = self.index.memberships.partition_point(|&n| n <= number);
        match count.checked_sub(1) {
            Some(at) => self.get(self.index.memberships[at]),
            None => Ok(None),
        }
    }

    /// Term of order `number`; 0 for the empty prefix (number 0), `None` past the end.
    pub fn term_at(&self, number: u64) -> Option<u64> {
        self.index.term_at(number)
    }

    /// The entry of the last line; `None` when the log is empty.
    pub fn last_entry(&self) -> Option<u64> {
        (self.last() > 0).then_some(self.index.last_entry)
    }

    /// The entry line `number` belongs to; `None` for number 0 and past the end.
    pub fn entry_at(&self, number: u64) -> Result<Option<u64>, OrderError> {
        if number == 0 || number > self.last() {
            return Ok(None);
        }
        match self.index.entry_in_memory(number) {
            Some(entry) => Ok(Some(entry)),
            None => Ok(Some(self.line_at(number)?.entry)),
        }
    }

    /// The number of entry `entry`'s first line, if the log holds that entry.
    pub fn first_line(&self, entry: u64) -> Result<Option<u64>, OrderError> {
        if self.last() == 0 || entry > self.index.last_entry {
            return Ok(None);
        }
        let below = match self.index.first_line_in_memory(entry) {
            Ok(first) => return Ok(Some(first)),
            Err(below) => below,
        };
        // Older than the runs in memory: the first line before `below` whose entry is not
        // older (entries never decrease along the log), if it is that entry's.
        let (mut low, mut high) = (1, below);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.line_at(middle)?.entry < entry {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok((low < below && self.line_at(low)?.entry == entry).then_some(low))
    }

    /// Up to `limit` lines with numbers greater than `after`, with their entries.
    pub fn lines_after(&self, after: u64, limit: usize) -> Result<Vec<Line>, OrderError> {
        let first = after.saturating_add(1);
        if self.index.covers_line(first) {
            let orders = self.after(after, limit)?;
            return Ok(orders
                .into_iter()
                .map(|order| Line {
                    entry: self.index.entry_in_memory(order.number).unwrap_or_default(),
                    order,
                })
                .collect());
        }
        let mut lines = Vec::new();
        self.visit_file(first, self.end_of(first, limit), |line| lines.push(line))?;
        Ok(lines)
    }

    /// A handle on the file as it is now, and the length of its bytes through line `number`:
    /// what a snapshot sent to a replica reads. The lines through a committed one never
    /// change, and the handle keeps them if the file is replaced meanwhile.
    pub fn open_through(&self, number: u64) -> Result<(File, u64), OrderError> {
        let end = self.offset_of(number.min(self.last()) + 1)?;
        let file = File::open(&self.path).map_err(|e| OrderError::io(&self.path, e))?;
        Ok((file, end))
    }

    /// Makes this log hold the lines `copy` reads, another replica's log file from its start
    /// (as a snapshot sent from it carries it): the lines it shares with them are kept, and
    /// from the first that differs on, theirs replace its own. A line with the same number
    /// and term as one here is the same line, and so is every line before it (Raft's log
    /// matching). Lines after the copy's last are kept if every line of the copy was here.
    /// Durable on return.
    pub fn install(&mut self, copy: impl Read) -> Result<Installed, OrderError> {
        let mut lines = CopiedLines::new(copy);
        let mut installed = Installed::default();
        let mut first_new = None;
        for line in lines.by_ref() {
            let line = line?;
            installed.last = Some((line.order.number, line.entry));
            let number = line.order.number;
            if number > self.last() || self.term_at(number) != Some(line.order.term) {
                first_new = Some(line);
                break;
            }
        }
        let Some(first_new) = first_new else {
            // Every line was here already, perhaps not yet on disk.
            self.sync_or_exit();
            return Ok(installed);
        };
        let kept = first_new.order.number - 1;
        let replacing = kept < self.last();
        let mut batch = vec![first_new];
        let mut first_batch = true;
        let mut lines = lines.peekable();
        loop {
            // Whole entries only: a batch's last line is written without the mark that more
            // of its entry follow, and a crash after it must not leave half an entry that
            // reads as whole.
            while let Some(line) = lines.next_if(|next| {
                batch.len() < INSTALL_BATCH
                    || next.as_ref().map_or(true, |next| {
                        batch.last().is_some_and(|last| last.entry == next.entry)
                    })
            }) {
                let line = line?;
                installed.last = Some((line.order.number, line.entry));
                batch.push(line);
            }
            if batch.is_empty() {
                break;
            }
            if first_batch && replacing {
                self.replace_after(kept, &batch)?;
            } else {
                self.write(&batch)?;
            }
            first_batch = false;
            batch.clear();
        }
        self.sync_or_exit();
        installed.replaced_after = replacing.then_some(kept);
        Ok(installed)
    }

    /// Appends `batch` durably. Its first line must directly follow the last one here, its
    /// numbers must be consecutive and each line's entry the one before's or the next;
    /// otherwise nothing is written and [`OrderError::Gap`] says where this log ends.
    pub fn append(&mut self, batch: &[Line]) -> Result<(), OrderError> {
        self.write(batch)?;
        self.sync_or_exit();
        Ok(())
    }

    /// Where a failed fsync of the log is noted.
    #[cfg(test)]
    pub fn failed_fsync_marker(&self) -> Option<&Path> {
        self.failed_fsync_marker.as_deref()
    }

    /// Notes failed fsyncs of the log in `marker` from now on ([`Self::sync_or_exit`]).
    pub fn note_fsync_failures_in(&mut self, marker: PathBuf) {
        self.failed_fsync_marker = Some(marker);
    }

    /// Makes what was written durable, or ends the process (exit 70), leaving the failed-fsync
    /// marker where one is set: after a failed fsync the kernel may drop the pages and report
    /// the next fsync as a success.
    fn sync_or_exit(&self) {
        if let Err(e) = self.file.sync_data() {
            if let Some(marker) = &self.failed_fsync_marker {
                note_failed_fsync(marker, &e);
            }
            tracing::error!(path = %self.path.display(), "fsync failed, exiting to recover: {e}");
            std::process::exit(70);
        }
    }

    /// Like [`append`](Self::append) but without waiting for the disk: the orders are in the
    /// file and visible here at once, durable only after a [`file::sync_data_or_exit`] through
    /// [`sync_handle`](Self::sync_handle). A leader writes each order as it comes and fsyncs
    /// once for all that came meanwhile (group commit).
    pub fn write(&mut self, batch: &[Line]) -> Result<(), OrderError> {
        check_consecutive(self.last(), self.last_entry(), batch)?;
        self.insert_keys(batch)?;
        let (text, starts) = format_records(batch, self.len)?;
        if let Err(e) = (&*self.file).write_all(&text) {
            // Never leave a partial record for the next write to follow.
            let _ = self.file.set_len(self.len);
            return Err(OrderError::io(&self.path, e));
        }
        self.len += text.len() as u64;
        for (line, start) in batch.iter().zip(starts) {
            self.index.push(line, start);
        }
        if self.index.keys.checkpoint_due(self.last()) {
            let (covered, image) = self.checkpoint()?;
            self.index.keys.request_checkpoint(covered, image);
        }
        Ok(())
    }

    /// Records that the key tables hold every key of this log, so that the next open finds
    /// them as they are (a replica does this when it stops; otherwise the last checkpoint
    /// counts, and the keys after it are inserted again).
    pub fn checkpoint_keys(&mut self) -> Result<(), OrderError> {
        let (covered, image) = self.checkpoint()?;
        self.index
            .keys
            .checkpoint_now(covered, image)
            .map_err(|e| self.index_error(e))
    }

    /// What a checkpoint records now: the last line, and the index as of it.
    fn checkpoint(&self) -> Result<(Covered, Vec<u8>), OrderError> {
        let covered = Covered {
            through: self.last(),
            term: self.last_term(),
        };
        let image = postcard::to_stdvec(&self.index.image(self.len))
            .map_err(|e| OrderError::Task(format!("the log's index: {e}")))?;
        Ok((covered, image))
    }

    /// An I/O error of this log's index folder.
    fn index_error(&self, error: std::io::Error) -> OrderError {
        OrderError::io(&index_dir(&self.path), error)
    }

    /// Reads the newest lines a restored index lacks.
    fn fill_recent(&mut self) -> Result<(), OrderError> {
        let held = self.index.recent.len() as u64;
        let first = self.last().saturating_sub(RECENT as u64) + 1;
        let missing_end = self.last() + 1 - held;
        if first >= missing_end {
            return Ok(());
        }
        let mut older = Vec::new();
        self.visit_file(first, missing_end, |line| older.push(line.order))?;
        for order in older.into_iter().rev() {
            self.index.recent.push_front(order);
        }
        Ok(())
    }

    /// A handle on the log file for [`file::sync_data_or_exit`], so the fsync need not hold
    /// the log.
    pub fn sync_handle(&self) -> Result<(File, PathBuf), OrderError> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| OrderError::io(&self.path, e))?;
        Ok((file, self.path.clone()))
    }

    /// Replaces every order after `number` with `batch`, atomically: the new file is written
    /// beside the old one, fsync'd and renamed over it, so a crash leaves one or the other.
    pub fn replace_after(&mut self, number: u64, batch: &[Line]) -> Result<(), OrderError> {
        // The kept lines copied by the kernel (copy_file_range: on a file system that shares
        // blocks, a copy of a large log costs next to nothing).
        let by_kernel =
            |from: &mut File, to: &mut File, len| std::io::copy(&mut (&*from).take(len), to);
        self.replace_after_copying(number, batch, by_kernel)
    }

    /// Writes the whole log anew, to a new file, through this process: after a failed fsync the
    /// kernel may keep lines it never wrote to disk, and a copy by the kernel could share the
    /// disk's blocks instead of writing them (see [`file::copy_through_cache`]).
    pub fn write_anew(&mut self) -> Result<(), OrderError> {
        self.replace_after_copying(self.last(), &[], file::copy_through_cache)
    }

    fn replace_after_copying(
        &mut self,
        number: u64,
        batch: &[Line],
        copy: impl FnOnce(&mut File, &mut File, u64) -> std::io::Result<u64>,
    ) -> Result<(), OrderError> {
        if number > self.last() {
            return Err(OrderError::Gap { last: self.last() });
        }
        let number_entry = self.entry_at(number)?;
        check_consecutive(number, number_entry, batch)?;
        // The key tables' state may cover lines about to change.
        self.index
            .keys
            .forget_state()
            .map_err(|e| self.index_error(e))?;
        self.insert_keys(batch)?;
        let io = |e| OrderError::io(&self.path, e);
        let cut = self.offset_of(number + 1)?;
        let (text, starts) = format_records(batch, cut)?;
        file::replace_atomically(&self.path, |out| {
            // The kept prefix, then the batch.
            let copied = copy(&mut File::open(&self.path)?, out, cut)?;
            if copied != cut {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("shorter than its index ({copied} of {cut} bytes)"),
                ));
            }
            out.write_all(&text)
        })
        .map_err(io)?;
        self.file = Arc::new(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(io)?,
        );
        // Kept readers hold the replaced file open: they go with it.
        self.readers = Readers::default();
        self.len = cut + text.len() as u64;
        self.index.truncate(number, number_entry.unwrap_or(0));
        for (line, start) in batch.iter().zip(starts) {
            self.index.push(line, start);
        }
        Ok(())
    }

    /// Up to `limit` orders from number `first` on, read from the file.
    fn read(&self, first: u64, limit: usize) -> Result<Vec<Order>, OrderError> {
        let mut orders = Vec::new();
        self.visit(first, limit, |order| orders.push(order))?;
        Ok(orders)
    }

    /// Calls `each` with up to `limit` orders from number `first` on, in order.
    fn visit(
        &self,
        first: u64,
        limit: usize,
        mut each: impl FnMut(Order),
    ) -> Result<(), OrderError> {
        let end = self.end_of(first, limit);
        if first == 0 || first >= end {
            return Ok(());
        }
        if let Some(oldest) = self.index.recent.front().map(|o| o.number) {
            if first >= oldest {
                let count = usize::try_from(end - first).unwrap_or(usize::MAX);
                let skip = usize::try_from(first - oldest).unwrap_or(usize::MAX);
                self.index
                    .recent
                    .iter()
                    .skip(skip)
                    .take(count)
                    .for_each(|o| each(o.clone()));
                return Ok(());
            }
        }
        self.visit_file(first, end, |line| each(line.order))
    }

    /// The number after the last of `limit` lines from `first` on (or of the log).
    fn end_of(&self, first: u64, limit: usize) -> u64 {
        first
            .saturating_add(limit as u64)
            .min(self.last().saturating_add(1))
    }

    /// Calls `each` with the lines `first..end` (in the log) as the file has them.
    fn visit_file(
        &self,
        first: u64,
        end: u64,
        mut each: impl FnMut(Line),
    ) -> Result<(), OrderError> {
        if first == 0 || first >= end {
            return Ok(());
        }
        let (mut reader, mut number, _) = self.reader_at(first)?;
        let mut record = csv::ByteRecord::new();
        while number < end {
            self.next_record(&mut reader, &mut record, number)?;
            if number >= first {
                each(record::decode(&record, number).map_err(|e| self.corrupt(number, &e))?);
            }
            number += 1;
        }
        Ok(())
    }

    /// Line `number` (in the log) as the file has it.
    fn line_at(&self, number: u64) -> Result<Line, OrderError> {
        let mut found = None;
        self.visit_file(number, number + 1, |line| found = Some(line))?;
        found.ok_or_else(|| self.corrupt(number, "not in the file"))
    }

    /// Notes the keys of `batch` in the key index, before the batch is written: a slot of a
    /// line that is then not written is harmless.
    fn insert_keys(&mut self, batch: &[Line]) -> Result<(), OrderError> {
        for line in batch {
            if let Some(key) = &line.order.key {
                self.index
                    .keys
                    .insert(key, line.order.number)
                    .map_err(|e| self.index_error(e))?;
            }
        }
        Ok(())
    }

    /// The byte offset where order `number` starts; the file's end for the one after the last.
    fn offset_of(&self, number: u64) -> Result<u64, OrderError> {
        if number > self.last() {
            return Ok(self.len);
        }
        let (mut reader, mut at, base) = self.reader_at(number)?;
        let mut record = csv::ByteRecord::new();
        while at < number {
            self.next_record(&mut reader, &mut record, at)?;
            at += 1;
        }
        Ok(base + reader.position().byte())
    }

    /// A reader at the checkpoint at or before order `number` (which must be in the log),
    /// with the number of the order it starts at and its byte offset.
    fn reader_at(&self, number: u64) -> Result<(Kept<'_>, u64, u64), OrderError> {
        let slot = (number - 1) / STRIDE;
        let start = self.index.checkpoints[slot as usize];
        let reader = self
            .readers
            .at(&self.file, start, self.len)
            .map_err(|e| OrderError::io(&self.path, e))?;
        Ok((reader, slot * STRIDE + 1, start))
    }

    fn next_record(
        &self,
        reader: &mut Kept<'_>,
        record: &mut csv::ByteRecord,
        number: u64,
    ) -> Result<(), OrderError> {
        match reader.read_byte_record(record) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.corrupt(number, "the file ends before it")),
            Err(e) => Err(self.corrupt(number, &e.to_string())),
        }
    }

    fn corrupt(&self, number: u64, message: &str) -> OrderError {
        OrderError::Corrupt(format!(
            "{}: order {number}: {message}",
            self.path.display()
        ))
    }
}

/// Leaves the file `marker`, which the next start reads as a reason not to resume leading
/// (`consensus/log_store.rs`, `LogStore::open_with`).
pub(crate) fn note_failed_fsync(marker: &Path, error: &std::io::Error) {
    if let Err(e) = std::fs::write(marker, error.to_string()) {
        tracing::error!(path = %marker.display(), "could not note the failed fsync: {e}");
    }
}

/// The folder of the index beside the log at `path`: its key tables, and its last checkpoint.
fn index_dir(path: &Path) -> PathBuf {
    path.with_extension("index")
}

/// The index image `found` holds, if it is as of the line its checkpoint covers and the file
/// (complete through byte `complete`) still holds that line, with that term, ending where the
/// image ends.
fn checked_image(file: &File, complete: u64, found: keys::Found) -> Option<index::IndexImage> {
    let image: index::IndexImage = postcard::from_bytes(found.index.as_deref()?).ok()?;
    let Covered { through, term } = found.covered;
    if image.last != through || image.len > complete || through == 0 || !image.terms_are_whole() {
        return None;
    }
    let (mut number, offset) = image.checkpoint_before(through)?;
    let mut reader = record::reader(ReadAt {
        file,
        offset,
        end: image.len,
    });
    let mut record = csv::ByteRecord::new();
    while number < through {
        reader.read_byte_record(&mut record).ok()?;
        number += 1;
    }
    let line = reader
        .read_byte_record(&mut record)
        .ok()
        .filter(|&read| read)
        .and_then(|_| record::decode(&record, through).ok())?;
    let ends = offset + reader.position().byte() == image.len;
    (line.order.term == term && ends).then_some(image)
}

/// Lines an install writes at a time.
const INSTALL_BATCH: usize = 4096;

/// What [`OrderLog::install`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// The copy's last line and its entry.
    pub last: Option<(u64, u64)>,
    /// The last line kept, where the lines after it were replaced.
    pub replaced_after: Option<u64>,
}

/// The lines of a copy of a log file, read from its start: its header, then line 1 on.
struct CopiedLines<R: Read> {
    reader: csv::Reader<R>,
    record: csv::ByteRecord,
    number: u64,
}

impl<R: Read> CopiedLines<R> {
    fn new(copy: R) -> Self {
        Self {
            reader: record::reader(copy),
            record: csv::ByteRecord::new(),
            number: 0,
        }
    }

    fn corrupt(&self, e: &dyn std::fmt::Display) -> OrderError {
        OrderError::Corrupt(format!("a copied log, after line {}: {e}", self.number))
    }
}

impl<R: Read> Iterator for CopiedLines<R> {
    type Item = Result<Line, OrderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Err(e) => return Some(Err(self.corrupt(&e))),
                Ok(true) if self.number == 0 && record::is_header(&self.record) => continue,
                Ok(true) => {
                    let line = record::decode(&self.record, self.number + 1);
                    let line = line.map_err(|e| self.corrupt(&e));
                    self.number += 1;
                    return Some(line);
                }
            }
        }
    }
}

/// Calls `each` with every entry of the log file at `path`, in order, only reading it (the
/// file may belong to a running replica): a torn last record, and an entry missing its last
/// lines (one being written), are left out, as opening the log would cut them off.
pub fn read_entries(path: &Path, mut each: impl FnMut(Order)) -> Result<(), OrderError> {
    let io = |e| OrderError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let complete = file::end_of_last_line(&file, size).map_err(io)?;
    let mut reader = record::reader(ReadAt {
        file: &file,
        offset: 0,
        end: complete,
    });
    let mut record = csv::ByteRecord::new();
    let mut number = 0;
    let mut entry = Vec::new();
    loop {
        let read = reader
            .read_byte_record(&mut record)
            .map_err(|e| OrderError::Corrupt(format!("{}: {e}", path.display())));
        if !read? {
            return Ok(());
        }
        if number == 0 {
            if !record::is_header(&record) {
                return Err(OrderError::Corrupt(format!(
                    "{}: missing header line",
                    path.display()
                )));
            }
        } else {
            let line = record::decode(&record, number).map_err(|e| {
                OrderError::Corrupt(format!("{}: order {number}: {e}", path.display()))
            })?;
            entry.push(line.order);
            if !record::is_continued(&record) {
                entry.drain(..).for_each(&mut each);
            }
        }
        number += 1;
    }
}

/// Checks that `batch` may follow line `after`, of entry `after_entry` (`None` for the empty
/// log, whose first entry is 0).
fn check_consecutive(
    after: u64,
    after_entry: Option<u64>,
    batch: &[Line],
) -> Result<(), OrderError> {
    let mut previous = after_entry;
    for (offset, Line { entry, order }) in batch.iter().enumerate() {
        let follows = match previous {
            Some(previous) => *entry == previous || *entry == previous + 1,
            None => *entry == 0,
        };
        if order.number != after + 1 + offset as u64 || !follows {
            return Err(OrderError::Gap { last: after });
        }
        previous = Some(*entry);
    }
    match batch.last() {
        Some(line) if line.order.number > MAX_ORDER_NUMBER => Err(OrderError::Corrupt(format!(
            "order {} is past the highest a log holds ({MAX_ORDER_NUMBER})",
            line.order.number
        ))),
        _ => Ok(()),
    }
}

/// The CSV records of `batch`, and where each starts if the text is written at byte `base`.
fn format_records(batch: &[Line], base: u64) -> Result<(Vec<u8>, Vec<u64>), OrderError> {
    let corrupt = |e: &dyn std::fmt::Display| OrderError::Corrupt(e.to_string());
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let mut starts = Vec::with_capacity(batch.len());
    for (i, line) in batch.iter().enumerate() {
        writer.flush().map_err(|e| corrupt(&e))?;
        starts.push(base + writer.get_ref().len() as u64);
        let continued = batch
            .get(i + 1)
            .is_some_and(|next| next.entry == line.entry);
        writer
            .write_record(record::encode(line, continued))
            .map_err(|e| corrupt(&e))?;
    }
    let text = writer.into_inner().map_err(|e| corrupt(&e))?;
    Ok((text, starts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stocknet_common::{Command, Price, Rejection, Side, Stamp};

    /// An empty log in a directory of its own (kept while the directory is).
    fn new_log() -> (tempfile::TempDir, std::path::PathBuf, OrderLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let log = OrderLog::open(&path).unwrap();
        (dir, path, log)
    }

    /// `orders`, each the only line of its entry.
    fn lines<'a>(orders: impl IntoIterator<Item = &'a Order>) -> Vec<Line> {
        orders.into_iter().cloned().map(Line::alone).collect()
    }

    /// Lines `first..` in entries of the given sizes, the first entry being `first_entry`.
    fn grouped(first: u64, first_entry: u64, sizes: &[u64]) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut number = first;
        for (offset, &size) in sizes.iter().enumerate() {
            for _ in 0..size {
                lines.push(Line {
                    entry: first_entry + offset as u64,
                    order: order(number, "A"),
                });
                number += 1;
            }
        }
        lines
    }

    /// The smallest index: one key bucket to start with, and entries found from the file
    /// but for the newest one or two runs.
    const SMALL: IndexLimits = IndexLimits {
        first_key_buckets: 1,
        entry_runs: 1,
        key_checkpoint_every: 16,
        key_checkpoint_interval: std::time::Duration::ZERO,
    };

    #[test]
    fn entries_of_several_lines_are_found_by_entry_and_by_line_and_survive_reopen() {
        for limits in [IndexLimits::default(), SMALL] {
            entries_are_found(limits);
        }
    }

    fn entries_are_found(limits: IndexLimits) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders-1.csv");
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        // Entries 0..=2 alone, 3 of three lines, 4 alone, 5 of two lines, 6 alone.
        let written = grouped(1, 0, &[1, 1, 1, 3, 1, 2, 1]);
        log.append(&written[..4]).unwrap();
        log.append(&written[4..]).unwrap();
        let check = |log: &OrderLog| {
            assert_eq!(log.lines_after(0, usize::MAX).unwrap(), written);
            for line in &written {
                assert_eq!(log.entry_at(line.order.number).unwrap(), Some(line.entry));
            }
            let firsts: Vec<_> = (0..=7).map(|e| log.first_line(e).unwrap()).collect();
            let expected = [1, 2, 3, 4, 7, 8, 10].map(Some);
            assert_eq!(firsts[..7], expected, "{firsts:?}");
            assert_eq!(firsts[7], None);
            assert_eq!(log.entry_at(0).unwrap(), None);
            assert_eq!(log.entry_at(11).unwrap(), None);
        };
        check(&log);
        drop(log);
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        check(&log);

        // A line must stay in its entry or start the next one.
        let skips = Line {
            entry: 8,
            order: order(11, "A"),
        };
        assert!(matches!(
            log.append(&[skips]),
            Err(OrderError::Gap { last: 10 })
        ));
        // Cut after entry 4 (line 7): what follows is replaced by other entries.
        let replacement = grouped(8, 5, &[2, 1]);
        log.replace_after(7, &replacement).unwrap();
        assert_eq!(log.first_line(5).unwrap(), Some(8));
        assert_eq!(log.first_line(6).unwrap(), Some(10));
        assert_eq!(log.first_line(7).unwrap(), None);
        assert_eq!(log.entry_at(9).unwrap(), Some(5));
        log.replace_after(4, &[]).unwrap();
        assert_eq!((log.last(), log.entry_at(4).unwrap()), (4, Some(3)));
        assert_eq!(log.first_line(3).unwrap(), Some(4));
        assert_eq!(log.first_line(4).unwrap(), None);
        log.append(&grouped(5, 4, &[1])).unwrap();
        assert_eq!(log.first_line(4).unwrap(), Some(5));
    }

    fn order(number: u64, name: &str) -> Order {
        let side = if number.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        };
        // Every fifth order is a limit order, every seventh a cancel, every eleventh a modify.
        let command = if number.is_multiple_of(7) {
            Command::Cancel { target: number / 2 }
        } else if number.is_multiple_of(11) {
            Command::Modify {
                target: number - 1,
                quantity: number.is_multiple_of(2).then_some(3),
                price: Some(Price::from_cents(number)),
            }
        } else {
            Command::Place {
                side,
                quantity: number as u32,
                limit: number
                    .is_multiple_of(5)
                    .then(|| Price::from_cents(100 + number)),
                options: None,
            }
        };
        // Every fourth has a user, and every new order the thirteenth was refused.
        let rejected = (number.is_multiple_of(13) && matches!(command, Command::Place { .. }))
            .then_some(Rejection::PriceMoved);
        Order {
            number,
            term: 1,
            name: name.into(),
            key: number.is_multiple_of(3).then(|| format!("key-{number}")),
            user: number.is_multiple_of(4).then_some(number / 4),
            stamp: Stamp {
                time: 1_800_000_000_000 + number,
                quote: Some(Price::from_cents(1_000 + number)),
                rejected,
                request_id: number
                    .is_multiple_of(5)
                    .then(|| format!("request-{number}")),
            },
            command,
        }
    }

    /// Order `number` as a log from before users and stamps holds it.
    fn unstamped(number: u64, name: &str) -> Order {
        Order {
            user: None,
            stamp: Stamp::default(),
            ..order(number, name)
        }
    }

    /// A log's file, as a snapshot carries it, installed over other logs: an empty one, one
    /// that holds a prefix, one longer than the copy, one whose end differs (another term).
    #[test]
    fn an_installed_copy_keeps_what_is_shared_and_replaces_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| OrderLog::open_with(dir.path().join(name), SMALL).unwrap();
        let mut leader = open("leader.csv");
        leader.append(&grouped(1, 0, &[1, 3, 2, 1, 2])).unwrap();
        let (file, through) = leader.open_through(6).unwrap();
        let copy = || ReadAt {
            file: &file,
            offset: 0,
            end: through,
        };
        let every = |log: &OrderLog| log.lines_after(0, usize::MAX).unwrap();
        let copied = every(&leader)[..6].to_vec();
        let key = |log: &OrderLog| log.number_for_key("key-6").unwrap();

        let mut empty = open("empty.csv");
        let installed = empty.install(copy()).unwrap();
        assert_eq!(installed.last, Some((6, 2)));
        assert_eq!(installed.replaced_after, None);
        assert_eq!((every(&empty), key(&empty)), (copied.clone(), Some(6)));

        let mut prefix = open("prefix.csv");
        prefix.append(&grouped(1, 0, &[1, 3])).unwrap();
        assert_eq!(prefix.install(copy()).unwrap().replaced_after, None);
        assert_eq!(every(&prefix), copied);

        // Lines after the copy's last are the replica's: openraft still counts them.
        let mut longer = open("longer.csv");
        longer.append(&grouped(1, 0, &[1, 3, 2, 1])).unwrap();
        assert_eq!(longer.install(copy()).unwrap().replaced_after, None);
        assert_eq!(every(&longer), every(&leader)[..7].to_vec());

        let mut diverged = open("diverged.csv");
        let mut stray = grouped(1, 0, &[1, 3, 2, 1]);
        for line in &mut stray[4..] {
            line.order.term = 2;
            line.order.key = None;
        }
        diverged.append(&stray).unwrap();
        assert_eq!(diverged.install(copy()).unwrap().replaced_after, Some(4));
        assert_eq!((every(&diverged), key(&diverged)), (copied, Some(6)));
        drop(diverged);
        let reopened = open("diverged.csv");
        assert_eq!(every(&reopened), every(&leader)[..6].to_vec());
    }

    /// An install writes whole entries at a time: every line of an entry but its last says
    /// that more follow, also where an entry straddles the lines an install writes at once.
    #[test]
    fn an_install_marks_each_entry_whole_across_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.csv");
        let mut leader = OrderLog::open(&path).unwrap();
        let mut sizes = vec![1; INSTALL_BATCH - 10];
        sizes.push(20);
        leader.append(&grouped(1, 0, &sizes)).unwrap();
        let (file, through) = leader.open_through(leader.last()).unwrap();
        let copy = ReadAt {
            file: &file,
            offset: 0,
            end: through,
        };
        let installed_path = dir.path().join("installed.csv");
        let mut installed = OrderLog::open(&installed_path).unwrap();
        installed.install(copy).unwrap();
        let text = std::fs::read(&installed_path).unwrap();
        let mut reader = record::reader(&text[..]);
        let mut records: Vec<(u64, bool)> = Vec::new();
        for record in reader.byte_records().skip(1) {
            let record = record.unwrap();
            let number = records.len() as u64 + 1;
            let line = record::decode(&record, number).unwrap();
            records.push((line.entry, record::is_continued(&record)));
        }
        assert_eq!(records.len(), INSTALL_BATCH + 10);
        for (i, (entry, continued)) in records.iter().enumerate() {
            let next = records.get(i + 1).map(|(next, _)| next);
            assert_eq!(*continued, next == Some(entry), "line {}", i + 1);
        }
    }

    #[test]
    fn appends_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders-1.csv");
        let mut log = OrderLog::open(&path).unwrap();
        assert_eq!(log.last(), 0);
        log.append(&lines(&[order(1, "GameStart"), order(2, "Fish, \"Co\"")]))
            .unwrap();
        log.append(&lines(&[order(3, "BoarCo")])).unwrap();
        drop(log);

        let log = OrderLog::open(&path).unwrap();
        assert_eq!(log.last(), 3);
        assert_eq!(log.get(2).unwrap(), Some(order(2, "Fish, \"Co\"")));
        assert_eq!(log.number_for_key("key-3").unwrap(), Some(3));
        assert_eq!(
            log.after(1, 10).unwrap(),
            [order(2, "Fish, \"Co\""), order(3, "BoarCo")]
        );
        assert_eq!(log.after(1, 1).unwrap().len(), 1);
        assert!(log.after(99, 10).unwrap().is_empty());
        assert_eq!(log.get(0).unwrap(), None);
    }

    /// `count` orders after `after`, with names of varying length (one spans two lines) and
    /// terms that change every 100 orders.
    fn many(after: u64, count: u64) -> Vec<Order> {
        (after + 1..=after + count)
            .map(|n| Order {
                term: 1 + n / 100,
                ..order(n, &"Name, \"x\"\n".repeat((n % 5) as usize))
            })
            .collect()
    }

    #[test]
    fn reads_across_checkpoints_before_and_after_reopen() {
        let (_dir, path, mut log) = new_log();
        // More than RECENT: the oldest orders are read from the file, the newest from memory.
        let total = RECENT as u64 + 1_000;
        let all = many(0, total);
        for chunk in all.chunks(37) {
            log.write(&lines(chunk)).unwrap();
        }
        for log in [log, OrderLog::open(&path).unwrap()] {
            assert_eq!(log.last(), total);
            assert_eq!(log.last_term(), 1 + total / 100);
            for number in [1, 63, 64, 65, 128, 129, 500, 999, 1_000, 1_001, total] {
                let expected = &all[number as usize - 1];
                assert_eq!(log.get(number).unwrap().as_ref(), Some(expected));
                assert_eq!(log.term_at(number), Some(expected.term));
            }
            assert_eq!(log.get(total + 1).unwrap(), None);
            assert_eq!(log.after(60, 200).unwrap(), &all[60..260]);
            assert_eq!(
                log.after(total - 10, 200).unwrap(),
                &all[total as usize - 10..]
            );
            assert_eq!(log.after(0, usize::MAX).unwrap(), all);
            assert_eq!(log.number_for_key("key-999").unwrap(), Some(999));
            assert_eq!(log.number_for_key("key-1000").unwrap(), None);
        }
    }

    #[test]
    fn replace_after_at_and_between_checkpoints_keeps_the_index_true() {
        let total = RECENT as u64 + 200;
        let cases = [0, 1, 63, 64, 65, 100, total - 100, total - 1]
            .into_iter()
            .flat_map(|kept| [(kept, IndexLimits::default()), (kept, SMALL)]);
        for (kept, limits) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("o.csv");
            let mut log = OrderLog::open_with(&path, limits).unwrap();
            log.write(&lines(&many(0, total))).unwrap();
            let replacement: Vec<Order> = many(kept, 30)
                .into_iter()
                .map(|o| Order {
                    term: 9,
                    key: Some(format!("new-{}", o.number)),
                    ..o
                })
                .collect();
            log.replace_after(kept, &lines(&replacement)).unwrap();
            log.write(&lines(&[Order {
                term: 9,
                ..order(kept + 31, "after")
            }]))
            .unwrap();
            let mut expected = many(0, kept);
            expected.extend(replacement.iter().cloned());
            expected.push(Order {
                term: 9,
                ..order(kept + 31, "after")
            });
            let check = |log: &OrderLog| {
                assert_eq!(log.after(0, usize::MAX).unwrap(), expected, "kept {kept}");
                assert_eq!(log.term_at(kept + 1), Some(9));
                let dropped = (kept + 1..=total).find(|n| n % 3 == 0 && *n > kept + 31);
                if let Some(n) = dropped {
                    let key = format!("key-{n}");
                    assert_eq!(log.number_for_key(&key).unwrap(), None, "kept {kept}");
                }
                let key = format!("new-{}", kept + 1);
                assert_eq!(log.number_for_key(&key).unwrap(), Some(kept + 1));
            };
            check(&log);
            // One log at a time on a path.
            drop(log);
            check(&OrderLog::open_with(&path, limits).unwrap());
        }
    }

    #[test]
    fn keys_are_found_in_every_key_table_and_lines_in_long_entries_before_the_runs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open_with(&path, SMALL).unwrap();
        // 3,000 keyed lines in entries of 1 to 4 lines: several key tables, runs on disk.
        let sizes: Vec<u64> = (0..1_200).map(|e| e % 4 + 1).collect();
        let mut written = grouped(1, 0, &sizes);
        written.truncate(3_000);
        for line in &mut written {
            line.order.key = Some(format!("client-key-{}", line.order.number));
        }
        for batch in written.chunks(7) {
            log.write(batch).unwrap();
        }
        assert!(log.index.keys.tables() >= 4);
        assert!(log.index.entries.len() <= 2);
        let check = |log: &OrderLog| {
            for line in written.iter().step_by(37) {
                let key = line.order.key.as_deref().unwrap();
                assert_eq!(log.number_for_key(key).unwrap(), Some(line.order.number));
                assert_eq!(log.entry_at(line.order.number).unwrap(), Some(line.entry));
            }
            for entry in (0..=written.last().unwrap().entry).step_by(29) {
                let first = written.iter().find(|l| l.entry == entry).unwrap();
                assert_eq!(log.first_line(entry).unwrap(), Some(first.order.number));
            }
            assert_eq!(log.lines_after(100, 50).unwrap(), written[100..150]);
            for n in 3_001..3_500 {
                let key = format!("client-key-{n}");
                assert_eq!(log.number_for_key(&key).unwrap(), None);
            }
        };
        check(&log);
        drop(log);
        check(&OrderLog::open_with(&path, SMALL).unwrap());
    }

    /// [`SMALL`], checkpointed only when a test calls [`OrderLog::checkpoint_keys`].
    const CHECKPOINTS_BY_HAND: IndexLimits = IndexLimits {
        key_checkpoint_every: u64::MAX,
        ..SMALL
    };

    #[test]
    fn keys_are_kept_from_their_checkpoint_and_built_again_when_the_log_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let limits = CHECKPOINTS_BY_HAND;
        let keyed = |n: u64| Order {
            key: Some(format!("client-key-{n}")),
            ..order(n, "A")
        };
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        log.write(&lines(&(1..=200).map(keyed).collect::<Vec<_>>()))
            .unwrap();
        log.checkpoint_keys().unwrap();
        log.write(&lines(&(201..=300).map(keyed).collect::<Vec<_>>()))
            .unwrap();
        drop(log);
        let found =
            |log: &OrderLog, n: u64| log.number_for_key(&format!("client-key-{n}")).unwrap();

        // The tables as the checkpoint left them, and the keys after it inserted again.
        let log = OrderLog::open_with(&path, limits).unwrap();
        for n in (1..=300).step_by(3) {
            assert_eq!(found(&log, n), Some(n));
        }
        assert_eq!(found(&log, 301), None);
        drop(log);

        // Tables and a state that cover lines the log no longer holds as they saw them (put
        // back after the log was cut, and then written again, behind their back) are not
        // trusted.
        let keys = dir.path().join("o.index");
        let saved = dir.path().join("saved-keys");
        let copy = |from: &Path, to: &Path| {
            let _ = std::fs::remove_dir_all(to);
            std::fs::create_dir(to).unwrap();
            for file in std::fs::read_dir(from).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
            }
        };
        copy(&keys, &saved);
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        log.replace_after(150, &[]).unwrap();
        assert!(!keys.join("state").exists());
        drop(log);
        copy(&saved, &keys);
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        assert_eq!(found(&log, 150), Some(150));
        assert_eq!(found(&log, 151), None);
        // Lines of the same length as those they replace, in another term.
        let other = |n: u64| Order {
            term: 7,
            key: Some(format!("client-kex-{n}")),
            ..order(n, "A")
        };
        log.write(&lines(&(151..=200).map(other).collect::<Vec<_>>()))
            .unwrap();
        drop(log);
        copy(&saved, &keys);
        let log = OrderLog::open_with(&path, limits).unwrap();
        for n in (1..=150).step_by(3) {
            assert_eq!(found(&log, n), Some(n));
        }
        for n in 151..=200 {
            assert_eq!(found(&log, n), None);
            let key = format!("client-kex-{n}");
            assert_eq!(log.number_for_key(&key).unwrap(), Some(n));
        }
    }

    #[test]
    fn a_log_opened_from_its_checkpoint_reads_as_one_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let limits = IndexLimits {
            entry_runs: 16,
            ..CHECKPOINTS_BY_HAND
        };
        // Entries of 1 to 3 lines, keyed, in three terms, the newest lines fewer than RECENT
        // after the checkpoint.
        let sizes: Vec<u64> = (0..4_000).map(|e| e % 3 + 1).collect();
        let mut written = grouped(1, 0, &sizes);
        written.truncate(RECENT + 3_000);
        for line in &mut written {
            line.order.term = 1 + line.order.number / 2_500;
            line.order.key = Some(format!("client-key-{}", line.order.number));
        }
        let cut = written
            .iter()
            .position(|l| l.order.number == 5_000)
            .unwrap();
        // The checkpoint falls between two lines of one entry, as it may.
        let mut log = OrderLog::open_with(&path, limits).unwrap();
        for batch in written[..=cut].chunks(50) {
            log.write(batch).unwrap();
        }
        log.checkpoint_keys().unwrap();
        for batch in written[cut + 1..].chunks(50) {
            log.write(batch).unwrap();
        }
        drop(log);
        let whole_path = dir.path().join("whole.csv");
        std::fs::copy(&path, &whole_path).unwrap();

        let restored = OrderLog::open_with(&path, limits).unwrap();
        let whole = OrderLog::open_with(&whole_path, limits).unwrap();
        assert!(restored.read_from > 0 && whole.read_from == 0);
        let same = |a: &OrderLog, b: &OrderLog| {
            assert_eq!(
                (a.last(), a.last_term(), a.last_entry()),
                (b.last(), b.last_term(), b.last_entry())
            );
            assert_eq!(
                a.after(0, usize::MAX).unwrap(),
                b.after(0, usize::MAX).unwrap()
            );
            for n in (1..=a.last()).step_by(7) {
                assert_eq!(a.term_at(n), b.term_at(n), "{n}");
                assert_eq!(a.entry_at(n).unwrap(), b.entry_at(n).unwrap(), "{n}");
                if let Some(key) = a.get(n).unwrap().and_then(|o| o.key) {
                    assert_eq!(a.number_for_key(&key).unwrap(), Some(n));
                    assert_eq!(b.number_for_key(&key).unwrap(), Some(n));
                }
            }
            for e in (0..=a.last_entry().unwrap()).step_by(11) {
                assert_eq!(a.first_line(e).unwrap(), b.first_line(e).unwrap(), "{e}");
            }
            for after in [0, 4_990, a.last() - RECENT as u64 - 5] {
                assert_eq!(
                    a.lines_after(after, 100).unwrap(),
                    b.lines_after(after, 100).unwrap()
                );
            }
        };
        same(&restored, &whole);
        // And both go on alike.
        let next_entry = restored.last_entry().unwrap() + 1;
        let next = grouped(written.len() as u64 + 1, next_entry, &[2, 1, 3]);
        let (mut restored, mut whole) = (restored, whole);
        restored.write(&next).unwrap();
        whole.write(&next).unwrap();
        same(&restored, &whole);
    }

    #[test]
    fn appends_must_follow_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = OrderLog::open(dir.path().join("o.csv")).unwrap();
        log.append(&lines(&[order(1, "A"), order(2, "B")])).unwrap();
        for bad in [
            vec![order(2, "B"), order(3, "C")],
            vec![order(5, "E")],
            vec![order(3, "C"), order(5, "E")],
        ] {
            assert!(matches!(
                log.append(&lines(&bad)),
                Err(OrderError::Gap { last: 2 })
            ));
        }
        assert_eq!(log.last(), 2);
    }

    fn termed(number: u64, term: u64, name: &str) -> Order {
        Order {
            term,
            ..order(number, name)
        }
    }

    #[test]
    fn a_divergent_suffix_is_replaced_with_its_keys_and_terms() {
        let (_dir, path, mut log) = new_log();
        // Orders 3 and 4 (term 2) came from a leader that never committed them.
        log.append(&lines(&[
            termed(1, 1, "A"),
            termed(2, 1, "B"),
            termed(3, 2, "X"),
            termed(4, 2, "Y"),
        ]))
        .unwrap();
        // The leader of term 3 holds order 2 of term 1 and its own 3.
        log.replace_after(2, &lines(&[termed(3, 3, "C")])).unwrap();
        assert_eq!(log.last(), 3, "everything after the first conflict goes");
        assert_eq!(log.get(3).unwrap(), Some(termed(3, 3, "C")));
        assert_eq!(log.number_for_key("key-3").unwrap(), Some(3));
        assert_eq!(log.number_for_key("key-4").unwrap(), None);
        assert_eq!(log.term_at(3), Some(3));
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(9), None);
        log.append(&lines(&[termed(4, 3, "D")])).unwrap();
        drop(log);
        let log = OrderLog::open(&path).unwrap();
        assert_eq!(
            log.after(0, 10).unwrap(),
            [
                termed(1, 1, "A"),
                termed(2, 1, "B"),
                termed(3, 3, "C"),
                termed(4, 3, "D")
            ]
        );
    }

    #[test]
    fn replace_after_rewrites_the_file_and_keeps_it_appendable() {
        let (_dir, path, mut log) = new_log();
        // A quoted name may span lines: records, not lines, are what count.
        log.append(&lines(&[
            order(1, "Two\nLines, \"quoted\""),
            order(2, "B"),
            order(3, "C"),
        ]))
        .unwrap();
        log.replace_after(1, &lines(&[termed(2, 5, "Z")])).unwrap();
        assert_eq!(log.number_for_key("key-3").unwrap(), None);
        log.append(&lines(&[termed(3, 5, "W")])).unwrap();
        assert!(log.replace_after(7, &[]).is_err());
        drop(log);
        let log = OrderLog::open(&path).unwrap();
        assert_eq!(
            log.after(0, 10).unwrap(),
            [
                order(1, "Two\nLines, \"quoted\""),
                termed(2, 5, "Z"),
                termed(3, 5, "W")
            ]
        );
        assert!(!path.with_extension("csv.tmp").exists());
    }

    #[test]
    fn torn_last_line_is_truncated_and_log_stays_appendable() {
        let (_dir, path, mut log) = new_log();
        log.append(&lines(&[order(1, "A"), order(2, "B")])).unwrap();
        drop(log);
        for torn in ["3,1,sell,C", "3,1,sell,C,x,\n", "3,1,se"] {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(torn.as_bytes()).unwrap();
            drop(file);
            let mut log = OrderLog::open(&path).unwrap();
            assert_eq!(log.last(), 2, "after tail {torn:?}");
            log.append(&lines(&[order(3, "C")])).unwrap();
            drop(log);
            let log = OrderLog::open(&path).unwrap();
            assert_eq!(log.get(3).unwrap(), Some(order(3, "C")));
            drop(log);
            // Back to two orders for the next torn tail.
            let text = std::fs::read_to_string(&path).unwrap();
            let keep: Vec<&str> = text.lines().take(3).collect();
            std::fs::write(&path, keep.join("\n") + "\n").unwrap();
        }
    }

    /// A crash mid-append may leave the first lines of an entry without its last (a write cut
    /// at a page, a power loss): opening the log drops the whole entry, whose keys are then
    /// not found, and the log takes the entry again.
    #[test]
    fn an_entry_missing_its_last_lines_is_dropped_whole() {
        let (_dir, path, mut log) = new_log();
        log.write(&grouped(1, 0, &[1, 3])).unwrap();
        drop(log);
        let whole = std::fs::read_to_string(&path).unwrap();
        let kept = whole.len();
        let mut log = OrderLog::open(&path).unwrap();
        let entry = grouped(5, 2, &[3]);
        log.write(&entry).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let written: Vec<&str> = text[kept..].split_inclusive('\n').collect();
        assert_eq!(written.len(), 3);
        assert!(
            written[0].contains(",2+,") && written[2].contains(",2,"),
            "{written:?}"
        );
        // Cut after one line, after two, and inside the third.
        let cuts = [
            written[0].len(),
            written[0].len() + written[1].len(),
            written[0].len() + written[1].len() + 10,
        ];
        for cut in cuts {
            std::fs::write(&path, &text[..kept + cut]).unwrap();
            let mut read = 0;
            read_entries(&path, |_| read += 1).unwrap();
            assert_eq!(read, 4, "read as it is, cut at {cut}");
            let mut log = OrderLog::open(&path).unwrap();
            assert_eq!((log.last(), log.last_entry()), (4, Some(1)), "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), kept as u64);
            assert_eq!(log.number_for_key("key-6").unwrap(), None, "cut at {cut}");
            log.write(&entry).unwrap();
            drop(log);
            let log = OrderLog::open(&path).unwrap();
            assert_eq!((log.last(), log.last_entry()), (7, Some(2)));
            assert_eq!(log.number_for_key("key-6").unwrap(), Some(6));
        }
    }

    #[test]
    fn a_log_written_before_the_book_is_read_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        std::fs::write(
            &path,
            format!("{}1,1,sell,A,1,\n2,1,buy,B,2,k\n", record::header_of(8)),
        )
        .unwrap();
        let mut log = OrderLog::open(&path).unwrap();
        assert_eq!(
            log.get(2).unwrap(),
            Some(Order {
                key: Some("k".into()),
                ..unstamped(2, "B")
            })
        );
        log.append(&lines(&[order(3, "C"), order(4, "D"), order(5, "E")]))
            .unwrap();
        drop(log);
        let log = OrderLog::open(&path).unwrap();
        assert_eq!(log.get(1).unwrap(), Some(unstamped(1, "A")));
        assert_eq!(
            log.after(2, 3).unwrap(),
            [order(3, "C"), order(4, "D"), order(5, "E")]
        );
    }

    #[test]
    fn corruption_before_the_tail_is_an_error_not_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let text = format!(
            "{}1,1,sell,A,1,\ngarbage\n3,1,sell,C,3,\n",
            record::header()
        );
        std::fs::write(&path, &text).unwrap();
        let error = OrderLog::open(&path).unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
