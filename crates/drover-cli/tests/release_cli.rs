//! `drover release keygen|keys sign|build|inspect` as processes: the files
//! they write are what a device verifies, bad input exits 2 with a message
//! that says what to fix, and nothing is overwritten by accident.
//! (`publish` needs a server and is covered by the end-to-end tests.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drover_release::bundle::Bundle;
use drover_release::verify::{VerifyOptions, verify, verify_key_list};
use drover_release::{PublicKey, SignedKeyList};

struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    fn write(&self, name: &str, data: &[u8]) -> String {
        std::fs::write(self.path(name), data).unwrap();
        self.p(name)
    }

    /// Runs `drover release ARGS` with no login profile around.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("release")
            .args(args)
            .env("DROVER_CONFIG", self.path("no-profile.toml"))
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "drover release {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Exit code and stderr of a command that must fail.
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "drover release {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A root key and a release key, and a key list (version 1) naming the
    /// release key.
    fn keys(&self) -> Keys {
        let root = self.json(&["keygen", "--root", "-o", &self.p("root.key")]);
        let rel = self.json(&["keygen", "-o", &self.p("release.key")]);
        self.ok(&[
            "keys",
            "sign",
            "--root-key",
            &self.p("root.key"),
            "--key",
            &self.p("release.key.pub"),
            "--version",
            "1",
            "-o",
            &self.p("keys.json"),
        ]);
        Keys {
            root: PublicKey::parse(root["public_key"].as_str().unwrap()).unwrap(),
            release_id: rel["key_id"].as_str().unwrap().to_string(),
        }
    }
}

