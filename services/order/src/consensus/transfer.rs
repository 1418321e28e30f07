//! A snapshot as one replica sends it to another that lacks entries the log no longer offers
//! (Raft's InstallSnapshot): the book as of an entry, the archived records the book continues,
//! and the log's lines through that entry. The log is also the audit trail and the store of the
//! idempotency keys, so a replica that installs a snapshot holds the same log as the sender,
//! from line 1, and answers every read and duplicate key as it would have after replaying it.
//!
//! Layout: a magic line, five little-endian lengths, then the sections they measure: the
//! book's image, the archive's trades, orders and refusals, and the log file's bytes. The
//! sender reads the archive and the log from its files as the chunks go, so assembling one
//! costs only the book's encoding; the receiver writes the chunks to a file of its own.

use std::fs::File;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use stocknet_common::file::FileFailure;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::LogStore;
use crate::book_store::{BookImage, BookStore};
use crate::error::OrderError;
use crate::log::{OrderLog, ReadAt};

/// First bytes of a transfer; the digit is the format's version.
const MAGIC: &[u8] = b"stocknet snapshot transfer 2\n";

/// The sections after the magic line and their lengths.
const SECTIONS: usize = 5;
const HEADER: u64 = MAGIC.len() as u64 + 8 * SECTIONS as u64;

/// A snapshot's bytes in transit (openraft's snapshot data): as the leader sends them, or as
/// a replica receives them.
pub struct SnapshotData {
    source: Source,
    position: u64,
}

enum Source {
    /// The parts the leader reads in order, read as the chunks go.
    Sending(Vec<Part>),
    /// A file beside the log the chunks are written to (its handle, and its path, which the
    /// install removes).
    Receiving(File, PathBuf),
}

enum Part {
    Memory(Vec<u8>),
    /// The first `length` bytes of a file.
    File(File, u64),
}

impl Part {
    fn len(&self) -> u64 {
        match self {
            Part::Memory(bytes) => bytes.len() as u64,
            Part::File(_, length) => *length,
        }
    }
}

impl SnapshotData {
    /// No bytes: what openraft is given for a snapshot it only marks (it keeps the meta).
    pub fn empty() -> Self {
        Self {
            source: Source::Sending(Vec::new()),
            position: 0,
        }
    }

    /// A new file at `path` for a snapshot to be received (one left there before is replaced).
    pub fn receiving(path: PathBuf) -> Result<Self, OrderError> {
        let io = |e| OrderError::io(&path, e);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            source: Source::Receiving(file, path),
            position: 0,
        })
    }

    fn len(&self) -> std::io::Result<u64> {
        match &self.source {
            Source::Sending(parts) => Ok(parts.iter().map(Part::len).sum()),
            Source::Receiving(file, _) => Ok(file.metadata()?.len()),
        }
    }
}

/// What replica sends of `book` as applied now and of `log`, and the last line it holds. Only
/// the book is encoded here; the archive and the log are read from handles opened now as the
/// chunks go.
pub fn assemble(
    book: &BookStore,
    log: &Mutex<OrderLog>,
) -> Result<(SnapshotData, u64), OrderError> {
    let BookImage {
        bytes,
        line,
        archived,
    } = book.image()?;
    let [trades, orders, refusals] = book.archive().record_files(&archived)?;
    // The lines through the book's last are committed, so no write changes them.
    let (log, log_length) = log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .open_through(line)?;
    let lengths = [
        bytes.len() as u64,
        trades.1,
        orders.1,
        refusals.1,
        log_length,
    ];
    let mut header = MAGIC.to_vec();
    for length in lengths {
        header.extend_from_slice(&length.to_le_bytes());
    }
    let parts = vec![
        Part::Memory(header),
        Part::Memory(bytes),
        Part::File(trades.0, trades.1),
        Part::File(orders.0, orders.1),
        Part::File(refusals.0, refusals.1),
        Part::File(log, log_length),
    ];
    let data = SnapshotData {
        source: Source::Sending(parts),
        position: 0,
    };
    Ok((data, line))
}

