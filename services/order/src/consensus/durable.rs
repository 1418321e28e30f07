//! The leader fsyncs its own entries while the followers write theirs (the Raft
//! dissertation's §10.2.1, as etcd does), instead of before it sends them.
//!
//! openraft 0.9 sends an entry to the followers only once the log reported it flushed. So the
//! log reports a leader's own entries of its term flushed as soon as they are written (and
//! readable), and fsyncs them behind ([`LogStore`](super::LogStore)'s `append`). openraft then
//! counts the leader towards the commit before its copy is durable; what keeps a committed
//! entry from taking effect before a majority holds it durably is here:
//! - the state machine applies an entry only once this replica's log holds it durably
//!   ([`Durable::wait_through`]), so the leader answers, and calls the catalog, only with its
//!   own copy on disk beside a follower's;
//! - the commit point the leader sends is cut to what it holds durably ([`clamp_commit`], on
//!   every append it sends: [`Outgoing`](super::Outgoing)),
//!   so no follower applies an entry that a power loss of the leader's machine could leave on
//!   one disk only, to be overwritten by a leader elected without it.
//!
//! Membership entries are still fsync'd before they are reported: a joint configuration's
//! commit must mean durable on a majority of both voter sets, since the next step relies on it.

use std::sync::Arc;

use openraft::raft::AppendEntriesRequest;
use tokio::sync::watch;

use super::TypeConfig;

/// What the log holds durably.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flushed {
    /// Every entry through this index is on disk.
    through: Option<u64>,
    /// Changes whenever a suffix of the log is cut: an fsync of writes made before the cut
    /// says nothing of the entries written since.
    epoch: u64,
    /// The newest entry reported flushed before its fsync; only entries through it can be
    /// committed ahead of this replica's disk.
    early: Option<u64>,
}

/// The log's side of [`Durable`]: it reports what it wrote early, what it cut, and what an
/// fsync covered.
#[derive(Clone)]
pub struct DurableLog(Arc<watch::Sender<Flushed>>);

impl DurableLog {
    /// A log whose entries through `through` are on disk.
    pub fn new(through: Option<u64>) -> Self {
        Self(Arc::new(watch::Sender::new(Flushed {
            through,
            ..Flushed::default()
        })))
    }

    pub fn watch(&self) -> Durable {
        Durable(self.0.subscribe())
    }

    /// The epoch that writes made now belong to (read under the log's lock).
    pub fn epoch(&self) -> u64 {
        self.0.borrow().epoch
    }

    /// Entries through `index` were reported flushed before their fsync.
    pub fn written_early(&self, index: u64) {
        self.0.send_modify(|f| f.early = f.early.max(Some(index)));
    }

    /// Entries after `kept` were removed (under the log's lock).
    pub fn cut(&self, kept: Option<u64>) {
        self.0.send_modify(|f| {
            f.epoch += 1;
            f.through = f.through.min(kept);
        });
    }

    /// An fsync covered the writes of `epoch` through entry `index`.
    pub fn synced(&self, epoch: u64, index: u64) {
        self.0.send_if_modified(|f| {
            let newer = f.epoch == epoch && f.through < Some(index);
            if newer {
                f.through = Some(index);
            }
            newer
        });
    }
}

/// What this replica's log holds durably, for the state machine and the leader's network.
#[derive(Clone)]
pub struct Durable(watch::Receiver<Flushed>);

impl Durable {
    /// Waits until applying entries through `index` can no longer outrun this replica's disk.
    /// Returns false if the log closed first.
    pub async fn wait_through(&self, index: u64) -> bool {
        let mut flushed = self.0.clone();
        let durable = flushed
            .wait_for(|f| {
                f.early
                    .is_none_or(|early| f.through >= Some(index.min(early)))
            })
            .await
            .is_ok();
        durable
    }

    /// Every entry through this index is on disk.
    pub(super) fn through(&self) -> Option<u64> {
        self.0.borrow().through
    }
}

