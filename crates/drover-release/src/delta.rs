//! zstd patch-from deltas for `app` payloads.
//!
//! A patch turns one installed payload (the *base*) into the next one. It is
//! a standard zstd stream, so `zstd -d --long=31 --patch-from=BASE PATCH`
//! also applies it:
//!
//! 1. a zstd *skippable frame* (magic `0x184D2A5D`, ignored by zstd itself)
//!    holding `DRVDLT01`, the base's SHA-256 (32 bytes) and size, and the
//!    result's size (both u64 little-endian), so that [`apply`] can tell
//!    "this is not the base the patch was made from" apart from "the patch
//!    is damaged" before decoding anything;
//! 2. one zstd frame of the new payload compressed with the base as its
//!    reference prefix (`ZSTD_CCtx_refPrefix`), with the content size and
//!    zstd's own content checksum.
//!
//! **Limits.** Base and new payload are each at most [`MAX_INPUT_BYTES`]
//! (2 GiB): the zstd window (window log 31 at most, the largest zstd allows
//! on 64-bit) must reach back over the base for the patch to be small.
//! Larger payloads are refused with [`DeltaError::TooLarge`]; ship them
//! whole.
//!
//! **Memory.** [`make`] holds the whole base in memory, plus zstd's match
//! tables and the long-distance matcher's hash table: `drover release
//! build --delta-from` peaked at 133 MiB RSS for a 50 MiB base and payload.
//! It runs on a build machine.
//! [`apply`] runs on the device and holds the whole base in memory plus a
//! zstd window buffer of up to the new payload's size, so applying a delta
//! costs roughly base + new payload in RAM (106 MiB peak RSS for 50 MiB +
//! 50 MiB); the patch itself and the output are streamed. The agent should fall back to the full payload when that
//! does not fit.
//!
//! This module never trusts the patch: the result is accepted only when its
//! size and SHA-256 match what the signed manifest says, and decoding stops
//! as soon as the output grows past the expected size.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest;

/// Largest base or new payload a delta is made for or applied to (2 GiB).
pub const MAX_INPUT_BYTES: u64 = 1 << 31;
/// zstd level [`make`] uses. Higher levels barely shrink a patch (what is
/// left after matching against the base is mostly new bytes) and levels 13
/// and up cost tens of seconds on a 50 MiB payload (see
/// docs/benchmarks.md, "Delta size").
pub const DEFAULT_LEVEL: i32 = 9;
/// Highest level accepted. zstd's optimal parsers (levels 16 to 22) lose
/// the long-distance matches against a large base: with libzstd 1.5.7, a
/// small change to a 50 MiB payload gave an 11 MB patch at level 16-19
/// against 24 KB at levels 1-15.
pub const MAX_LEVEL: i32 = 15;

/// Skippable-frame magic (the range 0x184D2A50..=0x184D2A5F is reserved by
/// the zstd format for frames decoders skip).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5D;
const TAG: &[u8; 8] = b"DRVDLT01";
/// Tag, base SHA-256, base size, result size.
const HEADER_BODY_LEN: usize = 8 + 32 + 8 + 8;
const HEADER_LEN: usize = 8 + HEADER_BODY_LEN;
const WINDOW_LOG_MAX: u32 = 31;
const WINDOW_LOG_MIN: u32 = 10;

/// What [`make`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaInfo {
    /// Hex SHA-256 of the patch file.
    pub sha256: String,
    /// Size of the patch file in bytes.
    pub size: u64,
    /// Hex SHA-256 and size of the base the patch applies to.
    pub base_sha256: String,
    pub base_size: u64,
    /// Size of the payload the patch produces.
    pub target_size: u64,
}

/// Why a patch could not be applied.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeltaError {
    /// The installed payload is not the one the patch was made from.
    BaseMismatch {
        expected_sha256: String,
        expected_size: u64,
        actual_sha256: String,
        actual_size: u64,
    },
    /// The patch is not a Drover delta, or its bytes are damaged.
    Corrupt(String),
    /// The result (or the patch's own header) has another size than the
    /// manifest says.
    SizeMismatch { expected: u64, actual: u64 },
    /// The result's SHA-256 differs from the manifest's.
    HashMismatch { expected: String, actual: String },
    /// Base or result is larger than [`MAX_INPUT_BYTES`].
    TooLarge { what: &'static str, size: u64 },
    /// Reading or writing a file failed.
    Io { path: PathBuf, source: io::Error },
}

