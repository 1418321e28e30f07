//! The idempotency keys of the log, eight bytes each.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// Idempotency key → order number in one `u64` per key: the top 24 bits are a fingerprint of
/// the key, the low 40 the order's number. The keys themselves stay in the log; a candidate
/// whose fingerprint matches is confirmed by reading its order. A million keys fit in a table
/// of 2^21 slots of 9 bytes (19 MB).
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    table: HashTable<u64>,
    hasher: RandomState,
}

const NUMBER_BITS: u32 = 40;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;

/// The highest order number a log holds: about 10^12, nearly nine years of orders at 4,000/s.
pub const MAX_ORDER_NUMBER: u64 = NUMBER_MASK;

impl KeyIndex {
    pub(super) fn fingerprint(&self, key: &str) -> u64 {
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

    pub(super) fn insert(&mut self, key: &str, number: u64) {
        let fingerprint = self.fingerprint(key);
        let entry = fingerprint << NUMBER_BITS | number;
        self.table
            .insert_unique(Self::table_hash(fingerprint), entry, Self::entry_hash);
    }

    /// The numbers of the orders whose key may be `key`.
    pub(super) fn candidates(&self, key: &str) -> impl Iterator<Item = u64> + '_ {
        let fingerprint = self.fingerprint(key);
        self.table
            .iter_hash(Self::table_hash(fingerprint))
            .filter(move |&&entry| entry >> NUMBER_BITS == fingerprint)
            .map(|&entry| entry & NUMBER_MASK)
    }

    pub(super) fn remove(&mut self, key: &str, number: u64) {
        let fingerprint = self.fingerprint(key);
        let entry = fingerprint << NUMBER_BITS | number;
        if let Ok(found) = self
            .table
            .find_entry(Self::table_hash(fingerprint), |&e| e == entry)
        {
            found.remove();
        }
    }

    /// The fingerprint of every key, for tests that need keys to collide.
    #[cfg(test)]
    pub(super) fn fingerprints(&self) -> impl Iterator<Item = u64> + '_ {
        self.table.iter().map(|entry| entry >> NUMBER_BITS)
    }
}