struct Keys {
    root: PublicKey,
    release_id: String,
}

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn opts(roots: &[PublicKey]) -> VerifyOptions<'_> {
    VerifyOptions {
        roots,
        device_type: "rpi4",
        installed_version: None,
        allow_downgrade: false,
        now: now(),
        min_key_list_version: 0,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_key_for_the_owner_only_and_never_overwrites_it() {
    let w = Work::new();
    let key = w.p("release.key");
    let text = w.ok(&["keygen", "-o", &key]);
    let public = std::fs::read_to_string(w.path("release.key.pub")).unwrap();
    let public = public.trim();
    assert!(public.starts_with("ed25519:"), "{public}");
    assert!(text.contains(public), "the public key is printed:\n{text}");
    assert!(text.contains("release key"), "{text}");
    assert_eq!(mode(&w.path("release.key")), 0o600);
    let parsed = PublicKey::parse(public).unwrap();
    assert!(text.contains(&parsed.key_id()), "key id printed:\n{text}");

    // Again: refused, the key is untouched.
    let before = std::fs::read(w.path("release.key")).unwrap();
    let (code, err) = w.fails(&["keygen", "-o", &key]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(w.path("release.key")).unwrap(), before);
    // A leftover .pub alone also blocks, so a key and its .pub never disagree.
    std::fs::write(w.path("other.key.pub"), "x").unwrap();
    let (code, err) = w.fails(&["keygen", "-o", &w.p("other.key")]);
    assert_eq!(code, 2, "{err}");
    assert!(!w.path("other.key").exists());

    // --force replaces both; --json says what was made.
    let j = w.json(&["keygen", "--root", "--force", "-o", &key]);
    assert_eq!(j["role"], "root");
    assert_ne!(j["public_key"].as_str().unwrap(), public);
    assert_eq!(
        std::fs::read_to_string(w.path("release.key.pub"))
            .unwrap()
            .trim(),
        j["public_key"].as_str().unwrap()
    );
    assert_eq!(j["key_id"].as_str().unwrap().len(), 16);
    assert_eq!(mode(&w.path("release.key")), 0o600);
}

#[test]
fn keys_sign_makes_a_list_devices_accept_and_refuses_the_wrong_key_roles() {
    let w = Work::new();
    let keys = w.keys();
    let signed: SignedKeyList =
        serde_json::from_str(&std::fs::read_to_string(w.path("keys.json")).unwrap()).unwrap();
    let list = verify_key_list(&signed, std::slice::from_ref(&keys.root), now(), 0).unwrap();
    assert_eq!(list.version, 1);
    assert_eq!(list.keys.len(), 1);
    assert_eq!(list.keys[0].public.key_id(), keys.release_id);

    // A newer list with an expiry, keys given as text and as a private file.
    let other = w.json(&["keygen", "-o", &w.p("ci.key")]);
    let j = w.json(&[
        "keys",
        "sign",
        "--root-key",
        &w.p("root.key"),
        "--key",
        &std::fs::read_to_string(w.path("release.key.pub")).unwrap(),
        "--key",
        &w.p("ci.key"),
        "--version",
        "2",
        "--expires-in-days",
        "30",
        "-o",
        &w.p("keys2.json"),
    ]);
    assert_eq!(j["version"], 2);
    assert_eq!(j["keys"].as_array().unwrap().len(), 2);
    assert_eq!(j["keys"][1]["key_id"], other["key_id"]);
    let signed2: SignedKeyList =
        serde_json::from_str(&std::fs::read_to_string(w.path("keys2.json")).unwrap()).unwrap();
    let list2 = verify_key_list(&signed2, std::slice::from_ref(&keys.root), now(), 1).unwrap();
    let expires = list2.expires_at.unwrap();
    assert!((expires - now() - 30 * 86_400).abs() < 120, "{expires}");

    // A release key cannot sign a key list.
    let (code, err) = w.fails(&[
        "keys",
        "sign",
        "--root-key",
        &w.p("release.key"),
        "--key",
        &w.p("ci.key.pub"),
        "--version",
        "3",
        "-o",
        &w.p("k3.json"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a release key") && err.contains("keygen --root"),
        "{err}"
    );
    // A root key is not listed as a release key.
    let (code, err) = w.fails(&[
        "keys",
        "sign",
        "--root-key",
        &w.p("root.key"),
        "--key",
        &w.p("root.key"),
        "--version",
        "3",
        "-o",
        &w.p("k3.json"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a root key"), "{err}");
    // Not a key at all; a missing file; version 0; an existing output.
    let junk = w.write("junk.pub", b"ssh-ed25519 AAAA");
    for (args, needle) in [
        (vec!["--key", junk.as_str(), "--version", "3"], "ed25519:"),
        (
            vec!["--key", "/nonexistent/k.pub", "--version", "3"],
            "neither a public key",
        ),
        (vec!["--key", "ed25519:AAAA", "--version", "3"], "32 bytes"),
    ] {
        let root = w.p("root.key");
        let out = w.p("k3.json");
        let mut all = vec!["keys", "sign", "--root-key", root.as_str(), "-o", &out];
        all.extend(args);
        let (code, err) = w.fails(&all);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(needle), "want {needle:?}: {err}");
    }
    let (code, _) = w.fails(&[
        "keys",
        "sign",
        "--root-key",
        &w.p("root.key"),
        "--key",
        &w.p("ci.key.pub"),
        "--version",
        "0",
        "-o",
        &w.p("k3.json"),
    ]);
    assert_eq!(code, 2);
    let (code, err) = w.fails(&[
        "keys",
        "sign",
        "--root-key",
        &w.p("root.key"),
        "--key",
        &w.p("ci.key.pub"),
        "--version",
        "3",
        "-o",
        &w.p("keys.json"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(!w.path("k3.json").exists());
}

#[test]
fn build_writes_a_bundle_a_device_trusts_and_inspect_shows_it() {
    let w = Work::new();
    let keys = w.keys();
    let payload = noise(300_000, 1);
    let app = w.write("app.tar", &payload);
    let sbom = w.write("sbom.json", b"{\"spdxVersion\":\"SPDX-2.3\"}");
    let out = w.p("kiosk-1.2.0.drover");
    let text = w.ok(&[
        "build",
        "--name",
        "kiosk-app",
        "--version",
        "1.2.0",
        "--device-type",
        "rpi4",
        "--device-type",
        "rpi5",
        "--payload",
        &format!("app:{app}"),
        "--provenance",
        "commit=0123abc,build=ci-77,branch=main",
        "--sbom",
        &sbom,
        "--health",
        "reconnect",
        "--health",
        "command=systemctl is-active kiosk",
        "--health-timeout",
        "90",
        "--expires-in-days",
        "365",
        "--key-list",
        &w.p("keys.json"),
        "--key",
        &w.p("release.key"),
        "-o",
        &out,
    ]);
    assert!(text.contains("Built kiosk-app@1.2.0"), "{text}");

    // What a device does with it: the bundle verifies against the root key
    // through the shipped key list, and the payload bytes are in it.
    let b = Bundle::open(Path::new(&out)).unwrap();
    let trusted = verify(
        &b.signed,
        b.key_list.as_ref(),
        &opts(std::slice::from_ref(&keys.root)),
    )
    .unwrap();
    assert_eq!(trusted.signed_by, keys.release_id);
    let m = trusted.manifest;
    assert_eq!(m.device_types, ["rpi4", "rpi5"]);
    assert_eq!(m.payloads[0].kind, "app");
    assert_eq!(m.payloads[0].size, payload.len() as u64);
    assert_eq!(m.payloads[0].sha256, drover_release::sha256_hex(&payload));
    let prov = m.provenance.unwrap();
    assert_eq!(prov.commit.as_deref(), Some("0123abc"));
    assert_eq!(prov.build.as_deref(), Some("ci-77"));
    assert_eq!(prov.extra["branch"], "main");
    assert_eq!(
        prov.sbom_sha256.unwrap(),
        drover_release::sha256_hex(b"{\"spdxVersion\":\"SPDX-2.3\"}")
    );
    let health = m.health.unwrap();
    assert_eq!(health.timeout_secs, 90);
    assert_eq!(health.checks.len(), 2);
    assert!((m.created_at - now()).abs() < 120);
    assert!(m.expires_at.unwrap() > now() + 364 * 86_400);
    b.verify_artifacts().unwrap();

    let j = w.json(&["inspect", "--verify-hashes", &out]);
    assert_eq!(j["id"], "kiosk-app@1.2.0");
    assert_eq!(j["signatures_checked"], false);
    assert_eq!(j["signed_by"][0].as_str().unwrap(), keys.release_id);
    assert_eq!(j["key_list"]["version"], 1);
    assert_eq!(
        j["artifacts"][0]["sha256"].as_str().unwrap(),
        m.payloads[0].sha256
    );
    assert_eq!(j["manifest"]["payloads"][0]["type"], "app");
    let human = w.ok(&["inspect", &out]);
    for needle in [
        "kiosk-app@1.2.0",
        "signatures not checked",
        "rpi4, rpi5",
        "commit=0123abc",
        m.payloads[0].sha256.as_str(),
        keys.release_id.as_str(),
        "command=systemctl is-active kiosk",
    ] {
        assert!(human.contains(needle), "want {needle:?} in:\n{human}");
    }

    // Building over an existing bundle needs --force.
    let (code, err) = w.fails(&[
        "build",
        "--name",
        "kiosk-app",
        "--version",
        "1.2.1",
        "--device-type",
        "rpi4",
        "--payload",
        &format!("app:{app}"),
        "--key",
        &w.p("root.key"),
        "-o",
        &out,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        Bundle::open(Path::new(&out)).unwrap().manifest.version,
        "1.2.0"
    );
}

#[test]
fn a_delta_release_carries_a_patch_that_rebuilds_the_new_payload() {
    let w = Work::new();
    w.keys();
    let old_payload = noise(1 << 20, 7);
    let mut new_payload = old_payload.clone();
    new_payload[300_000..304_096].copy_from_slice(&noise(4096, 8));
    new_payload.splice(700_000..700_000, noise(100, 9));
    let old_app = w.write("app-1.0.tar", &old_payload);
    let new_app = w.write("app-1.1.tar", &new_payload);
    let build = |version: &str, app: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            "--name",
            "kiosk-app",
            "--version",
            version,
            "--device-type",
            "rpi4",
        ];
        let payload = format!("app:{app}");
        let root = w.p("root.key");
        args.extend(["--payload", &payload, "--key", &root, "-o", out]);
        args.extend_from_slice(extra);
        w.run(&args)
    };
    let old = w.p("v1.0.drover");
    assert!(build("1.0.0", &old_app, &old, &[]).status.success());
    let new = w.p("v1.1.drover");
    let out = build("1.1.0", &new_app, &new, &["--delta-from", &old]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("delta from 1.0.0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let b = Bundle::open(Path::new(&new)).unwrap();
    let p = &b.manifest.payloads[0];
    let d = p.delta.as_ref().expect("the manifest names the delta");
    assert_eq!(d.base_version, "1.0.0");
    assert_eq!(d.base_sha256, drover_release::sha256_hex(&old_payload));
    assert!(
        d.size < 32 * 1024,
        "patch is {} bytes for a ~4 KiB change",
        d.size
    );
    assert_eq!(b.artifacts.len(), 2);
    // The device side: apply the patch to the installed 1.0.0 payload.
    let patch = w.path("patch");
    b.extract(b.artifact(&d.sha256).unwrap(), &patch).unwrap();
    let rebuilt = w.path("rebuilt");
    drover_release::delta::apply(Path::new(&old_app), &patch, &rebuilt, &p.sha256, p.size).unwrap();
    assert_eq!(std::fs::read(&rebuilt).unwrap(), new_payload);
    // `verify-delta` does the same from the two bundles, and names the
    // problem when the base is the wrong release.
    let j = w.json(&["verify-delta", "--base", &old, &new]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["base_version"], "1.0.0");
    assert_eq!(j["patch_size"], d.size);
    let (code, err) = w.fails(&["verify-delta", "--base", &new, &new]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("applies to kiosk-app version 1.0.0"), "{err}");
    let (code, err) = w.fails(&["verify-delta", "--base", &new, &old]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("carries no delta"), "{err}");
    // The work folders next to the outputs are gone.
    assert!(
        std::fs::read_dir(w.dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "temporary files left behind"
    );

    // A delta from another release name is refused.
    let other = w.p("other.drover");
    let out = w.run(&[
        "build",
        "--name",
        "other-app",
        "--version",
        "2.0.0",
        "--device-type",
        "rpi4",
        "--payload",
        &format!("app:{new_app}"),
        "--key",
        &w.p("root.key"),
        "--delta-from",
        &old,
        "-o",
        &other,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("same release"), "{err}");
    assert!(!w.path("other.drover").exists());
}

#[test]
fn build_refuses_bad_input_with_exit_code_2_and_a_fix() {
    let w = Work::new();
    w.keys();
    let app = w.write("app.tar", b"app bytes");
    let base = |version: &str, payload: &str, key: &str| -> Vec<String> {
        [
            "build",
            "--name",
            "kiosk-app",
            "--version",
            version,
            "--device-type",
            "rpi4",
            "--payload",
            payload,
            "--key",
            key,
            "-o",
            &w.p("out.drover"),
        ]
        .map(String::from)
        .to_vec()
    };
    let root = w.p("root.key");
    let app_spec = format!("app:{app}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base("1.0.0", &app, &root), "TYPE:PATH"),
        (base("1.0.0", "exe:/bin/true", &root), "TYPE:PATH"),
        (
            base("1.0.0", "script:/bin/true", &root),
            "script:MODULE:PATH",
        ),
        (base("1.0", &app_spec, &root), "semantic version"),
        (
            base("1.0.0", "app:/nonexistent/app.tar", &root),
            "/nonexistent/app.tar",
        ),
        (
            base("1.0.0", &app_spec, &w.p("nonexistent.key")),
            "nonexistent.key",
        ),
        (
            base("1.0.0", &app_spec, &w.p("release.key.pub")),
            "not a Drover release private key",
        ),
        (
            {
                let mut a = base("1.0.0", &app_spec, &root);
                a.extend(["--health".into(), "ping".into()]);
                a
            },
            "reconnect, command=CMD ARGS",
        ),
        (
            {
                let mut a = base("1.0.0", &app_spec, &root);
                a.extend(["--health".into(), "http=https://example.com/".into()]);
                a
            },
            "local http:// URL",
        ),
        (
            {
                let mut a = base("1.0.0", &app_spec, &root);
                a.extend(["--delta-from".into(), app.clone()]);
                a
            },
            "not a release bundle",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = w.fails(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: want {needle:?} in: {err}"
        );
        assert!(!w.path("out.drover").exists(), "{args:?} left a bundle");
    }

    // A release key that the shipped key list does not name.
    w.ok(&["keygen", "-o", &w.p("stray.key")]);
    let mut args = base("1.0.0", &app_spec, &w.p("stray.key"));
    args.extend(["--key-list".into(), w.p("keys.json")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = w.fails(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not in key list"), "{err}");

    // Errors are JSON with --json.
    let mut args = vec!["--json".to_string()];
    args.extend(base("1.0", &app_spec, &root));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = w.fails(&args);
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(doc["error"]["code"], "usage");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("semantic version")
    );

    // inspect on something that is not a bundle.
    let (code, err) = w.fails(&["inspect", &app]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a release bundle"), "{err}");
}