impl DeltaError {
    /// Stable reason code, as reported to the server.
    pub fn code(&self) -> &'static str {
        match self {
            DeltaError::BaseMismatch { .. } => "delta_base_mismatch",
            DeltaError::Corrupt(_) => "delta_corrupt",
            DeltaError::SizeMismatch { .. } => "size_mismatch",
            DeltaError::HashMismatch { .. } => "hash_mismatch",
            DeltaError::TooLarge { .. } => "delta_too_large",
            DeltaError::Io { .. } => "io_error",
        }
    }

    /// Whether downloading the full payload instead is the right reaction
    /// (everything except a local I/O failure such as a full disk).
    pub fn fall_back_to_full(&self) -> bool {
        !matches!(self, DeltaError::Io { .. })
    }
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::BaseMismatch {
                expected_sha256,
                expected_size,
                actual_sha256,
                actual_size,
            } => write!(
                f,
                "the patch applies to a base with sha256 {expected_sha256} ({expected_size} bytes), but the installed payload has sha256 {actual_sha256} ({actual_size} bytes); download the full payload instead"
            ),
            DeltaError::Corrupt(m) => write!(
                f,
                "the delta patch is damaged: {m}; download it again or use the full payload"
            ),
            DeltaError::SizeMismatch { expected, actual } => write!(
                f,
                "the patched payload would be {actual} bytes but the manifest says {expected}; the patch does not belong to this release"
            ),
            DeltaError::HashMismatch { expected, actual } => write!(
                f,
                "the patched payload has sha256 {actual} but the manifest says {expected}; the patch does not belong to this release or is damaged"
            ),
            DeltaError::TooLarge { what, size } => write!(
                f,
                "the {what} is {size} bytes; deltas are made for payloads up to {MAX_INPUT_BYTES} bytes (2 GiB): ship it whole"
            ),
            DeltaError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for DeltaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeltaError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Adds the file name to an I/O error, for [`make`]'s plain `io::Error`.
fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Reads a whole file (at most [`MAX_INPUT_BYTES`]) and its SHA-256.
fn read_limited(path: &Path, what: &'static str) -> Result<(Vec<u8>, String), DeltaError> {
    let file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len > MAX_INPUT_BYTES {
        return Err(DeltaError::TooLarge { what, size: len });
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(io_at(path))?;
    if data.len() as u64 > MAX_INPUT_BYTES {
        return Err(DeltaError::TooLarge {
            what,
            size: data.len() as u64,
        });
    }
    let sha = crate::sha256_hex(&data);
    Ok((data, sha))
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    ctx: digest::Context,
    written: u64,
    /// Refuse to write more than this (for [`apply`]).
    limit: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W, limit: u64) -> Self {
        HashingWriter {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
            written: 0,
            limit,
        }
    }
}

/// Marks the "output grew past the limit" error so [`apply`] can tell it
/// from a real I/O failure.
#[derive(Debug)]
struct OverLimit;

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output larger than expected")
    }
}

impl std::error::Error for OverLimit {}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::other(OverLimit));
        }
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn window_log_for(base: u64, new: u64) -> u32 {
    // The window must reach from the end of the new payload back to the
    // start of the base; zstd cannot go past 2^31.
    let span = base.saturating_add(new).max(1);
    let log = 64 - (span - 1).leading_zeros();
    log.clamp(WINDOW_LOG_MIN, WINDOW_LOG_MAX)
}

/// Makes a patch at `out` that turns `base` into `new`, at [`DEFAULT_LEVEL`].
/// `out` is created or replaced. See the module docs for limits and memory.
pub fn make(base: &Path, new: &Path, out: &Path) -> io::Result<DeltaInfo> {
    make_with_level(base, new, out, DEFAULT_LEVEL)
}

