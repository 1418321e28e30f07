//! The registry of users and their API keys: an append-only CSV journal beside the catalog
//! (`kind,user,key,time,prefix,credential,display_name`: a user made, a key added, a key
//! revoked), fsync'd before a change is acknowledged. It holds no API key, only each key's
//! credential (salt and hash) and prefix, which frontends fetch to verify keys. The catalog
//! keeps it because the catalog is the one service every order group shares: users are not a
//! stock's state and belong to no group (I10, docs/ARCHITECTURE.md).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};
use stocknet_common::api_key::Credential;
use stocknet_common::file;
use stocknet_common::file::FileFailure;
use stocknet_common::wire::{check_display_name, KeyRecord, UserRecord};

use crate::error::CatalogError;

const HEADER: &str = "kind,user,key,time,prefix,credential,display_name\n";

/// The first line of a registry from before keys had ids (`id,created,credential`, one key
/// per user): such a file is rewritten in the journal's form when opened.
const FIRST_HEADER: &str = "id,created,credential";

/// Keys a user may hold at once (revoked ones aside): room to rotate keys and to give each
/// program its own, and a bound on what a frontend keeps and checks per user.
pub const MAX_LIVE_KEYS: usize = 10;

/// Keys a user may make in all, revoked ones included: the catalog keeps every key's record
/// (a revocation repeated answers as the first), so a loop of adding and revoking keys would
/// otherwise grow one user's record without bound.
pub const MAX_KEYS_MADE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    User,
    Key,
    Revoke,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    kind: Kind,
    user: u64,
    key: Option<u32>,
    time: u64,
    prefix: Option<String>,
    credential: Option<Credential>,
    display_name: Option<String>,
}

/// A key revoked, and whether this call revoked it (else an earlier one had).
#[derive(Debug)]
pub struct Revoked {
    pub key: KeyRecord,
    pub now: bool,
}

pub struct UserStore {
    path: PathBuf,
    /// Held while a change is appended, so ids follow the file.
    file: Mutex<File>,
    /// User `id` is at index `id - 1`.
    users: RwLock<Vec<UserRecord>>,
}

