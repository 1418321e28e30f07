//! The file handling the catalog and the order replicas share: append-only logs whose torn
//! tail is cut off on open, and files replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An I/O error on a file, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(path: &Path, source: io::Error) -> Self {
        Self {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A service's error type as far as its files go: a failed call on a file, and a file whose
/// content is corrupt, which the service's parsers report before they know the file's name.
pub trait FileFailure: From<FileError> + Sized {
    /// The description a corrupt file's error carries, if this is one.
    fn corrupt_message(&mut self) -> Option<&mut String>;

    fn io(path: &Path, source: io::Error) -> Self {
        FileError::new(path, source).into()
    }

    /// Names the file a parse error came from.
    fn in_file(mut self, path: &Path) -> Self {
        if let Some(message) = self.corrupt_message() {
            *message = format!("{}: {message}", path.display());
        }
        self
    }
}

/// Opens (or creates) an append-only log for reading and appending.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .append(true)
        .open(path)
}

/// The length of `file`'s first `size` bytes through their last newline: what follows is an
/// append that never finished.
pub fn end_of_last_line(file: &File, size: u64) -> io::Result<u64> {
    let mut chunk = vec![0; 64 * 1024];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(newline) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Makes everything written to `file` durable (fdatasync). A failed fsync is not retried:
/// after one, the kernel may have dropped the dirty pages and a second fsync can report success
/// without them (PostgreSQL's "fsyncgate"), so the process exits and recovers from disk and
/// from its peers (the order log is replicated; the catalog's leader resends what it lacks).
pub fn sync_data_or_exit(file: &File, path: &Path) {
    if let Err(e) = file.sync_data() {
        tracing::error!(path = %path.display(), "fsync failed, exiting to recover: {e}");
        std::process::exit(70);
    }
}

/// Ends the process after a failed fsync of `what`, once `derived` is removed: a file that
/// vouches for what `what` holds (a checkpoint, a snapshot), which the next start must not
/// trust, since the kernel may have dropped the pages and report the next fsync as a success.
/// Without it, the next start rebuilds from the log.
pub fn exit_distrusting(what: &str, error: &dyn std::fmt::Display, derived: &Path) -> ! {
    if let Err(e) = remove_durably(derived) {
        tracing::error!(path = %derived.display(), "could not remove after a failed fsync: {e}");
    }
    tracing::error!(what, "fsync failed, exiting to recover: {error}");
    std::process::exit(70);
}

/// The kernel's name for this boot of the machine (`None` where it gives none). What was
/// written and not yet fsync'd outlives a killed process, not a power loss, and a power loss
/// is a new boot: a service that answers before its fsync tells the two apart by this.
pub fn kernel_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// Removes the file at `path`, if there is one, and fsyncs its directory.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` atomically: `fill` writes the new contents into a temporary file beside
/// it, which is fsync'd and renamed over `path`, and then the directory is fsync'd, so a crash
/// leaves either the old file or the new one, never a torn one.
pub fn replace_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temporary_beside(path);
    let mut file = File::create(&tmp)?;
    let replaced = fill(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = replaced {
        // A full disk, most likely: the copy would only hold on to the space.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path)
}

/// Copies the first `len` bytes of `from` to `to` through this process's memory, and says how
/// many there were: what the kernel holds of `from` in its cache. After a failed fsync that may
/// be more than its disk holds, and the copy is how it gets there; the kernel's own copy
/// (`copy_file_range`, which `std::io::copy` uses between files) may share the blocks on disk
/// instead, on a file system that shares blocks (XFS with reflink, btrfs).
pub fn copy_through_cache(from: &mut File, to: &mut File, len: u64) -> io::Result<u64> {
    let mut buffer = vec![0; 1 << 20];
    let mut copied = 0;
    while copied < len {
        let want =
            usize::try_from(len - copied).map_or(buffer.len(), |left| left.min(buffer.len()));
        let read = match from.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..read])?;
        copied += read as u64;
    }
    Ok(copied)
}

