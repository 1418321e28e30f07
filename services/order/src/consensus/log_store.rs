//! The Raft log is the replica's CSV order log; the vote lives beside it in `term-<id>`.

use std::fmt::Debug;
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError, StorageIOError, Vote};
use prometheus_client::metrics::histogram::Histogram;
use stocknet_common::file::FileFailure;
use stocknet_common::{file, Command};

use super::{entry_of, lines_of, log_id, Durable, DurableLog, TypeConfig};
use crate::error::OrderError;
use crate::log::{note_failed_fsync, Line, OrderLog};

/// The log and the vote of one replica. Clones share them (openraft reads through a clone
/// while it appends through the original).
#[derive(Clone)]
pub struct LogStore {
    id: u64,
    boot: Option<String>,
    /// A failed fsync was noted before this start: the next vote saved clears the note. (One
    /// noted while this process runs is left for the next start.)
    failed_before: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<Mutex<OrderLog>>,
    vote_path: PathBuf,
    state: Arc<Mutex<VoteFile>>,
    durable: DurableLog,
    flusher: mpsc::Sender<Written>,
    /// The entry through which a snapshot being installed will bring this log, when openraft
    /// purged past its end ([`install_lines`](Self::install_lines)). Changed under the log's
    /// lock.
    installing: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// The last entry openraft purged since this start, which the log no longer offers. Not
    /// kept: the lines stay, and openraft starts with its commit point unknown, which a purge
    /// may not pass.
    purged: Arc<Mutex<Option<LogId<u64>>>>,
}

/// How the log file is made durable: `fdatasync`, or a test's stand-in.
pub type Sync = Box<dyn Fn(&std::fs::File) -> std::io::Result<()> + Send>;

/// What the store relies on of the machine: how the log is made durable, and which boot of
/// the machine this is. What was written and not yet fsync'd outlives a killed process, not a
/// power loss; a power loss is a new boot.
pub struct Disk {
    pub sync: Sync,
    /// The kernel's boot id; `None` where it has none to give.
    pub boot: Option<String>,
}

impl Disk {
    pub fn this_machine() -> Self {
        Self {
            sync: Box::new(std::fs::File::sync_data),
            boot: stocknet_common::file::kernel_boot_id(),
        }
    }
}

/// An append for the flusher: the file it went to, the epoch and last entry it wrote, and
/// openraft's callback, unless it was answered before the fsync.
struct Written {
    file: (std::fs::File, PathBuf),
    epoch: u64,
    last: u64,
    callback: Option<LogFlushed<TypeConfig>>,
}

/// Makes appends durable in the order they were written: takes every append waiting, fsyncs
/// once, then reports them all flushed. Ends when the last store clone is dropped.
fn flush_appends(
    appends: mpsc::Receiver<Written>,
    sync: Sync,
    (durable, failed): (DurableLog, PathBuf),
    fsync_seconds: Option<Histogram>,
) {
    while let Ok(first) = appends.recv() {
        let mut batch = vec![first];
        batch.extend(appends.try_iter());
        if let Some(newest) = batch.last() {
            let syncing = std::time::Instant::now();
            if let Err(e) = sync(&newest.file.0) {
                fsync_failed(&newest.file.1, &failed, &e);
            }
            if let Some(histogram) = &fsync_seconds {
                histogram.observe(syncing.elapsed().as_secs_f64());
            }
            durable.synced(newest.epoch, newest.last);
        }
        for callback in batch.into_iter().filter_map(|w| w.callback) {
            callback.log_io_completed(Ok(()));
        }
    }
}

/// Ends the process after a failed fsync of the log at `path`, leaving the file `failed` behind:
/// the kernel may have dropped pages this leader sent before their fsync, so on its restart, in
/// the same boot, it must not resume its term (see [`LogStore::open_with`]) any more than after
/// a power loss. (Exiting, not going on: the next fsync may report success for lost pages.)
fn fsync_failed(path: &std::path::Path, failed: &std::path::Path, error: &std::io::Error) -> ! {
    note_failed_fsync(failed, error);
    tracing::error!(path = %path.display(), "fsync failed, exiting to recover: {error}");
    std::process::exit(70);
}