impl UserStore {
    /// Opens (or creates) the registry at `path`; a torn last line (a crash mid-append, never
    /// acknowledged) is cut off, and a registry of the first form is rewritten in this one.
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
        let corrupt = |e: String| CatalogError::Corrupt(format!("{}: {e}", path.display()));
        let (users, rewrite) = if text.starts_with(FIRST_HEADER) {
            (parse_first_form(&text).map_err(corrupt)?, true)
        } else {
            (parse(&text).map_err(corrupt)?, text.is_empty())
        };
        let file = if rewrite {
            drop(file);
            let mut journal = HEADER.as_bytes().to_vec();
            for user in &users {
                journal.extend(user_lines(user).map_err(|e| corrupt(e.to_string()))?);
            }
            file::replace_atomically(&path, |f| f.write_all(&journal)).map_err(io)?;
            file::open_append(&path).map_err(io)?
        } else {
            file
        };
        Ok(Self {
            path,
            file: Mutex::new(file),
            users: RwLock::new(users),
        })
    }

    /// Registers a user whose first key has `credential` and `prefix`, durably, and returns
    /// the record with its new id.
    pub fn create(
        &self,
        credential: Credential,
        prefix: String,
        display_name: Option<String>,
        created: u64,
    ) -> Result<UserRecord, CatalogError> {
        if let Some(name) = &display_name {
            check_display_name(name).map_err(|e| CatalogError::Invalid(e.into()))?;
        }
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let record = UserRecord {
            id: self.read().len() as u64 + 1,
            created,
            display_name,
            keys: vec![KeyRecord {
                id: 1,
                created,
                prefix: Some(prefix),
                credential,
                revoked: None,
            }],
        };
        self.append(&file, user_lines(&record)?)?;
        self.write().push(record.clone());
        Ok(record)
    }

    /// Gives user `user` another key, durably.
    pub fn add_key(
        &self,
        user: u64,
        credential: Credential,
        prefix: String,
        created: u64,
    ) -> Result<KeyRecord, CatalogError> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let made = {
            let users = self.read();
            let record = find(&users, user).ok_or(CatalogError::UserNotFound)?;
            if record.live_keys().count() >= MAX_LIVE_KEYS {
                return Err(CatalogError::TooManyKeys(MAX_LIVE_KEYS));
            }
            if record.keys.len() >= MAX_KEYS_MADE {
                return Err(CatalogError::KeysUsedUp(MAX_KEYS_MADE));
            }
            record.keys.len()
        };
        let key = KeyRecord {
            id: made as u32 + 1,
            created,
            prefix: Some(prefix),
            credential,
            revoked: None,
        };
        self.append(&file, encode(&[add_key(user, &key)])?)?;
        self.change(user, |record| record.keys.push(key.clone()));
        Ok(key)
    }

    /// Revokes key `key` of user `user`, durably; a key revoked before stays as it was.
    pub fn revoke(&self, user: u64, key: u32, time: u64) -> Result<Revoked, CatalogError> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let index = key.checked_sub(1).ok_or(CatalogError::KeyNotFound)? as usize;
        let mut revoked = find(&self.read(), user)
            .ok_or(CatalogError::UserNotFound)?
            .keys
            .get(index)
            .cloned()
            .ok_or(CatalogError::KeyNotFound)?;
        if revoked.revoked.is_some() {
            return Ok(Revoked {
                key: revoked,
                now: false,
            });
        }
        revoked.revoked = Some(time);
        let line = Line {
            kind: Kind::Revoke,
            user,
            key: Some(key),
            time,
            prefix: None,
            credential: None,
            display_name: None,
        };
        self.append(&file, encode(&[line])?)?;
        self.change(user, |record| record.keys[index].revoked = Some(time));
        Ok(Revoked {
            key: revoked,
            now: true,
        })
    }

    /// How many users there are.
    pub fn count(&self) -> usize {
        self.read().len()
    }

    /// User `id` as frontends verify their keys: the keys not revoked, which are all a
    /// frontend needs (a revoked key is refused as an unknown one is).
    pub fn live(&self, id: u64) -> Option<UserRecord> {
        let users = self.read();
        let record = find(&users, id)?;
        Some(UserRecord {
            id: record.id,
            created: record.created,
            display_name: record.display_name.clone(),
            keys: record.live_keys().cloned().collect(),
        })
    }

    /// User `id` with every key made.
    #[cfg(test)]
    pub fn get(&self, id: u64) -> Option<UserRecord> {
        find(&self.read(), id).cloned()
    }

    /// Appends `bytes` (whole lines) and waits until they are on disk. A write that fails
    /// part way (a full disk) is cut off again, as the journal's are: the next line appended
    /// after a fragment would make one line that no start can read.
    fn append(&self, file: &File, bytes: Vec<u8>) -> Result<(), CatalogError> {
        let io = |e| CatalogError::io(&self.path, e);
        let before = file.metadata().map_err(io)?.len();
        if let Err(e) = (&*file).write_all(&bytes) {
            if let Err(cut) = file.set_len(before) {
                // A start cuts a torn last line off; an append after it would not be.
                tracing::error!(path = %self.path.display(), "could not cut a failed write off ({cut}), exiting to recover");
                std::process::exit(70);
            }
            return Err(io(e));
        }
        file::sync_data_or_exit(file, &self.path);
        Ok(())
    }

    fn change(&self, user: u64, change: impl FnOnce(&mut UserRecord)) {
        let mut users = self.write();
        if let Some(record) = user.checked_sub(1).and_then(|i| users.get_mut(i as usize)) {
            change(record);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<UserRecord>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<UserRecord>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// User `id` (from 1) of `users`.
fn find(users: &[UserRecord], id: u64) -> Option<&UserRecord> {
    users.get(usize::try_from(id.checked_sub(1)?).ok()?)
}

/// The lines that make `user` as it is: it, its keys, their revocations.
fn user_lines(user: &UserRecord) -> Result<Vec<u8>, CatalogError> {
    let mut lines = vec![Line {
        kind: Kind::User,
        user: user.id,
        key: None,
        time: user.created,
        prefix: None,
        credential: None,
        display_name: user.display_name.clone(),
    }];
    for key in &user.keys {
        lines.push(add_key(user.id, key));
        if let Some(time) = key.revoked {
            lines.push(Line {
                kind: Kind::Revoke,
                user: user.id,
                key: Some(key.id),
                time,
                prefix: None,
                credential: None,
                display_name: None,
            });
        }
    }
    encode(&lines)
}

fn add_key(user: u64, key: &KeyRecord) -> Line {
    Line {
        kind: Kind::Key,
        user,
        key: Some(key.id),
        time: key.created,
        prefix: key.prefix.clone(),
        credential: Some(key.credential),
        display_name: None,
    }
}

fn encode(lines: &[Line]) -> Result<Vec<u8>, CatalogError> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for line in lines {
        writer
            .serialize(line)
            .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    }
    writer
        .into_inner()
        .map_err(|e| CatalogError::Corrupt(e.to_string()))
}

/// The users a journal holds: users with dense ids from 1, keys with dense ids from 1 per
/// user, revocations of keys that exist.
fn parse(text: &str) -> Result<Vec<UserRecord>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.starts_with(HEADER) {
        return Err("missing header line".into());
    }
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut users: Vec<UserRecord> = Vec::new();
    for (index, line) in reader.deserialize::<Line>().enumerate() {
        let number = index + 2;
        let line = line.map_err(|e| format!("line {number}: {e}"))?;
        let at = |users: &[UserRecord]| -> Result<usize, String> {
            let index = line.user.checked_sub(1).map(|i| i as usize);
            index
                .filter(|&i| i < users.len())
                .ok_or_else(|| format!("line {number}: no user {}", line.user))
        };
        match line.kind {
            Kind::User => {
                if line.user != users.len() as u64 + 1 {
                    return Err(format!("line {number}: user {} is out of order", line.user));
                }
                users.push(UserRecord {
                    id: line.user,
                    created: line.time,
                    display_name: line.display_name,
                    keys: Vec::new(),
                });
            }
            Kind::Key => {
                let index = at(&users)?;
                let user = &mut users[index];
                let (Some(id), Some(credential)) = (line.key, line.credential) else {
                    return Err(format!("line {number}: a key needs its id and credential"));
                };
                if id as usize != user.keys.len() + 1 {
                    return Err(format!("line {number}: key {id} is out of order"));
                }
                user.keys.push(KeyRecord {
                    id,
                    created: line.time,
                    prefix: line.prefix,
                    credential,
                    revoked: None,
                });
            }
            Kind::Revoke => {
                let index = at(&users)?;
                let user = &mut users[index];
                let key = line
                    .key
                    .and_then(|id| id.checked_sub(1))
                    .and_then(|i| user.keys.get_mut(i as usize))
                    .ok_or_else(|| format!("line {number}: no such key"))?;
                key.revoked = Some(line.time);
            }
        }
    }
    Ok(users)
}