/// Makes the creation, renaming or removal of `path` durable by fsyncing its directory.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Creates directory `path` with every missing level above it, each level's name made durable
/// in its parent (`create_dir_all` alone leaves them to the file system's next flush: after a
/// power loss, files written and fsynced inside could be gone with their directory).
pub fn create_dir_durably(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path
        .ancestors()
        // (A level whose existence cannot be told is left to `create_dir_all` to report.)
        .take_while(|level| {
            !level.as_os_str().is_empty() && matches!(level.try_exists(), Ok(false))
        })
        .collect();
    std::fs::create_dir_all(path)?;
    for level in missing.iter().rev() {
        sync_dir(level)?;
    }
    Ok(())
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Runs blocking `work` (a write and its fsync, a read from disk) on tokio's blocking pool once
/// one of `turns` is free. Work waiting for its turn waits as a task, not in a thread of the
/// pool each, which other work needs (the trades' fsyncs, the consensus's own). The turn goes
/// with the work, not with its caller: a caller that goes away leaves the work running, and
/// the turn taken, until it ends.
pub async fn in_turn<T: Send + 'static>(
    turns: &std::sync::Arc<tokio::sync::Semaphore>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let turn = turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    with_turn(turn, work).await
}

/// Runs blocking `work` on tokio's blocking pool with `turn`, taken by the caller (who may
/// bound its wait for it); the turn goes with the work, as in [`in_turn`].
pub async fn with_turn<T: Send + 'static>(
    turn: tokio::sync::OwnedSemaphorePermit,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_through_the_cache_takes_the_first_bytes_and_says_how_many_there_were() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        // Past the copy's buffer, so that it takes more than one read.
        let text: Vec<u8> = (0..(3 << 20) / 2).map(|i| (i % 251) as u8).collect();
        std::fs::write(&from, &text).unwrap();
        let cut = text.len() as u64 - 7;
        let copied = copy_through_cache(
            &mut File::open(&from).unwrap(),
            &mut File::create(&to).unwrap(),
            cut,
        )
        .unwrap();
        assert_eq!(copied, cut);
        assert_eq!(std::fs::read(&to).unwrap(), text[..cut as usize]);
        let all = copy_through_cache(
            &mut File::open(&from).unwrap(),
            &mut File::create(&to).unwrap(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(all, text.len() as u64, "a shorter file copies what it has");
    }

    #[test]
    fn a_directory_made_durably_has_every_level_and_one_that_exists_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durably(&deep).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let under_a_file = dir.path().join("file").join("d");
        assert!(create_dir_durably(&under_a_file).is_err());
    }

    #[test]
    fn a_file_removed_durably_is_gone_and_one_already_gone_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, "through 9").unwrap();
        remove_durably(&path).unwrap();
        assert!(!path.exists());
        remove_durably(&path).unwrap();
    }

    #[test]
    fn end_of_last_line_ignores_an_unfinished_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = open_append(&path).unwrap();
        assert_eq!(end_of_last_line(&file, 0).unwrap(), 0);
        file.write_all(b"a,b\n").unwrap();
        // A last line longer than one 64 KiB chunk.
        file.write_all(&vec![b'x'; 100_000]).unwrap();
        file.write_all(b"\nunfinished").unwrap();
        let size = file.metadata().unwrap().len();
        assert_eq!(end_of_last_line(&file, size).unwrap(), size - 10);
        assert_eq!(end_of_last_line(&file, 4).unwrap(), 4);
        assert_eq!(end_of_last_line(&file, 3).unwrap(), 0);
    }

    #[test]
    fn a_failed_replacement_leaves_the_old_file_and_no_partial_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term-1");
        std::fs::write(&path, "old").unwrap();
        let failed = replace_atomically(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        // No partial copy holds on to the space a full disk lacks.
        assert!(!dir.path().join("term-1.tmp").exists());
        replace_atomically(&path, |file| file.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!dir.path().join("term-1.tmp").exists());
    }
}
