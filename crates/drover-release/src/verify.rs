//! What a device checks before it installs anything: a signature by a key
//! it trusts (a root key, or a release key in a root-signed, unexpired key
//! list at least as new as the newest it has seen), then expiry, device
//! type and version order. The payload hashes are checked while
//! downloading, against the manifest accepted here.

use std::fmt;

use crate::keys::{KeyList, PublicKey, SigCheck, SignedKeyList, check_signature};
use crate::manifest::{Manifest, SignedManifest};

pub struct VerifyOptions<'a> {
    /// Root keys from the device's config or enrollment token.
    pub roots: &'a [PublicKey],
    /// The device's type.
    pub device_type: &'a str,
    /// Installed version of the release with the same name, if any.
    pub installed_version: Option<&'a str>,
    /// The deployment explicitly allows installing an older version.
    pub allow_downgrade: bool,
    /// Unix seconds.
    pub now: i64,
    /// The highest key list version this device accepted before.
    pub min_key_list_version: u64,
}

/// A manifest that passed every check, with who signed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedManifest {
    pub manifest: Manifest,
    pub signed_by: String,
    /// Version of the key list used (to remember as the new minimum).
    pub key_list_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    NoRoots,
    Malformed(String),
    Unsigned,
    UnknownKey(Vec<String>),
    BadSignature(String),
    KeyListUntrusted(String),
    KeyListExpired {
        at: i64,
    },
    KeyListRolledBack {
        seen: u64,
        offered: u64,
    },
    Expired {
        at: i64,
    },
    WrongDeviceType {
        device: String,
        release: Vec<String>,
    },
    Downgrade {
        installed: String,
        offered: String,
    },
}

impl TrustError {
    /// Stable reason code reported to the server.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::NoRoots => "no_trusted_keys",
            TrustError::Malformed(_) => "manifest_malformed",
            TrustError::Unsigned => "unsigned",
            TrustError::UnknownKey(_) => "unknown_signing_key",
            TrustError::BadSignature(_) => "bad_signature",
            TrustError::KeyListUntrusted(_) => "key_list_untrusted",
            TrustError::KeyListExpired { .. } => "key_list_expired",
            TrustError::KeyListRolledBack { .. } => "key_list_rolled_back",
            TrustError::Expired { .. } => "release_expired",
            TrustError::WrongDeviceType { .. } => "wrong_device_type",
            TrustError::Downgrade { .. } => "downgrade_refused",
        }
    }
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::NoRoots => write!(
                f,
                "this device trusts no release root key: set `release_root_keys` in agent.toml or enroll with a token that carries one"
            ),
            TrustError::Malformed(m) => write!(f, "{m}"),
            TrustError::Unsigned => write!(f, "the release manifest carries no signature"),
            TrustError::UnknownKey(ids) => write!(
                f,
                "the release is signed by key(s) {} which this device does not trust (not a root key, not in a valid key list)",
                ids.join(", ")
            ),
            TrustError::BadSignature(id) => {
                write!(f, "the signature by key {id} does not match the manifest")
            }
            TrustError::KeyListUntrusted(m) => {
                write!(f, "the release key list is not trusted: {m}")
            }
            TrustError::KeyListExpired { at } => {
                write!(
                    f,
                    "the release key list expired at {at} (Unix time); publish a fresh one"
                )
            }
            TrustError::KeyListRolledBack { seen, offered } => write!(
                f,
                "the release key list is version {offered}, older than version {seen} this device already accepted"
            ),
            TrustError::Expired { at } => write!(f, "the release expired at {at} (Unix time)"),
            TrustError::WrongDeviceType { device, release } => write!(
                f,
                "the release is for device type(s) {} and this device is {device:?}",
                release.join(", ")
            ),
            TrustError::Downgrade { installed, offered } => write!(
                f,
                "version {offered} is older than the installed {installed}; deploy with --allow-downgrade to install it anyway"
            ),
        }
    }
}

impl std::error::Error for TrustError {}

