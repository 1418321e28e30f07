//! One replica's order log: an append-only CSV file
//! (`number,term,type,name,quantity,key,price,target,user,time,quote,rejected,entry`), one
//! line per order, each with the index of the Raft entry it came in (a leader proposes the
//! commands that arrive together as one entry, so an entry holds one line or several).
//! The orders stay on disk; memory holds only what finds them again: the offset of every
//! [`STRIDE`]th order, the runs of orders with one term, where entries of several lines
//! start, and 8 bytes per idempotency key.
//! Appends are fsync'd before they return; a torn last record left by a crash mid-append is
//! cut off when the log is opened (it was never acknowledged).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use stocknet_common::model::EntryFields;
use stocknet_common::{file, Command, GroupEntry, Order, Price, Rejection};

use crate::error::OrderError;

const HEADER: &str =
    "number,term,type,name,quantity,key,price,target,user,time,quote,rejected,entry\n";

/// Headers of logs written before entries held several lines (twelve fields), before users
/// and stamps (eight) and before the order book (six). Such a log is read as it is (each of
/// its lines its own entry, see [`Line::alone`]) and new lines are appended in the current
/// form.
const OLDER_HEADERS: [&str; 3] = [
    "number,term,type,name,quantity,key,price,target,user,time,quote,rejected\n",
    "number,term,type,name,quantity,key,price,target\n",
    "number,term,type,name,quantity,key\n",
];

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

#[derive(Debug)]
pub struct OrderLog {
    path: PathBuf,
    file: File,
    /// Length of the file; every byte before it belongs to a complete record.
    len: u64,
    index: Index,
}

/// What locates orders in the file.
#[derive(Debug, Default)]
struct Index {
    last: u64,
    /// `checkpoints[i]` is the byte offset where order `i * STRIDE + 1` starts.
    checkpoints: Vec<u64>,
    /// `(first order, term)` of each run of consecutive orders with one term.
    terms: Vec<(u64, u64)>,
    keys: KeyIndex,
    /// The numbers of the replica group's membership entries, in order.
    memberships: Vec<u64>,
    /// Where entries start, as runs `(entry, number)`: entry `entry + k` starts at line
    /// `number + k`, and the run's last entry holds every line up to the next run's first
    /// (or the log's end). A log of one line per entry is one run.
    entries: Vec<(u64, u64)>,
    /// The entry of the last line (0 when empty).
    last_entry: u64,
    /// The last (up to) [`RECENT`] orders.
    recent: VecDeque<Order>,
}