/// The users of a registry of the first form (`id,created,credential`): one key each, with
/// no prefix kept.
fn parse_first_form(text: &str) -> Result<Vec<UserRecord>, String> {
    let mut users = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let number = index + 1;
        let mut fields = line.split(',');
        let (Some(id), Some(created), Some(credential), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {number}: expected id,created,credential"));
        };
        let id: u64 = id.parse().map_err(|e| format!("line {number}: id: {e}"))?;
        let created: u64 = created
            .parse()
            .map_err(|e| format!("line {number}: created: {e}"))?;
        if id != users.len() as u64 + 1 {
            return Err(format!("line {number}: user {id} is out of order"));
        }
        users.push(UserRecord {
            id,
            created,
            display_name: None,
            keys: vec![KeyRecord {
                id: 1,
                created,
                prefix: None,
                credential: credential
                    .parse()
                    .map_err(|e| format!("line {number}: {e}"))?,
                revoked: None,
            }],
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stocknet_common::api_key::ApiKey;

    fn key() -> (ApiKey, Credential, String) {
        let key = ApiKey::generate(1).unwrap();
        let credential = Credential::of(&key).unwrap();
        let prefix = key.prefix();
        (key, credential, prefix)
    }

    #[test]
    fn users_keys_and_revocations_survive_a_reopen_and_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let store = UserStore::open(&path).unwrap();
        let (first, first_credential, first_prefix) = key();
        let named = Some("Ada, \"the first\"".to_owned());
        let ada = store
            .create(first_credential, first_prefix.clone(), named.clone(), 10)
            .unwrap();
        assert_eq!((ada.id, ada.keys.len()), (1, 1));
        let (_, credential, prefix) = key();
        assert_eq!(store.create(credential, prefix, None, 20).unwrap().id, 2);
        let (second, second_credential, second_prefix) = key();
        let added = store
            .add_key(1, second_credential, second_prefix, 30)
            .unwrap();
        assert_eq!(added.id, 2);
        let revoked = store.revoke(1, 1, 40).unwrap();
        assert_eq!((revoked.key.revoked, revoked.now), (Some(40), true));
        // Revoking again changes nothing, and writes nothing.
        let size = std::fs::metadata(&path).unwrap().len();
        let again = store.revoke(1, 1, 50).unwrap();
        assert_eq!((again.key.revoked, again.now), (Some(40), false));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert!(matches!(
            store.revoke(1, 3, 50),
            Err(CatalogError::KeyNotFound)
        ));
        assert!(matches!(
            store.revoke(1, 0, 50),
            Err(CatalogError::KeyNotFound)
        ));
        assert!(matches!(
            store.revoke(9, 1, 50),
            Err(CatalogError::UserNotFound)
        ));
        let user = store.get(1).unwrap();
        assert!(!user.admits(&first.clone().with_user(1)), "revoked");
        assert!(user.admits(&second.clone().with_user(1)));
        drop(store);

        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"key,2,2,60,abcd")
            .unwrap();
        let store = UserStore::open(&path).unwrap();
        let user = store.get(1).unwrap();
        assert_eq!(user.display_name, named);
        assert_eq!(user.keys.len(), 2);
        assert_eq!(user.keys[0].prefix.as_deref(), Some(first_prefix.as_str()));
        assert_eq!(user.keys[0].revoked, Some(40));
        assert!(user.admits(&second.with_user(1)));
        assert_eq!(store.get(2).unwrap().keys.len(), 1, "the torn line is gone");
        assert_eq!(store.get(3), None);
        assert_eq!(store.get(0), None);
    }

    /// A registry in `dir` holding one user, with one key.
    fn one_user(dir: &tempfile::TempDir) -> UserStore {
        let store = UserStore::open(dir.path().join("users.csv")).unwrap();
        let (_, credential, prefix) = key();
        store.create(credential, prefix, None, 1).unwrap();
        store
    }

    #[test]
    fn a_user_holds_at_most_so_many_live_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_user(&dir);
        for _ in 1..MAX_LIVE_KEYS {
            let (_, credential, prefix) = key();
            store.add_key(1, credential, prefix, 2).unwrap();
        }
        let (_, credential, prefix) = key();
        assert!(matches!(
            store.add_key(1, credential, prefix.clone(), 3),
            Err(CatalogError::TooManyKeys(MAX_LIVE_KEYS))
        ));
        store.revoke(1, 4, 4).unwrap();
        assert_eq!(store.add_key(1, credential, prefix, 5).unwrap().id, 11);
    }

    #[test]
    fn keys_made_and_revoked_are_bounded_and_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_user(&dir);
        for made in 2..=MAX_KEYS_MADE {
            store.revoke(1, made as u32 - 1, 2).unwrap();
            let (_, credential, prefix) = key();
            store.add_key(1, credential, prefix, 3).unwrap();
        }
        let (_, credential, prefix) = key();
        assert!(matches!(
            store.add_key(1, credential, prefix, 4),
            Err(CatalogError::KeysUsedUp(MAX_KEYS_MADE))
        ));
        let live = store.live(1).unwrap();
        assert_eq!(live.keys.len(), 1, "only the key not revoked is served");
        assert_eq!(live.keys[0].id as usize, MAX_KEYS_MADE);
        let again = store.revoke(1, 1, 5).unwrap();
        assert_eq!((again.key.revoked, again.now), (Some(2), false));
    }

    #[test]
    fn a_registry_of_the_first_form_is_rewritten_and_its_keys_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let (first, credential, _) = key();
        std::fs::write(&path, format!("{FIRST_HEADER}\n1,10,{credential}\n")).unwrap();
        let store = UserStore::open(&path).unwrap();
        let user = store.get(1).unwrap();
        assert_eq!((user.created, user.keys[0].prefix.clone()), (10, None));
        assert!(user.admits(&first.clone().with_user(1)));
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(HEADER));
        let (_, credential, prefix) = key();
        store.add_key(1, credential, prefix, 20).unwrap();
        drop(store);
        let store = UserStore::open(&path).unwrap();
        assert_eq!(store.get(1).unwrap().keys.len(), 2);
        assert!(store.get(1).unwrap().admits(&first.with_user(1)));
    }

    #[test]
    fn a_damaged_registry_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        let (_, credential, _) = key();
        for text in [
            format!("{HEADER}user,2,,1,,,\n"),
            format!("{HEADER}user,1,,1,,,\nkey,1,2,1,,{credential},\n"),
            format!("{HEADER}user,1,,1,,,\nrevoke,1,1,1,,,\n"),
            format!("{FIRST_HEADER}\n2,1,{credential}\n"),
            "something else\n".to_owned(),
        ] {
            std::fs::write(&path, &text).unwrap();
            assert!(UserStore::open(&path).is_err(), "{text}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }
}