/// [`make`] at zstd level `level` (1 to [`MAX_LEVEL`]).
pub fn make_with_level(base: &Path, new: &Path, out: &Path, level: i32) -> io::Result<DeltaInfo> {
    if !(1..=MAX_LEVEL).contains(&level) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("delta zstd level {level} is outside 1-{MAX_LEVEL} (see MAX_LEVEL)"),
        ));
    }
    let to_io = |e: DeltaError| match e {
        DeltaError::Io { path, source } => with_path(&path, source),
        other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
    };
    let (base_data, base_sha256) = read_limited(base, "base payload").map_err(to_io)?;
    let new_file = File::open(new).map_err(|e| with_path(new, e))?;
    let new_size = new_file.metadata().map_err(|e| with_path(new, e))?.len();
    if new_size > MAX_INPUT_BYTES {
        return Err(to_io(DeltaError::TooLarge {
            what: "new payload",
            size: new_size,
        }));
    }
    let base_size = base_data.len() as u64;

    let out_file = File::create(out).map_err(|e| with_path(out, e))?;
    let result = (|| -> io::Result<HashingWriter<BufWriter<File>>> {
        let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, out_file), u64::MAX);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        header.extend_from_slice(&(HEADER_BODY_LEN as u32).to_le_bytes());
        header.extend_from_slice(TAG);
        header.extend_from_slice(digest::digest(&digest::SHA256, &base_data).as_ref());
        header.extend_from_slice(&base_size.to_le_bytes());
        header.extend_from_slice(&new_size.to_le_bytes());
        w.write_all(&header)?;

        let mut enc = zstd::stream::write::Encoder::with_ref_prefix(&mut w, level, &base_data)?;
        enc.window_log(window_log_for(base_size, new_size))?;
        // Long distance matching finds the base's blocks however far back they
        // are; the regular match finder's tables are too small to index a
        // large base at low levels.
        enc.long_distance_matching(true)?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(new_size))?;
        let mut reader = BufReader::with_capacity(1 << 16, new_file.take(new_size));
        let copied = io::copy(&mut reader, &mut enc).map_err(|e| with_path(new, e))?;
        if copied != new_size {
            return Err(with_path(
                new,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file changed while the delta was made",
                ),
            ));
        }
        enc.finish()?;
        w.flush()?;
        w.inner.get_ref().sync_all()?;
        Ok(w)
    })();
    match result {
        Ok(w) => Ok(DeltaInfo {
            sha256: crate::hex(w.ctx.finish().as_ref()),
            size: w.written,
            base_sha256,
            base_size,
            target_size: new_size,
        }),
        Err(e) => {
            let _ = fs::remove_file(out);
            Err(e)
        }
    }
}

/// The header a patch starts with.
struct PatchHeader {
    base_sha256: String,
    base_size: u64,
    target_size: u64,
}

fn read_header(r: &mut impl Read) -> Result<PatchHeader, DeltaError> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DeltaError::Corrupt("it is shorter than its header".into())
        } else {
            DeltaError::Corrupt(format!("cannot read its header: {e}"))
        }
    })?;
    let magic = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    if magic != SKIPPABLE_MAGIC || len as usize != HEADER_BODY_LEN || &h[8..16] != TAG {
        return Err(DeltaError::Corrupt(
            "it does not start with a Drover delta header (made by `drover release build --delta-from`)"
                .into(),
        ));
    }
    Ok(PatchHeader {
        base_sha256: crate::hex(&h[16..48]),
        base_size: u64::from_le_bytes(h[48..56].try_into().expect("8 bytes")),
        target_size: u64::from_le_bytes(h[56..64].try_into().expect("8 bytes")),
    })
}

/// Applies `patch` to `base`, writing the result to `out` (created or
/// replaced, synced to disk on success, removed on any failure). The result
/// is accepted only if it is exactly `expected_size` bytes with SHA-256
/// `expected_sha256` (from the signed manifest).
pub fn apply(
    base: &Path,
    patch: &Path,
    out: &Path,
    expected_sha256: &str,
    expected_size: u64,
) -> Result<(), DeltaError> {
    let result = apply_inner(base, patch, out, expected_sha256, expected_size);
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    result
}

