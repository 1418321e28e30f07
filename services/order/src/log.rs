//! One replica's order log: an append-only CSV file (`number,term,type,name,quantity,key`)
//! mirrored in memory. Appends are fsync'd before they return; a torn last line left by a
//! crash mid-append is cut off when the log is opened (it was never acknowledged).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use stocknet_common::{Order, Side};

use crate::error::OrderError;

const HEADER: &str = "number,term,type,name,quantity,key\n";

#[derive(Debug)]
pub struct OrderLog {
    path: PathBuf,
    file: File,
    /// `orders[i]` has transaction number `i + 1`.
    orders: Vec<Order>,
    /// Idempotency key → transaction number, for keyed orders.
    keys: HashMap<String, u64>,
}

impl OrderLog {
    /// Opens (or creates) the log at `path`, truncating a torn last line.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, OrderError> {
        let path = path.into();
        let io = |e| OrderError::io(&path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;

        let (orders, good_len) = parse(&text).map_err(|e| e.in_file(&path))?;
        if good_len < text.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = text.len() - good_len,
                "truncating a torn last line of the order log"
            );
            file.set_len(good_len as u64).map_err(io)?;
        }
        if good_len == 0 {
            file.write_all(HEADER.as_bytes()).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        sync_dir(&path)?;

        let keys = orders
            .iter()
            .filter_map(|o| o.key.clone().map(|k| (k, o.number)))
            .collect();
        Ok(Self {
            path,
            file,
            orders,
            keys,
        })
    }

    /// Transaction number of the last order, 0 when empty.
    pub fn last(&self) -> u64 {
        self.orders.len() as u64
    }

    /// Term of the last order, 0 when empty.
    pub fn last_term(&self) -> u64 {
        self.orders.last().map_or(0, |o| o.term)
    }

    pub fn get(&self, number: u64) -> Option<&Order> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.orders.get(index)
    }

    /// Up to `limit` orders with numbers greater than `after`.
    pub fn after(&self, after: u64, limit: usize) -> &[Order] {
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.orders.len());
        let end = start.saturating_add(limit).min(self.orders.len());
        &self.orders[start..end]
    }

    pub fn number_for_key(&self, key: &str) -> Option<u64> {
        self.keys.get(key).copied()
    }

    /// Term of order `number`; 0 for the empty prefix (number 0), `None` past the end.
    pub fn term_at(&self, number: u64) -> Option<u64> {
        if number == 0 {
            Some(0)
        } else {
            self.get(number).map(|o| o.term)
        }
    }

    /// Appends `batch` durably. Its first order must directly follow the last one here, and
    /// its numbers must be consecutive; otherwise nothing is written and
    /// [`OrderError::Gap`] says where this log ends.
    pub fn append(&mut self, batch: &[Order]) -> Result<(), OrderError> {
        self.write(batch)?;
        sync(&self.file, &self.path);
        Ok(())
    }

    /// Like [`append`](Self::append) but without waiting for the disk: the orders are in the
    /// file and visible here at once, durable only after a [`sync`] through
    /// [`sync_handle`](Self::sync_handle). A leader writes each order as it comes and fsyncs
    /// once for all that came meanwhile (group commit).
    pub fn write(&mut self, batch: &[Order]) -> Result<(), OrderError> {
        let last = self.last();
        check_consecutive(last, batch)?;
        let mut text = String::new();
        for order in batch {
            text.push_str(&format_line(order)?);
        }
        let io = |e| OrderError::io(&self.path, e);
        let length = self.file.metadata().map_err(io)?.len();
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Never leave a partial line for the next write to follow.
            let _ = self.file.set_len(length);
            return Err(io(e));
        }
        for order in batch {
            self.remember(order.clone());
        }
        Ok(())
    }

    /// A handle on the log file for [`sync`], so the fsync need not hold the log.
    pub fn sync_handle(&self) -> Result<(File, PathBuf), OrderError> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| OrderError::io(&self.path, e))?;
        Ok((file, self.path.clone()))
    }

    /// Takes `batch`, which in the sender's log follows order `prev` of term `prev_term`
    /// (Raft's log matching). If this log has no such order, nothing changes and the
    /// sender should retry from the `retry_after` of [`Merge::Mismatch`]. Otherwise orders this log
    /// already holds with the same term are kept, the first one that differs in term and
    /// everything after it are replaced by the batch (they were never committed), and the
    /// rest is appended.
    pub fn merge(
        &mut self,
        prev: u64,
        prev_term: u64,
        batch: &[Order],
    ) -> Result<Merge, OrderError> {
        match self.term_at(prev) {
            None => {
                return Ok(Merge::Mismatch {
                    retry_after: self.last(),
                })
            }
            Some(term) if term != prev_term => {
                // Every order of that term here came from one deposed leader: skip them all.
                let first_of_term = self.orders.partition_point(|o| o.term < term) as u64;
                return Ok(Merge::Mismatch {
                    retry_after: first_of_term,
                });
            }
            Some(_) => {}
        }
        check_consecutive(prev, batch)?;
        let through = prev + batch.len() as u64;
        for (index, order) in batch.iter().enumerate() {
            match self.term_at(order.number) {
                Some(term) if term == order.term => continue,
                Some(_) => self.replace_after(order.number - 1, &batch[index..])?,
                None => self.append(&batch[index..])?,
            }
            break;
        }
        Ok(Merge::Matched { through })
    }

    /// Replaces every order after `number` with `batch`, atomically: the new file is written
    /// beside the old one, fsync'd and renamed over it, so a crash leaves one or the other.
    pub fn replace_after(&mut self, number: u64, batch: &[Order]) -> Result<(), OrderError> {
        check_consecutive(number, batch)?;
        let kept = usize::try_from(number).unwrap_or(usize::MAX);
        if kept > self.orders.len() {
            return Err(OrderError::Gap { last: self.last() });
        }
        let io = |e| OrderError::io(&self.path, e);
        // The header record, then one record per kept order (a quoted name may span lines).
        let text = std::fs::read(&self.path).map_err(io)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_slice());
        let mut record = csv::ByteRecord::new();
        for _ in 0..=kept {
            reader
                .read_byte_record(&mut record)
                .map_err(|e| OrderError::Corrupt(e.to_string()))?;
        }
        let mut prefix = text[..reader.position().byte() as usize].to_vec();
        for order in batch {
            prefix.extend_from_slice(format_line(order)?.as_bytes());
        }
        let tmp = self.path.with_extension("csv.tmp");
        let tmp_io = |e| OrderError::io(&tmp, e);
        let mut file = File::create(&tmp).map_err(tmp_io)?;
        file.write_all(&prefix).map_err(tmp_io)?;
        file.sync_all().map_err(tmp_io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        sync_dir(&self.path)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        for dropped in self.orders.drain(kept..) {
            if let Some(key) = dropped.key {
                self.keys.remove(&key);
            }
        }
        for order in batch {
            self.remember(order.clone());
        }
        Ok(())
    }

    fn remember(&mut self, order: Order) {
        if let Some(key) = &order.key {
            self.keys.insert(key.clone(), order.number);
        }
        self.orders.push(order);
    }
}

