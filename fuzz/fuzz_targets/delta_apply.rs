//! Applies arbitrary bytes as a delta patch to a fixed base.
//!
//! Checks that `delta::apply` never panics, and that whenever it succeeds
//! the output has exactly the expected size and hash (it is given those of
//! the base itself, so any success must reproduce the base).

#![no_main]

use drover_release::delta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("drover-fuzz-delta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base");
    let patch = dir.join("patch");
    let out = dir.join("out");
    let base_bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&base, &base_bytes).unwrap();
    std::fs::write(&patch, data).unwrap();
    let sha = drover_release::sha256_hex(&base_bytes);
    if delta::apply(&base, &patch, &out, &sha, base_bytes.len() as u64).is_ok() {
        assert_eq!(std::fs::read(&out).unwrap(), base_bytes);
    }
});