fn apply_inner(
    base: &Path,
    patch: &Path,
    out: &Path,
    expected_sha256: &str,
    expected_size: u64,
) -> Result<(), DeltaError> {
    if expected_size > MAX_INPUT_BYTES {
        return Err(DeltaError::TooLarge {
            what: "new payload",
            size: expected_size,
        });
    }
    let mut patch_reader =
        BufReader::with_capacity(1 << 16, File::open(patch).map_err(io_at(patch))?);
    let header = read_header(&mut patch_reader)?;
    if header.target_size != expected_size {
        return Err(DeltaError::SizeMismatch {
            expected: expected_size,
            actual: header.target_size,
        });
    }
    let (base_data, base_sha256) = read_limited(base, "base payload")?;
    if base_sha256 != header.base_sha256 || base_data.len() as u64 != header.base_size {
        return Err(DeltaError::BaseMismatch {
            expected_sha256: header.base_sha256,
            expected_size: header.base_size,
            actual_sha256: base_sha256,
            actual_size: base_data.len() as u64,
        });
    }

    let out_file = File::create(out).map_err(io_at(out))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, out_file), expected_size);
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(patch_reader, &base_data)
        .map_err(|e| DeltaError::Corrupt(format!("cannot start the zstd decoder: {e}")))?;
    dec.window_log_max(WINDOW_LOG_MAX)
        .map_err(|e| DeltaError::Corrupt(format!("cannot set up the zstd decoder: {e}")))?;
    // Exactly one frame follows the header.
    let mut dec = dec.single_frame();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Errors from the patch file itself are I/O; everything else
            // comes from zstd and means damaged data.
            Err(e) if e.raw_os_error().is_some() => return Err(io_at(patch)(e)),
            Err(e) => return Err(DeltaError::Corrupt(e.to_string())),
        };
        if let Err(e) = w.write_all(&buf[..n]) {
            if e.get_ref().is_some_and(|inner| inner.is::<OverLimit>()) {
                return Err(DeltaError::SizeMismatch {
                    expected: expected_size,
                    actual: w.written + n as u64,
                });
            }
            return Err(io_at(out)(e));
        }
    }
    // Nothing may follow the frame.
    let mut rest = dec.finish();
    let mut probe = [0u8; 1];
    if rest.read(&mut probe).map_err(io_at(patch))? != 0 {
        return Err(DeltaError::Corrupt(
            "unexpected bytes after the zstd frame".into(),
        ));
    }
    if w.written != expected_size {
        return Err(DeltaError::SizeMismatch {
            expected: expected_size,
            actual: w.written,
        });
    }
    w.flush().map_err(io_at(out))?;
    let actual = crate::hex(w.ctx.clone().finish().as_ref());
    if actual != expected_sha256 {
        return Err(DeltaError::HashMismatch {
            expected: expected_sha256.to_string(),
            actual,
        });
    }
    w.inner.get_ref().sync_all().map_err(io_at(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn sha(path: &Path) -> String {
        crate::sha256_hex(&fs::read(path).unwrap())
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn file(&self, name: &str, data: &[u8]) -> PathBuf {
            let p = self.dir.path().join(name);
            fs::write(&p, data).unwrap();
            p
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// 4 MiB of random bytes, and a copy with 3 small edits and a 100-byte
    /// insertion.
    fn base_and_changed() -> (Vec<u8>, Vec<u8>) {
        let base = random_bytes(4 << 20, 0x1234_5678);
        let mut new = base.clone();
        for at in [100_000usize, 2_000_000, 3_900_000] {
            new[at..at + 2048].copy_from_slice(&random_bytes(2048, at as u64));
        }
        let insert = random_bytes(100, 42);
        new.splice(1_000_000..1_000_000, insert);
        (base, new)
    }

    #[test]
    fn a_small_change_round_trips_through_a_small_patch() {
        let fx = Fixture::new();
        let (base, new) = base_and_changed();
        let base_p = fx.file("base", &base);
        let new_p = fx.file("new", &new);
        let patch = fx.path("patch");
        let info = make_with_level(&base_p, &new_p, &patch, 3).unwrap();
        assert_eq!(info.size, fs::metadata(&patch).unwrap().len());
        assert_eq!(info.sha256, sha(&patch));
        assert_eq!(info.base_sha256, crate::sha256_hex(&base));
        assert_eq!(info.target_size, new.len() as u64);
        // 4 MiB of incompressible data, 6 KiB changed: the patch must be
        // about the size of the change, not of the payload.
        assert!(
            info.size < 64 * 1024,
            "patch is {} bytes for a 6 KiB change",
            info.size
        );

        let out = fx.path("out");
        apply(
            &base_p,
            &patch,
            &out,
            &crate::sha256_hex(&new),
            new.len() as u64,
        )
        .unwrap();
        assert_eq!(fs::read(&out).unwrap(), new);
    }

    #[test]
    fn empty_and_unrelated_payloads_round_trip() {
        let fx = Fixture::new();
        let cases: [(&[u8], Vec<u8>); 3] = [
            (b"", b"hello".to_vec()),
            (b"hello", Vec::new()),
            (b"old text", random_bytes(100_000, 7)),
        ];
        for (i, (base, new)) in cases.iter().enumerate() {
            let base_p = fx.file(&format!("b{i}"), base);
            let new_p = fx.file(&format!("n{i}"), new);
            let patch = fx.path(&format!("p{i}"));
            make_with_level(&base_p, &new_p, &patch, 3).unwrap();
            let out = fx.path(&format!("o{i}"));
            apply(
                &base_p,
                &patch,
                &out,
                &crate::sha256_hex(new),
                new.len() as u64,
            )
            .unwrap();
            assert_eq!(&fs::read(&out).unwrap(), new, "case {i}");
        }
    }

    #[test]
    fn a_wrong_base_is_refused_before_decoding() {
        let fx = Fixture::new();
        let (base, new) = base_and_changed();
        let base_p = fx.file("base", &base);
        let new_p = fx.file("new", &new);
        let patch = fx.path("patch");
        make_with_level(&base_p, &new_p, &patch, 3).unwrap();
        let mut other = base.clone();
        other[5] ^= 1;
        let other_p = fx.file("other", &other);
        let out = fx.path("out");
        let err = apply(
            &other_p,
            &patch,
            &out,
            &crate::sha256_hex(&new),
            new.len() as u64,
        )
        .unwrap_err();
        assert_eq!(err.code(), "delta_base_mismatch");
        assert!(err.fall_back_to_full());
        assert!(err.to_string().contains("full payload"), "{err}");
        assert!(!out.exists(), "a failed apply leaves no output behind");
    }

    #[test]
    fn a_corrupted_patch_is_refused() {
        let fx = Fixture::new();
        let (base, new) = base_and_changed();
        let base_p = fx.file("base", &base);
        let new_p = fx.file("new", &new);
        let patch = fx.path("patch");
        make_with_level(&base_p, &new_p, &patch, 3).unwrap();
        let good = fs::read(&patch).unwrap();
        let want = crate::sha256_hex(&new);
        let out = fx.path("out");

        // A flipped byte in the compressed data, in the header, and a
        // truncated patch: each is refused and leaves no output.
        let mut flipped = good.clone();
        let mid = HEADER_LEN + (good.len() - HEADER_LEN) / 2;
        flipped[mid] ^= 0x55;
        let mut bad_header = good.clone();
        bad_header[10] ^= 1;
        let truncated = good[..good.len() - 10].to_vec();
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        for (name, bytes) in [
            ("flipped", flipped),
            ("header", bad_header),
            ("truncated", truncated),
            ("trailing", trailing),
        ] {
            let p = fx.file(name, &bytes);
            let err = apply(&base_p, &p, &out, &want, new.len() as u64).unwrap_err();
            assert!(
                matches!(err.code(), "delta_corrupt" | "hash_mismatch"),
                "{name}: {err} ({})",
                err.code()
            );
            assert!(!out.exists(), "{name}: output left behind");
        }
        // The header check alone names the problem precisely.
        let mut bad_header = good.clone();
        bad_header[0] ^= 1;
        let p = fx.file("magic", &bad_header);
        let err = apply(&base_p, &p, &out, &want, new.len() as u64).unwrap_err();
        assert_eq!(err.code(), "delta_corrupt");
        assert!(err.to_string().contains("Drover delta header"), "{err}");
    }

    #[test]
    fn the_result_must_match_the_manifest() {
        let fx = Fixture::new();
        let base_p = fx.file("base", b"version one of the app");
        let new = b"version two of the app".to_vec();
        let new_p = fx.file("new", &new);
        let patch = fx.path("patch");
        make_with_level(&base_p, &new_p, &patch, 3).unwrap();
        let out = fx.path("out");
        let err = apply(&base_p, &patch, &out, &"0".repeat(64), new.len() as u64).unwrap_err();
        assert_eq!(err.code(), "hash_mismatch");
        assert!(!out.exists());
        let err = apply(
            &base_p,
            &patch,
            &out,
            &crate::sha256_hex(&new),
            new.len() as u64 + 1,
        )
        .unwrap_err();
        assert_eq!(err.code(), "size_mismatch");
    }

    #[test]
    fn missing_files_are_io_errors_naming_the_file() {
        let fx = Fixture::new();
        let base_p = fx.file("base", b"abc");
        let missing = fx.path("nope");
        let err = make_with_level(&missing, &base_p, &fx.path("p"), 3).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = make_with_level(&base_p, &base_p, &fx.path("p"), 19).unwrap_err();
        assert!(err.to_string().contains("MAX_LEVEL"), "{err}");
        let err = apply(&base_p, &missing, &fx.path("o"), &"0".repeat(64), 3).unwrap_err();
        assert_eq!(err.code(), "io_error");
        assert!(!err.fall_back_to_full());
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn window_covers_base_and_new_up_to_the_zstd_maximum() {
        assert_eq!(window_log_for(0, 0), WINDOW_LOG_MIN);
        assert_eq!(window_log_for(1 << 20, 1 << 20), 21);
        assert_eq!(window_log_for((1 << 20) + 1, 1 << 20), 22);
        assert_eq!(window_log_for(MAX_INPUT_BYTES, MAX_INPUT_BYTES), 31);
    }
}