/// The outcome of [`OrderLog::merge`], which is also a follower's answer to replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Merge {
    /// This log now matches the sender's through `through`.
    Matched { through: u64 },
    /// This log does not hold the sender's order `prev`; retry with the batch after this.
    Mismatch { retry_after: u64 },
}

fn check_consecutive(after: u64, batch: &[Order]) -> Result<(), OrderError> {
    for (offset, order) in batch.iter().enumerate() {
        if order.number != after + 1 + offset as u64 {
            return Err(OrderError::Gap { last: after });
        }
    }
    Ok(())
}

fn format_line(order: &Order) -> Result<String, OrderError> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer
        .write_record([
            order.number.to_string().as_str(),
            order.term.to_string().as_str(),
            order.side.as_str(),
            order.name.as_str(),
            order.quantity.to_string().as_str(),
            order.key.as_deref().unwrap_or(""),
        ])
        .map_err(|e| OrderError::Corrupt(e.to_string()))?;
    let bytes = writer
        .into_inner()
        .map_err(|e| OrderError::Corrupt(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| OrderError::Corrupt(e.to_string()))
}

/// Parses the whole file with one CSV reader; returns the orders and the length of the
/// well-formed prefix. A last record that is cut off or malformed is a torn append (never
/// acknowledged) and lies outside that prefix; a malformed record before it is corruption.
fn parse(text: &[u8]) -> Result<(Vec<Order>, usize), OrderError> {
    // What follows the last newline is an append that never finished.
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&text[..complete]);
    let mut record = csv::ByteRecord::new();
    let mut orders = Vec::new();
    let mut header_seen = false;
    loop {
        let start = reader.position().clone();
        let parsed = match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok((orders, complete)),
            Ok(true) if !header_seen => {
                if record
                    .iter()
                    .ne(HEADER.trim_end().split(',').map(str::as_bytes))
                {
                    return Err(OrderError::Corrupt("missing header line".into()));
                }
                header_seen = true;
                continue;
            }
            Ok(true) => order_from(&record, orders.len() as u64 + 1),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(order) => orders.push(order),
            Err(_) if reader.position().byte() as usize >= complete => {
                return Ok((orders, start.byte() as usize));
            }
            Err(e) => {
                return Err(OrderError::Corrupt(format!("line {}: {e}", start.line())));
            }
        }
    }
}

