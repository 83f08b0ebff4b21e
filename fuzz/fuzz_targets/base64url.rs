//! Feeds arbitrary UTF-8 to the unpadded base64url decoder.
//!
//! Checks that decoding never panics, that it accepts exactly the texts
//! made of the 64 base64url characters whose length is not 1 more than a
//! multiple of 4, that the decoded length follows from the text length, and
//! that encoding the bytes again gives a text that decodes to the same
//! bytes. Encoding arbitrary bytes must always round-trip too.

#![no_main]

use drover_proto::base64url::{decode, encode};
use libfuzzer_sys::fuzz_target;

fn is_alphabet(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fuzz_target!(|data: &[u8]| {
    // Any bytes encode, and decode back.
    let text = encode(data);
    assert_eq!(text.len(), data.len() * 4 / 3 + usize::from(data.len() % 3 != 0));
    assert_eq!(decode(&text).as_deref(), Some(data));

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = text.len() % 4 != 1 && text.bytes().all(is_alphabet);
    let Some(bytes) = decode(text) else {
        assert!(!valid, "{text:?} is valid base64url but was refused");
        return;
    };
    assert!(valid, "{text:?} is not base64url but decoded");
    assert_eq!(bytes.len(), text.len() * 3 / 4);
    let again = encode(&bytes);
    assert_eq!(again.len(), text.len());
    assert_eq!(decode(&again), Some(bytes), "{text:?} re-encoded as {again:?}");
});
