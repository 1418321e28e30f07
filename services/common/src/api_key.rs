//! Users' API keys. A key is `snk_<user id>_<64 hex digits>`: the id says whose key it claims to
//! be, the 32 random bytes prove it. Only a [`Credential`] is stored (a per-key salt and the
//! SHA-256 of salt and secret), so whoever reads the store cannot use a key, and a frontend
//! verifies a key with one hash and no round trip once it knows the user's credential. A key
//! is long and random, so a fast hash is enough: there is nothing to guess by brute force.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "snk_";

/// A user's API key. Its `Debug` never shows the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    user: u64,
    secret: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(user {}, redacted)", self.user)
    }
}

impl ApiKey {
    /// A new random key for `user`.
    pub fn generate(user: u64) -> std::io::Result<Self> {
        Ok(Self {
            user,
            secret: random_bytes()?,
        })
    }

    /// The same secret for another user: a key is made before the registry gives its user
    /// an id (the credential does not depend on it).
    pub fn with_user(self, user: u64) -> Self {
        Self { user, ..self }
    }

    /// Parses the text form; `None` for anything that is not one. A key has one spelling, the
    /// one [`reveal`](Self::reveal) gave (no leading zeros, lowercase hex), so that no two
    /// texts stand for the same key.
    pub fn parse(text: &str) -> Option<Self> {
        let (user, secret) = text.strip_prefix(PREFIX)?.split_once('_')?;
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let key = Self {
            user: user.parse().ok()?,
            secret: from_hex(secret)?,
        };
        (key.reveal() == text).then_some(key)
    }

    /// The user the key claims to belong to (true once a credential verifies it).
    pub fn user(&self) -> u64 {
        self.user
    }

    /// The first 8 hex digits of the secret: enough to tell a user's keys apart in a list
    /// and to pick the one credential to check, too few to help guess the other 224 bits.
    pub fn prefix(&self) -> String {
        to_hex(&self.secret[..4])
    }

    /// The text a client sends. Shown once, when the key is made.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.user, to_hex(&self.secret))
    }
}

/// What is stored of a key: a random salt and SHA-256(salt ‖ secret), as hex on the wire and
/// in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl Credential {
    /// The credential of a new key: a fresh salt.
    pub fn of(key: &ApiKey) -> std::io::Result<Self> {
        let salt = random_bytes()?;
        Ok(Self {
            salt,
            hash: digest(&salt, &key.secret),
        })
    }

    /// Whether `key` is the key this credential was made from; constant time in the hash.
    pub fn verifies(&self, key: &ApiKey) -> bool {
        digest(&self.salt, &key.secret).ct_eq(&self.hash).into()
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", to_hex(&self.salt), to_hex(&self.hash))
    }
}

impl std::str::FromStr for Credential {
    type Err = String;

    /// `salt:hash` in hex.
    fn from_str(text: &str) -> Result<Self, String> {
        let malformed = || "a credential is 32 hex digits, a colon and 64 more".to_owned();
        let (salt, hash) = text.split_once(':').ok_or_else(malformed)?;
        Ok(Self {
            salt: from_hex(salt).ok_or_else(malformed)?,
            hash: from_hex(hash).ok_or_else(malformed)?,
        })
    }
}

impl Serialize for Credential {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn digest(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

/// A tag of `value` that nobody without `salt` can make: the first 8 bytes of
/// SHA-256(salt, value), in hex.
pub fn tag(salt: &[u8], value: &[u8]) -> String {
    to_hex(&digest(salt, value)[..8])
}

/// Bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes from `2 * N` lowercase or uppercase hex digits.
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    // (`from_str_radix` alone would take a sign: "+f" for "0f".)
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_verifies_against_its_own_credential_only() {
        let key = ApiKey::generate(7).unwrap();
        let credential = Credential::of(&key).unwrap();
        let text = key.reveal();
        assert!(text.starts_with("snk_7_"), "{text}");
        let parsed = ApiKey::parse(&text).unwrap();
        assert_eq!(parsed.user(), 7);
        assert!(credential.verifies(&parsed));

        let other = ApiKey::generate(7).unwrap();
        assert!(!credential.verifies(&other));
        // The same key salted again gives another credential that verifies it too.
        let resalted = Credential::of(&key).unwrap();
        assert_ne!(resalted, credential);
        assert!(resalted.verifies(&key));

        let stored: Credential = credential.to_string().parse().unwrap();
        assert_eq!(stored, credential);
        assert!(!format!("{key:?}").contains(&text[6..]));
    }

    #[test]
    fn malformed_keys_and_credentials_are_refused() {
        let good = ApiKey::generate(12).unwrap().reveal();
        let secret = &good["snk_12_".len()..];
        for bad in [
            String::new(),
            "snk_".into(),
            format!("snk__{secret}"),
            format!("snk_-1_{secret}"),
            format!("snk_+1_{secret}"),
            format!("key_12_{secret}"),
            format!("snk_12_{}", &secret[1..]),
            format!("snk_12_{secret}0"),
            format!("snk_12_{}g", &secret[1..]),
            // A sign is no hex digit, though `from_str_radix` would take it.
            format!("snk_12_+{}", &secret[1..]),
            format!("snk_99999999999999999999_{secret}"),
            // Other spellings of the same key.
            format!("snk_012_{secret}"),
            format!("snk_12_{}", secret.to_ascii_uppercase()),
        ] {
            assert!(ApiKey::parse(&bad).is_none(), "{bad}");
        }
        let credential = Credential::of(&ApiKey::generate(12).unwrap())
            .unwrap()
            .to_string();
        let signed = format!("+{}", &credential[1..]);
        assert!(credential.parse::<Credential>().is_ok());
        for bad in ["", "00:00", "x", &"0".repeat(97), &signed] {
            assert!(bad.parse::<Credential>().is_err(), "{bad}");
        }
    }
}
