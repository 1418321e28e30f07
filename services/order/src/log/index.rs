//! What locates the log's lines in its file: the offset of every [`STRIDE`]th line, the runs
//! of lines with one term, where entries of several lines start, the membership entries, the
//! idempotency keys, and the newest lines themselves.

use std::collections::VecDeque;
use std::fs::File;

use stocknet_common::{Command, GroupEntry, Order};

use super::keys::KeyIndex;
use super::{record, Line, ReadAt, RECENT, STRIDE};
use crate::error::OrderError;

/// What locates orders in the file.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) last: u64,
    /// `checkpoints[i]` is the byte offset where order `i * STRIDE + 1` starts.
    pub(super) checkpoints: Vec<u64>,
    /// `(first order, term)` of each run of consecutive orders with one term.
    pub(super) terms: Vec<(u64, u64)>,
    pub(super) keys: KeyIndex,
    /// The numbers of the replica group's membership entries, in order.
    pub(super) memberships: Vec<u64>,
    /// Where entries start, as runs `(entry, number)`: entry `entry + k` starts at line
    /// `number + k`, and the run's last entry holds every line up to the next run's first
    /// (or the log's end). A log of one line per entry is one run.
    pub(super) entries: Vec<(u64, u64)>,
    /// The entry of the last line (0 when empty).
    pub(super) last_entry: u64,
    /// The last (up to) [`RECENT`] orders.
    pub(super) recent: VecDeque<Order>,
}

impl Index {
    /// Indexes every complete record of `file` before byte `complete`. Returns the length of
    /// the well-formed prefix: a last record that is cut off or malformed is a torn append
    /// (never acknowledged) and lies outside it; a malformed record before it is corruption.
    pub(super) fn load(&mut self, file: &File, complete: u64) -> Result<u64, OrderError> {
        let mut reader = record::reader(ReadAt {
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
                    if !record::is_header(&record) {
                        return Err(OrderError::Corrupt("missing header line".into()));
                    }
                    header_seen = true;
                    continue;
                }
                Ok(true) => record::decode(&record, self.last + 1),
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
    pub(super) fn push(&mut self, line: &Line, start: u64) {
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
    pub(super) fn truncate(&mut self, last: u64) {
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

    pub(super) fn entry_at(&self, number: u64) -> Option<u64> {
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

    pub(super) fn first_line(&self, entry: u64) -> Option<u64> {
        if self.last == 0 || entry > self.last_entry {
            return None;
        }
        let run = self
            .entries
            .partition_point(|&(first_entry, _)| first_entry <= entry);
        let (first_entry, first) = *self.entries.get(run.checked_sub(1)?)?;
        Some(first + (entry - first_entry))
    }

    pub(super) fn term_at(&self, number: u64) -> Option<u64> {
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
