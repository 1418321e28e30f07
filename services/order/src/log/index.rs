//! What locates the log's lines in its file: the offset of every [`STRIDE`]th line, the runs
//! of lines with one term, where the newest entries start, the membership entries, the
//! idempotency keys (on disk), and the newest lines themselves.

use std::collections::VecDeque;
use std::fs::File;

use serde::{Deserialize, Serialize};
use stocknet_common::{Command, GroupEntry, Order};

use super::keys::KeyIndex;
use super::{record, Line, ReadAt, RECENT, STRIDE};
use crate::error::OrderError;

/// What locates orders in the file.
#[derive(Debug)]
pub(super) struct Index {
    pub(super) last: u64,
    /// `checkpoints[i]` is the byte offset where order `i * STRIDE + 1` starts.
    pub(super) checkpoints: Vec<u64>,
    /// `(first order, term)` of each run of consecutive orders with one term.
    pub(super) terms: Vec<(u64, u64)>,
    pub(super) keys: KeyIndex,
    /// The numbers of the replica group's membership entries, in order.
    pub(super) memberships: Vec<u64>,
    /// Where the newest entries start, as runs `(entry, number)`: entry `entry + k` starts at
    /// line `number + k`, and the run's last entry holds every line up to the next run's
    /// first (or the log's end). A log of one line per entry is one run; each entry of several
    /// lines starts one, so only the newest `kept_runs` to `2 × kept_runs` are kept: older
    /// lines say their entry in the file.
    pub(super) entries: Vec<(u64, u64)>,
    kept_runs: usize,
    /// The entry of the last line (0 when empty).
    pub(super) last_entry: u64,
    /// The last (up to) [`RECENT`] orders.
    pub(super) recent: VecDeque<Order>,
}

/// What an index holds but its keys and newest lines, as a checkpoint keeps it: the index of
/// the file's first `len` bytes, through line `last`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct IndexImage {
    pub(super) last: u64,
    pub(super) len: u64,
    checkpoints: Vec<u64>,
    terms: Vec<(u64, u64)>,
    memberships: Vec<u64>,
    entries: Vec<(u64, u64)>,
    last_entry: u64,
}

impl IndexImage {
    /// Whether its runs of terms start at line 1 and go up: an image decoded from a damaged
    /// checkpoint may not, and would leave lines without a term.
    pub(super) fn terms_are_whole(&self) -> bool {
        self.terms.first().is_some_and(|&(first, _)| first == 1)
            && self.terms.windows(2).all(|pair| pair[0].0 < pair[1].0)
    }

    /// The byte offset of the checkpoint at or before line `number` (in the image).
    pub(super) fn checkpoint_before(&self, number: u64) -> Option<(u64, u64)> {
        let slot = number.checked_sub(1)? / STRIDE;
        let offset = *self.checkpoints.get(usize::try_from(slot).ok()?)?;
        Some((slot * STRIDE + 1, offset))
    }
}

impl Index {
    pub(super) fn new(keys: KeyIndex, kept_runs: usize) -> Self {
        Self {
            last: 0,
            checkpoints: Vec::new(),
            terms: Vec::new(),
            keys,
            memberships: Vec::new(),
            entries: Vec::new(),
            kept_runs: kept_runs.max(1),
            last_entry: 0,
            recent: VecDeque::new(),
        }
    }

    /// This index but its keys and newest lines, for a checkpoint; `len` is the length of
    /// the file it indexes.
    pub(super) fn image(&self, len: u64) -> IndexImage {
        IndexImage {
            last: self.last,
            len,
            checkpoints: self.checkpoints.clone(),
            terms: self.terms.clone(),
            memberships: self.memberships.clone(),
            entries: self.entries.clone(),
            last_entry: self.last_entry,
        }
    }

    /// Takes what `image` says of an empty index; the lines after it are then loaded from
    /// its `len` on.
    pub(super) fn restore(&mut self, image: IndexImage) {
        self.last = image.last;
        self.checkpoints = image.checkpoints;
        self.terms = image.terms;
        self.memberships = image.memberships;
        self.entries = image.entries;
        self.last_entry = image.last_entry;
    }

