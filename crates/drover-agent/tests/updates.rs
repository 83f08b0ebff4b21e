//! The update engine against real files, processes and a real artifact
//! server on loopback: kill -9 in every state, interrupted downloads,
//! corrupted and untrusted releases, full disks, failing health checks and
//! crashing apps. In every case the running version must survive.

mod common;

use std::time::Duration;

use common::*;
use drover_agent::update::download::{self, DownloadOptions, PlainHttpSource};
use drover_agent::update::engine::{Step, UpdateHandle};
use drover_proto::device::UpdateState;
use drover_release::keys::KeyRole;
use drover_release::{HealthCheck, HealthConfig, KeyPair, SignedManifest};

fn health(timeout_secs: u64, checks: Vec<HealthCheck>) -> Option<HealthConfig> {
    Some(HealthConfig {
        timeout_secs,
        checks,
    })
}

fn state_and_reason(e: &drover_agent::update::engine::Engine) -> (UpdateState, Option<String>) {
    let j = e.journal().unwrap();
    (j.state, j.reason.clone())
}

#[tokio::test]
async fn a_release_is_installed_beside_the_old_one_and_committed() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    d.install("d2", "2.0.0").await;
    assert!(
        d.version_dir("1.0.0").is_dir(),
        "the previous version is kept"
    );
    assert_eq!(d.restarts(), vec!["kiosk 1.0.0", "kiosk 2.0.0"]);
    let e = d.engine();
    let inv = e.inventory();
    assert_eq!(
        inv.get("update.kiosk.version").map(String::as_str),
        Some("2.0.0")
    );
    assert_eq!(
        inv.get("update.kiosk.sha256"),
        Some(&drover_release::sha256_hex(&app_script("2.0.0", 0)))
    );
    assert_eq!(
        inv.get("update.state").map(String::as_str),
        Some("committed")
    );
    // Downloads and work files are gone; the delta base is kept.
    assert_eq!(
        files_in(&d.update_dir()),
        vec!["base", "installed.json", "journal.json"]
    );
    // A third version removes versions older than the previous one.
    d.install("d3", "3.0.0").await;
    assert!(!d.version_dir("1.0.0").exists());
    assert!(d.version_dir("2.0.0").is_dir());
    // The same version again is committed at once, without a download.
    let before = d.server.requests().len();
    let mut e = d.engine();
    e.offer(d.release("d4", "3.0.0", &app_script("3.0.0", 0), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(d.server.requests().len(), before);
}

#[tokio::test]
async fn a_tar_payload_is_unpacked_and_escaping_entries_are_refused() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let mut b = tar::Builder::new(Vec::new());
    let script = app_script("2.0.0", 0);
    let mut h = tar::Header::new_ustar();
    h.set_size(script.len() as u64);
    h.set_mode(0o755);
    b.append_data(&mut h, "kiosk", &script[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, "share/data.txt", &b"hello"[..])
        .unwrap();
    let good = b.into_inner().unwrap();
    let mut e = d.engine();
    e.offer(d.release("d2", "2.0.0", &good, None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(
        std::fs::read(d.version_dir("2.0.0").join("share/data.txt")).unwrap(),
        b"hello"
    );
    // A symlink out of the version directory is refused before activation.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "evil", "../../../../etc/passwd")
        .unwrap();
    let evil = b.into_inner().unwrap();
    e.offer(d.release("d3", "3.0.0", &evil, None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    assert_eq!(state_and_reason(&e).1.as_deref(), Some("payload_invalid"));
    assert_eq!(d.current().as_deref(), Some("2.0.0"));
    assert!(!d.version_dir("3.0.0").exists());
}

#[tokio::test]
async fn kill_9_in_every_state_resumes_and_commits() {
    for kill_in in [
        UpdateState::Downloading,
        UpdateState::Verifying,
        UpdateState::Installing,
        UpdateState::Activating,
        UpdateState::HealthCheck,
    ] {
        let d = Device::new();
        d.install("d1", "1.0.0").await;
        let mut e = d.engine();
        e.offer(d.release(
            "d2",
            "2.0.0",
            &app_script("2.0.0", 0),
            health(
                10,
                vec![HealthCheck::Command {
                    argv: vec!["true".into()],
                }],
            ),
        ));
        run_until(&mut e, kill_in).await;
        drop(e); // kill -9: nothing but the disk survives
        assert_ne!(
            d.current(),
            None,
            "{kill_in:?}: an app version is always current"
        );
        assert!(
            d.version_dir("1.0.0").is_dir(),
            "{kill_in:?}: the running version is intact"
        );
        let mut e = d.engine();
        assert_eq!(
            e.journal().unwrap().state,
            kill_in,
            "resumes from the journal"
        );
        assert_eq!(
            run_to_end(&mut e).await,
            UpdateState::Committed,
            "{kill_in:?}"
        );
        assert_eq!(d.current().as_deref(), Some("2.0.0"), "{kill_in:?}");
        assert!(
            d.version_dir("1.0.0").is_dir(),
            "{kill_in:?}: previous kept"
        );
    }
}

#[tokio::test]
async fn kill_9_in_the_middle_of_steps_resumes() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let payload = [app_script("2.0.0", 0), vec![b'#'; 300 * 1024]].concat();
    // Killed mid-download: a part file is left.
    let t = d.release("d2", "2.0.0", &payload, None);
    let sha = drover_release::sha256_hex(&payload);
    d.server.state.lock().unwrap().cut_after = Some(100 * 1024);
    let mut e = d.engine();
    e.offer(t);
    assert!(matches!(e.step().await, Step::RetryAfter(_)));
    drop(e);
    let part = download::part_path(&d.update_dir(), &sha);
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 100 * 1024);
    // Killed while unpacking: a half-written temp directory is left.
    let mut e = d.engine();
    run_until(&mut e, UpdateState::Installing).await;
    drop(e);
    let tmp = d.apps.join(APP).join(".tmp-2.0.0");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("half"), b"x").unwrap();
    let mut e = d.engine();
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert!(!tmp.exists());
    assert_eq!(
        std::fs::read(d.version_dir("2.0.0").join(APP)).unwrap(),
        payload
    );
    let ranges: Vec<_> = d
        .server
        .requests()
        .into_iter()
        .filter_map(|r| r.1)
        .collect();
    assert_eq!(
        ranges,
        vec![format!("bytes={}-", 100 * 1024)],
        "resumed with Range"
    );
}

#[tokio::test]
async fn kill_9_while_rolling_back_finishes_the_rollback() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let mut e = d.engine();
    e.offer(d.release(
        "d2",
        "2.0.0",
        &app_script("2.0.0", 0),
        health(
            1,
            vec![HealthCheck::Command {
                argv: vec!["false".into()],
            }],
        ),
    ));
    run_until(&mut e, UpdateState::RollingBack).await;
    drop(e);
    assert_eq!(
        d.current().as_deref(),
        Some("2.0.0"),
        "killed before the switch back"
    );
    let mut e = d.engine();
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    assert_eq!(
        state_and_reason(&e).1.as_deref(),
        Some("health_check_failed")
    );
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    assert!(!d.version_dir("2.0.0").exists());
    assert_eq!(
        d.restarts(),
        vec!["kiosk 1.0.0", "kiosk 2.0.0", "kiosk 1.0.0"],
        "the old version is restarted"
    );
    // Killed after the rollback finished but before the journal said so:
    // a repeated rollback is harmless.
    let mut e = d.engine();
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn health_check_failing_rolls_back_and_names_the_check() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let mut e = d.engine();
    e.offer(d.release(
        "d2",
        "2.0.0",
        &app_script("2.0.0", 0),
        health(
            2,
            vec![
                HealthCheck::Command {
                    argv: vec!["true".into()],
                },
                HealthCheck::Process {
                    name: "kiosk-never-runs".into(),
                },
            ],
        ),
    ));
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    let j = e.journal().unwrap();
    assert_eq!(j.reason.as_deref(), Some("health_check_failed"));
    assert!(
        j.message
            .as_deref()
            .unwrap()
            .contains("process \"kiosk-never-runs\""),
        "{:?}",
        j.message
    );
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    assert_eq!(
        d.engine()
            .inventory()
            .get("update.kiosk.version")
            .map(String::as_str),
        Some("1.0.0")
    );
}

#[tokio::test]
async fn a_new_app_crashing_at_start_is_rolled_back() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let mut e = d.engine();
    e.offer(d.release("d2", "2.0.0", &app_script("2.0.0", 3), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    let j = e.journal().unwrap();
    assert_eq!(
        j.reason.as_deref(),
        Some("restart_failed"),
        "{:?}",
        j.message
    );
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    assert_eq!(d.restarts().last().map(String::as_str), Some("kiosk 1.0.0"));
    // A first install that crashes leaves no `current` at all.
    let d = Device::new();
    let mut e = d.engine();
    e.offer(d.release("d1", "1.0.0", &app_script("1.0.0", 1), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    assert_eq!(d.current(), None);
}

#[tokio::test]
async fn untrusted_releases_are_refused_before_any_download() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let before = d.server.requests().len();
    let payload = app_script("2.0.0", 0);
    let mut e = d.engine();

    // Wrong signature: the manifest was changed after signing.
    let mut t = d.release("bad-sig", "2.0.0", &payload, None);
    let mut s = SignedManifest::from_json(&t.manifest).unwrap();
    s.manifest = s.manifest.replace("2.0.0", "2.0.1");
    t.manifest = s.to_json();
    e.offer(t);
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("bad_signature".into()))
    );

    // Signed by a key this device does not know.
    let stranger = KeyPair::generate(KeyRole::Release).unwrap();
    let m = d.manifest("2.0.0", &payload);
    let mut t = d.target("unknown-key", &m);
    t.manifest = SignedManifest::sign(&m, &stranger).unwrap().to_json();
    e.offer(t);
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("unknown_signing_key".into()))
    );

    // Unsigned.
    let mut s = SignedManifest::sign(&m, &d.root).unwrap();
    s.signatures.clear();
    let mut t = d.target("unsigned", &m);
    t.manifest = s.to_json();
    e.offer(t);
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("unsigned".into()))
    );

    // Another device type.
    let mut m2 = m.clone();
    m2.device_types = vec!["other-box".into()];
    e.offer(d.target("wrong-type", &m2));
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("wrong_device_type".into()))
    );

    // Expired.
    let mut m3 = m.clone();
    m3.expires_at = Some(1);
    e.offer(d.target("expired", &m3));
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("release_expired".into()))
    );

    // A payload type this agent has no installer for.
    let mut parts = d.parts();
    parts.installers.retain(|i| i.kind() == "app");
    let mut app_only = drover_agent::update::engine::Engine::open(parts).unwrap();
    let mut m4 = m.clone();
    m4.payloads[0].kind = "rootfs-ab".into();
    app_only.offer(d.target("no-installer", &m4));
    assert_eq!(
        state_and_reason(&app_only),
        (UpdateState::Failed, Some("unsupported_payload".into()))
    );

    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    assert_eq!(d.server.requests().len(), before, "nothing was downloaded");
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn downgrades_are_refused_unless_the_deployment_allows_them() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    d.install("d2", "2.0.0").await;
    let mut e = d.engine();
    let mut t = d.release("down", "1.5.0", &app_script("1.5.0", 0), None);
    e.offer(t.clone());
    assert_eq!(
        state_and_reason(&e),
        (UpdateState::Failed, Some("downgrade_refused".into()))
    );
    assert_eq!(d.current().as_deref(), Some("2.0.0"));
    t.deployment_id = "down-allowed".into();
    t.allow_downgrade = true;
    e.offer(t);
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(d.current().as_deref(), Some("1.5.0"));
}

