//! Release bundle files: what `drover release build` writes and
//! `drover release publish` uploads.
//!
//! A bundle is one POSIX (ustar) tar file holding, in this order:
//!
//! - `manifest.json`: the [`SignedManifest`] envelope (JSON, at most
//!   [`MAX_MANIFEST_BYTES`]);
//! - `keys.json` (optional): a [`SignedKeyList`] for devices that trust the
//!   manifest's signer only through a root-signed key list (at most
//!   [`MAX_KEY_LIST_BYTES`]);
//! - `payloads/<sha256>`: each payload and each delta patch named in the
//!   manifest, under the lower-case hex SHA-256 of its bytes.
//!
//! Nothing else may be in it: no directories, links, PAX or GNU extension
//! headers. Reading never extracts anything: [`Bundle::open`] records where
//! each artifact's bytes start inside the tar file, so a caller streams it
//! with a seek and a bounded read. Opening checks the layout and sizes only;
//! [`Bundle::verify_artifacts`] hashes the bytes, and signatures are the
//! device's business ([`crate::verify`]). A bundle is written to a temporary
//! file next to its destination and renamed into place, so a failed build
//! never leaves a half-written bundle under the requested name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::digest;

use crate::keys::SignedKeyList;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, SignedManifest};

/// Name of the signed manifest inside a bundle.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the optional signed key list inside a bundle.
pub const KEYS_ENTRY: &str = "keys.json";
/// Folder of the payloads and delta patches inside a bundle.
pub const PAYLOADS_DIR: &str = "payloads/";
/// Largest `keys.json` accepted, in bytes (64 keys fit in a few KiB).
pub const MAX_KEY_LIST_BYTES: u64 = 64 * 1024;

/// One payload or patch inside a bundle file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Lower-case hex SHA-256 of its bytes (its name in the bundle).
    pub sha256: String,
    pub size: u64,
    /// Byte offset of its first byte inside the bundle file.
    pub offset: u64,
}

/// Why a bundle could not be written or read.
#[derive(Debug)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing a file failed.
    Io { path: PathBuf, source: io::Error },
    /// The bundle (or what should go into it) is not laid out as described
    /// in the module docs.
    Invalid { path: PathBuf, message: String },
    /// An artifact's bytes do not hash to its name.
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl BundleError {
    /// Stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Io { .. } => "io_error",
            BundleError::Invalid { .. } => "bundle_invalid",
            BundleError::HashMismatch { .. } => "hash_mismatch",
        }
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            BundleError::Invalid { path, message } => {
                write!(f, "{}: {message}", path.display())
            }
            BundleError::HashMismatch {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{}: the artifact named {expected} has sha256 {actual}; the file changed or is damaged, build the release again",
                path.display()
            ),
        }
    }
}

impl std::error::Error for BundleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BundleError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The artifacts (hash → size) a manifest refers to: each payload and each
/// delta patch.
fn referenced(manifest: &Manifest) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in &manifest.payloads {
        out.insert(p.sha256.clone(), p.size);
        if let Some(d) = &p.delta {
            out.insert(d.sha256.clone(), d.size);
        }
    }
    out
}