fn order_from(record: &csv::ByteRecord, expected: u64) -> Result<Order, String> {
    let field = |i: usize| {
        let bytes = record.get(i).ok_or(format!("missing field {i}"))?;
        std::str::from_utf8(bytes).map_err(|e| format!("field {i}: {e}"))
    };
    if record.len() != 6 {
        return Err(format!("expected 6 fields, found {}", record.len()));
    }
    let number: u64 = field(0)?.parse().map_err(|e| format!("number: {e}"))?;
    if number != expected {
        return Err(format!("expected order {expected}, found {number}"));
    }
    let key = field(5)?;
    Ok(Order {
        number,
        term: field(1)?.parse().map_err(|e| format!("term: {e}"))?,
        side: Side::parse(field(2)?).ok_or("type must be buy or sell")?,
        name: field(3)?.to_owned(),
        quantity: field(4)?.parse().map_err(|e| format!("quantity: {e}"))?,
        key: (!key.is_empty()).then(|| key.to_owned()),
    })
}

/// Makes everything written to `file` durable. A failed fsync is not retried: after one, the
/// kernel may have dropped the dirty pages and a second fsync can report success without them
/// (PostgreSQL's "fsyncgate"), so the process exits and recovers from disk and its peers.
pub fn sync(file: &File, path: &Path) {
    if let Err(e) = file.sync_data() {
        tracing::error!(path = %path.display(), "fsync failed, exiting to recover: {e}");
        std::process::exit(70);
    }
}