#[tokio::test]
async fn a_corrupted_payload_byte_is_a_hash_mismatch_and_nothing_changes() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let payload = app_script("2.0.0", 0);
    let t = d.release("d2", "2.0.0", &payload, None);
    let sha = drover_release::sha256_hex(&payload);
    let mut corrupted = payload.clone();
    corrupted[10] ^= 0x20;
    d.server
        .state
        .lock()
        .unwrap()
        .artifacts
        .insert(sha.clone(), corrupted);
    let mut e = d.engine();
    e.offer(t);
    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    assert_eq!(state_and_reason(&e).1.as_deref(), Some("hash_mismatch"));
    assert!(!download::part_path(&d.update_dir(), &sha).exists());
    assert!(!download::artifact_path(&d.update_dir(), &sha).exists());
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    assert!(!d.version_dir("2.0.0").exists());
}

#[tokio::test]
async fn a_download_cut_midway_resumes_where_it_stopped() {
    let server = ArtifactServer::start();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = server.publish(&data);
    let dir = tempfile::tempdir().unwrap();
    let src = PlainHttpSource { addr: server.addr };
    let opts = DownloadOptions::default();
    server.state.lock().unwrap().cut_after = Some(300_000);
    let mut seen = Vec::new();
    let err = download::download(&src, dir.path(), &sha, data.len() as u64, &opts, &mut |n| {
        seen.push(n)
    })
    .await
    .unwrap_err();
    assert!(err.retry && err.reason == "download_failed", "{err:?}");
    assert_eq!(*seen.last().unwrap(), 300_000);
    // "Restart": a new call re-hashes the part and asks for the rest.
    let path = download::download(
        &src,
        dir.path(),
        &sha,
        data.len() as u64,
        &opts,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let ranges: Vec<_> = server.requests().into_iter().map(|r| r.1).collect();
    assert_eq!(ranges, vec![None, Some("bytes=300000-".into())]);
    // A server error is worth retrying; a missing artifact too.
    server.state.lock().unwrap().fail_next = 1;
    let other = vec![1u8; 10];
    let sha2 = server.publish(&other);
    let err = download::download(&src, dir.path(), &sha2, 10, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.retry, "{err:?}");
    let missing = "0".repeat(64);
    let err = download::download(&src, dir.path(), &missing, 10, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!((err.reason, err.retry), ("artifact_missing", true));
    // The server cannot serve the range asked for (416): the part file is
    // dropped and the next attempt starts over.
    let part = download::part_path(dir.path(), &sha2);
    std::fs::write(&part, vec![1u8; 15]).unwrap();
    let err = download::download(&src, dir.path(), &sha2, 20, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.retry && err.message.contains("416"), "{err:?}");
    assert!(!part.exists());
}

#[tokio::test]
async fn not_enough_free_space_is_disk_full_before_downloading() {
    let mut d = Device::new();
    d.install("d1", "1.0.0").await;
    d.config.min_free_bytes = u64::MAX / 4;
    let before = d.server.requests().len();
    let mut e = d.engine();
    e.offer(d.release("d2", "2.0.0", &app_script("2.0.0", 0), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    let j = e.journal().unwrap();
    assert_eq!(j.reason.as_deref(), Some("disk_full"));
    assert!(j.message.as_deref().unwrap().contains("min_free_bytes"));
    assert_eq!(d.server.requests().len(), before);
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
}

/// A small tmpfs (we run as root in CI); `None` where mounting is not
/// allowed, and the caller says so.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn running_out_of_space_mid_download_is_disk_full_and_removes_the_part() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    let Some(_fs) = Tmpfs::mount(&d.update_dir(), "1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let payload = vec![3u8; 700 * 1024];
    let t = d.release("d2", "2.0.0", &payload, None);
    // The free-space check passes; then something else fills the disk.
    let filler = d.update_dir().join("filler");
    d.server.state.lock().unwrap().before_next = Some(Box::new(move || {
        std::fs::write(&filler, vec![0u8; 600 * 1024]).unwrap();
    }));
    let mut e = d.engine();
    e.offer(t);
    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    assert_eq!(state_and_reason(&e).1.as_deref(), Some("disk_full"));
    let sha = drover_release::sha256_hex(&payload);
    assert!(!download::part_path(&d.update_dir(), &sha).exists());
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn running_out_of_space_while_installing_rolls_back_cleanly() {
    let mut d = Device::new();
    d.install("d1", "1.0.0").await;
    // Move the app root onto a small tmpfs holding version 1.0.0.
    let small = d.dir.path().join("small");
    let Some(_fs) = Tmpfs::mount(&small, "512k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let app_dir = small.join(APP);
    std::fs::create_dir_all(app_dir.join("1.0.0")).unwrap();
    std::fs::copy(
        d.version_dir("1.0.0").join(APP),
        app_dir.join("1.0.0").join(APP),
    )
    .unwrap();
    std::os::unix::fs::symlink("1.0.0", app_dir.join("current")).unwrap();
    d.apps = small.clone();
    d.config.app.root = Some(small.clone());
    // A tar payload bigger than the tmpfs.
    let mut b = tar::Builder::new(Vec::new());
    let big = vec![9u8; 1024 * 1024];
    let mut h = tar::Header::new_ustar();
    h.set_size(big.len() as u64);
    h.set_mode(0o755);
    b.append_data(&mut h, "kiosk", &big[..]).unwrap();
    let mut e = d.engine();
    e.offer(d.release("d2", "2.0.0", &b.into_inner().unwrap(), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Failed);
    assert_eq!(
        state_and_reason(&e).1.as_deref(),
        Some("disk_full"),
        "{:?}",
        e.journal()
    );
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    assert_eq!(
        files_in(&app_dir),
        vec!["1.0.0", "current"],
        "no half-written version left"
    );
}

#[tokio::test]
async fn a_delta_is_applied_against_the_installed_version_or_falls_back() {
    let d = Device::new();
    let v1: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    let mut e = d.engine();
    e.offer(d.release(
        "d1",
        "1.0.0",
        &[b"#!/bin/sh\nexit 0\n#".as_slice(), &v1].concat(),
        None,
    ));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    let base = [b"#!/bin/sh\nexit 0\n#".as_slice(), &v1].concat();
    let mut v2 = base.clone();
    v2[150_000] = b'!';
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base"), &base).unwrap();
    std::fs::write(dir.path().join("new"), &v2).unwrap();
    let info = drover_release::delta::make(
        &dir.path().join("base"),
        &dir.path().join("new"),
        &dir.path().join("patch"),
    )
    .unwrap();
    let patch = std::fs::read(dir.path().join("patch")).unwrap();
    let patch_sha = d.server.publish(&patch);
    assert_eq!(patch_sha, info.sha256);
    let mut m = d.manifest("2.0.0", &v2);
    m.payloads[0].delta = Some(Device::delta("1.0.0", &base, &patch));
    let full_sha = m.payloads[0].sha256.clone();
    e.offer(d.target("d2", &m));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(std::fs::read(d.version_dir("2.0.0").join(APP)).unwrap(), v2);
    let fetched: Vec<String> = d.server.requests().into_iter().map(|r| r.0).collect();
    assert!(fetched.contains(&format!("/v1/artifacts/{patch_sha}")));
    assert!(
        !fetched.contains(&format!("/v1/artifacts/{full_sha}")),
        "only the patch was downloaded"
    );
    // A damaged patch: the full payload is fetched instead.
    let mut v3 = v2.clone();
    v3[150_010] = b'?';
    let mut m = d.manifest("3.0.0", &v3);
    let bad_patch = vec![0u8; 100];
    d.server.publish(&bad_patch);
    m.payloads[0].delta = Some(Device::delta("2.0.0", &v2, &bad_patch));
    e.offer(d.target("d3", &m));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(std::fs::read(d.version_dir("3.0.0").join(APP)).unwrap(), v3);
}

#[tokio::test]
async fn server_down_during_the_update_the_device_finishes_and_reports_after_reconnect() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    // The server is unreachable when the download starts.
    d.server.state.lock().unwrap().down = true;
    let mut e = d.engine();
    e.offer(d.release(
        "d2",
        "2.0.0",
        &app_script("2.0.0", 0),
        health(3, vec![HealthCheck::Reconnect {}]),
    ));
    assert!(matches!(e.step().await, Step::RetryAfter(_)));
    assert_eq!(e.journal().unwrap().state, UpdateState::Downloading);
    assert!(e.journal().unwrap().download.as_ref().unwrap().attempts >= 1);
    // It comes back for the download, then the control channel drops for
    // good: the `reconnect` check cannot pass and the device rolls back on
    // its own.
    d.server.state.lock().unwrap().down = false;
    run_until(&mut e, UpdateState::HealthCheck).await;
    d.connected_tx.send_replace(false);
    assert_eq!(run_to_end(&mut e).await, UpdateState::RolledBack);
    assert_eq!(d.current().as_deref(), Some("1.0.0"));
    drop(e);

    // Through the handle, as the control channel sees it: the final status
    // stays unacked (resent after each reconnect) until the server acks it.
    let h = UpdateHandle::spawn(d.parts(), vec![]).unwrap();
    let mut st = h.statuses();
    let p = st.borrow_and_update().clone().unwrap();
    assert_eq!(p.status.state, UpdateState::RolledBack);
    assert_eq!(p.status.reason.as_deref(), Some("health_check_failed"));
    assert!(!p.acked);
    h.ack("d2".into(), UpdateState::RolledBack);
    tokio::time::timeout(Duration::from_secs(10), st.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(st.borrow().as_ref().unwrap().acked);
    // A new deployment through the handle, connected: committed.
    h.set_connected(true);
    h.offer(d.release(
        "d3",
        "2.0.1",
        &app_script("2.0.1", 0),
        health(5, vec![HealthCheck::Reconnect {}]),
    ));
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        st.wait_for(|p| {
            p.as_ref()
                .is_some_and(|p| p.status.deployment_id == "d3" && p.status.state.is_final())
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(done.status.state, UpdateState::Committed, "{done:?}");
    assert_eq!(d.current().as_deref(), Some("2.0.1"));
    assert_eq!(
        h.inventory()
            .get("update.kiosk.version")
            .map(String::as_str),
        Some("2.0.1")
    );
}

#[tokio::test]
async fn a_new_deployment_replaces_one_still_downloading() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    d.server.state.lock().unwrap().down = true;
    let mut e = d.engine();
    e.offer(d.release("d2", "2.0.0", &app_script("2.0.0", 0), None));
    assert!(matches!(e.step().await, Step::RetryAfter(_)));
    d.server.state.lock().unwrap().down = false;
    e.offer(d.release("d3", "3.0.0", &app_script("3.0.0", 0), None));
    assert_eq!(e.journal().unwrap().deployment_id, "d3");
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(d.current().as_deref(), Some("3.0.0"));
    // Once installing began, a new target waits for the current one.
    e.offer(d.release("d4", "4.0.0", &app_script("4.0.0", 0), None));
    run_until(&mut e, UpdateState::Installing).await;
    e.offer(d.release("d5", "5.0.0", &app_script("5.0.0", 0), None));
    assert_eq!(e.journal().unwrap().deployment_id, "d4");
    run_until(&mut e, UpdateState::Committed).await;
    assert_eq!(d.current().as_deref(), Some("4.0.0"));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(e.journal().unwrap().deployment_id, "d5");
    assert_eq!(d.current().as_deref(), Some("5.0.0"));
}

#[tokio::test]
async fn a_damaged_journal_is_set_aside_and_the_running_version_stays() {
    let d = Device::new();
    d.install("d1", "1.0.0").await;
    std::fs::write(d.update_dir().join("journal.json"), b"{ not json").unwrap();
    let mut e = d.engine();
    assert!(e.journal().is_none());
    assert!(
        files_in(&d.update_dir())
            .iter()
            .any(|f| f.starts_with("journal.json.damaged-")),
        "kept for a human to look at"
    );
    e.offer(d.release("d2", "2.0.0", &app_script("2.0.0", 0), None));
    assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
    assert_eq!(d.current().as_deref(), Some("2.0.0"));
}
