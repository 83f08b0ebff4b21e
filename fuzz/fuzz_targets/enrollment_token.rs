//! Feeds arbitrary UTF-8 to `EnrollmentToken::decode`.
//!
//! Checks that decoding never panics, that a decoded token's CA fingerprint
//! has the shape of a SHA-256 hex digest, and that every decoded token
//! encodes to a text that decodes to the same token.
//!
//! Random text rarely gets past the `drover-enroll-v1.` prefix and the
//! base64url layer, so each input is also tried as the JSON body of a
//! token: `drover-enroll-v1.` + base64url(input). That lets the fuzzer
//! explore the JSON and the field checks behind the encoding.

#![no_main]

use drover_proto::base64url;
use drover_proto::device::EnrollmentToken;
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "drover-enroll-v1.";

fn check(text: &str) {
    let Ok(token) = EnrollmentToken::decode(text) else {
        return;
    };
    assert_eq!(token.ca.len(), 64);
    assert!(token.ca.bytes().all(|b| b.is_ascii_hexdigit()));
    let encoded = token.encode();
    assert!(encoded.starts_with(PREFIX));
    match EnrollmentToken::decode(&encoded) {
        Ok(again) => assert_eq!(again, token, "{text:?} re-encoded as {encoded:?}"),
        Err(e) => panic!("{token:?} encodes to {encoded:?}, which does not decode: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&format!("{PREFIX}{}", base64url::encode(data)));
});
