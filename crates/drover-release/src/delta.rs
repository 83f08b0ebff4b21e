//! zstd patch-from deltas for `app` payloads (filled in next).
