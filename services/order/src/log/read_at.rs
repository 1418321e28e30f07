//! Reading the log file by offset, and the CSV readers lookups reuse.

use std::borrow::Borrow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

use super::record;

/// Reads a file between two offsets with `pread`, so readers share no file position.
#[derive(Debug)]
pub struct ReadAt<F> {
    pub file: F,
    pub offset: u64,
    pub end: u64,
}

impl<F: Borrow<File>> Read for ReadAt<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = usize::try_from(self.end.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let read = self.file.borrow().read_at(&mut buf[..room], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

impl<F> Seek for ReadAt<F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let offset = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.end.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.offset.checked_add_signed(delta),
        };
        self.offset = offset.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "before the file's start")
        })?;
        Ok(self.offset)
    }
}

type LogReader = csv::Reader<ReadAt<Arc<File>>>;

/// At most this many readers wait for reuse: lookups run one at a time (under the log's lock),
/// each with one reader; one more is spare.
const KEPT: usize = 2;

/// CSV readers of the log file, kept for the next lookup: building one (its parser's tables,
/// its buffer) cost more than parsing the few lines a lookup reads (27.5% of the leader's
/// samples under modifies, whose orders are older than the lines kept in memory).
#[derive(Debug, Default)]
pub struct Readers(Mutex<Vec<LogReader>>);

impl Readers {
    /// A reader of `file` at byte `offset`, reading no further than `end`; its position
    /// counts from `offset`.
    pub fn at(&self, file: &Arc<File>, offset: u64, end: u64) -> std::io::Result<Kept<'_>> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let source = ReadAt {
            file: Arc::clone(file),
            offset,
            end,
        };
        let reader = match kept {
            Some(mut reader) => {
                *reader.get_mut() = source;
                // Drops what it had buffered and parsed: it reads from `offset` afresh.
                reader
                    .seek_raw(SeekFrom::Start(offset), csv::Position::new())
                    .map_err(std::io::Error::from)?;
                reader
            }
            None => record::reader(source),
        };
        Ok(Kept {
            reader: Some(reader),
            readers: self,
        })
    }
}

/// A reader from [`Readers`], back to them when dropped.
pub struct Kept<'a> {
    reader: Option<LogReader>,
    readers: &'a Readers,
}

impl Deref for Kept<'_> {
    type Target = LogReader;

    fn deref(&self) -> &LogReader {
        self.reader.as_ref().expect("taken only on drop")
    }
}

impl DerefMut for Kept<'_> {
    fn deref_mut(&mut self) -> &mut LogReader {
        self.reader.as_mut().expect("taken only on drop")
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let mut kept = self
            .readers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT {
            kept.push(reader);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_of(text: &str) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let handle = Arc::new(file.reopen().unwrap());
        (file, handle)
    }

    fn next(reader: &mut Kept<'_>) -> Option<Vec<String>> {
        let mut record = csv::ByteRecord::new();
        reader.read_byte_record(&mut record).unwrap().then(|| {
            record
                .iter()
                .map(|field| String::from_utf8_lossy(field).into_owned())
                .collect()
        })
    }

    /// A reader back from a lookup starts the next one afresh: at its offset, with nothing of
    /// what it buffered, parsed or read from another file, and stopping at the new end.
    #[test]
    fn a_kept_reader_reads_from_its_new_offset_in_its_new_file() {
        let (_a, first) = file_of("1,a\n2,\"b\nb\"\n3,c\n");
        let readers = Readers::default();
        let mut reader = readers.at(&first, 0, 100).unwrap();
        assert_eq!(next(&mut reader), Some(vec!["1".into(), "a".into()]));
        drop(reader);
        assert_eq!(readers.0.lock().unwrap().len(), 1);

        // From the start of line 3, mid-way through what the kept reader had buffered.
        let mut reader = readers.at(&first, 12, 100).unwrap();
        assert_eq!(readers.0.lock().unwrap().len(), 0, "the kept one is reused");
        assert_eq!(next(&mut reader), Some(vec!["3".into(), "c".into()]));
        assert_eq!(reader.position().byte(), 4, "counted from the offset");
        assert_eq!(next(&mut reader), None);
        drop(reader);

        // Left inside a quoted field, then given another file and an end short of its end.
        let mut reader = readers.at(&first, 4, 7).unwrap();
        let mut record = csv::ByteRecord::new();
        let _ = reader.read_byte_record(&mut record);
        drop(reader);
        let (_b, second) = file_of("7,x\n8,y\n9,z\n");
        let mut reader = readers.at(&second, 4, 8).unwrap();
        assert_eq!(next(&mut reader), Some(vec!["8".into(), "y".into()]));
        assert_eq!(next(&mut reader), None, "ends at the end given");
    }

    #[test]
    fn readers_kept_are_bounded() {
        let (_file, handle) = file_of("1,a\n");
        let readers = Readers::default();
        let many: Vec<_> = (0..KEPT + 3)
            .map(|_| readers.at(&handle, 0, 4).unwrap())
            .collect();
        drop(many);
        assert_eq!(readers.0.lock().unwrap().len(), KEPT);
    }
}
