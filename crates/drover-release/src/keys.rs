//! Ed25519 keys for releases, and the signed list of current release keys.
//!
//! Two roles: a **root** key signs [`KeyList`]s; a **release** key signs
//! manifests. Devices are given root public keys only. A manifest signed
//! directly by a root key is also accepted, so a small fleet can start with
//! one key and add release keys later without touching devices.
//!
//! Text forms: a public key is `ed25519:<base64url of 32 bytes>`; a private
//! key file is JSON `{"drover_release_key":1,"role":…,"key_id":…,"seed":…}`
//! (keep it 0600 and off the server). A key id is the first 8 bytes of the
//! public key's SHA-256, in hex.

use std::fmt;

use drover_proto::base64url;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

/// Largest key list accepted, in keys.
pub const MAX_KEYS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    Root,
    Release,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRole::Root => "root",
            KeyRole::Release => "release",
        })
    }
}

/// An Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 8 bytes of SHA-256 of the key, hex.
    pub fn key_id(&self) -> String {
        crate::hex(&ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref()[..8])
    }

    /// Parses `ed25519:<base64url>`.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let body = text.trim().strip_prefix("ed25519:").ok_or_else(|| {
            format!(
                "a release public key looks like `ed25519:<base64url>` (what `drover release keygen` printed); got {:?}",
                truncate(text.trim(), 40)
            )
        })?;
        let bytes = base64url::decode(body).ok_or("the release public key is not base64url")?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a release public key is 32 bytes".to_string())?;
        Ok(PublicKey(arr))
    }

    /// Checks `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", base64url::encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A private signing key with its role. Never stored on the server.
pub struct KeyPair {
    role: KeyRole,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    drover_release_key: u32,
    role: KeyRole,
    key_id: String,
    seed: String,
}

impl KeyPair {
    /// A new random key.
    pub fn generate(role: KeyRole) -> Result<KeyPair, String> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| "the system random number generator failed".to_string())?;
        KeyPair::from_seed(role, seed)
    }

    pub fn from_seed(role: KeyRole, seed: [u8; 32]) -> Result<KeyPair, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "invalid Ed25519 seed".to_string())?;
        Ok(KeyPair { role, seed, pair })
    }

    pub fn role(&self) -> KeyRole {
        self.role
    }

    pub fn public(&self) -> PublicKey {
        let bytes: [u8; 32] = self
            .pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        PublicKey(bytes)
    }

    pub fn key_id(&self) -> String {
        self.public().key_id()
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            key_id: self.key_id(),
            sig: base64url::encode(self.pair.sign(msg).as_ref()),
        }
    }

    /// The private key file's text (JSON). Write it with mode 0600.
    pub fn to_file_text(&self) -> String {
        let file = KeyFile {
            drover_release_key: 1,
            role: self.role,
            key_id: self.key_id(),
            seed: base64url::encode(&self.seed),
        };
        serde_json::to_string_pretty(&file).expect("key file serializes") + "\n"
    }

    pub fn from_file_text(text: &str) -> Result<KeyPair, String> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            format!("not a Drover release private key (make one with `drover release keygen`): {e}")
        })?;
        if file.drover_release_key != 1 {
            return Err(format!(
                "release key file format {} is not supported (this drover knows 1)",
                file.drover_release_key
            ));
        }
        let seed: [u8; 32] = base64url::decode(&file.seed)
            .and_then(|b| b.try_into().ok())
            .ok_or("the release key file's seed is damaged")?;
        let pair = KeyPair::from_seed(file.role, seed)?;
        if pair.key_id() != file.key_id {
            return Err("the release key file's key_id does not match its key".into());
        }
        Ok(pair)
    }
}

/// One signature over a document's exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key_id: String,
    /// Ed25519 signature, base64url.
    pub sig: String,
}

/// One entry of a key list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedKey {
    pub public: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The release keys that are valid now. A key missing from a newer list is
/// revoked; devices remember the highest `version` they accepted and refuse
/// older lists, so a revocation cannot be undone by replaying an old list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    pub format: u32,
    /// Increases with every list the root signs.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; after this devices refuse the list (and so manifests
    /// signed only by its keys) until a fresh one arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub keys: Vec<ListedKey>,
}

/// A key list's exact JSON bytes (as a string) and the root signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedKeyList {
    pub key_list: String,
    pub signatures: Vec<Signature>,
}

impl SignedKeyList {
    /// Signs `list` with the root key `root`.
    pub fn sign(list: &KeyList, root: &KeyPair) -> Result<SignedKeyList, String> {
        if root.role() != KeyRole::Root {
            return Err(
                "a key list must be signed with a root key (`drover release keygen --root`)".into(),
            );
        }
        let text = serde_json::to_string(list).expect("key list serializes");
        let sig = root.sign(text.as_bytes());
        Ok(SignedKeyList {
            key_list: text,
            signatures: vec![sig],
        })
    }
}

/// Verifies `sig` (base64url) by one of `keys` whose id is `key_id`.
pub(crate) fn check_signature(keys: &[PublicKey], s: &Signature, msg: &[u8]) -> SigCheck {
    let Some(key) = keys.iter().find(|k| k.key_id() == s.key_id) else {
        return SigCheck::UnknownKey;
    };
    match base64url::decode(&s.sig) {
        Some(raw) if key.verify(msg, &raw) => SigCheck::Valid,
        _ => SigCheck::Invalid,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SigCheck {
    Valid,
    Invalid,
    UnknownKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let k = KeyPair::generate(KeyRole::Release).unwrap();
        let again = KeyPair::from_file_text(&k.to_file_text()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(again.role(), KeyRole::Release);
        assert_eq!(
            PublicKey::parse(&k.public().to_string()).unwrap(),
            k.public()
        );
        assert_eq!(k.key_id().len(), 16);
        assert!(
            PublicKey::parse("rsa:abc")
                .unwrap_err()
                .contains("ed25519:")
        );
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
        let sig = k.sign(b"hello");
        assert_eq!(
            check_signature(&[k.public()], &sig, b"hello"),
            SigCheck::Valid
        );
        assert_eq!(
            check_signature(&[k.public()], &sig, b"hellO"),
            SigCheck::Invalid
        );
        let other = KeyPair::generate(KeyRole::Release).unwrap();
        assert_eq!(
            check_signature(&[other.public()], &sig, b"hello"),
            SigCheck::UnknownKey
        );
        assert!(KeyPair::from_file_text("{}").is_err());
    }

    #[test]
    fn only_root_keys_sign_key_lists() {
        let release = KeyPair::generate(KeyRole::Release).unwrap();
        let list = KeyList {
            format: 1,
            version: 1,
            issued_at: 0,
            expires_at: None,
            keys: vec![],
        };
        assert!(SignedKeyList::sign(&list, &release).is_err());
    }
}
