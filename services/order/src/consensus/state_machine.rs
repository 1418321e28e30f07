//! The state machine is the replica's book: committed entries are applied to it, and its
//! snapshots are the book snapshots (`book-<id>.snap`).

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use stocknet_common::file::FileFailure;

use super::transfer::{self, SnapshotData};
use super::{entry_of, lines_of, log_id, Durable, LogStore, TypeConfig};
use crate::book_store::BookStore;
use crate::error::OrderError;
use crate::log::{Line, OrderLog};
use crate::metrics::SnapshotCounters;

type Stored = StoredMembership<u64, BasicNode>;

/// The book and what the consensus layer keeps with it. Clones share them.
#[derive(Clone)]
pub struct StateMachine {
    book: Arc<BookStore>,
    applied: Arc<Mutex<Applied>>,
    /// The log: a leader's entries are applied only once it holds them durably, a snapshot
    /// sent carries its lines, and one installed brings them.
    store: LogStore,
    durable: Durable,
    counters: SnapshotCounters,
}

#[derive(Debug, Clone, Default)]
struct Applied {
    last: Option<LogId<u64>>,
    membership: Stored,
    /// A snapshot was built or installed since this start: openraft has one to send.
    snapshot: bool,
}

impl StateMachine {
    /// The state machine over `book`, whose entries came from `store`'s log. The membership is
    /// the last one the log holds through what the book applied, or `initial` if none.
    /// Snapshots sent and installed are counted in `counters`.
    pub fn open(
        book: Arc<BookStore>,
        store: &LogStore,
        initial: Membership<u64, BasicNode>,
        counters: SnapshotCounters,
    ) -> Result<Self, OrderError> {
        let applied = book.lock().applied();
        let (last, membership) = as_of(store.order_log(), applied, initial)?;
        // A snapshot a stopped replica was receiving is sent again whole, if still needed.
        let received = store.received_snapshot_path();
        match std::fs::remove_file(&received) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(OrderError::io(&received, e))
            }
            _ => {}
        }
        Ok(Self {
            book,
            applied: Arc::new(Mutex::new(Applied {
                last,
                membership,
                snapshot: false,
            })),
            store: store.clone(),
            durable: store.durable(),
            counters,
        })
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The entry of line `line` of `log` and the membership in force after it: the last one the
/// log holds through it, or `initial` if none.
fn as_of(
    log: &Mutex<OrderLog>,
    line: u64,
    initial: Membership<u64, BasicNode>,
) -> Result<(Option<LogId<u64>>, Stored), OrderError> {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let last = log
        .entry_at(line)?
        .map(|entry| log_id(log.term_at(line).unwrap_or(0), entry));
    let membership = match log.membership_through(line)? {
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
    Ok((last, membership))
}

fn apply_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::apply(LogId::default(), &error).into()
}

fn snapshot_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, &error).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Marks what is applied as a snapshot, so that openraft may purge the log before it (it
    /// keeps only a built snapshot's meta). The book's own snapshots are written as it
    /// applies; what a replica is sent is assembled when it is sent
    /// ([`get_current_snapshot`](RaftStateMachine::get_current_snapshot)).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let applied = {
            let mut applied = self.applied();
            applied.snapshot = true;
            applied.clone()
        };
        Ok(Snapshot {
            meta: meta(applied.last, applied.membership),
            snapshot: Box::new(SnapshotData::empty()),
        })
    }
}

fn meta(last: Option<LogId<u64>>, membership: Stored) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: last,
        last_membership: membership,
        snapshot_id: last.map_or_else(|| "empty".into(), |id| id.to_string()),
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
        if let Some(image) = self.book.apply_in_memory(&orders).map_err(apply_error)? {
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<u64>> {
        let path = self.store.received_snapshot_path();
        let data =
            SnapshotData::receiving(path).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<u64>> {
        let (book, store) = (self.book.clone(), self.store.clone());
        let through = meta.last_log_id.map(|id| id.index);
        tokio::task::spawn_blocking(move || transfer::install(&snapshot, &book, &store, through))
            .await
            .map_err(OrderError::task)
            .and_then(|installed| installed)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut applied = self.applied();
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.snapshot = true;
        self.counters.installed.inc();
        tracing::info!(through = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    /// The book as applied now, with the archived records and the log lines it continues,
    /// for a replica that lacks entries the log no longer offers; none until a snapshot was
    /// built or installed since this start (openraft asks at start-up, and purges nothing
    /// before). The book is encoded when asked, on the state machine's task, so that nothing
    /// is applied meanwhile; the rest is read from the files as it is sent.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let (initial, ready) = {
            let applied = self.applied();
            let ready = applied.snapshot && applied.last.is_some();
            (applied.membership.membership().clone(), ready)
        };
        if !ready {
            return Ok(None);
        }
        let (book, store) = (self.book.clone(), self.store.clone());
        let assembled = tokio::task::spawn_blocking(move || {
            let (data, line) = transfer::assemble(&book, store.order_log())?;
            let (last, membership) = as_of(store.order_log(), line, initial)?;
            Ok::<_, OrderError>((data, meta(last, membership)))
        })
        .await
        .map_err(OrderError::task)
        .and_then(|assembled| assembled)
        .map_err(snapshot_error)?;
        let (data, mut meta) = assembled;
        // openraft resumes a transfer by its id alone: one replica's image differs from
        // another's for the same entry, so the id names the sender and the transfer too.
        let sent = self.counters.sent.inc();
        meta.snapshot_id = format!("{}-from-{}-{sent}", meta.snapshot_id, self.store.id());
        tracing::info!(through = ?meta.last_log_id, "assembled a snapshot to send");
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}