fn sync_dir(path: &Path) -> Result<(), OrderError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OrderError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(number: u64, name: &str) -> Order {
        Order {
            number,
            term: 1,
            name: name.into(),
            side: if number.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            quantity: number as u32,
            key: number.is_multiple_of(3).then(|| format!("key-{number}")),
        }
    }

    #[test]
    fn appends_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders-1.csv");
        let mut log = OrderLog::open(&path).unwrap();
        assert_eq!(log.last(), 0);
        log.append(&[order(1, "GameStart"), order(2, "Fish, \"Co\"")])
            .unwrap();
        log.append(&[order(3, "BoarCo")]).unwrap();
        drop(log);

        let log = OrderLog::open(&path).unwrap();
        assert_eq!(log.last(), 3);
        assert_eq!(log.get(2), Some(&order(2, "Fish, \"Co\"")));
        assert_eq!(log.number_for_key("key-3"), Some(3));
        assert_eq!(
            log.after(1, 10),
            &[order(2, "Fish, \"Co\""), order(3, "BoarCo")]
        );
        assert_eq!(log.after(1, 1).len(), 1);
        assert!(log.after(99, 10).is_empty());
        assert_eq!(log.get(0), None);
    }

    #[test]
    fn appends_must_follow_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = OrderLog::open(dir.path().join("o.csv")).unwrap();
        log.append(&[order(1, "A"), order(2, "B")]).unwrap();
        for bad in [
            vec![order(2, "B"), order(3, "C")],
            vec![order(5, "E")],
            vec![order(3, "C"), order(5, "E")],
        ] {
            assert!(matches!(log.append(&bad), Err(OrderError::Gap { last: 2 })));
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
    fn merge_keeps_matching_orders_and_replaces_a_divergent_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
        // Orders 3 and 4 (term 2, key-3) came from a leader that never committed them.
        log.append(&[
            termed(1, 1, "A"),
            termed(2, 1, "B"),
            termed(3, 2, "X"),
            termed(4, 2, "Y"),
        ])
        .unwrap();
        // The leader of term 3 holds order 2 of term 1 and its own 3 and 4.
        assert_eq!(
            log.merge(2, 1, &[termed(3, 3, "C")]).unwrap(),
            Merge::Matched { through: 3 }
        );
        assert_eq!(log.last(), 3, "everything after the first conflict goes");
        assert_eq!(log.get(3), Some(&termed(3, 3, "C")));
        assert_eq!(log.number_for_key("key-3"), Some(3));
        // A late, shorter copy of what this log already has changes nothing.
        assert_eq!(
            log.merge(1, 1, &[termed(2, 1, "B")]).unwrap(),
            Merge::Matched { through: 2 }
        );
        assert_eq!(log.last(), 3);
        log.append(&[termed(4, 3, "D")]).unwrap();
        drop(log);
        let log = OrderLog::open(&path).unwrap();
        assert_eq!(
            log.after(0, 10),
            &[
                termed(1, 1, "A"),
                termed(2, 1, "B"),
                termed(3, 3, "C"),
                termed(4, 3, "D")
            ]
        );
    }

    #[test]
    fn merge_reports_where_to_retry_when_the_previous_order_differs() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = OrderLog::open(dir.path().join("o.csv")).unwrap();
        log.append(&[termed(1, 1, "A"), termed(2, 2, "X"), termed(3, 2, "Y")])
            .unwrap();
        // Past the end: retry from where this log ends.
        assert_eq!(
            log.merge(5, 4, &[]).unwrap(),
            Merge::Mismatch { retry_after: 3 }
        );
        // Order 3 differs in term: skip back over all of term 2.
        assert_eq!(
            log.merge(3, 4, &[termed(4, 4, "D")]).unwrap(),
            Merge::Mismatch { retry_after: 1 }
        );
        assert_eq!(log.last(), 3, "a mismatch writes nothing");
        assert_eq!(
            log.merge(1, 1, &[termed(2, 4, "B"), termed(3, 4, "C")])
                .unwrap(),
            Merge::Matched { through: 3 }
        );
        assert_eq!(log.term_at(2), Some(4));
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(9), None);
    }

    #[test]
    fn replace_after_rewrites_the_file_and_keeps_it_appendable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let mut log = OrderLog::open(&path).unwrap();
        // A quoted name may span lines: records, not lines, are what count.
        log.append(&[
            order(1, "Two\nLines, \"quoted\""),
            order(2, "B"),
            order(3, "C"),
        ])
        .unwrap();
        log.replace_after(1, &[termed(2, 5, "Z")]).unwrap();
        assert_eq!(log.number_for_key("key-3"), None);
        log.append(&[termed(3, 5, "W")]).unwrap();
        assert!(log.replace_after(7, &[]).is_err());
        drop(log);
        let log = OrderLog::open(&path).unwrap();
        assert_eq!(
            log.after(0, 10),
            &[
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
        log.append(&[order(1, "A"), order(2, "B")]).unwrap();
        drop(log);
        for torn in ["3,1,sell,C", "3,1,sell,C,x,\n", "3,1,se"] {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(torn.as_bytes()).unwrap();
            drop(file);
            let mut log = OrderLog::open(&path).unwrap();
            assert_eq!(log.last(), 2, "after tail {torn:?}");
            log.append(&[order(3, "C")]).unwrap();
            drop(log);
            let log = OrderLog::open(&path).unwrap();
            assert_eq!(log.get(3), Some(&order(3, "C")));
            drop(log);
            // Back to two orders for the next torn tail.
            let text = std::fs::read_to_string(&path).unwrap();
            let keep: Vec<&str> = text.lines().take(3).collect();
            std::fs::write(&path, keep.join("\n") + "\n").unwrap();
        }
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
