//! Feeds arbitrary text to what a device does with a release target from
//! the server: parse the signed manifest envelope and the key list, and
//! verify them against a fixed root key.
//!
//! Checks that nothing panics, that nothing arbitrary is accepted (no input
//! the fuzzer can make carries a valid signature by the fixed root, so
//! `verify` must always refuse), and that a manifest that parses also
//! passes its own shape checks.

#![no_main]

use drover_release::keys::KeyRole;
use drover_release::{KeyPair, SignedKeyList, SignedManifest, VerifyOptions, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two documents separated by a NUL: the envelope and the key list.
    let (manifest, key_list) = text.split_once('\0').unwrap_or((text, ""));
    let root = KeyPair::from_seed(KeyRole::Root, [42; 32]).unwrap().public();
    let roots = [root];
    let Ok(signed) = SignedManifest::from_json(manifest) else {
        return;
    };
    if let Ok(m) = signed.parse_unverified() {
        assert!(m.validate().is_ok());
    }
    let kl: Option<SignedKeyList> = serde_json::from_str(key_list).ok();
    let opts = VerifyOptions {
        roots: &roots,
        device_type: "fuzz",
        installed_version: Some("1.0.0"),
        allow_downgrade: false,
        now: 1_800_000_000,
        min_key_list_version: 0,
    };
    assert!(
        verify(&signed, kl.as_ref(), &opts).is_err(),
        "an unsigned input was trusted"
    );
});
