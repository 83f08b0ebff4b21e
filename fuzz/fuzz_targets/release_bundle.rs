//! Opens arbitrary bytes as a release bundle file (a tar archive).
//!
//! Checks that `Bundle::open` never panics and that every artifact it
//! accepts lies inside the file.

#![no_main]

use drover_release::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("drover-fuzz-bundle-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(b) = Bundle::open(&path) {
        for a in &b.artifacts {
            assert!(a.offset + a.size <= data.len() as u64);
        }
    }
    let _ = std::fs::remove_file(&path);
});