/// Installs `data`, received from a replica that assembled it as of entry `through`: the log
/// first, then the archive and the book, each durable before the next, so that a replica
/// stopped in between opens a log that its book can follow. Removes the received file.
/// Blocking.
pub fn install(
    data: &SnapshotData,
    book: &BookStore,
    store: &LogStore,
    through: Option<u64>,
) -> Result<(), OrderError> {
    let Source::Receiving(file, path) = &data.source else {
        return Err(corrupt("not one received".into()));
    };
    let installed = install_file(file, book, store, through);
    if installed.is_err() {
        store.install_failed();
    }
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), "a received snapshot not removed: {e}");
    }
    installed
}

fn install_file(
    file: &File,
    book: &BookStore,
    store: &LogStore,
    through: Option<u64>,
) -> Result<(), OrderError> {
    let mut header = [0; HEADER as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| corrupt(e.to_string()))?;
    let lengths = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not one, or of another version".into()))?;
    let mut sections = [(0, 0); SECTIONS];
    let mut offset = HEADER;
    for (section, length) in sections.iter_mut().zip(lengths.chunks_exact(8)) {
        let length = u64::from_le_bytes(length.try_into().unwrap_or_default());
        *section = (offset, length);
        offset = offset.saturating_add(length);
    }
    let size = file.metadata().map_err(|e| corrupt(e.to_string()))?.len();
    if offset != size {
        return Err(corrupt(format!(
            "{size} bytes where its sections add up to {offset}"
        )));
    }
    let [image, trades, orders, refusals, log] = sections;
    let log = ReadAt {
        file,
        offset: log.0,
        end: log.0 + log.1,
    };
    let (line, entry) = store.install_lines(log)?;
    if entry != through {
        return Err(corrupt(format!(
            "its log ends at entry {entry:?}, its snapshot at {through:?}"
        )));
    }
    let mut bytes = vec![0; usize::try_from(image.1).map_err(|e| corrupt(e.to_string()))?];
    file.read_exact_at(&mut bytes, image.0)
        .map_err(|e| corrupt(e.to_string()))?;
    book.install(&bytes, line, (file, [trades, orders, refusals]))
}

fn corrupt(what: String) -> OrderError {
    OrderError::Corrupt(format!("a snapshot transfer: {what}"))
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, what.to_owned())
}

// The reads and writes are `pread`/`pwrite` of at most a chunk (1 MiB), on the runtime's
// thread: openraft reads and writes a snapshot through these traits only.
impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let read = match &this.source {
            Source::Receiving(file, _) => {
                let into = buf.initialize_unfilled();
                file.read_at(into, this.position)
            }
            Source::Sending(parts) => read_parts(parts, this.position, buf.initialize_unfilled()),
        };
        Poll::Ready(read.map(|read| {
            buf.advance(read);
            this.position += read as u64;
        }))
    }
}

/// Reads into `into` from `parts`, taken as one run of bytes, at `position`.
fn read_parts(parts: &[Part], position: u64, into: &mut [u8]) -> std::io::Result<usize> {
    let mut start = 0;
    for part in parts {
        let end = start + part.len();
        if position < end {
            let within = position - start;
            let room = usize::try_from(end - position).map_or(into.len(), |r| r.min(into.len()));
            let into = &mut into[..room];
            return match part {
                Part::Memory(bytes) => {
                    let from = usize::try_from(within).map_err(std::io::Error::other)?;
                    into.copy_from_slice(&bytes[from..from + room]);
                    Ok(room)
                }
                Part::File(file, _) => match file.read_at(into, within)? {
                    0 => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a file shorter than when the snapshot was assembled",
                    )),
                    read => Ok(read),
                },
            };
        }
        start = end;
    }
    Ok(0)
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = match &this.source {
            Source::Receiving(file, _) => file.write_at(buf, this.position),
            Source::Sending(_) => Err(unsupported("a snapshot being sent is not written")),
        };
        Poll::Ready(written.inspect(|written| this.position += *written as u64))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The end of a snapshot received: whatever the file holds past the last chunk (from an
    /// earlier, longer transfer under the same id) is cut off.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(match &self.source {
            Source::Receiving(file, _) => file.set_len(self.position),
            Source::Sending(_) => Ok(()),
        })
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        let base = match position {
            SeekFrom::Start(offset) => {
                this.position = offset;
                return Ok(());
            }
            SeekFrom::End(delta) => (this.len()?, delta),
            SeekFrom::Current(delta) => (this.position, delta),
        };
        this.position = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| unsupported("a seek before the start"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Poll::Ready(Ok(self.position))
    }
}