/// Checks a key list against the roots and returns its keys.
pub fn verify_key_list(
    signed: &SignedKeyList,
    roots: &[PublicKey],
    now: i64,
    min_version: u64,
) -> Result<KeyList, TrustError> {
    let mut valid = false;
    for s in &signed.signatures {
        match check_signature(roots, s, signed.key_list.as_bytes()) {
            SigCheck::Valid => valid = true,
            SigCheck::Invalid => {
                return Err(TrustError::KeyListUntrusted(format!(
                    "the signature by root key {} does not match",
                    s.key_id
                )));
            }
            SigCheck::UnknownKey => {}
        }
    }
    if !valid {
        return Err(TrustError::KeyListUntrusted(
            "it is not signed by a root key this device trusts".into(),
        ));
    }
    let list: KeyList = serde_json::from_str(&signed.key_list)
        .map_err(|e| TrustError::KeyListUntrusted(format!("malformed: {e}")))?;
    if list.format != 1 || list.keys.len() > crate::keys::MAX_KEYS {
        return Err(TrustError::KeyListUntrusted(
            "unsupported format or too many keys".into(),
        ));
    }
    if let Some(at) = list.expires_at
        && now >= at
    {
        return Err(TrustError::KeyListExpired { at });
    }
    if list.version < min_version {
        return Err(TrustError::KeyListRolledBack {
            seen: min_version,
            offered: list.version,
        });
    }
    Ok(list)
}