/// A reader that hashes and counts what it reads.
struct HashingReader<R> {
    inner: R,
    ctx: digest::Context,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Hex SHA-256 and size of a file, read in 64 KiB chunks; `progress` is
/// called with the bytes read so far after each chunk (for progress bars).
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<(String, u64)> {
    let mut reader = HashingReader {
        inner: File::open(path)?,
        ctx: digest::Context::new(&digest::SHA256),
        read: 0,
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => progress(reader.read),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((crate::hex(reader.ctx.finish().as_ref()), reader.read))
}

fn tar_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h
}

/// Writes a bundle to `out`: the signed manifest, the key list if given, and
/// `artifacts` (hex SHA-256 and the file holding those bytes). Every
/// artifact the manifest names must be given, and nothing else; each file
/// is hashed while it is copied and must match its name and the manifest's
/// size. `out` is replaced atomically.
pub fn write(
    out: &Path,
    signed: &SignedManifest,
    key_list: Option<&SignedKeyList>,
    artifacts: &[(String, PathBuf)],
) -> Result<(), BundleError> {
    let manifest = signed
        .parse_unverified()
        .map_err(|e| invalid(out, format!("cannot bundle this manifest: {e}")))?;
    let manifest_json = signed.to_json();
    if manifest_json.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(
            out,
            format!(
                "the signed manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are allowed",
                manifest_json.len()
            ),
        ));
    }
    let keys_json = key_list.map(|k| serde_json::to_string(k).expect("key list serializes"));
    if let Some(k) = &keys_json
        && k.len() as u64 > MAX_KEY_LIST_BYTES
    {
        return Err(invalid(
            out,
            format!(
                "the key list is {} bytes; at most {MAX_KEY_LIST_BYTES} are allowed",
                k.len()
            ),
        ));
    }
    let wanted = referenced(&manifest);
    let mut given = BTreeSet::new();
    for (sha, path) in artifacts {
        if !wanted.contains_key(sha) {
            return Err(invalid(
                path,
                format!("artifact {sha} is not named by the manifest"),
            ));
        }
        if !given.insert(sha.clone()) {
            return Err(invalid(path, format!("artifact {sha} is given twice")));
        }
    }
    if let Some(missing) = wanted.keys().find(|s| !given.contains(*s)) {
        return Err(invalid(
            out,
            format!("the manifest names artifact {missing} but no file was given for it"),
        ));
    }

    let file_name = out
        .file_name()
        .ok_or_else(|| invalid(out, "the output path names no file"))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_tar(
        &tmp,
        manifest.created_at.max(0) as u64,
        &manifest_json,
        keys_json.as_deref(),
        artifacts,
        &wanted,
    )
    .and_then(|()| fs::rename(&tmp, out).map_err(io_at(out)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; a directory that cannot be synced (some
    // file systems) is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_tar(
    tmp: &Path,
    mtime: u64,
    manifest_json: &str,
    keys_json: Option<&str>,
    artifacts: &[(String, PathBuf)],
    sizes: &BTreeMap<String, u64>,
) -> Result<(), BundleError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_at(tmp))?;
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 16, file));
    let mut h = tar_header(manifest_json.len() as u64, mtime);
    builder
        .append_data(&mut h, MANIFEST_ENTRY, manifest_json.as_bytes())
        .map_err(io_at(tmp))?;
    if let Some(k) = keys_json {
        let mut h = tar_header(k.len() as u64, mtime);
        builder
            .append_data(&mut h, KEYS_ENTRY, k.as_bytes())
            .map_err(io_at(tmp))?;
    }
    for (sha, path) in artifacts {
        let f = File::open(path).map_err(io_at(path))?;
        let len = f.metadata().map_err(io_at(path))?.len();
        let expected = sizes[sha];
        if len != expected {
            return Err(invalid(
                path,
                format!(
                    "the manifest says artifact {sha} is {expected} bytes but the file is {len}"
                ),
            ));
        }
        let mut reader = HashingReader {
            inner: BufReader::with_capacity(1 << 16, f).take(len),
            ctx: digest::Context::new(&digest::SHA256),
            read: 0,
        };
        let mut h = tar_header(len, mtime);
        builder
            .append_data(&mut h, format!("{PAYLOADS_DIR}{sha}"), &mut reader)
            .map_err(io_at(tmp))?;
        if reader.read != len {
            return Err(invalid(
                path,
                "the file shrank while it was being bundled; build the release again",
            ));
        }
        let actual = crate::hex(reader.ctx.finish().as_ref());
        if &actual != sha {
            return Err(BundleError::HashMismatch {
                path: path.clone(),
                expected: sha.clone(),
                actual,
            });
        }
    }
    let mut w = builder.into_inner().map_err(io_at(tmp))?;
    w.flush().map_err(io_at(tmp))?;
    let file = w.into_inner().map_err(|e| io_at(tmp)(e.into_error()))?;
    file.sync_all().map_err(io_at(tmp))?;
    Ok(())
}

