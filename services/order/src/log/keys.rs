//! The idempotency keys of the log: which line holds a key, in hash tables on disk beside the
//! log, so that a replica's memory does not grow with the keys it has seen (every order has
//! one, the frontend's if not the client's).
//!
//! A slot is a `u64`: the top 24 bits a fingerprint of the key, the low 40 the line's number
//! (0: empty). The key itself stays in the log: a candidate whose fingerprint matches is
//! confirmed by reading its line, so a slot left by a line since replaced is harmless and
//! nothing is ever removed. A table is an array of buckets of [`BUCKET_SLOTS`] slots (one
//! `pread` each), probed linearly. A table takes keys until it is half full, then the next,
//! [`GROWTH`] times as large, is started: nothing is ever moved, and a lookup reads about one
//! bucket per table, newest first (three tables at 10 M keys with the default first size).
//!
//! The tables are derived from the log. Now and then (after `checkpoint_every` lines, and
//! not more often than `checkpoint_interval`: a checkpoint writes back the pages the keys
//! since the last one touched, a few bytes a key but a whole page each) a thread fsyncs them,
//! writes the log's index as of the same line (the file `index`, which the log reads back),
//! and then records in the file `state` through which line they hold every key; a log that
//! opens finds that line as it was and inserts only the keys after it, and otherwise builds
//! the tables again from the whole log. Replacing lines that a state covers removes the state
//! first.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher13;
use stocknet_common::file;

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

/// What the file `state` says: the tables hold the key of every line through `through`, whose
/// term was `term`.
const STATE_VERSION: &str = "stocknet-keys 1";

/// The line through which the tables hold every key, and its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Covered {
    pub through: u64,
    pub term: u64,
}

#[derive(Debug)]
pub(super) struct KeyIndex {
    dir: PathBuf,
    /// SipHash's key, kept in the state so that the tables outlive the process.
    seed: (u64, u64),
    first_buckets: u64,
    /// Oldest first; keys go into the last.
    tables: Vec<Table>,
    /// Bumped (under its lock) whenever the state is removed: a checkpoint taken before is
    /// not written.
    epoch: Arc<Mutex<u64>>,
    /// `None` once dropped.
    checkpoints: Option<mpsc::SyncSender<Checkpoint>>,
    /// The thread that writes them: joined on drop, so that a log opened again in this
    /// process never meets its checkpoint.
    writer: Option<std::thread::JoinHandle<()>>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    /// The line and time of the last checkpoint asked for.
    asked_through: u64,
    asked_at: Instant,
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

/// What a checkpoint writes once the tables are on disk: the log's index as of the same
/// line (the file `index`), then the state.
struct Checkpoint {
    files: Vec<File>,
    epoch: u64,
    index: Vec<u8>,
    state: String,
}

/// What a log opening finds of its last checkpoint: the line the tables cover and the index
/// as of that line (which the log decodes and checks).
pub(super) struct Found {
    pub covered: Covered,
    pub index: Option<Vec<u8>>,
}

impl KeyIndex {
    /// The index in the folder `dir`: the tables its state describes, if it has a readable
    /// one made with `first_buckets` (with the line they cover, which the caller checks
    /// against its log), or else empty tables.
    pub(super) fn open(
        dir: PathBuf,
        first_buckets: u64,
        (checkpoint_every, checkpoint_interval): (u64, Duration),
    ) -> io::Result<(Self, Option<Found>)> {
        let first_buckets = first_buckets.next_power_of_two();
        let epoch = Arc::new(Mutex::new(0));
        let (checkpoints, requests) = mpsc::sync_channel(1);
        let worker_epoch = epoch.clone();
        let state_path = dir.join("state");
        let writer = std::thread::Builder::new()
            .name("key-checkpoints".into())
            .spawn(move || {
                for checkpoint in requests {
                    if let Err(e) = write_checkpoint(&state_path, &worker_epoch, checkpoint) {
                        tracing::warn!("the key index's checkpoint was not written: {e}");
                    }
                }
            })?;
        let mut index = Self {
            dir,
            seed: (0, 0),
            first_buckets,
            tables: Vec::new(),
            epoch,
            checkpoints: Some(checkpoints),
            writer: Some(writer),
            checkpoint_every: checkpoint_every.max(1),
            checkpoint_interval,
            asked_through: 0,
            asked_at: Instant::now(),
        };
        let found = match index.reopen() {
            Ok(covered) => Some(Found {
                covered,
                index: std::fs::read(index.dir.join("index")).ok(),
            }),
            Err(reason) => {
                tracing::info!(dir = %index.dir.display(), "building the key index: {reason}");
                index.reset()?;
                None
            }
        };
        index.asked_through = found.as_ref().map_or(0, |f| f.covered.through);
        Ok((index, found))
    }

