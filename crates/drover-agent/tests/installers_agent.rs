//! The `agent` installer with the real `drover-agent` binary as payload: it
//! passes the ELF and `--version` checks, activation starts a trial, and
//! the new agent's commit ends it.

use std::os::unix::fs::PermissionsExt;

use drover_agent::update::installer::{Activation, InstallContext, Installer};
use drover_agent::update::selfupdate::{
    SelfUpdateInstaller, current_version, previous_version, read_trial, switch_link, version_binary,
};
use drover_release::{Manifest, Payload};

#[test]
fn the_real_agent_binary_installs_activates_and_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = std::fs::read(env!("CARGO_BIN_EXE_drover-agent")).unwrap();
    let payload = tmp.path().join("payload");
    std::fs::write(&payload, &binary).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let version = drover_agent::AGENT_VERSION;
    let manifest = Manifest {
        format: 1,
        name: "drover-agent".into(),
        version: version.into(),
        device_types: vec!["gw".into()],
        created_at: 1_800_000_000,
        expires_at: None,
        payloads: vec![Payload {
            kind: "agent".into(),
            sha256: drover_release::sha256_hex(&binary),
            size: binary.len() as u64,
            module: None,
            delta: None,
        }],
        health: None,
        provenance: None,
    };
    let ctx = InstallContext {
        manifest: &manifest,
        payload: &manifest.payloads[0],
        payload_path: &payload,
        work_dir: &work,
        data_dir: tmp.path(),
    };
    let dir = tmp.path().join("agent");
    // The running agent is an older version.
    let old = version_binary(&dir, "0.0.1");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"old").unwrap();
    switch_link(&dir, "current", Some("0.0.1")).unwrap();
    let installer = |running: &str| SelfUpdateInstaller {
        dir: dir.clone(),
        healthy_within_secs: 45,
        health_timeout_secs: 10,
        running_version: running.into(),
        supervised: true,
        check_version: true,
    };

    let running_old = installer("0.0.1");
    running_old.install(&ctx).unwrap();
    let installed = version_binary(&dir, version);
    assert_eq!(std::fs::read(&installed).unwrap(), binary);
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        running_old.activate(&ctx).unwrap(),
        Activation::AgentRestartRequired
    );
    assert_eq!(current_version(&dir).as_deref(), Some(version));
    assert_eq!(previous_version(&dir).as_deref(), Some("0.0.1"));
    let trial = read_trial(&dir).unwrap();
    assert_eq!(trial.version, version);
    assert_eq!(
        trial.healthy_within_secs,
        10 + 60,
        "the health checks' timeout and a margin"
    );

    // After the supervisor started the new binary.
    let running_new = installer(version);
    assert!(running_new.confirm_activated(&ctx).unwrap());
    assert_eq!(running_new.activate(&ctx).unwrap(), Activation::Done);
    running_new.commit(&ctx).unwrap();
    assert!(read_trial(&dir).is_none());
    assert!(installed.exists());
    assert!(old.exists(), "the previous version is kept for rollback");
}
