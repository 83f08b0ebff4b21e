//! Feeds arbitrary bytes to both control-channel decoders.
//!
//! Checks that decoding never panics, that a frame over `MAX_FRAME_BYTES` is
//! refused as too large before it is parsed, that a decoded agent inventory
//! stays within `MAX_INVENTORY_ENTRIES`, and that every message that decodes
//! re-encodes (with `encode`) to a frame that decodes to the same value.

#![no_main]

use drover_proto::device::{
    AgentMessage, DecodeError, MAX_FRAME_BYTES, MAX_INVENTORY_ENTRIES, decode_agent,
    decode_server, encode,
};
use libfuzzer_sys::fuzz_target;

/// The re-encoded frame must decode to the same message. Re-encoding can
/// grow a frame (an absent `Option` field is written as `null`), so a frame
/// that was just under the limit may come back over it: then the decoder
/// must say "too large", and nothing else.
macro_rules! round_trip {
    ($msg:expr, $decode:expr) => {{
        let msg = $msg;
        let frame = encode(msg);
        match $decode(&frame) {
            Ok(again) => assert_eq!(
                &again,
                msg,
                "re-encoded as {:?}",
                String::from_utf8_lossy(&frame)
            ),
            Err(DecodeError::TooLarge(n)) => {
                assert!(frame.len() > MAX_FRAME_BYTES);
                assert_eq!(n, frame.len());
            }
            Err(e) => panic!(
                "{msg:?} re-encoded as {:?} does not decode: {e:?}",
                String::from_utf8_lossy(&frame)
            ),
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let agent = decode_agent(data);
    let server = decode_server(data);
    if data.len() > MAX_FRAME_BYTES {
        assert_eq!(agent, Err(DecodeError::TooLarge(data.len())));
        assert_eq!(server, Err(DecodeError::TooLarge(data.len())));
        return;
    }
    if let Ok(msg) = &agent {
        if let AgentMessage::Inventory { set, removed, .. } = msg {
            assert!(set.len() + removed.len() <= MAX_INVENTORY_ENTRIES);
        }
        round_trip!(msg, decode_agent);
    }
    if let Ok(msg) = &server {
        round_trip!(msg, decode_server);
    }
});