impl OrderLog {
    /// Opens (or creates) the log at `path`, truncating a torn last record.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, OrderError> {
        let path = path.into();
        let io = |e| OrderError::io(&path, e);
        let file = file::open_append(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let complete = file::end_of_last_line(&file, size).map_err(io)?;
        let mut index = Index::default();
        let good_len = index.load(&file, complete).map_err(|e| e.in_file(&path))?;
        if good_len < size {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = size - good_len,
                "truncating a torn last record of the order log"
            );
            file.set_len(good_len).map_err(io)?;
        }
        let mut len = good_len;
        if len == 0 {
            (&file).write_all(HEADER.as_bytes()).map_err(io)?;
            len = HEADER.len() as u64;
        }
        file.sync_all().map_err(io)?;
        file::sync_dir(&path).map_err(io)?;
        Ok(Self {
            path,
            file,
            len,
            index,
        })
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
        for number in self.index.keys.candidates(key) {
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

    /// The entry line `number` belongs to; `None` for number 0 and past the end.
    pub fn entry_at(&self, number: u64) -> Option<u64> {
        self.index.entry_at(number)
    }

    /// The number of entry `entry`'s first line, if the log holds that entry.
    pub fn first_line(&self, entry: u64) -> Option<u64> {
        self.index.first_line(entry)
    }

    /// Up to `limit` lines with numbers greater than `after`, with their entries.
    pub fn lines_after(&self, after: u64, limit: usize) -> Result<Vec<Line>, OrderError> {
        let orders = self.after(after, limit)?;
        Ok(orders
            .into_iter()
            .map(|order| Line {
                entry: self.index.entry_at(order.number).unwrap_or_default(),
                order,
            })
            .collect())
    }

    /// Appends `batch` durably. Its first line must directly follow the last one here, its
    /// numbers must be consecutive and each line's entry the one before's or the next;
    /// otherwise nothing is written and [`OrderError::Gap`] says where this log ends.
    pub fn append(&mut self, batch: &[Line]) -> Result<(), OrderError> {
        self.write(batch)?;
        file::sync_data_or_exit(&self.file, &self.path);
        Ok(())
    }

    /// Like [`append`](Self::append) but without waiting for the disk: the orders are in the
    /// file and visible here at once, durable only after a [`file::sync_data_or_exit`] through
    /// [`sync_handle`](Self::sync_handle). A leader writes each order as it comes and fsyncs
    /// once for all that came meanwhile (group commit).
    pub fn write(&mut self, batch: &[Line]) -> Result<(), OrderError> {
        check_consecutive(self.last(), self.index.entry_at(self.last()), batch)?;
        let (text, starts) = format_records(batch, self.len)?;
        if let Err(e) = (&self.file).write_all(&text) {
            // Never leave a partial record for the next write to follow.
            let _ = self.file.set_len(self.len);
            return Err(OrderError::io(&self.path, e));
        }
        self.len += text.len() as u64;
        for (line, start) in batch.iter().zip(starts) {
            self.index.push(line, start);
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
        check_consecutive(number, self.index.entry_at(number), batch)?;
        if number > self.last() {
            return Err(OrderError::Gap { last: self.last() });
        }
        let io = |e| OrderError::io(&self.path, e);
        let cut = self.offset_of(number + 1)?;
        let (text, starts) = format_records(batch, cut)?;
        file::replace_atomically(&self.path, |out| {
            // The kept prefix, copied by the kernel (copy_file_range), then the batch.
            let copied = std::io::copy(&mut File::open(&self.path)?.take(cut), out)?;
            if copied != cut {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("shorter than its index ({copied} of {cut} bytes)"),
                ));
            }
            out.write_all(&text)
        })
        .map_err(io)?;
        // The old file is still open here: its dropped orders say which keys to forget.
        let mut dropped = Vec::new();
        self.visit(number + 1, usize::MAX, |order| {
            dropped.extend(order.key.map(|key| (key, order.number)));
        })?;
        for (key, number) in dropped {
            self.index.keys.remove(&key, number);
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.len = cut + text.len() as u64;
        self.index.truncate(number);
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
        let end = first
            .saturating_add(limit as u64)
            .min(self.last().saturating_add(1));
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
        let (mut reader, mut number, _) = self.reader_at(first);
        let mut record = csv::ByteRecord::new();
        while number < end {
            self.next_record(&mut reader, &mut record, number)?;
            if number >= first {
                each(
                    line_from(&record, number)
                        .map_err(|e| self.corrupt(number, &e))?
                        .order,
                );
            }
            number += 1;
        }
        Ok(())
    }

    /// The byte offset where order `number` starts; the file's end for the one after the last.
    fn offset_of(&self, number: u64) -> Result<u64, OrderError> {
        if number > self.last() {
            return Ok(self.len);
        }
        let (mut reader, mut at, base) = self.reader_at(number);
        let mut record = csv::ByteRecord::new();
        while at < number {
            self.next_record(&mut reader, &mut record, at)?;
            at += 1;
        }
        Ok(base + reader.position().byte())
    }

    /// A reader at the checkpoint at or before order `number` (which must be in the log),
    /// with the number of the order it starts at and its byte offset.
    fn reader_at(&self, number: u64) -> (csv::Reader<ReadAt<'_>>, u64, u64) {
        let slot = (number - 1) / STRIDE;
        let start = self.index.checkpoints[slot as usize];
        let reader = csv_reader(ReadAt {
            file: &self.file,
            offset: start,
            end: self.len,
        });
        (reader, slot * STRIDE + 1, start)
    }

    fn next_record(
        &self,
        reader: &mut csv::Reader<ReadAt<'_>>,
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

impl Index {
    /// Indexes every complete record of `file` before byte `complete`. Returns the length of
    /// the well-formed prefix: a last record that is cut off or malformed is a torn append
    /// (never acknowledged) and lies outside it; a malformed record before it is corruption.
    fn load(&mut self, file: &File, complete: u64) -> Result<u64, OrderError> {
        let mut reader = csv_reader(ReadAt {
            file,
            offset: 0,
            end: complete,
        });
        let mut record = csv::ByteRecord::new();
        let mut header_seen = false;
        loop {
            let start = reader.position().clone();
            let parsed = match reader.read_byte_record(&mut record) {
                Ok(false) => return Ok(complete),
                Ok(true) if !header_seen => {
                    let is = |header: &str| {
                        record
                            .iter()
                            .eq(header.trim_end().split(',').map(str::as_bytes))
                    };
                    if !is(HEADER) && !OLDER_HEADERS.into_iter().any(is) {
                        return Err(OrderError::Corrupt("missing header line".into()));
                    }
                    header_seen = true;
                    continue;
                }
                Ok(true) => line_from(&record, self.last + 1),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(line) => self.push(&line, start.byte()),
                Err(_) if reader.position().byte() >= complete => return Ok(start.byte()),
                Err(e) => {
                    return Err(OrderError::Corrupt(format!("line {}: {e}", start.line())));
                }
            }
        }
    }

    /// Records `line`, which follows the last one and starts at byte `start`.
    fn push(&mut self, line: &Line, start: u64) {
        let Line { entry, order } = line;
        let starts_entry = self.last == 0 || *entry != self.last_entry;
        if starts_entry
            && self.entries.last().is_none_or(|&(first_entry, first)| {
                first + entry.saturating_sub(first_entry) != order.number
            })
        {
            self.entries.push((*entry, order.number));
        }
        self.last_entry = *entry;
        if (order.number - 1).is_multiple_of(STRIDE) {
            self.checkpoints.push(start);
        }
        if self
            .terms
            .last()
            .is_none_or(|&(_, term)| term != order.term)
        {
            self.terms.push((order.number, order.term));
        }
        if let Some(key) = &order.key {
            self.keys.insert(key, order.number);
        }
        if matches!(order.command, Command::Group(GroupEntry::Membership(_))) {
            self.memberships.push(order.number);
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(order.clone());
        self.last = order.number;
    }

    /// Forgets every order after `last` but their keys (the caller removes those).
    fn truncate(&mut self, last: u64) {
        self.checkpoints
            .truncate(usize::try_from(last.div_ceil(STRIDE)).unwrap_or(usize::MAX));
        let runs = self.terms.partition_point(|&(first, _)| first <= last);
        self.terms.truncate(runs);
        let kept = self.memberships.partition_point(|&number| number <= last);
        self.memberships.truncate(kept);
        self.last_entry = self.entry_at(last).unwrap_or(0);
        let runs = self.entries.partition_point(|&(_, first)| first <= last);
        self.entries.truncate(runs);
        while self.recent.back().is_some_and(|o| o.number > last) {
            self.recent.pop_back();
        }
        self.last = last;
    }

    fn entry_at(&self, number: u64) -> Option<u64> {
        if number == 0 || number > self.last {
            return None;
        }
        let run = self.entries.partition_point(|&(_, first)| first <= number);
        let (entry, first) = *self.entries.get(run.checked_sub(1)?)?;
        let run_last = self
            .entries
            .get(run)
            .map_or(self.last_entry, |&(next, _)| next.saturating_sub(1));
        Some((entry + (number - first)).min(run_last))
    }

    fn first_line(&self, entry: u64) -> Option<u64> {
        if self.last == 0 || entry > self.last_entry {
            return None;
        }
        let run = self
            .entries
            .partition_point(|&(first_entry, _)| first_entry <= entry);
        let (first_entry, first) = *self.entries.get(run.checked_sub(1)?)?;
        Some(first + (entry - first_entry))
    }

    fn term_at(&self, number: u64) -> Option<u64> {
        if number == 0 {
            return Some(0);
        }
        if number > self.last {
            return None;
        }
        let run = self.terms.partition_point(|&(first, _)| first <= number);
        Some(self.terms[run - 1].1)
    }
}

/// Idempotency key → order number in one `u64` per key: the top 24 bits are a fingerprint of
/// the key, the low 40 the order's number. The keys themselves stay in the log; a candidate
/// whose fingerprint matches is confirmed by reading its order. A million keys fit in a table
/// of 2^21 slots of 9 bytes (19 MB).
#[derive(Debug, Default)]
struct KeyIndex {
    table: HashTable<u64>,
    hasher: RandomState,
}

const NUMBER_BITS: u32 = 40;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;

/// The highest order number a log holds: about 10^12, nearly nine years of orders at 4,000/s.
pub const MAX_ORDER_NUMBER: u64 = NUMBER_MASK;

impl KeyIndex {
    fn fingerprint(&self, key: &str) -> u64 {
        self.hasher.hash_one(key) >> NUMBER_BITS
    }

    /// The table's hash of a fingerprint. Entries are hashed from their fingerprint alone, so
    /// the table can grow without the keys.
    fn table_hash(fingerprint: u64) -> u64 {
        fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn entry_hash(entry: &u64) -> u64 {
        Self::table_hash(entry >> NUMBER_BITS)
    }

    fn insert(&mut self, key: &str, number: u64) {
        let fingerprint = self.fingerprint(key);
        let entry = fingerprint << NUMBER_BITS | number;
        self.table
            .insert_unique(Self::table_hash(fingerprint), entry, Self::entry_hash);
    }

    /// The numbers of the orders whose key may be `key`.
    fn candidates(&self, key: &str) -> impl Iterator<Item = u64> + '_ {
        let fingerprint = self.fingerprint(key);
        self.table
            .iter_hash(Self::table_hash(fingerprint))
            .filter(move |&&entry| entry >> NUMBER_BITS == fingerprint)
            .map(|&entry| entry & NUMBER_MASK)
    }

    fn remove(&mut self, key: &str, number: u64) {
        let fingerprint = self.fingerprint(key);
        let entry = fingerprint << NUMBER_BITS | number;
        if let Ok(found) = self
            .table
            .find_entry(Self::table_hash(fingerprint), |&e| e == entry)
        {
            found.remove();
        }
    }
}

/// Calls `each` with every entry of the log file at `path`, in order, only reading it (the
/// file may belong to a running replica): a torn last record is left out, as opening the log
/// would cut it off.
pub fn read_entries(path: &Path, mut each: impl FnMut(Order)) -> Result<(), OrderError> {
    let io = |e| OrderError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let complete = file::end_of_last_line(&file, size).map_err(io)?;
    let mut reader = csv_reader(ReadAt {
        file: &file,
        offset: 0,
        end: complete,
    });
    let mut record = csv::ByteRecord::new();
    let mut number = 0;
    loop {
        let read = reader
            .read_byte_record(&mut record)
            .map_err(|e| OrderError::Corrupt(format!("{}: {e}", path.display())));
        if !read? {
            return Ok(());
        }
        if number == 0 {
            let header: Vec<&[u8]> = record.iter().collect();
            let known = std::iter::once(HEADER).chain(OLDER_HEADERS).any(|h| {
                header
                    == h.trim_end()
                        .split(',')
                        .map(str::as_bytes)
                        .collect::<Vec<_>>()
            });
            if !known {
                return Err(OrderError::Corrupt(format!(
                    "{}: missing header line",
                    path.display()
                )));
            }
        } else {
            let line = line_from(&record, number).map_err(|e| {
                OrderError::Corrupt(format!("{}: order {number}: {e}", path.display()))
            })?;
            each(line.order);
        }
        number += 1;
    }
}

/// Reads a file between two offsets with `pread`, so readers share no file position.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = usize::try_from(self.end.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let read = self.file.read_at(&mut buf[..room], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

fn csv_reader<R: Read>(source: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(source)
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
    for Line { entry, order } in batch {
        writer.flush().map_err(|e| corrupt(&e))?;
        starts.push(base + writer.get_ref().len() as u64);
        let fields = EntryFields::from(order.clone());
        let text = |value: Option<String>| value.unwrap_or_default();
        writer
            .write_record([
                fields.number.to_string(),
                fields.term.to_string(),
                fields.kind,
                fields.name,
                text(fields.quantity.map(|q| q.to_string())),
                text(fields.key),
                text(fields.price.map(|p| p.to_string())),
                text(fields.target.map(|t| t.to_string())),
                text(fields.user.map(|u| u.to_string())),
                fields.time.to_string(),
                text(fields.quote.map(|p| p.to_string())),
                text(fields.rejected.map(|r| r.as_str().to_owned())),
                entry.to_string(),
            ])
            .map_err(|e| corrupt(&e))?;
    }
    let text = writer.into_inner().map_err(|e| corrupt(&e))?;
    Ok((text, starts))
}

/// Parses one record: thirteen fields, or twelve, eight or six in a log written before entries
/// held several lines, before stamps or before the order book.
fn line_from(record: &csv::ByteRecord, expected: u64) -> Result<Line, String> {
    let field = |i: usize| {
        let bytes = record.get(i).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|e| format!("field {i}: {e}"))
    };
    let optional = |i: usize| field(i).map(|text| (!text.is_empty()).then_some(text));
    if ![13, 12, 8, 6].contains(&record.len()) {
        return Err(format!("expected 13 fields, found {}", record.len()));
    }
    let price = |i: usize| {
        optional(i)?
            .map(|p| p.parse::<Price>().map_err(|e| format!("field {i}: {e}")))
            .transpose()
    };
    let number: u64 = field(0)?.parse().map_err(|e| format!("number: {e}"))?;
    if number != expected {
        return Err(format!("expected order {expected}, found {number}"));
    }
    let fields = EntryFields {
        number,
        term: field(1)?.parse().map_err(|e| format!("term: {e}"))?,
        kind: field(2)?.to_owned(),
        name: field(3)?.to_owned(),
        quantity: optional(4)?
            .map(|q| q.parse().map_err(|e| format!("quantity: {e}")))
            .transpose()?,
        key: optional(5)?.map(str::to_owned),
        price: price(6)?,
        target: optional(7)?
            .map(|t| t.parse().map_err(|e| format!("target: {e}")))
            .transpose()?,
        user: optional(8)?
            .map(|u| u.parse().map_err(|e| format!("user: {e}")))
            .transpose()?,
        time: optional(9)?
            .map(|t| t.parse().map_err(|e| format!("time: {e}")))
            .transpose()?
            .unwrap_or(0),
        quote: price(10)?,
        rejected: optional(11)?
            .map(|r| Rejection::parse(r).ok_or_else(|| format!("rejected: unknown reason {r:?}")))
            .transpose()?,
    };
    let order = Order::try_from(fields)?;
    match optional(12)? {
        Some(entry) => Ok(Line {
            entry: entry.parse().map_err(|e| format!("entry: {e}"))?,
            order,
        }),
        None => Ok(Line::alone(order)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stocknet_common::{Command, Side, Stamp};

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

    #[test]
    fn entries_of_several_lines_are_found_by_entry_and_by_line_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders-1.csv");
        let mut log = OrderLog::open(&path).unwrap();
        // Entries 0..=2 alone, 3 of three lines, 4 alone, 5 of two lines, 6 alone.
        let written = grouped(1, 0, &[1, 1, 1, 3, 1, 2, 1]);
        log.append(&written[..4]).unwrap();
        log.append(&written[4..]).unwrap();
        let check = |log: &OrderLog| {
            assert_eq!(log.lines_after(0, usize::MAX).unwrap(), written);
            for line in &written {
                assert_eq!(log.entry_at(line.order.number), Some(line.entry));
            }
            let firsts: Vec<_> = (0..=7).map(|e| log.first_line(e)).collect();
            let expected = [1, 2, 3, 4, 7, 8, 10].map(Some);
            assert_eq!(firsts[..7], expected, "{firsts:?}");
            assert_eq!(firsts[7], None);
            assert_eq!(log.entry_at(0), None);
            assert_eq!(log.entry_at(11), None);
        };
        check(&log);
        drop(log);
        let mut log = OrderLog::open(&path).unwrap();
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
        assert_eq!(log.first_line(5), Some(8));
        assert_eq!(log.first_line(6), Some(10));
        assert_eq!(log.first_line(7), None);
        assert_eq!(log.entry_at(9), Some(5));
        log.replace_after(4, &[]).unwrap();
        assert_eq!((log.last(), log.entry_at(4)), (4, Some(3)));
        assert_eq!(log.first_line(3), Some(4));
        assert_eq!(log.first_line(4), None);
        log.append(&grouped(5, 4, &[1])).unwrap();
        assert_eq!(log.first_line(4), Some(5));
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
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
        for kept in [0, 1, 63, 64, 65, 100, total - 100, total - 1] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("o.csv");
            let mut log = OrderLog::open(&path).unwrap();
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
            for log in [log, OrderLog::open(&path).unwrap()] {
                assert_eq!(log.after(0, usize::MAX).unwrap(), expected, "kept {kept}");
                assert_eq!(log.term_at(kept + 1), Some(9));
                let dropped = (kept + 1..=total).find(|n| n % 3 == 0 && *n > kept + 31);
                if let Some(n) = dropped {
                    let key = format!("key-{n}");
                    assert_eq!(log.number_for_key(&key).unwrap(), None, "kept {kept}");
                }
                let key = format!("new-{}", kept + 1);
                assert_eq!(log.number_for_key(&key).unwrap(), Some(kept + 1));
            }
        }
    }

    #[test]
    fn keys_whose_fingerprints_collide_are_told_apart_by_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = OrderLog::open(dir.path().join("o.csv")).unwrap();
        let orders: Vec<Order> = (1..=50_000)
            .map(|n| Order {
                key: Some(format!("client-key-{n}")),
                ..order(n, "A")
            })
            .collect();
        log.write(&lines(&orders)).unwrap();
        // 50,000 keys in 2^24 fingerprints: about 75 pairs share one, so some lookups below
        // find two candidates and must read the log to pick the right one.
        let mut fingerprints: Vec<u64> = log
            .index
            .keys
            .table
            .iter()
            .map(|entry| entry >> NUMBER_BITS)
            .collect();
        fingerprints.sort_unstable();
        let shared: Vec<u64> = fingerprints
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        assert!(!shared.is_empty(), "no two fingerprints collided");
        for order in &orders {
            let key = order.key.as_deref().unwrap();
            if shared.contains(&log.index.keys.fingerprint(key)) || order.number % 97 == 0 {
                assert_eq!(log.number_for_key(key).unwrap(), Some(order.number));
            }
        }
        for n in 50_001..55_000 {
            let key = format!("client-key-{n}");
            assert_eq!(log.number_for_key(&key).unwrap(), None);
        }
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
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

    #[test]
    fn a_log_written_before_the_book_is_read_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        std::fs::write(
            &path,
            format!("{}1,1,sell,A,1,\n2,1,buy,B,2,k\n", OLDER_HEADERS[1]),
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
        let text = format!("{HEADER}1,1,sell,A,1,\ngarbage\n3,1,sell,C,3,\n");
        std::fs::write(&path, &text).unwrap();
        let error = OrderLog::open(&path).unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