/// The file that says the log's last fsync failed, beside the vote file `vote_path`.
fn failed_fsync_path(vote_path: &std::path::Path) -> PathBuf {
    vote_path.with_extension("fsync-failed")
}

/// What `term-<id>` holds: the vote, and the boot of the machine it was written in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct VoteFile {
    vote: Option<Vote<u64>>,
    boot: Option<String>,
}

impl LogStore {
    /// Replica `id`'s store over `log`, with the vote kept at `vote_path`; each fsync's
    /// duration goes to `fsync_seconds`.
    pub fn open(
        id: u64,
        log: Arc<Mutex<OrderLog>>,
        vote_path: PathBuf,
        fsync_seconds: Option<Histogram>,
    ) -> Result<Self, OrderError> {
        Self::open_with(id, log, vote_path, Disk::this_machine(), fsync_seconds)
    }

    /// [`LogStore::open`] on `disk`.
    pub fn open_with(
        id: u64,
        log: Arc<Mutex<OrderLog>>,
        vote_path: PathBuf,
        disk: Disk,
        fsync_seconds: Option<Histogram>,
    ) -> Result<Self, OrderError> {
        let mut state = match std::fs::read_to_string(&vote_path) {
            Ok(text) => parse_vote_file(&text)
                .map_err(|e| OrderError::Corrupt(format!("{}: {e}", vote_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VoteFile::default(),
            Err(e) => return Err(OrderError::io(&vote_path, e)),
        };
        // openraft resumes leading at start-up under a vote that made this replica the leader.
        // That is sound only if its log still holds every entry it sent: entries it reported
        // flushed before their fsync (`durable.rs`) are lost by a power loss, or by a failed
        // fsync, and a leader of the same term would number new entries as the lost ones,
        // which followers hold. So after a new boot (or where the boot is unknown), or after
        // a failed fsync, it stands for a new term instead.
        let failed = failed_fsync_path(&vote_path);
        if log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped_unreadable()
        {
            // Noted as a failed fsync is, so that a start after this one, which finds the
            // line gone, does not resume the term either.
            let lost = std::io::Error::other("a complete line of the log could not be read");
            note_failed_fsync(&failed, &lost);
        }
        // The log's own fsyncs (an install's, an append's) leave the same file.
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_fsync_failures_in(failed.clone());
        let failed_before = failed.exists();
        if state.boot.is_none() || state.boot != disk.boot || failed_before {
            state.vote = state.vote.map(|vote| no_longer_leading(vote, id));
        }
        let Disk { sync, boot } = disk;
        if failed_before {
            // After a failed fsync the kernel may keep pages it never wrote, as clean, and an
            // fsync through another handle reports success: what this process reads may not be
            // on disk. Written anew to a new file, fsync'd, it is.
            log.lock().unwrap_or_else(|e| e.into_inner()).write_anew()?;
        }
        // What the file holds now is what the disk holds from here on.
        let (file, path) = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync_handle()?;
        sync(&file).map_err(|e| {
            note_failed_fsync(&failed, &e);
            OrderError::io(&path, e)
        })?;
        let durable = DurableLog::new(log.lock().unwrap_or_else(|e| e.into_inner()).last_entry());
        let (flusher, appends) = mpsc::channel();
        let flushed = durable.clone();
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || flush_appends(appends, sync, (flushed, failed), fsync_seconds))
            .map_err(|e| OrderError::io(&vote_path, e))?;
        Ok(Self {
            id,
            boot,
            failed_before: Arc::new(failed_before.into()),
            log,
            vote_path,
            durable,
            flusher,
            installing: Arc::new(tokio::sync::watch::Sender::new(None)),
            purged: Arc::default(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// What this log holds durably.
    pub fn durable(&self) -> Durable {
        self.durable.watch()
    }

    /// Where a snapshot being received is kept until it is installed, beside the vote.
    pub(super) fn received_snapshot_path(&self) -> PathBuf {
        self.vote_path
            .with_file_name(format!("snapshot-{}.received", self.id))
    }

    /// The log, for the state machine.
    pub(super) fn order_log(&self) -> &Arc<Mutex<OrderLog>> {
        &self.log
    }

    /// Makes the log hold the lines `copy` reads, another replica's log file from its start
    /// through the last entry of a snapshot this replica installs, durably: what it holds of
    /// them is kept, anything after the first that differs is replaced ([`OrderLog::install`]).
    /// Returns the copy's last line and entry. Blocking.
    pub fn install_lines(&self, copy: impl Read) -> Result<(u64, Option<u64>), OrderError> {
        let mut log = self.log();
        let installed = log.install(copy);
        let last = log.last_entry();
        // Appends waiting for this install go on once the log reaches the entry they follow,
        // or at once if it failed (they then fail, loudly, rather than wait for ever).
        self.installing.send_if_modified(|awaited| {
            let reached = installed.is_err() || awaited.is_some_and(|e| last >= Some(e));
            if reached {
                *awaited = None;
            }
            reached
        });
        let installed = installed?;
        if let Some(kept) = installed.replaced_after {
            self.durable.cut(log.entry_at(kept)?);
        }
        if let Some(last) = last {
            self.durable.synced(self.durable.epoch(), last);
        }
        let (line, entry) = installed.last.unzip();
        Ok((line.unwrap_or(0), entry))
    }

    /// Lets appends waiting for an install go on: it failed, and they will fail too.
    pub fn install_failed(&self) {
        self.installing.send_replace(None);
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether `entries` are this replica's own as the leader of its current term, and no
    /// membership change: those may be reported flushed before their fsync (`durable.rs`).
    fn leading_with(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(vote) = self.state().vote else {
            return false;
        };
        let leader = CommittedLeaderId::new(vote.leader_id().term, self.id);
        vote.is_committed()
            && vote.leader_id().voted_for() == Some(self.id)
            && entries.iter().all(|e| {
                e.log_id.leader_id == leader && !matches!(e.payload, EntryPayload::Membership(_))
            })
    }

    /// The last entry the log holds (written, perhaps not yet flushed).
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        let log = self.log();
        let last = log.last();
        log.term_at(last)
            .zip(log.last_entry())
            .map(|(term, entry)| log_id(term, entry))
    }

    fn log(&self) -> MutexGuard<'_, OrderLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn purged(&self) -> Option<LogId<u64>> {
        *self.purged.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, VoteFile> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `next`, with this boot, to `term-<id>` (fsync'd, off the async threads), then
    /// adopts it.
    async fn save(&self, mut next: VoteFile) -> Result<(), StorageError<u64>> {
        next.boot.clone_from(&self.boot);
        let text = format_vote_file(&next);
        let path = self.vote_path.clone();
        let failed_before = self.failed_before.clone();
        tokio::task::spawn_blocking(move || {
            file::replace_atomically(&path, |f| f.write_all(text.as_bytes()))?;
            // The vote on disk no longer leads a term of before the failed fsync noted.
            if failed_before.swap(false, std::sync::atomic::Ordering::AcqRel) {
                match std::fs::remove_file(failed_fsync_path(&path)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|written| written)
        .map_err(|e| StorageIOError::write_vote(&e))?;
        *self.state() = next;
        Ok(())
    }
}

fn read_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::read_logs(&error).into()
}

fn write_error(error: OrderError) -> StorageError<u64> {
    StorageIOError::write_logs(&error).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let floor = self.purged().map_or(0, |p| p.index + 1);
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(floor);
        let end = match range.end_bound() {
            Bound::Included(&i) => i + 1,
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let lines = {
            let log = self.log();
            let Some(first) = log.first_line(start).map_err(read_error)? else {
                return Ok(Vec::new());
            };
            let last = log
                .first_line(end)
                .map_err(read_error)?
                .map_or(log.last(), |next| next - 1);
            let count = usize::try_from(last + 1 - first).unwrap_or(usize::MAX);
            log.lines_after(first - 1, count).map_err(read_error)?
        };
        let mut entries = Vec::new();
        let mut group: Vec<Line> = Vec::new();
        for line in lines {
            if group.first().is_some_and(|first| first.entry != line.entry) {
                entries.push(entry_of(std::mem::take(&mut group)).map_err(read_error)?);
            }
            group.push(line);
        }
        if !group.is_empty() {
            entries.push(entry_of(group).map_err(read_error)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let purged = self.purged();
        let last = self.last_log_id();
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: match (last, purged) {
                (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
                (None, purged) => purged,
                (last, _) => last,
            },
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let next = VoteFile {
            vote: Some(*vote),
            ..self.state().clone()
        };
        self.save(next).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.state().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let (Some(first_entry), Some(last)) = (entries.first(), entries.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let (first_entry, last) = (first_entry.log_id.index, last.log_id.index);
        // Entries after a snapshot come once it is installed, but a new leader's may come
        // while it still is: they follow the snapshot's lines, which must be here first.
        if self.installing.borrow().is_some() {
            let mut installing = self.installing.subscribe();
            let installed = installing.wait_for(Option::is_none).await.is_ok();
            if !installed {
                callback.log_io_completed(Err(std::io::Error::other("the log store closed")));
                return Ok(());
            }
        }
        // Written now (readable at once), made durable by the flusher: appends that come
        // while it syncs are written behind and share its next fsync (group commit).
        let (file, epoch, early) = {
            let mut log = self.log();
            // A leader's entries may replace a suffix this log holds from an older term.
            let replaces = log.first_line(first_entry).map_err(write_error)?;
            let first = replaces.unwrap_or(log.last() + 1);
            let mut lines = Vec::new();
            for entry in &entries {
                let next = first + lines.len() as u64;
                lines.extend(lines_of(entry, next).map_err(write_error)?);
            }
            // The group's own entries take the time of the line before them, so that times
            // never go back along the log (the audit trail searches by time). Every replica
            // holds the same line there (Raft's log matching), so every replica writes the
            // same line.
            let mut time = log
                .get(first - 1)
                .map_err(write_error)?
                .map_or(0, |o| o.stamp.time);
            for Line { order, .. } in &mut lines {
                if matches!(order.command, Command::Group(_)) {
                    order.stamp.time = time;
                }
                time = order.stamp.time;
            }
            match replaces {
                Some(first) => {
                    self.durable.cut(first_entry.checked_sub(1));
                    // Written to a new file, fsync'd before it replaced the old one.
                    log.replace_after(first - 1, &lines).inspect(|()| {
                        self.durable.synced(self.durable.epoch(), last);
                    })
                }
                None => log.write(&lines),
            }
            .map_err(write_error)?;
            let early = replaces.is_none() && self.leading_with(&entries);
            if early {
                self.durable.written_early(last);
            }
            let file = log.sync_handle().map_err(write_error)?;
            (file, self.durable.epoch(), early)
        };
        let callback = if early {
            callback.log_io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        let written = Written {
            file,
            epoch,
            last,
            callback,
        };
        if let Err(unsent) = self.flusher.send(written) {
            if let Some(callback) = unsent.0.callback {
                callback.log_io_completed(Err(std::io::Error::other("the log flusher stopped")));
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Removes entry `log_id.index` and everything after it: lines from its first on.
        let (log, durable) = (self.log.clone(), self.durable.clone());
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(first) = log.first_line(log_id.index)? {
                let kept = log_id.index.checked_sub(1);
                durable.cut(kept);
                // Written to a new file, fsync'd before it replaced the old one.
                log.replace_after(first - 1, &[])?;
                if let Some(kept) = kept {
                    durable.synced(durable.epoch(), kept);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| write_error(OrderError::task(e)))?
        .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // The lines stay (the audit trail reads them); the log just no longer offers them.
        // Past the log's end, openraft purges the entries of a snapshot being installed,
        // whose lines are on their way (`install_lines`).
        {
            let log = self.log();
            if log.last_entry().is_none_or(|last| last < log_id.index) {
                self.installing.send_replace(Some(log_id.index));
            }
        }
        *self.purged.lock().unwrap_or_else(|e| e.into_inner()) = Some(log_id);
        Ok(())
    }
}

/// `vote`, unless it made replica `id` the leader: then the same vote, as a candidate's.
fn no_longer_leading(vote: Vote<u64>, id: u64) -> Vote<u64> {
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        Vote::new(vote.leader_id().term, id)
    } else {
        vote
    }
}

/// `term-<id>`: `TERM [VOTED_FOR [committed]]`, then optionally `boot ID`. A file written
/// before the group elected itself holds `TERM [LEADER]`, which reads as a vote; one written
/// while purges were kept may hold `purged TERM INDEX`, which is read and left out.
fn parse_vote_file(text: &str) -> Result<VoteFile, String> {
    let mut lines = text.lines();
    let mut state = VoteFile::default();
    if let Some(line) = lines.next().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let term = number(fields.next(), "term")?;
        let voted_for = fields.next().map(|f| f.parse::<u64>()).transpose();
        let voted_for = voted_for.map_err(|e| format!("voted for: {e}"))?;
        let mut vote = match voted_for {
            Some(node) => Vote::new(term, node),
            None => Vote::default(),
        };
        vote.leader_id.term = term;
        match fields.next() {
            Some("committed") => vote.commit(),
            Some(other) => return Err(format!("unexpected {other:?}")),
            None => {}
        }
        state.vote = Some(vote);
    }
    for line in lines {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("purged") => {
                number(fields.next(), "purged term")?;
                number(fields.next(), "purged index")?;
            }
            Some("boot") => state.boot = fields.next().map(str::to_owned),
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    Ok(state)
}

fn number(field: Option<&str>, what: &str) -> Result<u64, String> {
    field
        .ok_or_else(|| format!("no {what}"))?
        .parse()
        .map_err(|e| format!("{what}: {e}"))
}

fn format_vote_file(state: &VoteFile) -> String {
    let mut text = String::new();
    if let Some(vote) = &state.vote {
        text.push_str(&vote.leader_id.term.to_string());
        if let Some(node) = vote.leader_id.voted_for {
            text.push_str(&format!(" {node}"));
            if vote.is_committed() {
                text.push_str(" committed");
            }
        }
        text.push('\n');
    } else if state.boot.is_some() {
        text.push_str("0\n");
    }
    if let Some(boot) = &state.boot {
        text.push_str(&format!("boot {boot}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_files_round_trip_and_old_ones_read_as_votes() {
        for text in [
            "7 2 committed\nboot 5d1b\n",
            "7 2 committed\n",
            "7 2\n",
            "0\nboot 5d1b\n",
            "",
        ] {
            let state = parse_vote_file(text).unwrap();
            assert_eq!(format_vote_file(&state), text, "{text:?}");
        }
        let purged = parse_vote_file("7 2 committed\npurged 3 41\nboot 5d1b\n").unwrap();
        assert_eq!(format_vote_file(&purged), "7 2 committed\nboot 5d1b\n");
        assert!(parse_vote_file("7 2\npurged 3\n").is_err());
        let old = parse_vote_file("5 3\n").unwrap();
        assert_eq!(old.vote, Some(Vote::new(5, 3)));
        assert!(parse_vote_file("5 3 maybe\n").is_err());
        assert!(parse_vote_file("x\n").is_err());
    }

    /// The vote replica 1 finds after writing `written` in one boot and opening it in `boot`.
    async fn vote_after(written: Vote<u64>, boot: &str) -> Vote<u64> {
        let dir = tempfile::tempdir().unwrap();
        let log = OrderLog::open(dir.path().join("orders-1.csv")).unwrap();
        let log = Arc::new(Mutex::new(log));
        let vote_path = dir.path().join("term-1");
        let open = |boot: &str| {
            let disk = Disk {
                boot: Some(boot.to_owned()),
                ..Disk::this_machine()
            };
            LogStore::open_with(1, log.clone(), vote_path.clone(), disk, None).unwrap()
        };
        open("first").save_vote(&written).await.unwrap();
        open(boot).read_vote().await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_leader_resumes_its_term_after_a_restart_and_stands_again_after_a_new_boot() {
        let leading = Vote::new_committed(7, 1);
        assert_eq!(vote_after(leading, "first").await, leading);
        assert_eq!(vote_after(leading, "second").await, Vote::new(7, 1));
        // Another's leadership, and a candidate's vote, are kept as they were.
        let following = Vote::new_committed(7, 2);
        assert_eq!(vote_after(following, "second").await, following);
        assert_eq!(vote_after(Vote::new(7, 1), "second").await, Vote::new(7, 1));
    }

    /// A complete last line the log cannot read (a damaged disk: an append that did not finish
    /// has no newline) is dropped as the log opens, and counts as a failed fsync: lines the
    /// leader sent may be gone, so it stands for a new term, at this start and the next.
    #[tokio::test]
    async fn a_leader_whose_log_dropped_an_unreadable_line_stands_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders-1.csv");
        let vote_path = dir.path().join("term-1");
        let open = || {
            let log = Arc::new(Mutex::new(OrderLog::open(&path).unwrap()));
            let disk = Disk {
                boot: Some("one".to_owned()),
                ..Disk::this_machine()
            };
            LogStore::open_with(1, log, vote_path.clone(), disk, None).unwrap()
        };
        let leading = Vote::new_committed(7, 1);
        open().save_vote(&leading).await.unwrap();
        assert_eq!(open().read_vote().await.unwrap(), Some(leading));

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"7,1,\x00\x00,damaged\n").unwrap();
        let mut store = open();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
        assert!(failed_fsync_path(&vote_path).exists());
        // The line is gone now, and the next start still does not resume the term.
        assert_eq!(open().read_vote().await.unwrap(), Some(Vote::new(7, 1)));
    }

    /// A failed fsync, noted beside the vote, counts as a power loss in the same boot, until
    /// the replica saves a vote again.
    #[tokio::test]
    async fn a_leader_stands_again_after_a_failed_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let log = OrderLog::open(dir.path().join("orders-1.csv")).unwrap();
        let log = Arc::new(Mutex::new(log));
        let vote_path = dir.path().join("term-1");
        let open = || {
            let disk = Disk {
                boot: Some("one".to_owned()),
                ..Disk::this_machine()
            };
            LogStore::open_with(1, log.clone(), vote_path.clone(), disk, None).unwrap()
        };
        let leading = Vote::new_committed(7, 1);
        open().save_vote(&leading).await.unwrap();
        let inode = || {
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(dir.path().join("orders-1.csv")).unwrap(),
            )
        };
        let written = inode();
        // A note left while a store runs is the next start's: its own saves keep it.
        let mut running = open();
        std::fs::write(failed_fsync_path(&vote_path), "EIO").unwrap();
        running.save_vote(&leading).await.unwrap();
        assert!(failed_fsync_path(&vote_path).exists());
        let mut store = open();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
        // The log, read from what may be pages never written, was written anew.
        assert_ne!(inode(), written);
        // Elected again, in a new term: the note has done its work.
        let next = Vote::new_committed(8, 1);
        store.save_vote(&next).await.unwrap();
        assert!(!failed_fsync_path(&vote_path).exists());
        assert_eq!(open().read_vote().await.unwrap(), Some(next));
        // An fsync that fails as the log opens is noted too, and the start fails.
        let failing = Disk {
            sync: Box::new(|_| Err(std::io::Error::other("EIO"))),
            boot: Some("one".to_owned()),
        };
        assert!(LogStore::open_with(1, log.clone(), vote_path.clone(), failing, None).is_err());
        assert_eq!(open().read_vote().await.unwrap(), Some(Vote::new(8, 1)));
    }
}
