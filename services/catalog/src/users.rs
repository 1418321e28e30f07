//! The registry of users: an append-only CSV file (`id,created,credential`) beside the
//! catalog, fsync'd before a new user is acknowledged. It holds no API key, only each key's
//! credential (salt and hash), which frontends fetch to verify keys. The catalog keeps it
//! because the catalog is the one service every order group shares: users are not a stock's
//! state and belong to no group (DESIGN I10).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use stocknet_common::api_key::Credential;
use stocknet_common::file;
use stocknet_common::wire::UserRecord;

use crate::error::CatalogError;

const HEADER: &str = "id,created,credential\n";

pub struct UserStore {
    path: PathBuf,
    /// Held while a user is appended, so ids follow the file.
    file: Mutex<File>,
    /// User `id` is at index `id - 1`.
    users: RwLock<Vec<UserRecord>>,
}

impl UserStore {
    /// Opens (or creates) the registry at `path`; a torn last line (a crash mid-append, never
    /// acknowledged) is cut off.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CatalogError> {
        let path = path.into();
        let io = |e| CatalogError::io(&path, e);
        let file = file::open_append(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let complete = file::end_of_last_line(&file, size).map_err(io)?;
        if complete < size {
            tracing::warn!(path = %path.display(), "dropping a torn last line of the user registry");
            file.set_len(complete).map_err(io)?;
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let users =
            parse(&text).map_err(|e| CatalogError::Corrupt(format!("{}: {e}", path.display())))?;
        if text.is_empty() {
            (&file).write_all(HEADER.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            file::sync_dir(&path).map_err(io)?;
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
            users: RwLock::new(users),
        })
    }

    /// Registers a user with `credential`, durably, and returns the record with its new id.
    pub fn create(&self, credential: Credential, created: u64) -> Result<UserRecord, CatalogError> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.read().len() as u64 + 1;
        let record = UserRecord {
            id,
            created,
            credential,
        };
        let line = format!("{id},{created},{credential}\n");
        (&*file)
            .write_all(line.as_bytes())
            .map_err(|e| CatalogError::io(&self.path, e))?;
        file::sync_data_or_exit(&file, &self.path);
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.clone());
        Ok(record)
    }

    /// How many users there are.
    pub fn count(&self) -> usize {
        self.read().len()
    }

    pub fn get(&self, id: u64) -> Option<UserRecord> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.read().get(index).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<UserRecord>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The users a registry file holds; ids must be 1, 2, 3, … in order.
fn parse(text: &str) -> Result<Vec<UserRecord>, String> {
    let mut lines = text.lines();
    match lines.next() {
        None => return Ok(Vec::new()),
        Some(header) if header == HEADER.trim_end() => {}
        Some(_) => return Err("missing header line".into()),
    }
    let mut users = Vec::new();
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        let mut fields = line.split(',');
        let (Some(id), Some(created), Some(credential), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {number}: expected id,created,credential"));
        };
        let record = UserRecord {
            id: id.parse().map_err(|e| format!("line {number}: id: {e}"))?,
            created: created
                .parse()
                .map_err(|e| format!("line {number}: created: {e}"))?,
            credential: credential
                .parse()
                .map_err(|e| format!("line {number}: {e}"))?,
        };
        if record.id != users.len() as u64 + 1 {
            return Err(format!("line {number}: user {} is out of order", record.id));
        }
        users.push(record);
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stocknet_common::api_key::ApiKey;

    fn credential() -> Credential {
        Credential::of(&ApiKey::generate(1).unwrap()).unwrap()
    }

    #[test]
    fn users_get_dense_ids_and_survive_a_reopen_and_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let store = UserStore::open(&path).unwrap();
        let (first, second) = (credential(), credential());
        assert_eq!(store.create(first, 10).unwrap().id, 1);
        assert_eq!(store.create(second, 20).unwrap().id, 2);
        assert_eq!(store.get(3), None);
        assert_eq!(store.get(0), None);
        drop(store);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"3,30,abc")
            .unwrap();
        let store = UserStore::open(&path).unwrap();
        assert_eq!(store.get(1).unwrap().credential, first);
        assert_eq!(store.get(2).unwrap().created, 20);
        assert_eq!(store.get(3), None, "the torn line is gone");
        assert_eq!(store.create(credential(), 40).unwrap().id, 3);
    }

    #[test]
    fn a_damaged_registry_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let text = format!("{HEADER}2,1,{}\n", credential());
        std::fs::write(&path, &text).unwrap();
        let error = UserStore::open(&path).err().expect("refused");
        assert!(error.to_string().contains("out of order"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