/// Cuts `request`'s commit point to the newest entry of the leader's own term that it names
/// (the previous one or its own) and the leader holds durably through `durable`, or to none. A
/// lower commit point is no news to a follower; it keeps its own.
///
/// Only an entry of the leader's term: openraft counts the leader towards a majority before its
/// fsync, so what it calls committed is durable on a majority only through what the leader holds
/// on disk; and an entry of an earlier term is committed only by one of the leader's own after
/// it (Raft's §5.4.2). Cut to an earlier term's entry, the commit point would let a follower
/// apply it while the leader's first entry of its term was on a minority of disks, which a
/// power loss of the leader could leave to be overwritten.
pub(super) fn clamp_commit(request: &mut AppendEntriesRequest<TypeConfig>, durable: Option<u64>) {
    let Some(commit) = request.leader_commit else {
        return;
    };
    let term = request.vote.leader_id().term;
    let named = request
        .prev_log_id
        .iter()
        .chain(request.entries.iter().map(|e| &e.log_id));
    let newest_durable = named
        .filter(|id| Some(id.index) <= durable && id.leader_id.term == term)
        .max_by_key(|id| id.index)
        .copied();
    if Some(commit.index) > durable || commit.leader_id.term != term {
        request.leader_commit = newest_durable.filter(|id| id.index <= commit.index);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    /// Entry `index`, of term 1 up to index 4 and of the leader's term, 2, from 5 on.
    fn id(index: u64) -> LogId<u64> {
        let term = if index < 5 { 1 } else { 2 };
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn clamped(
        prev: Option<u64>,
        entries: &[u64],
        commit: u64,
        durable: Option<u64>,
    ) -> Option<u64> {
        let entries = entries.iter().map(|&i| id(i));
        let mut request = super::super::blank_append(2, prev.map(id), entries, Some(id(commit)));
        clamp_commit(&mut request, durable);
        request.leader_commit.map(|c| c.index)
    }

    #[test]
    fn the_commit_point_sent_never_passes_what_the_leader_holds_durably() {
        // Durable past the commit point: unchanged.
        assert_eq!(clamped(Some(5), &[6, 7], 6, Some(7)), Some(6));
        // Behind it: the newest entry named that is durable.
        assert_eq!(clamped(Some(5), &[6, 7, 8], 8, Some(7)), Some(7));
        assert_eq!(clamped(Some(5), &[6, 7], 7, Some(5)), Some(5));
        // A heartbeat names only the previous entry.
        assert_eq!(clamped(Some(9), &[], 9, Some(8)), None);
        // Nothing durable: no commit point at all.
        assert_eq!(clamped(Some(5), &[6], 6, None), None);
        // Never an earlier term's entry: the leader's first of its own (5) is not on its disk
        // yet, so the entries before it are not yet committed on a majority of disks.
        assert_eq!(clamped(Some(3), &[4, 5, 6], 6, Some(4)), None);
        assert_eq!(clamped(Some(4), &[], 6, Some(4)), None);
        // A commit point of an earlier term is sent only as the leader's own entries allow.
        assert_eq!(clamped(Some(3), &[4], 4, Some(9)), None);
        assert_eq!(clamped(Some(6), &[7], 7, Some(9)), Some(7));
    }

    /// Whether applying through `index` may go ahead now.
    fn may_apply(durable: &Durable, index: u64) -> bool {
        durable.wait_through(index).now_or_never() == Some(true)
    }

    #[test]
    fn entries_written_early_are_applied_only_once_an_fsync_of_their_epoch_covered_them() {
        let log = DurableLog::new(Some(4));
        let durable = log.watch();
        // Nothing written early: every entry reported was fsync'd first.
        assert!(may_apply(&durable, 9));
        log.written_early(6);
        assert!(may_apply(&durable, 4));
        assert!(!may_apply(&durable, 5));
        // An fsync of writes made before a cut says nothing of the entries after it.
        let epoch = log.epoch();
        log.cut(Some(3));
        log.synced(epoch, 6);
        assert_eq!(durable.through(), Some(3));
        assert!(!may_apply(&durable, 4));
        log.synced(log.epoch(), 6);
        assert!(may_apply(&durable, 6));
        // Entries past the newest early one wait only for it.
        log.written_early(8);
        assert!(!may_apply(&durable, 9));
        log.synced(log.epoch(), 8);
        assert!(may_apply(&durable, 20));
    }
}
