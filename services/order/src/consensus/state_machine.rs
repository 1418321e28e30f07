//! The state machine is the replica's book: committed entries are applied to it, and its
//! snapshots are the book snapshots (`book-<id>.snap`).

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::{entry_of, lines_of, log_id, Durable, TypeConfig};
use crate::book_store::BookStore;
use crate::error::OrderError;
use crate::log::{Line, OrderLog};

type Stored = StoredMembership<u64, BasicNode>;

/// The book and what the consensus layer keeps with it. Clones share them.
#[derive(Clone)]
pub struct StateMachine {
    book: Arc<BookStore>,
    applied: Arc<Mutex<Applied>>,
    /// What the log holds durably: a leader's entries are applied only once it is on disk.
    durable: Durable,
}

#[derive(Debug, Clone, Default)]
struct Applied {
    last: Option<LogId<u64>>,
    membership: Stored,
    /// The last snapshot built or installed, which a far-behind follower would be sent.
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

impl StateMachine {
    /// The state machine over `book`, whose entries came from `log`. The membership is the
    /// last one the log holds through what the book applied, or `initial` if none; `durable`
    /// is what the log holds on disk.
    pub fn open(
        book: Arc<BookStore>,
        log: &Mutex<OrderLog>,
        initial: Membership<u64, BasicNode>,
        durable: Durable,
    ) -> Result<Self, OrderError> {
        let applied = book.lock().applied();
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        let last = log
            .entry_at(applied)?
            .map(|entry| log_id(log.term_at(applied).unwrap_or(0), entry));
        let membership = match log.membership_through(applied)? {
            Some(order) => {
                let line = Line {
                    entry: log.entry_at(order.number)?.unwrap_or_default(),
                    order,
                };
                let entry = entry_of(vec![line])?;
                match entry.payload {
                    EntryPayload::Membership(m) => Stored::new(Some(entry.log_id), m),
                    _ => Stored::new(None, initial),
                }
            }
            None => Stored::new(None, initial),
        };
        Ok(Self {
            book,
            applied: Arc::new(Mutex::new(Applied {
                last,
                membership,
                snapshot: None,
            })),
            durable,
        })
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::apply(LogId::default(), &error).into()
}

fn snapshot_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, &error).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let book = self.book.clone();
        let (bytes, _) = tokio::task::spawn_blocking(move || book.encode())
            .await
            .map_err(|e| snapshot_error(OrderError::task(e)))?
            .map_err(snapshot_error)?;
        let mut applied = self.applied();
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership.clone(),
            snapshot_id: applied
                .last
                .map_or_else(|| "empty".into(), |id| id.to_string()),
        };
        applied.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Stored), StorageError<u64>> {
        let applied = self.applied();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        if !self.durable.wait_through(last.index).await {
            let closed = OrderError::Task("the log closed before its entries were durable".into());
            return Err(apply_error(closed));
        }
        // Entries are applied in order, so each one's lines follow the book's last.
        let mut next = self.book.lock().applied() + 1;
        let mut firsts = Vec::with_capacity(entries.len());
        let mut orders = Vec::new();
        for entry in &entries {
            let lines = lines_of(entry, next).map_err(apply_error)?;
            firsts.push(next);
            next += lines.len() as u64;
            orders.extend(lines.into_iter().map(|line| line.order));
        }
        // In memory, so on this thread: a thread hop per entry showed in the commit latency.
        if let Some(image) = self.book.apply_in_memory(&orders) {
            let book = self.book.clone();
            tokio::task::spawn_blocking(move || book.write_snapshot(&image))
                .await
                .map_err(|e| apply_error(OrderError::task(e)))?;
        }
        let mut applied = self.applied();
        applied.last = Some(last);
        for entry in &entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                applied.membership = Stored::new(Some(entry.log_id), m.clone());
            }
        }
        Ok(firsts)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        self.book
            .install(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut applied = self.applied();
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .applied()
            .snapshot
            .clone()
            .map(|(meta, bytes)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
    }
}
