//! Releases: what a signed release says, who may sign one, and how a device
//! decides to trust it (see docs/updates.md).
//!
//! - [`Manifest`]: name, semantic version, device types, payloads (type,
//!   sha256, size, optional delta), health checks, provenance, expiry.
//! - [`SignedManifest`]: the manifest's exact JSON bytes plus Ed25519
//!   signatures over those bytes. Verification works on the bytes, so there
//!   is no canonicalisation to get wrong; the manifest is parsed only after a
//!   signature checked.
//! - [`KeyList`]: the current release keys, signed by a root key. Devices
//!   trust only root keys (from their config or their enrollment token);
//!   release keys rotate and are revoked by publishing a newer key list.
//! - [`verify`]: every check a device makes before installing anything.
//!
//! No I/O except in [`bundle`] (feature `bundle`) and [`delta`].

pub mod delta;
pub mod keys;
pub mod manifest;
pub mod verify;

#[cfg(feature = "bundle")]
pub mod bundle;

pub use keys::{KeyList, KeyPair, PublicKey, SignedKeyList};
pub use manifest::{
    HealthCheck, HealthConfig, Manifest, Payload, PayloadDelta, Provenance, SignedManifest,
};
pub use verify::{TrustError, TrustedManifest, VerifyOptions, verify};

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a lower-case hex SHA-256 digest.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
