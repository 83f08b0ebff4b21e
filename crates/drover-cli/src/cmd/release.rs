//! `drover release keygen|keys sign|build|inspect|publish`: release keys,
//! signed bundles and publishing them.
//!
//! Everything but `publish` works offline: keys are made and used here, on
//! the operator's (or CI's) machine, and the server never sees a private
//! key. `publish` uploads a bundle's artifacts (skipping those the server
//! already stores) and then registers the signed manifest. The formats are
//! described in docs/updates.md.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use drover_release::bundle::{self, Bundle};
use drover_release::keys::{KeyList, KeyRole, ListedKey};
use drover_release::{
    HealthCheck, HealthConfig, KeyPair, Manifest, Payload, PayloadDelta, Provenance, PublicKey,
    SignedKeyList, SignedManifest, delta,
};
use serde::Deserialize;
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::error::{CliError, CliResult};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make a signing key: a release key (signs releases) or, with --root, a
    /// root key (signs key lists; devices trust root keys).
    Keygen(KeygenArgs),
    /// Root-signed lists of the current release keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Hash the payload, sign a manifest and write a release bundle.
    Build(BuildArgs),
    /// Show what a release bundle holds (signatures are not checked).
    Inspect(InspectArgs),
    /// Upload a release bundle to the server.
    Publish(PublishArgs),
    /// Apply a release's delta patch to the app payload of the release it
    /// was made from, as a device would, and check the result.
    VerifyDelta(VerifyDeltaArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Make a root key instead of a release key.
    #[arg(long)]
    pub root: bool,
    /// Private key file to write (mode 0600); the public key goes to FILE.pub.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Sign the list of release keys with a root key.
    Sign(KeysSignArgs),
}

#[derive(Debug, Args)]
pub struct KeysSignArgs {
    /// Root private key file (`drover release keygen --root`).
    #[arg(long, value_name = "FILE")]
    pub root_key: PathBuf,
    /// A release key: `ed25519:…`, a `.pub` file, or a private key file
    /// (repeatable). Keys left out of a newer list are revoked.
    #[arg(long = "key", value_name = "PUB_OR_FILE", required = true)]
    pub keys: Vec<String>,
    /// List version; must grow with every list (devices refuse older ones).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub version: u64,
    /// Devices refuse the list (and releases signed through it) after this.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub expires_in_days: Option<u64>,
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Release name: the software it carries, e.g. kiosk-app.
    #[arg(long)]
    pub name: String,
    /// Semantic version, e.g. 1.4.2.
    #[arg(long)]
    pub version: String,
    /// Device type it may be installed on (repeatable).
    #[arg(long = "device-type", value_name = "TYPE", required = true)]
    pub device_types: Vec<String>,
    /// TYPE:PATH with TYPE app, rootfs-ab or agent; or script:MODULE:PATH.
    #[arg(long = "payload", value_name = "SPEC", required = true)]
    pub payloads: Vec<String>,
    /// Provenance: commit=…,build=…, any other key=value (repeatable).
    #[arg(long, value_name = "K=V,…", value_delimiter = ',', value_parser = crate::cli::parse_pair)]
    pub provenance: Vec<(String, String)>,
    /// SBOM file; its SHA-256 goes into the provenance.
    #[arg(long, value_name = "FILE")]
    pub sbom: Option<PathBuf>,
    /// Seconds every health check has to pass after activation (default 300
    /// when --health is given).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub health_timeout: Option<u64>,
    /// reconnect, command=CMD ARGS, process=NAME or http=URL (repeatable).
    #[arg(long = "health", value_name = "CHECK")]
    pub health: Vec<String>,
    /// Devices refuse the release after this many days.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub expires_in_days: Option<u64>,
    /// An earlier bundle of the same release name: adds a zstd patch from
    /// its app payload to this one.
    #[arg(long, value_name = "OLD_RELEASE")]
    pub delta_from: Option<PathBuf>,
    /// Key list (`drover release keys sign`) to ship with the release, for
    /// devices that trust the signing key through it.
    #[arg(long, value_name = "FILE")]
    pub key_list: Option<PathBuf>,
    /// Private key file to sign with (release or root key).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Bundle file to write.
    #[arg(short = 'o', long = "output", value_name = "RELEASE")]
    pub output: PathBuf,
    /// Replace an existing bundle.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Release bundle file.
    pub release: PathBuf,
    /// Also hash every artifact and compare it with its name.
    #[arg(long)]
    pub verify_hashes: bool,
}