/// An opened bundle: its documents and where each artifact's bytes are.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub signed: SignedManifest,
    pub key_list: Option<SignedKeyList>,
    /// The manifest, parsed **without** checking signatures.
    pub manifest: Manifest,
    /// In the order they appear in the file.
    pub artifacts: Vec<Artifact>,
}

impl Bundle {
    /// Opens and checks a bundle (layout, names, sizes; not hashes or
    /// signatures). See the module docs.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let file = File::open(path).map_err(io_at(path))?;
        let file_len = file.metadata().map_err(io_at(path))?.len();
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| invalid(path, format!("not a release bundle (tar): {e}")))?
            .raw(true);
        let mut signed = None;
        let mut key_list = None;
        let mut artifacts: Vec<Artifact> = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in entries {
            let mut entry =
                entry.map_err(|e| invalid(path, format!("not a release bundle (tar): {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if !entry.header().entry_type().is_file() {
                return Err(invalid(
                    path,
                    format!(
                        "unexpected entry {name:?} of type {:?}: a bundle holds only regular files",
                        entry.header().entry_type()
                    ),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(path, format!("entry {name:?} appears twice")));
            }
            let size = entry.size();
            let offset = entry.raw_file_position();
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(invalid(
                    path,
                    format!(
                        "entry {name:?} runs past the end of the file: the bundle is truncated"
                    ),
                ));
            }
            match name.as_str() {
                MANIFEST_ENTRY => {
                    if size > MAX_MANIFEST_BYTES as u64 {
                        return Err(invalid(
                            path,
                            format!(
                                "{MANIFEST_ENTRY} is {size} bytes; at most {MAX_MANIFEST_BYTES} are allowed"
                            ),
                        ));
                    }
                    let text = read_text(&mut entry, path, MANIFEST_ENTRY)?;
                    signed = Some(
                        SignedManifest::from_json(&text)
                            .map_err(|e| invalid(path, format!("{MANIFEST_ENTRY}: {e}")))?,
                    );
                }
                KEYS_ENTRY => {
                    if size > MAX_KEY_LIST_BYTES {
                        return Err(invalid(
                            path,
                            format!(
                                "{KEYS_ENTRY} is {size} bytes; at most {MAX_KEY_LIST_BYTES} are allowed"
                            ),
                        ));
                    }
                    let text = read_text(&mut entry, path, KEYS_ENTRY)?;
                    key_list = Some(serde_json::from_str::<SignedKeyList>(&text).map_err(|e| {
                        invalid(path, format!("{KEYS_ENTRY} is not a signed key list: {e}"))
                    })?);
                }
                other => match other.strip_prefix(PAYLOADS_DIR) {
                    Some(sha) if crate::is_sha256_hex(sha) => artifacts.push(Artifact {
                        sha256: sha.to_string(),
                        size,
                        offset,
                    }),
                    _ => {
                        return Err(invalid(
                            path,
                            format!(
                                "unexpected entry {other:?}: a bundle holds {MANIFEST_ENTRY}, {KEYS_ENTRY} and {PAYLOADS_DIR}<sha256> only"
                            ),
                        ));
                    }
                },
            }
        }
        let signed = signed.ok_or_else(|| {
            invalid(
                path,
                format!("no {MANIFEST_ENTRY}: this is not a release bundle (make one with `drover release build`)"),
            )
        })?;
        let manifest = signed
            .parse_unverified()
            .map_err(|e| invalid(path, format!("{MANIFEST_ENTRY}: {e}")))?;
        let wanted = referenced(&manifest);
        for a in &artifacts {
            match wanted.get(&a.sha256) {
                None => {
                    return Err(invalid(
                        path,
                        format!("artifact {} is not named by the manifest", a.sha256),
                    ));
                }
                Some(&size) if size != a.size => {
                    return Err(invalid(
                        path,
                        format!(
                            "artifact {} is {} bytes but the manifest says {size}",
                            a.sha256, a.size
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(missing) = wanted
            .keys()
            .find(|s| !artifacts.iter().any(|a| &a.sha256 == *s))
        {
            return Err(invalid(
                path,
                format!("the manifest names artifact {missing} but the bundle does not hold it"),
            ));
        }
        Ok(Bundle {
            path: path.to_path_buf(),
            signed,
            key_list,
            manifest,
            artifacts,
        })
    }

    /// The artifact with this hash.
    pub fn artifact(&self, sha256: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.sha256 == sha256)
    }

    /// A reader over exactly the artifact's bytes (opens the bundle file
    /// again, seeks, and bounds the read).
    pub fn open_artifact(&self, artifact: &Artifact) -> Result<io::Take<File>, BundleError> {
        let mut f = File::open(&self.path).map_err(io_at(&self.path))?;
        f.seek(SeekFrom::Start(artifact.offset))
            .map_err(io_at(&self.path))?;
        Ok(f.take(artifact.size))
    }

    /// Copies an artifact to `dest` (created or replaced), checking its
    /// hash on the way.
    pub fn extract(&self, artifact: &Artifact, dest: &Path) -> Result<(), BundleError> {
        let mut reader = self.hashing_reader(artifact)?;
        let mut out = File::create(dest).map_err(io_at(dest))?;
        let result = io::copy(&mut reader, &mut out)
            .map_err(io_at(dest))
            .and_then(|_| self.check(artifact, reader));
        if result.is_err() {
            let _ = fs::remove_file(dest);
        }
        result
    }

    /// Hashes every artifact and compares it with its name.
    pub fn verify_artifacts(&self) -> Result<(), BundleError> {
        for a in &self.artifacts {
            let mut reader = self.hashing_reader(a)?;
            io::copy(&mut reader, &mut io::sink()).map_err(io_at(&self.path))?;
            self.check(a, reader)?;
        }
        Ok(())
    }

    fn hashing_reader(
        &self,
        artifact: &Artifact,
    ) -> Result<HashingReader<BufReader<io::Take<File>>>, BundleError> {
        Ok(HashingReader {
            inner: BufReader::with_capacity(1 << 16, self.open_artifact(artifact)?),
            ctx: digest::Context::new(&digest::SHA256),
            read: 0,
        })
    }

    fn check<R>(&self, artifact: &Artifact, reader: HashingReader<R>) -> Result<(), BundleError> {
        if reader.read != artifact.size {
            return Err(invalid(
                &self.path,
                format!("artifact {} is truncated", artifact.sha256),
            ));
        }
        let actual = crate::hex(reader.ctx.finish().as_ref());
        if actual != artifact.sha256 {
            return Err(BundleError::HashMismatch {
                path: self.path.clone(),
                expected: artifact.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

fn read_text(entry: &mut impl Read, path: &Path, name: &str) -> Result<String, BundleError> {
    let mut text = String::new();
    entry
        .read_to_string(&mut text)
        .map_err(|e| invalid(path, format!("cannot read {name}: {e}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyList, KeyPair, KeyRole, ListedKey};
    use crate::manifest::{Payload, PayloadDelta};

    struct Fixture {
        dir: tempfile::TempDir,
        release: KeyPair,
        root: KeyPair,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                release: KeyPair::generate(KeyRole::Release).unwrap(),
                root: KeyPair::generate(KeyRole::Root).unwrap(),
            }
        }

        fn file(&self, name: &str, data: &[u8]) -> (String, PathBuf) {
            let p = self.dir.path().join(name);
            fs::write(&p, data).unwrap();
            (crate::sha256_hex(data), p)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn manifest(
            &self,
            payload: &(String, PathBuf),
            delta: Option<&(String, PathBuf)>,
        ) -> Manifest {
            let mut m = crate::manifest::tests::sample();
            m.payloads = vec![Payload {
                kind: "app".into(),
                sha256: payload.0.clone(),
                size: fs::metadata(&payload.1).unwrap().len(),
                module: None,
                delta: delta.map(|d| PayloadDelta {
                    base_version: "1.1.0".into(),
                    base_sha256: "cd".repeat(32),
                    sha256: d.0.clone(),
                    size: fs::metadata(&d.1).unwrap().len(),
                }),
            }];
            m
        }

        fn key_list(&self) -> SignedKeyList {
            let list = KeyList {
                format: 1,
                version: 2,
                issued_at: 0,
                expires_at: None,
                keys: vec![ListedKey {
                    public: self.release.public(),
                    comment: Some("ci".into()),
                }],
            };
            SignedKeyList::sign(&list, &self.root).unwrap()
        }
    }

    /// Builds a tar by hand, for layouts `write` refuses to produce.
    fn raw_tar(path: &Path, entries: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in entries {
            let mut h = tar_header(data.len() as u64, 0);
            // Raw name bytes: the tar crate itself refuses `..` in paths.
            let field = &mut h.as_ustar_mut().unwrap().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn a_bundle_round_trips_and_artifacts_stream_from_their_offsets() {
        let fx = Fixture::new();
        let payload_bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let payload = fx.file("app.tar", &payload_bytes);
        let patch = fx.file("app.patch", b"pretend patch bytes");
        let signed =
            SignedManifest::sign(&fx.manifest(&payload, Some(&patch)), &fx.release).unwrap();
        let kl = fx.key_list();
        let out = fx.path("release.drover");
        write(&out, &signed, Some(&kl), &[payload.clone(), patch.clone()]).unwrap();

        let b = Bundle::open(&out).unwrap();
        assert_eq!(b.signed, signed);
        assert_eq!(b.key_list.as_ref(), Some(&kl));
        assert_eq!(b.manifest.payloads[0].sha256, payload.0);
        assert_eq!(b.artifacts.len(), 2);
        // The recorded offset and size read back exactly the payload bytes.
        let a = b.artifact(&payload.0).unwrap().clone();
        assert_eq!(a.size, payload_bytes.len() as u64);
        let mut f = File::open(&out).unwrap();
        f.seek(SeekFrom::Start(a.offset)).unwrap();
        let mut back = Vec::new();
        f.take(a.size).read_to_end(&mut back).unwrap();
        assert_eq!(back, payload_bytes);
        let mut again = Vec::new();
        b.open_artifact(b.artifact(&patch.0).unwrap())
            .unwrap()
            .read_to_end(&mut again)
            .unwrap();
        assert_eq!(again, b"pretend patch bytes");
        b.verify_artifacts().unwrap();
        let mut calls = 0;
        let (sha, size) = sha256_file(&payload.1, &mut |_| calls += 1).unwrap();
        assert_eq!((sha, size), (payload.0.clone(), payload_bytes.len() as u64));
        assert!(calls >= 4, "progress reported per 64 KiB chunk");
        let dest = fx.path("extracted");
        b.extract(&a, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload_bytes);
        // No temporary file is left next to the bundle.
        let names: Vec<_> = fs::read_dir(fx.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn writing_refuses_artifacts_that_do_not_match_the_manifest() {
        let fx = Fixture::new();
        let payload = fx.file("app.tar", b"payload");
        let signed = SignedManifest::sign(&fx.manifest(&payload, None), &fx.release).unwrap();
        let out = fx.path("r.drover");

        let err = write(&out, &signed, None, &[]).unwrap_err();
        assert!(err.to_string().contains("no file was given"), "{err}");

        let stray = fx.file("stray", b"stray");
        let err = write(&out, &signed, None, &[payload.clone(), stray]).unwrap_err();
        assert!(
            err.to_string().contains("not named by the manifest"),
            "{err}"
        );

        // Same length, other bytes: caught by hashing while copying.
        fs::write(&payload.1, b"PAYLOAD").unwrap();
        let err = write(&out, &signed, None, std::slice::from_ref(&payload)).unwrap_err();
        assert_eq!(err.code(), "hash_mismatch", "{err}");
        fs::write(&payload.1, b"longer payload").unwrap();
        let err = write(&out, &signed, None, std::slice::from_ref(&payload)).unwrap_err();
        assert!(err.to_string().contains("bytes but the file is"), "{err}");
        assert!(!out.exists(), "no bundle after a failed write");
        assert_eq!(
            fs::read_dir(fx.dir.path()).unwrap().count(),
            2,
            "temp file left"
        );
    }

    #[test]
    fn opening_refuses_malformed_bundles() {
        let fx = Fixture::new();
        let payload = fx.file("app.tar", b"payload");
        let signed = SignedManifest::sign(&fx.manifest(&payload, None), &fx.release).unwrap();
        let json = signed.to_json();
        let payload_name = format!("payloads/{}", payload.0);
        let p = fx.path("bad.drover");
        let expect = |entries: &[(&str, &[u8])], needle: &str| {
            raw_tar(&p, entries);
            let err = Bundle::open(&p).unwrap_err();
            assert_eq!(err.code(), "bundle_invalid");
            assert!(
                err.to_string().contains(needle),
                "want {needle:?} in: {err}"
            );
        };
        // Sanity: the well-formed variant opens.
        raw_tar(
            &p,
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
            ],
        );
        Bundle::open(&p).unwrap();

        expect(&[(&payload_name, b"payload")], "no manifest.json");
        expect(&[("manifest.json", json.as_bytes())], "does not hold it");
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
                ("README", b"hi"),
            ],
            "unexpected entry \"README\"",
        );
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
                ("payloads/../../etc/passwd", b"x"),
            ],
            "unexpected entry",
        );
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload!"),
            ],
            "bytes but the manifest says",
        );
        let other = format!("payloads/{}", "ee".repeat(32));
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
                (&other, b"x"),
            ],
            "not named by the manifest",
        );
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
            ],
            "appears twice",
        );
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        expect(&[("manifest.json", &huge)], "at most");
        expect(
            &[
                ("manifest.json", b"{\"manifest\": 1}"),
                (&payload_name, b"payload"),
            ],
            "manifest.json",
        );
        expect(
            &[
                ("manifest.json", json.as_bytes()),
                ("keys.json", b"[]"),
                (&payload_name, b"payload"),
            ],
            "not a signed key list",
        );

        // A directory entry.
        let mut b = tar::Builder::new(File::create(&p).unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "payloads/", io::empty()).unwrap();
        b.finish().unwrap();
        let err = Bundle::open(&p).unwrap_err();
        assert!(err.to_string().contains("only regular files"), "{err}");

        // Not a tar at all, and a truncated one.
        fs::write(&p, b"hello, this is not a tar file").unwrap();
        assert!(Bundle::open(&p).is_err());
        raw_tar(
            &p,
            &[
                ("manifest.json", json.as_bytes()),
                (&payload_name, b"payload"),
            ],
        );
        let bytes = fs::read(&p).unwrap();
        let cut = bytes.len() - 1024 - 512 + 3; // inside the payload's data block
        fs::write(&p, &bytes[..cut]).unwrap();
        let err = Bundle::open(&p).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_damaged_payload_is_caught_by_verify_artifacts() {
        let fx = Fixture::new();
        let payload = fx.file("app.tar", b"payload bytes");
        let signed = SignedManifest::sign(&fx.manifest(&payload, None), &fx.release).unwrap();
        let out = fx.path("r.drover");
        write(&out, &signed, None, std::slice::from_ref(&payload)).unwrap();
        let a = Bundle::open(&out)
            .unwrap()
            .artifact(&payload.0)
            .unwrap()
            .clone();
        let mut bytes = fs::read(&out).unwrap();
        bytes[a.offset as usize] ^= 1;
        fs::write(&out, &bytes).unwrap();
        // Layout and sizes are still fine; the hash is not.
        let b = Bundle::open(&out).unwrap();
        let err = b.verify_artifacts().unwrap_err();
        assert_eq!(err.code(), "hash_mismatch");
        let dest = fx.path("x");
        assert_eq!(b.extract(&a, &dest).unwrap_err().code(), "hash_mismatch");
        assert!(!dest.exists());
    }
}