/// Every check before install. See the module docs.
pub fn verify(
    signed: &SignedManifest,
    key_list: Option<&SignedKeyList>,
    opts: &VerifyOptions<'_>,
) -> Result<TrustedManifest, TrustError> {
    if opts.roots.is_empty() {
        return Err(TrustError::NoRoots);
    }
    if signed.signatures.is_empty() {
        return Err(TrustError::Unsigned);
    }
    let msg = signed.manifest.as_bytes();
    // A root key may sign directly.
    let mut signer = None;
    let mut list_version = None;
    for s in &signed.signatures {
        match check_signature(opts.roots, s, msg) {
            SigCheck::Valid => {
                signer = Some(s.key_id.clone());
                break;
            }
            SigCheck::Invalid => return Err(TrustError::BadSignature(s.key_id.clone())),
            SigCheck::UnknownKey => {}
        }
    }
    if signer.is_none()
        && let Some(kl) = key_list
    {
        let list = verify_key_list(kl, opts.roots, opts.now, opts.min_key_list_version)?;
        let keys: Vec<PublicKey> = list.keys.iter().map(|k| k.public.clone()).collect();
        for s in &signed.signatures {
            match check_signature(&keys, s, msg) {
                SigCheck::Valid => {
                    signer = Some(s.key_id.clone());
                    list_version = Some(list.version);
                    break;
                }
                SigCheck::Invalid => return Err(TrustError::BadSignature(s.key_id.clone())),
                SigCheck::UnknownKey => {}
            }
        }
    }
    let Some(signed_by) = signer else {
        return Err(TrustError::UnknownKey(
            signed.signatures.iter().map(|s| s.key_id.clone()).collect(),
        ));
    };
    let manifest = signed.parse_unverified().map_err(TrustError::Malformed)?;
    if let Some(at) = manifest.expires_at
        && opts.now >= at
    {
        return Err(TrustError::Expired { at });
    }
    if !manifest.device_types.iter().any(|t| t == opts.device_type) {
        return Err(TrustError::WrongDeviceType {
            device: opts.device_type.to_string(),
            release: manifest.device_types.clone(),
        });
    }
    if let Some(installed) = opts.installed_version
        && !opts.allow_downgrade
    {
        let offered = manifest.semver().map_err(TrustError::Malformed)?;
        // An unparsable installed version cannot be compared: allow.
        if let Ok(inst) = semver::Version::parse(installed)
            && offered < inst
        {
            return Err(TrustError::Downgrade {
                installed: installed.to_string(),
                offered: manifest.version.clone(),
            });
        }
    }
    Ok(TrustedManifest {
        manifest,
        signed_by,
        key_list_version: list_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPair, KeyRole, ListedKey};
    use crate::manifest::tests::sample;

    fn opts<'a>(roots: &'a [PublicKey]) -> VerifyOptions<'a> {
        VerifyOptions {
            roots,
            device_type: "rpi4",
            installed_version: Some("1.1.0"),
            allow_downgrade: false,
            now: 1_800_000_100,
            min_key_list_version: 0,
        }
    }

    fn list(version: u64, keys: &[&KeyPair], expires_at: Option<i64>) -> KeyList {
        KeyList {
            format: 1,
            version,
            issued_at: 0,
            expires_at,
            keys: keys
                .iter()
                .map(|k| ListedKey {
                    public: k.public(),
                    comment: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_root_signed_manifest_passes_and_tampering_fails() {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let roots = [root.public()];
        let s = SignedManifest::sign(&sample(), &root).unwrap();
        let t = verify(&s, None, &opts(&roots)).unwrap();
        assert_eq!(t.signed_by, root.key_id());
        let mut bad = s.clone();
        bad.manifest = bad.manifest.replace("1.2.0", "1.3.0");
        assert_eq!(
            verify(&bad, None, &opts(&roots)).unwrap_err().code(),
            "bad_signature"
        );
        let mut unsigned = s.clone();
        unsigned.signatures.clear();
        assert_eq!(
            verify(&unsigned, None, &opts(&roots)).unwrap_err(),
            TrustError::Unsigned
        );
        assert_eq!(
            verify(&s, None, &opts(&[])).unwrap_err(),
            TrustError::NoRoots
        );
    }

    #[test]
    fn release_keys_count_only_through_a_valid_root_signed_list() {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let rel = KeyPair::generate(KeyRole::Release).unwrap();
        let roots = [root.public()];
        let s = SignedManifest::sign(&sample(), &rel).unwrap();
        assert_eq!(
            verify(&s, None, &opts(&roots)).unwrap_err().code(),
            "unknown_signing_key"
        );
        let kl = SignedKeyList::sign(&list(3, &[&rel], None), &root).unwrap();
        let t = verify(&s, Some(&kl), &opts(&roots)).unwrap();
        assert_eq!(t.key_list_version, Some(3));
        // A list signed by someone else is refused.
        let mallory = KeyPair::generate(KeyRole::Root).unwrap();
        let forged = SignedKeyList::sign(&list(9, &[&rel], None), &mallory).unwrap();
        assert_eq!(
            verify(&s, Some(&forged), &opts(&roots)).unwrap_err().code(),
            "key_list_untrusted"
        );
        // Revoked: a newer list without the key.
        let other = KeyPair::generate(KeyRole::Release).unwrap();
        let newer = SignedKeyList::sign(&list(4, &[&other], None), &root).unwrap();
        assert_eq!(
            verify(&s, Some(&newer), &opts(&roots)).unwrap_err().code(),
            "unknown_signing_key"
        );
        // Replaying an old list after seeing version 4 is refused.
        let mut o = opts(&roots);
        o.min_key_list_version = 4;
        assert_eq!(
            verify(&s, Some(&kl), &o).unwrap_err().code(),
            "key_list_rolled_back"
        );
        let expired = SignedKeyList::sign(&list(5, &[&rel], Some(1)), &root).unwrap();
        assert_eq!(
            verify(&s, Some(&expired), &opts(&roots))
                .unwrap_err()
                .code(),
            "key_list_expired"
        );
    }

    #[test]
    fn device_type_expiry_and_version_order_are_enforced() {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let roots = [root.public()];
        let s = SignedManifest::sign(&sample(), &root).unwrap();
        let mut o = opts(&roots);
        o.device_type = "x86-kiosk";
        assert_eq!(
            verify(&s, None, &o).unwrap_err().code(),
            "wrong_device_type"
        );
        let mut o = opts(&roots);
        o.installed_version = Some("2.0.0");
        assert_eq!(
            verify(&s, None, &o).unwrap_err().code(),
            "downgrade_refused"
        );
        o.allow_downgrade = true;
        assert!(verify(&s, None, &o).is_ok());
        let mut m = sample();
        m.expires_at = Some(1_800_000_050);
        let s = SignedManifest::sign(&m, &root).unwrap();
        assert_eq!(
            verify(&s, None, &opts(&roots)).unwrap_err().code(),
            "release_expired"
        );
    }
}
