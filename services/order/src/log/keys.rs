//! The idempotency keys of the log: which line holds a key, in hash tables on disk beside the
//! log, so that a replica's memory does not grow with the keys it has seen (every order has
//! one, the frontend's if not the client's). They are derived from the log and built again
//! whenever it is opened, so they are never fsync'd and need no recovery of their own.
//!
//! A slot is a `u64`: the top 24 bits a fingerprint of the key, the low 40 the line's number
//! (0: empty). The key itself stays in the log: a candidate whose fingerprint matches is
//! confirmed by reading its line, so a slot left by a line since replaced is harmless and
//! nothing is ever removed. A table is an array of buckets of [`BUCKET_SLOTS`] slots (one
//! `pread` each), probed linearly. A table takes keys until it is half full, then the next,
//! [`GROWTH`] times as large, is started: nothing is ever moved, and a lookup reads about one
//! bucket per table, newest first (four tables at 10 M keys with the default first size).

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const NUMBER_BITS: u32 = 40;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;

/// The highest order number a log holds: about 10^12, nearly nine years of orders at 4,000/s.
pub const MAX_ORDER_NUMBER: u64 = NUMBER_MASK;

/// Slots per bucket: 64 bytes, one cache line and one read.
const BUCKET_SLOTS: usize = 8;
const BUCKET_BYTES: u64 = BUCKET_SLOTS as u64 * 8;

/// Each table has this many times the buckets of the one before.
const GROWTH: u64 = 4;

/// Buckets of the first table: 8 MB of sparse file, for 524,288 keys.
pub(super) const FIRST_BUCKETS: u64 = 1 << 17;

#[derive(Debug)]
pub(super) struct KeyIndex {
    dir: PathBuf,
    hasher: RandomState,
    first_buckets: u64,
    /// Oldest first; keys go into the last.
    tables: Vec<Table>,
}

#[derive(Debug)]
struct Table {
    file: File,
    /// A power of two.
    buckets: u64,
    keys: u64,
}

impl Table {
    fn read_bucket(&self, bucket: u64) -> io::Result<[u64; BUCKET_SLOTS]> {
        let mut bytes = [0; BUCKET_BYTES as usize];
        // A hole of the sparse file reads as zeros: empty slots.
        self.file.read_exact_at(&mut bytes, bucket * BUCKET_BYTES)?;
        let mut slots = [0; BUCKET_SLOTS];
        for (slot, chunk) in slots.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            *slot = u64::from_le_bytes(word);
        }
        Ok(slots)
    }

    fn write_slot(&self, bucket: u64, slot: usize, value: u64) -> io::Result<()> {
        self.file.write_all_at(
            &value.to_le_bytes(),
            bucket * BUCKET_BYTES + slot as u64 * 8,
        )
    }

    /// The buckets a lookup of `hash` reads, in order, until one has an empty slot.
    fn probe(&self, hash: u64) -> impl Iterator<Item = u64> {
        let mask = self.buckets - 1;
        (0..self.buckets).map(move |step| hash.wrapping_add(step) & mask)
    }
}

impl KeyIndex {
    /// An empty index in the folder `dir`, whose earlier contents are removed: the log that
    /// is being opened inserts its keys again.
    pub(super) fn create(dir: PathBuf, first_buckets: u64) -> io::Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            hasher: RandomState::new(),
            first_buckets: first_buckets.next_power_of_two(),
            tables: Vec::new(),
        })
    }

    /// Notes that line `number` holds `key`.
    pub(super) fn insert(&mut self, key: &str, number: u64) -> io::Result<()> {
        let hash = self.hasher.hash_one(key);
        let entry = (hash >> NUMBER_BITS) << NUMBER_BITS | (number & NUMBER_MASK);
        let table = self.table_with_room()?;
        for bucket in table.probe(hash) {
            let slots = table.read_bucket(bucket)?;
            for (at, &slot) in slots.iter().enumerate() {
                if slot == 0 {
                    table.write_slot(bucket, at, entry)?;
                    table.keys += 1;
                    return Ok(());
                }
            }
        }
        // A table is never more than half full, so the probe always finds a free slot.
        Err(io::Error::other("a key table has no free slot"))
    }

    /// The numbers of the lines whose key may be `key`, newest table first.
    pub(super) fn candidates(&self, key: &str) -> io::Result<Vec<u64>> {
        let hash = self.hasher.hash_one(key);
        let fingerprint = hash >> NUMBER_BITS;
        let mut found = Vec::new();
        for table in self.tables.iter().rev() {
            'probe: for bucket in table.probe(hash) {
                for slot in table.read_bucket(bucket)? {
                    if slot == 0 {
                        break 'probe;
                    }
                    if slot >> NUMBER_BITS == fingerprint {
                        found.push(slot & NUMBER_MASK);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The table new keys go into: the newest, or a new one once it is half full.
    fn table_with_room(&mut self) -> io::Result<&mut Table> {
        let full = self
            .tables
            .last()
            .is_none_or(|t| t.keys * 2 >= t.buckets * BUCKET_SLOTS as u64);
        if full {
            let buckets = self
                .tables
                .last()
                .map_or(self.first_buckets, |t| t.buckets * GROWTH);
            let path = self.dir.join(format!("{}.bin", self.tables.len()));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.set_len(buckets * BUCKET_BYTES)?;
            self.tables.push(Table {
                file,
                buckets,
                keys: 0,
            });
        }
        self.tables
            .last_mut()
            .ok_or_else(|| io::Error::other("no key table"))
    }

    /// The number of tables, for tests that need keys in several.
    #[cfg(test)]
    pub(super) fn tables(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_across_tables_and_overflowing_buckets() {
        let dir = tempfile::tempdir().unwrap();
        // Two buckets to start with: keys overflow buckets and fill five tables.
        let mut index = KeyIndex::create(dir.path().join("keys"), 2).unwrap();
        let key = |n: u64| format!("key-{n}");
        for n in 1..=3_000 {
            index.insert(&key(n), n).unwrap();
        }
        assert!(index.tables() >= 5, "{} tables", index.tables());
        for n in 1..=3_000 {
            assert!(index.candidates(&key(n)).unwrap().contains(&n), "{n}");
        }
        // Unknown keys have (almost) no candidates: 24-bit fingerprints in small buckets.
        let strays: usize = (3_001..6_000)
            .map(|n| index.candidates(&key(n)).unwrap().len())
            .sum();
        assert!(strays <= 3, "{strays} candidates for 3,000 unknown keys");
    }

    #[test]
    fn creating_an_index_forgets_what_the_folder_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut index = KeyIndex::create(path.clone(), 4).unwrap();
        index.insert("a", 1).unwrap();
        drop(index);
        let index = KeyIndex::create(path, 4).unwrap();
        assert!(index.candidates("a").unwrap().is_empty());
    }
}