#[derive(Debug, Args)]
pub struct VerifyDeltaArgs {
    /// The release the delta was made from (its app payload is the base).
    #[arg(long, value_name = "OLD_RELEASE")]
    pub base: PathBuf,
    /// The release carrying the delta.
    pub release: PathBuf,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Release bundle file.
    pub release: PathBuf,
}

pub async fn run(cmd: ReleaseCommand, g: &GlobalArgs) -> CliResult<()> {
    match cmd {
        ReleaseCommand::Keygen(args) => keygen(args, g.json),
        ReleaseCommand::Keys(KeysCommand::Sign(args)) => keys_sign(args, g.json),
        ReleaseCommand::Build(args) => build(args, g.json),
        ReleaseCommand::Inspect(args) => inspect(args, g.json),
        ReleaseCommand::Publish(args) => publish(args, g).await,
        ReleaseCommand::VerifyDelta(args) => verify_delta(args, g.json),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn bad_file(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::usage(format!("{}: {e}", path.display()))
}

fn refuse_existing(path: &Path, force: bool) -> CliResult<()> {
    if !force && path.exists() {
        return Err(CliError::new(
            crate::error::Kind::Usage,
            "exists",
            format!(
                "{} already exists; pass --force to replace it",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes `text` to `path` with `mode` through a temporary file and a
/// rename, so a reader never sees half a file and an existing file is
/// replaced only once the new one is complete.
fn write_file(path: &Path, text: &str, mode: u32) -> CliResult<()> {
    let name = path
        .file_name()
        .ok_or_else(|| CliError::usage(format!("{} names no file", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::failed(format!("cannot write {}: {e}", path.display()))
    })
}

fn read_private_key(path: &Path) -> CliResult<KeyPair> {
    let text = std::fs::read_to_string(path).map_err(|e| bad_file(path, e))?;
    KeyPair::from_file_text(&text).map_err(|e| bad_file(path, e))
}

fn role_name(role: KeyRole) -> &'static str {
    match role {
        KeyRole::Root => "root",
        KeyRole::Release => "release",
    }
}

fn keygen(args: KeygenArgs, json: bool) -> CliResult<()> {
    let mut pub_path = args.output.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    refuse_existing(&args.output, args.force)?;
    refuse_existing(&pub_path, args.force)?;
    let role = if args.root {
        KeyRole::Root
    } else {
        KeyRole::Release
    };
    let key = KeyPair::generate(role).map_err(CliError::failed)?;
    let public = key.public().to_string();
    write_file(&args.output, &key.to_file_text(), 0o600)?;
    write_file(&pub_path, &format!("{public}\n"), 0o644)?;
    if json {
        return output::json(&json!({
            "role": role_name(role),
            "key_id": key.key_id(),
            "public_key": public,
            "private_key_file": args.output,
            "public_key_file": pub_path,
        }));
    }
    println!(
        "Wrote {} key {} to {} (private: keep it off the server, mode 0600).",
        role_name(role),
        key.key_id(),
        args.output.display()
    );
    println!("Public key (also in {}):", pub_path.display());
    println!("  {public}");
    if args.root {
        println!(
            "Give devices this root key (agent config `release_root_keys`, or the enrollment token)."
        );
    } else {
        println!(
            "Devices trust it once a root key lists it: `drover release keys sign --root-key ROOT --key {} ...`.",
            pub_path.display()
        );
    }
    Ok(())
}

/// A public key from `ed25519:…`, a `.pub` file, or a private key file.
fn parse_listed_key(spec: &str) -> CliResult<(PublicKey, Option<String>)> {
    if spec.trim().starts_with("ed25519:") {
        return PublicKey::parse(spec)
            .map(|k| (k, None))
            .map_err(|e| CliError::usage(format!("--key {spec:?}: {e}")));
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "--key {spec:?} is neither a public key (`ed25519:…`) nor a readable file: {e}"
        ))
    })?;
    let comment = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if text.trim_start().starts_with('{') {
        let key = KeyPair::from_file_text(&text).map_err(|e| bad_file(path, e))?;
        if key.role() != KeyRole::Release {
            return Err(CliError::usage(format!(
                "{} is a root key; a key list names release keys (root keys are trusted directly)",
                path.display()
            )));
        }
        return Ok((key.public(), comment));
    }
    PublicKey::parse(&text)
        .map(|k| (k, comment))
        .map_err(|e| bad_file(path, e))
}

fn keys_sign(args: KeysSignArgs, json: bool) -> CliResult<()> {
    refuse_existing(&args.output, args.force)?;
    let root = read_private_key(&args.root_key)?;
    if root.role() != KeyRole::Root {
        return Err(CliError::usage(format!(
            "{} is a release key; key lists are signed with a root key (make one with `drover release keygen --root`)",
            args.root_key.display()
        )));
    }
    let mut keys: Vec<ListedKey> = Vec::new();
    for spec in &args.keys {
        let (public, comment) = parse_listed_key(spec)?;
        if keys.iter().any(|k| k.public == public) {
            return Err(CliError::usage(format!(
                "key {} is listed twice",
                public.key_id()
            )));
        }
        keys.push(ListedKey { public, comment });
    }
    if keys.len() > drover_release::keys::MAX_KEYS {
        return Err(CliError::usage(format!(
            "a key list holds at most {} keys",
            drover_release::keys::MAX_KEYS
        )));
    }
    let now = now_unix();
    let list = KeyList {
        format: 1,
        version: args.version,
        issued_at: now,
        expires_at: args.expires_in_days.map(|d| now + d as i64 * 86_400),
        keys,
    };
    let signed = SignedKeyList::sign(&list, &root).map_err(CliError::usage)?;
    let text = serde_json::to_string_pretty(&signed).expect("key list serializes") + "\n";
    write_file(&args.output, &text, 0o644)?;
    if json {
        return output::json(&json!({
            "output": args.output,
            "version": list.version,
            "issued_at": rfc3339(list.issued_at),
            "expires_at": list.expires_at.map(rfc3339),
            "signed_by": root.key_id(),
            "keys": list.keys.iter().map(|k| json!({
                "key_id": k.public.key_id(),
                "public_key": k.public.to_string(),
                "comment": k.comment,
            })).collect::<Vec<_>>(),
        }));
    }
    println!(
        "Wrote key list version {} ({} key{}) signed by root key {} to {}.",
        list.version,
        list.keys.len(),
        if list.keys.len() == 1 { "" } else { "s" },
        root.key_id(),
        args.output.display()
    );
    for k in &list.keys {
        println!("  {}  {}", k.public.key_id(), k.public);
    }
    if let Some(at) = list.expires_at {
        println!("Expires {}: sign a fresh list before then.", rfc3339(at));
    }
    Ok(())
}

/// `TYPE:PATH` or `script:MODULE:PATH`.
fn parse_payload_spec(spec: &str) -> CliResult<(String, Option<String>, PathBuf)> {
    let bad = || {
        CliError::usage(format!(
            "--payload {spec:?}: write TYPE:PATH (TYPE is app, rootfs-ab or agent) or script:MODULE:PATH"
        ))
    };
    let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
    match kind {
        "app" | "rootfs-ab" | "agent" if !rest.is_empty() => {
            Ok((kind.to_string(), None, PathBuf::from(rest)))
        }
        "script" => {
            let (module, path) = rest.split_once(':').ok_or_else(bad)?;
            if module.is_empty() || path.is_empty() {
                return Err(bad());
            }
            Ok((kind.into(), Some(module.into()), PathBuf::from(path)))
        }
        _ => Err(bad()),
    }
}

fn parse_health_check(spec: &str) -> CliResult<HealthCheck> {
    let bad = |why: &str| {
        CliError::usage(format!(
            "--health {spec:?}: {why}; write reconnect, command=CMD ARGS, process=NAME or http=URL"
        ))
    };
    if spec == "reconnect" {
        return Ok(HealthCheck::Reconnect {});
    }
    let (kind, value) = spec.split_once('=').ok_or_else(|| bad("unknown check"))?;
    if value.trim().is_empty() {
        return Err(bad("the value is empty"));
    }
    match kind {
        "command" => Ok(HealthCheck::Command {
            argv: value.split_whitespace().map(str::to_string).collect(),
        }),
        "process" => Ok(HealthCheck::Process {
            name: value.to_string(),
        }),
        "http" => Ok(HealthCheck::Http {
            url: value.to_string(),
            status: None,
        }),
        _ => Err(bad("unknown check")),
    }
}

/// A progress bar on stderr for `len` bytes, or a hidden one when stderr
/// is not a terminal, `--json` is set, or the work is too small to watch.
fn byte_bar(json: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if json || len < (16 << 20) || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:20} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

fn hash_file(path: &Path, json: bool, what: &str) -> CliResult<(String, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| bad_file(path, e))?;
    let len = meta.len();
    if !meta.is_file() {
        return Err(CliError::usage(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let bar = byte_bar(json, len, what);
    let result = bundle::sha256_file(path, &mut |done| bar.set_position(done))
        .map_err(|e| bad_file(path, e));
    bar.finish_and_clear();
    result
}

/// Opens the `--delta-from` bundle and checks that a delta from it can be
/// made for `manifest`.
fn open_delta_base(path: &Path, manifest: &Manifest) -> CliResult<Bundle> {
    let old = Bundle::open(path).map_err(|e| CliError::usage(e.to_string()))?;
    if old.manifest.name != manifest.name {
        return Err(CliError::usage(format!(
            "--delta-from {} is release {:?}, not {:?}: a delta is made between versions of the same release",
            path.display(),
            old.manifest.name,
            manifest.name
        )));
    }
    if old.manifest.version == manifest.version {
        return Err(CliError::usage(format!(
            "--delta-from {} is version {} already",
            path.display(),
            old.manifest.version
        )));
    }
    if manifest.payloads.iter().any(|p| p.kind != "app") {
        return Err(CliError::usage(
            "--delta-from works for `app` payloads only",
        ));
    }
    if !old.manifest.payloads.iter().any(|p| p.kind == "app") {
        return Err(CliError::usage(format!(
            "--delta-from {} has no `app` payload to make a delta from",
            path.display()
        )));
    }
    Ok(old)
}

/// A folder removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new_near(path: &Path) -> CliResult<TempDir> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(".drover-release-build-{}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| {
            CliError::failed(format!("cannot create work folder {}: {e}", tmp.display()))
        })?;
        Ok(TempDir(tmp))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_key_list(path: &Path) -> CliResult<(SignedKeyList, KeyList)> {
    let text = std::fs::read_to_string(path).map_err(|e| bad_file(path, e))?;
    let signed: SignedKeyList = serde_json::from_str(&text).map_err(|e| {
        bad_file(
            path,
            format!("not a signed key list (make one with `drover release keys sign`): {e}"),
        )
    })?;
    let list: KeyList = serde_json::from_str(&signed.key_list)
        .map_err(|e| bad_file(path, format!("the key list inside is malformed: {e}")))?;
    Ok((signed, list))
}

fn build(args: BuildArgs, json: bool) -> CliResult<()> {
    refuse_existing(&args.output, args.force)?;
    let key = read_private_key(&args.key)?;
    if args.payloads.len() > drover_release::manifest::MAX_PAYLOADS {
        return Err(CliError::usage(format!(
            "a release carries {} payload(s) for now; give --payload once",
            drover_release::manifest::MAX_PAYLOADS
        )));
    }
    let specs = args
        .payloads
        .iter()
        .map(|s| parse_payload_spec(s))
        .collect::<CliResult<Vec<_>>>()?;
    let checks = args
        .health
        .iter()
        .map(|s| parse_health_check(s))
        .collect::<CliResult<Vec<_>>>()?;
    // Check the manifest's shape (name, version, device types, payload
    // types, health checks) before hashing gigabytes: the same manifest
    // with placeholder hashes.
    let now = now_unix();
    let mut manifest = Manifest {
        format: 1,
        name: args.name.clone(),
        version: args.version.clone(),
        device_types: args.device_types.clone(),
        created_at: now,
        expires_at: args.expires_in_days.map(|d| now + d as i64 * 86_400),
        payloads: specs
            .iter()
            .map(|(kind, module, _)| Payload {
                kind: kind.clone(),
                sha256: "0".repeat(64),
                size: 0,
                module: module.clone(),
                delta: None,
            })
            .collect(),
        health: (args.health_timeout.is_some() || !checks.is_empty()).then(|| HealthConfig {
            timeout_secs: args.health_timeout.unwrap_or(300),
            checks,
        }),
        provenance: None,
    };
    manifest.validate().map_err(CliError::usage)?;
    let old = match &args.delta_from {
        Some(path) => Some(open_delta_base(path, &manifest)?),
        None => None,
    };
    let key_list = match &args.key_list {
        Some(path) => {
            let (signed, list) = read_key_list(path)?;
            if key.role() == KeyRole::Release && !list.keys.iter().any(|k| k.public == key.public())
            {
                return Err(CliError::usage(format!(
                    "the signing key {} is not in key list {} (version {}): devices would refuse the release; sign a list that names it",
                    key.key_id(),
                    path.display(),
                    list.version
                )));
            }
            Some(signed)
        }
        None => None,
    };
    if key.role() == KeyRole::Release && key_list.is_none() && !json {
        eprintln!(
            "note: {} is a release key; devices trust it only through a root-signed key list. Pass --key-list unless the server's devices already have one.",
            key.key_id()
        );
    }

    let mut provenance = Provenance::default();
    for (k, v) in &args.provenance {
        match k.as_str() {
            "commit" => provenance.commit = Some(v.clone()),
            "build" => provenance.build = Some(v.clone()),
            "sbom_sha256" => {
                return Err(CliError::usage(
                    "set the SBOM digest with --sbom FILE, not --provenance",
                ));
            }
            _ => {
                provenance.extra.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(sbom) = &args.sbom {
        provenance.sbom_sha256 = Some(hash_file(sbom, json, "hashing SBOM")?.0);
    }

    manifest.provenance = (provenance != Provenance::default()).then_some(provenance);

    let mut artifacts: Vec<(String, PathBuf)> = Vec::new();
    for (payload, (_, _, path)) in manifest.payloads.iter_mut().zip(&specs) {
        let (sha256, size) = hash_file(path, json, "hashing payload")?;
        artifacts.push((sha256.clone(), path.clone()));
        payload.sha256 = sha256;
        payload.size = size;
    }
    manifest.validate().map_err(CliError::usage)?;

    let _work;
    let mut delta_report = None;
    if let Some(old) = &old {
        let payload = &mut manifest.payloads[0];
        let base = old
            .manifest
            .payloads
            .iter()
            .find(|p| p.kind == "app")
            .expect("open_delta_base checked");
        let base_artifact = old
            .artifact(&base.sha256)
            .expect("Bundle::open checked every payload is present")
            .clone();
        let work = TempDir::new_near(&args.output)?;
        let base_file = work.0.join("base");
        let patch_file = work.0.join("patch");
        old.extract(&base_artifact, &base_file)
            .map_err(|e| CliError::failed(e.to_string()))?;
        let spinner = if json || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message(format!("making delta from {}", old.manifest.version));
            s.enable_steady_tick(std::time::Duration::from_millis(200));
            s
        };
        let started = std::time::Instant::now();
        let info = delta::make(&base_file, &specs[0].2, &patch_file);
        spinner.finish_and_clear();
        let info = info.map_err(|e| CliError::failed(format!("cannot make the delta: {e}")))?;
        if info.size >= payload.size {
            eprintln!(
                "note: the delta from {} ({} bytes) is not smaller than the payload ({} bytes); the release carries no delta",
                old.manifest.version, info.size, payload.size
            );
        } else {
            payload.delta = Some(PayloadDelta {
                base_version: old.manifest.version.clone(),
                base_sha256: base.sha256.clone(),
                sha256: info.sha256.clone(),
                size: info.size,
            });
            artifacts.push((info.sha256.clone(), patch_file));
            delta_report = Some((old.manifest.version.clone(), info, started.elapsed()));
        }
        _work = work;
    }

    let signed = SignedManifest::sign(&manifest, &key).map_err(CliError::usage)?;
    bundle::write(&args.output, &signed, key_list.as_ref(), &artifacts)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let bundle_size = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    let id = format!("{}@{}", manifest.name, manifest.version);
    if json {
        return output::json(&json!({
            "id": id,
            "output": args.output,
            "bundle_size": bundle_size,
            "signed_by": [key.key_id()],
            "key_list": key_list.is_some(),
            "delta_secs": delta_report.as_ref().map(|(_, _, t)| t.as_secs_f64()),
            "manifest": manifest,
        }));
    }
    println!(
        "Built {id} for {} -> {} ({} bytes), signed by {} key {}.",
        manifest.device_types.join(", "),
        args.output.display(),
        bundle_size,
        role_name(key.role()),
        key.key_id()
    );
    for p in &manifest.payloads {
        println!(
            "  {} payload: {} bytes, sha256 {}",
            p.kind, p.size, p.sha256
        );
    }
    if let Some((base_version, info, took)) = &delta_report {
        println!(
            "  delta from {base_version}: {} bytes ({:.2}% of the payload), made in {:.1} s",
            info.size,
            100.0 * info.size as f64 / manifest.payloads[0].size.max(1) as f64,
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn inspect(args: InspectArgs, json: bool) -> CliResult<()> {
    let b = Bundle::open(&args.release).map_err(|e| CliError::usage(e.to_string()))?;
    if args.verify_hashes {
        b.verify_artifacts()
            .map_err(|e| CliError::new(crate::error::Kind::Failed, e.code(), e.to_string()))?;
    }
    let m = &b.manifest;
    let signatures: Vec<&str> = b
        .signed
        .signatures
        .iter()
        .map(|s| s.key_id.as_str())
        .collect();
    let key_list = b
        .key_list
        .as_ref()
        .map(|kl| -> CliResult<_> {
            let list: KeyList = serde_json::from_str(&kl.key_list).map_err(|e| {
                CliError::usage(format!(
                    "the bundle's keys.json holds a malformed key list: {e}"
                ))
            })?;
            Ok((kl, list))
        })
        .transpose()?;
    if json {
        return output::json(&json!({
            "id": format!("{}@{}", m.name, m.version),
            "file": b.path,
            "signatures_checked": false,
            "hashes_checked": args.verify_hashes,
            "signed_by": signatures,
            "manifest": m,
            "key_list": key_list.as_ref().map(|(kl, list)| json!({
                "version": list.version,
                "issued_at": rfc3339(list.issued_at),
                "expires_at": list.expires_at.map(rfc3339),
                "signed_by": kl.signatures.iter().map(|s| &s.key_id).collect::<Vec<_>>(),
                "keys": list.keys.iter().map(|k| json!({
                    "key_id": k.public.key_id(),
                    "public_key": k.public.to_string(),
                    "comment": k.comment,
                })).collect::<Vec<_>>(),
            })),
            "artifacts": b.artifacts.iter().map(|a| json!({
                "sha256": a.sha256, "size": a.size, "offset": a.offset,
            })).collect::<Vec<_>>(),
        }));
    }
    println!("Release {}@{} (signatures not checked)", m.name, m.version);
    println!("  device types: {}", m.device_types.join(", "));
    println!("  created:      {}", rfc3339(m.created_at));
    if let Some(at) = m.expires_at {
        println!("  expires:      {}", rfc3339(at));
    }
    println!("  signed by:    {}", signatures.join(", "));
    if let Some(p) = &m.provenance {
        let mut pairs: BTreeMap<&str, &str> = BTreeMap::new();
        if let Some(c) = &p.commit {
            pairs.insert("commit", c);
        }
        if let Some(c) = &p.build {
            pairs.insert("build", c);
        }
        if let Some(c) = &p.sbom_sha256 {
            pairs.insert("sbom_sha256", c);
        }
        for (k, v) in &p.extra {
            pairs.insert(k, v);
        }
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  provenance:   {}", text.join(", "));
    }
    if let Some(h) = &m.health {
        let checks: Vec<String> = h
            .checks
            .iter()
            .map(|c| match c {
                HealthCheck::Reconnect {} => "reconnect".to_string(),
                HealthCheck::Command { argv } => format!("command={}", argv.join(" ")),
                HealthCheck::Process { name } => format!("process={name}"),
                HealthCheck::Http { url, .. } => format!("http={url}"),
            })
            .collect();
        println!(
            "  health:       within {} s: {}",
            h.timeout_secs,
            if checks.is_empty() {
                "(device defaults)".to_string()
            } else {
                checks.join("; ")
            }
        );
    }
    if let Some((kl, list)) = &key_list {
        println!(
            "  key list:     version {}, {} key(s), signed by {}{}",
            list.version,
            list.keys.len(),
            kl.signatures
                .iter()
                .map(|s| s.key_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            list.expires_at
                .map(|at| format!(", expires {}", rfc3339(at)))
                .unwrap_or_default()
        );
    }
    println!();
    let mut rows = Vec::new();
    for p in &m.payloads {
        rows.push(vec![
            p.kind.clone(),
            p.module.clone().unwrap_or_else(|| "-".into()),
            p.size.to_string(),
            p.sha256.clone(),
        ]);
        if let Some(d) = &p.delta {
            rows.push(vec![
                format!("delta from {}", d.base_version),
                "-".into(),
                d.size.to_string(),
                d.sha256.clone(),
            ]);
        }
    }
    output::table(&["payload", "module", "bytes", "sha256"], rows);
    if args.verify_hashes {
        println!("\nEvery artifact matches its sha256.");
    }
    Ok(())
}

fn verify_delta(args: VerifyDeltaArgs, json: bool) -> CliResult<()> {
    let new = Bundle::open(&args.release).map_err(|e| CliError::usage(e.to_string()))?;
    let old = Bundle::open(&args.base).map_err(|e| CliError::usage(e.to_string()))?;
    let (payload, d) = new
        .manifest
        .payloads
        .iter()
        .find_map(|p| p.delta.as_ref().map(|d| (p, d)))
        .ok_or_else(|| {
            CliError::usage(format!(
                "{} carries no delta (build it with --delta-from)",
                args.release.display()
            ))
        })?;
    let base = old
        .manifest
        .payloads
        .iter()
        .find(|p| p.kind == "app")
        .ok_or_else(|| CliError::usage(format!("{} has no `app` payload", args.base.display())))?;
    if base.sha256 != d.base_sha256 {
        return Err(CliError::new(
            crate::error::Kind::Failed,
            "delta_base_mismatch",
            format!(
                "the delta in {} applies to {} version {} (sha256 {}), but {} holds version {} (sha256 {})",
                args.release.display(),
                new.manifest.name,
                d.base_version,
                d.base_sha256,
                args.base.display(),
                old.manifest.version,
                base.sha256
            ),
        ));
    }
    let work = TempDir::new_near(&args.release)?;
    let base_file = work.0.join("base");
    let patch_file = work.0.join("patch");
    let out_file = work.0.join("out");
    let failed = |e: drover_release::bundle::BundleError| {
        CliError::new(crate::error::Kind::Failed, e.code(), e.to_string())
    };
    old.extract(
        old.artifact(&base.sha256).expect("checked on open"),
        &base_file,
    )
    .map_err(failed)?;
    new.extract(
        new.artifact(&d.sha256).expect("checked on open"),
        &patch_file,
    )
    .map_err(failed)?;
    let started = std::time::Instant::now();
    delta::apply(
        &base_file,
        &patch_file,
        &out_file,
        &payload.sha256,
        payload.size,
    )
    .map_err(|e| CliError::new(crate::error::Kind::Failed, e.code(), e.to_string()))?;
    let took = started.elapsed();
    if json {
        return output::json(&json!({
            "release": format!("{}@{}", new.manifest.name, new.manifest.version),
            "base_version": d.base_version,
            "payload_size": payload.size,
            "patch_size": d.size,
            "apply_secs": took.as_secs_f64(),
            "ok": true,
        }));
    }
    println!(
        "The delta turns {}@{} into {} ({} bytes from a {}-byte patch, applied in {:.2} s); sha256 matches the manifest.",
        new.manifest.name,
        d.base_version,
        new.manifest.version,
        payload.size,
        d.size,
        took.as_secs_f64()
    );
    Ok(())
}

/// `PUT /api/v1/artifacts/{sha256}` answer.
#[derive(Debug, Deserialize)]
struct StoredArtifact {
    created: bool,
}

async fn publish(args: PublishArgs, g: &GlobalArgs) -> CliResult<()> {
    let b = Bundle::open(&args.release).map_err(|e| CliError::usage(e.to_string()))?;
    let client = super::connect(g)?;
    let json = g.json;
    let mut uploaded = 0u64;
    let mut skipped = 0u64;
    for a in &b.artifacts {
        let path = format!("/api/v1/artifacts/{}", a.sha256);
        if client.exists(&path).await? {
            skipped += 1;
            if !json {
                eprintln!("{}: already on the server", short(&a.sha256));
            }
            continue;
        }
        let mut file = tokio::fs::File::open(&b.path)
            .await
            .map_err(|e| bad_file(&b.path, e))?;
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(a.offset))
            .await
            .map_err(|e| bad_file(&b.path, e))?;
        let bar = if json || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(a.size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("uploading {}", short(&a.sha256)));
            bar
        };
        let progress = bar.clone();
        let stored: CliResult<StoredArtifact> = client
            .put_file(&path, file, a.size, move |n| progress.inc(n))
            .await;
        bar.finish_and_clear();
        let stored = stored.map_err(|e| {
            if e.code == "hash_mismatch" {
                CliError::new(
                    e.kind,
                    &e.code,
                    format!(
                        "the server says artifact {} does not hash to its name ({}); the bundle is damaged: run `drover release inspect --verify-hashes {}`",
                        a.sha256,
                        e.message,
                        b.path.display()
                    ),
                )
            } else {
                e
            }
        })?;
        if stored.created {
            uploaded += 1;
        } else {
            skipped += 1;
        }
        if !json {
            eprintln!(
                "{}: {} ({} bytes)",
                short(&a.sha256),
                if stored.created {
                    "uploaded"
                } else {
                    "already on the server"
                },
                a.size
            );
        }
    }
    let body = json!({
        "manifest": b.signed,
        "key_list": b.key_list,
    });
    let (status, summary): (_, serde_json::Value) =
        client.post_with_status("/api/v1/releases", &body).await?;
    if json {
        return output::json(&summary);
    }
    let id = summary
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}@{}", b.manifest.name, b.manifest.version));
    let verb = if status == reqwest::StatusCode::CREATED {
        "Published"
    } else {
        "Already published:"
    };
    println!("{verb} {id} ({uploaded} artifact(s) uploaded, {skipped} already stored).");
    Ok(())
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_specs_parse_or_say_how_to_write_them() {
        assert_eq!(
            parse_payload_spec("app:dist/app.tar").unwrap(),
            ("app".into(), None, PathBuf::from("dist/app.tar"))
        );
        assert_eq!(
            parse_payload_spec("script:docker-compose:c.yml").unwrap(),
            (
                "script".into(),
                Some("docker-compose".into()),
                PathBuf::from("c.yml")
            )
        );
        for bad in ["app", "app:", "exe:x", "script:x", "script::x", ":x"] {
            let e = parse_payload_spec(bad).unwrap_err();
            assert!(e.message.contains("TYPE:PATH"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn health_checks_parse() {
        assert_eq!(
            parse_health_check("reconnect").unwrap(),
            HealthCheck::Reconnect {}
        );
        assert_eq!(
            parse_health_check("command=systemctl is-active kiosk").unwrap(),
            HealthCheck::Command {
                argv: vec!["systemctl".into(), "is-active".into(), "kiosk".into()]
            }
        );
        assert_eq!(
            parse_health_check("http=http://127.0.0.1:8080/health").unwrap(),
            HealthCheck::Http {
                url: "http://127.0.0.1:8080/health".into(),
                status: None
            }
        );
        assert!(parse_health_check("process=").is_err());
        assert!(parse_health_check("ping").is_err());
    }
}