    /// Indexes every complete record of `file` from byte `from` (0, or where a restored
    /// image ends) to byte `complete`, and inserts the keys of those after line
    /// `keys_through`. Returns the length of the well-formed prefix, and whether a complete
    /// line was dropped from it as unreadable. The lines of an entry cut off by a crash lie
    /// outside it; so does a last line that ends and cannot be read, which no crash makes (an
    /// append that did not finish has no newline) but a damaged disk may, and which the caller
    /// must not take as never sent. A malformed record before the last is corruption.
    pub(super) fn load(
        &mut self,
        file: &File,
        (from, complete): (u64, u64),
        keys_through: u64,
    ) -> Result<(u64, bool), OrderError> {
        let mut reader = record::reader(ReadAt {
            file,
            offset: from,
            end: complete,
        });
        let mut record = csv::ByteRecord::new();
        let mut header_seen = from > 0;
        // The lines of an entry are taken once its last line is read: a crash mid-append may
        // have left only its first lines, and then the whole entry goes (it was never
        // acknowledged: one append writes it, and answers once the append is durable).
        let mut entry_lines: Vec<(Line, u64)> = Vec::new();
        loop {
            let start = reader.position().clone();
            let expected = self.last + 1 + entry_lines.len() as u64;
            let parsed = match reader.read_byte_record(&mut record) {
                Ok(false) => {
                    let end = entry_lines.first().map_or(complete, |(_, start)| *start);
                    return Ok((end, false));
                }
                Ok(true) if !header_seen => {
                    if !record::is_header(&record) {
                        return Err(OrderError::Corrupt("missing header line".into()));
                    }
                    header_seen = true;
                    continue;
                }
                Ok(true) => record::decode(&record, expected),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(line) => {
                    entry_lines.push((line, from + start.byte()));
                    if record::is_continued(&record) {
                        continue;
                    }
                    for (line, start) in entry_lines.drain(..) {
                        let number = line.order.number;
                        if let (Some(key), true) = (&line.order.key, number > keys_through) {
                            self.keys
                                .insert(key, number)
                                .map_err(|e| OrderError::Corrupt(format!("its key index: {e}")))?;
                        }
                        self.push(&line, start);
                    }
                }
                Err(_) if from + reader.position().byte() >= complete => {
                    let unreadable = from + start.byte();
                    let end = entry_lines.first().map_or(unreadable, |(_, start)| *start);
                    return Ok((end, true));
                }
                Err(e) if from == 0 => {
                    return Err(OrderError::Corrupt(format!("line {}: {e}", start.line())));
                }
                Err(e) => {
                    return Err(OrderError::Corrupt(format!("order {expected}: {e}")));
                }
            }
        }
    }

    /// Records `line`, which follows the last one and starts at byte `start` (its key is the
    /// caller's to insert, before the line is written).
    pub(super) fn push(&mut self, line: &Line, start: u64) {
        let Line { entry, order } = line;
        let starts_entry = self.last == 0 || *entry != self.last_entry;
        if starts_entry
            && self.entries.last().is_none_or(|&(first_entry, first)| {
                first + entry.saturating_sub(first_entry) != order.number
            })
        {
            if self.entries.len() >= 2 * self.kept_runs {
                self.entries.drain(..self.kept_runs);
            }
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
        if matches!(order.command, Command::Group(GroupEntry::Membership(_))) {
            self.memberships.push(order.number);
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(order.clone());
        self.last = order.number;
    }

    /// Forgets every order after `last`, whose entry is `last_entry`, but their keys (a key
    /// index slot whose line is gone or replaced is harmless: lookups read the line).
    pub(super) fn truncate(&mut self, last: u64, last_entry: u64) {
        self.checkpoints
            .truncate(usize::try_from(last.div_ceil(STRIDE)).unwrap_or(usize::MAX));
        let runs = self.terms.partition_point(|&(first, _)| first <= last);
        self.terms.truncate(runs);
        let kept = self.memberships.partition_point(|&number| number <= last);
        self.memberships.truncate(kept);
        self.last_entry = last_entry;
        let runs = self.entries.partition_point(|&(_, first)| first <= last);
        self.entries.truncate(runs);
        while self.recent.back().is_some_and(|o| o.number > last) {
            self.recent.pop_back();
        }
        self.last = last;
    }

    /// The entry of line `number` (in the log), if the runs kept in memory reach back to it.
    pub(super) fn entry_in_memory(&self, number: u64) -> Option<u64> {
        if !self.covers_line(number) {
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

    /// Whether the runs kept in memory reach back to line `number`.
    pub(super) fn covers_line(&self, number: u64) -> bool {
        self.entries
            .first()
            .is_some_and(|&(_, first)| first <= number)
    }

    /// The first line of entry `entry` (at most the last entry), if the runs kept in memory
    /// reach back to it; otherwise `Err` with the line before which it starts.
    pub(super) fn first_line_in_memory(&self, entry: u64) -> Result<u64, u64> {
        match self.entries.first() {
            Some(&(first_entry, _)) if first_entry <= entry => {}
            Some(&(_, first)) => return Err(first),
            None => return Err(self.last + 1),
        }
        let run = self
            .entries
            .partition_point(|&(first_entry, _)| first_entry <= entry);
        let (first_entry, first) = self.entries[run - 1];
        Ok(first + (entry - first_entry))
    }

    pub(super) fn term_at(&self, number: u64) -> Option<u64> {
        if number == 0 {
            return Some(0);
        }
        if number > self.last {
            return None;
        }
        let run = self.terms.partition_point(|&(first, _)| first <= number);
        self.terms.get(run.checked_sub(1)?).map(|&(_, term)| term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose terms do not start at line 1 (a damaged checkpoint that still decodes)
    /// is not taken, so no line is left without a term.
    #[test]
    fn an_image_whose_terms_do_not_start_at_line_one_is_not_whole() {
        let image = |terms: Vec<(u64, u64)>| IndexImage {
            last: 9,
            len: 100,
            checkpoints: vec![0],
            terms,
            memberships: Vec::new(),
            entries: Vec::new(),
            last_entry: 9,
        };
        assert!(image(vec![(1, 1), (5, 2)]).terms_are_whole());
        for damaged in [
            vec![],
            vec![(2, 1)],
            vec![(1, 1), (1, 2)],
            vec![(1, 1), (7, 2), (5, 3)],
        ] {
            assert!(!image(damaged.clone()).terms_are_whole(), "{damaged:?}");
        }
    }
}