    /// Opens the tables the state describes.
    fn reopen(&mut self) -> Result<Covered, String> {
        let text = std::fs::read_to_string(self.dir.join("state")).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "no checkpoint".to_string(),
            _ => e.to_string(),
        })?;
        let fields: Vec<&str> = text
            .strip_prefix(STATE_VERSION)
            .ok_or("a state of another version")?
            .split_whitespace()
            .collect();
        let number = |at: usize| -> Result<u64, String> {
            fields
                .get(at)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("a state without field {at}"))
        };
        let (through, term) = (number(0)?, number(1)?);
        self.seed = (number(2)?, number(3)?);
        if number(4)? != self.first_buckets {
            return Err("tables of another first size".into());
        }
        let mut buckets = self.first_buckets;
        for at in 5..fields.len() {
            let path = self.dir.join(format!("{}.bin", at - 5));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            if len != buckets * BUCKET_BYTES {
                return Err(format!("{} is not {buckets} buckets", path.display()));
            }
            self.tables.push(Table {
                file,
                buckets,
                keys: number(at)?,
            });
            buckets *= GROWTH;
        }
        // Tables started after the state hold only keys after it: they are inserted again.
        for later in self.tables.len().. {
            match std::fs::remove_file(self.dir.join(format!("{later}.bin"))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Covered { through, term })
    }

    /// Empties the index: no tables, no state, a new seed.
    pub(super) fn reset(&mut self) -> io::Result<()> {
        let mut epoch = lock(&self.epoch);
        *epoch += 1;
        self.tables.clear();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&self.dir)?;
        file::sync_dir(&self.dir)?;
        let random = std::hash::RandomState::new();
        self.seed = (
            std::hash::BuildHasher::hash_one(&random, 0),
            std::hash::BuildHasher::hash_one(&random, 1),
        );
        self.asked_through = 0;
        Ok(())
    }

    fn hash(&self, key: &str) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.seed.0, self.seed.1);
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    /// Notes that line `number` holds `key`.
    pub(super) fn insert(&mut self, key: &str, number: u64) -> io::Result<()> {
        let hash = self.hash(key);
        let entry = (hash >> NUMBER_BITS) << NUMBER_BITS | (number & NUMBER_MASK);
        let table = self.table_with_room()?;
        for bucket in table.probe(hash) {
            let slots = table.read_bucket(bucket)?;
            for (at, &slot) in slots.iter().enumerate() {
                // Inserted before a crash that came before a checkpoint, and so not in the
                // table's count then (counting a line rewritten with the same key twice
                // only starts the next table sooner).
                if slot == entry {
                    table.keys += 1;
                    return Ok(());
                }
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
        let hash = self.hash(key);
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

    /// Whether enough lines and time have come since the last checkpoint for another, now
    /// that the log holds every line through `through`.
    pub(super) fn checkpoint_due(&self, through: u64) -> bool {
        through >= self.asked_through.saturating_add(self.checkpoint_every)
            && self.asked_at.elapsed() >= self.checkpoint_interval
    }

    /// Asks the thread for a checkpoint: the log holds every line through `covered.through`,
    /// each with its key in the tables, and `index` is its index as of that line.
    pub(super) fn request_checkpoint(&mut self, covered: Covered, index: Vec<u8>) {
        match self.checkpoint(covered, index) {
            // One at a time: while one is being written, the next waits for more lines.
            Ok(checkpoint) => {
                let sent = self.checkpoints.as_ref().map(|c| c.try_send(checkpoint));
                if matches!(sent, Some(Ok(()))) {
                    self.asked_through = covered.through;
                    self.asked_at = Instant::now();
                }
            }
            Err(e) => tracing::warn!("no checkpoint of the key index: {e}"),
        }
    }

    /// Writes a checkpoint at once, as the thread does.
    pub(super) fn checkpoint_now(&mut self, covered: Covered, index: Vec<u8>) -> io::Result<()> {
        let checkpoint = self.checkpoint(covered, index)?;
        write_checkpoint(&self.dir.join("state"), &self.epoch, checkpoint)
    }

    fn checkpoint(&self, covered: Covered, index: Vec<u8>) -> io::Result<Checkpoint> {
        let mut state = format!(
            "{STATE_VERSION} {} {} {} {} {}",
            covered.through, covered.term, self.seed.0, self.seed.1, self.first_buckets
        );
        for table in &self.tables {
            state.push_str(&format!(" {}", table.keys));
        }
        state.push('\n');
        Ok(Checkpoint {
            files: self
                .tables
                .iter()
                .map(|t| t.file.try_clone())
                .collect::<io::Result<_>>()?,
            epoch: *lock(&self.epoch),
            index,
            state,
        })
    }

    /// Forgets the state before lines it covers are replaced: the tables then hold every key
    /// only as far as the next checkpoint says.
    pub(super) fn forget_state(&mut self) -> io::Result<()> {
        let mut epoch = lock(&self.epoch);
        *epoch += 1;
        let path = self.dir.join("state");
        match std::fs::remove_file(&path) {
            Ok(()) => file::sync_dir(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.asked_through = 0;
        Ok(())
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
                .create(true)
                .truncate(true)
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

impl Drop for KeyIndex {
    fn drop(&mut self) {
        self.checkpoints = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn lock(epoch: &Mutex<u64>) -> MutexGuard<'_, u64> {
    epoch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the tables durable, then records what they hold, unless the state was removed since
/// the checkpoint was taken.
fn write_checkpoint(state: &Path, epoch: &Mutex<u64>, checkpoint: Checkpoint) -> io::Result<()> {
    for file in &checkpoint.files {
        if let Err(e) = file.sync_data() {
            // A later fsync may succeed over slots the kernel dropped: no checkpoint may vouch
            // for the tables, and the next start inserts every key again from the log.
            let what = format!("the key index's tables beside {}", state.display());
            file::exit_distrusting(&what, &e, state);
        }
    }
    let epoch = lock(epoch);
    if *epoch != checkpoint.epoch {
        return Ok(());
    }
    let index = state.with_file_name("index");
    file::replace_atomically(&index, |out| {
        std::io::Write::write_all(out, &checkpoint.index)
    })?;
    file::replace_atomically(state, |out| {
        std::io::Write::write_all(out, checkpoint.state.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No checkpoint but those a test writes itself.
    const NEVER: (u64, Duration) = (u64::MAX, Duration::ZERO);

    fn key(n: u64) -> String {
        format!("key-{n}")
    }

    #[test]
    fn keys_are_found_across_tables_and_overflowing_buckets() {
        let dir = tempfile::tempdir().unwrap();
        // Two buckets to start with: keys overflow buckets and fill five tables.
        let (mut index, found) = KeyIndex::open(dir.path().join("keys"), 2, NEVER).unwrap();
        assert!(found.is_none());
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
    fn a_checkpoint_keeps_the_tables_and_anything_else_builds_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let (mut index, _) = KeyIndex::open(path.clone(), 2, NEVER).unwrap();
        for n in 1..=500 {
            index.insert(&key(n), n).unwrap();
        }
        let covered = Covered {
            through: 500,
            term: 3,
        };
        index
            .checkpoint_now(covered, b"the log's index".to_vec())
            .unwrap();
        let tables = index.tables();
        // Keys after the checkpoint, some in a table started after it.
        for n in 501..=2_000 {
            index.insert(&key(n), n).unwrap();
        }
        assert!(index.tables() > tables);
        drop(index);

        let (mut index, found) = KeyIndex::open(path.clone(), 2, NEVER).unwrap();
        let found = found.expect("the checkpoint");
        assert_eq!(found.covered, covered);
        assert_eq!(found.index.as_deref(), Some(&b"the log's index"[..]));
        assert_eq!(index.tables(), tables, "tables after the state are dropped");
        for n in (1..=500).step_by(7) {
            assert!(index.candidates(&key(n)).unwrap().contains(&n), "{n}");
        }
        // The caller inserts the keys after the state again; a key already there is not
        // inserted twice.
        for n in 501..=2_000 {
            index.insert(&key(n), n).unwrap();
        }
        for n in (1..=2_000).step_by(13) {
            let found = index.candidates(&key(n)).unwrap();
            assert_eq!(found.iter().filter(|&&c| c == n).count(), 1, "{n}");
        }

        // Replacing covered lines forgets the state; so does another first size.
        index.forget_state().unwrap();
        drop(index);
        let (index, found) = KeyIndex::open(path.clone(), 2, NEVER).unwrap();
        assert!(found.is_none());
        assert!(index.candidates(&key(1)).unwrap().is_empty());
        let (mut index, _) = KeyIndex::open(path.clone(), 2, NEVER).unwrap();
        index.insert(&key(1), 1).unwrap();
        index.checkpoint_now(covered, Vec::new()).unwrap();
        drop(index);
        let (_, found) = KeyIndex::open(path, 8, NEVER).unwrap();
        assert!(found.is_none());
    }

    #[test]
    fn a_checkpoint_taken_before_the_state_is_forgotten_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let (mut index, _) = KeyIndex::open(path.clone(), 2, NEVER).unwrap();
        index.insert(&key(1), 1).unwrap();
        let covered = Covered {
            through: 1,
            term: 1,
        };
        let taken = index.checkpoint(covered, Vec::new()).unwrap();
        index.forget_state().unwrap();
        write_checkpoint(&path.join("state"), &index.epoch, taken).unwrap();
        assert!(!path.join("state").exists());
    }
}
