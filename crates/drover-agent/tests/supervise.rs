//! `drover-agent supervise` as a real process: a self-update to an agent
//! that exits at once is reverted, and the previous agent runs again and
//! finds the revert report.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_agent::update::selfupdate::{
    self, Trial, current_version, switch_link, take_revert_report, version_binary, write_trial,
};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fake_agent(dir: &Path, version: &str, body: &str) {
    let bin = version_binary(dir, version);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn supervise_restores_the_previous_agent_when_the_new_one_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let agent_dir = data.join("agent");
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::create_dir_all(&marks).unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "").unwrap();
    // The old agent records its arguments and environment, and whether it
    // found the supervisor's report, then runs until SIGTERM.
    fake_agent(
        &agent_dir,
        "1.0.0",
        &format!(
            "trap 'echo stopped > {m}/old.term; kill $p; exit 0' TERM\n\
             [ -f {a}/reverted.json ] && cp {a}/reverted.json {m}/report.json\n\
             echo \"$* $DROVER_AGENT_SUPERVISED $DROVER_AGENT_DATA $DROVER_AGENT_CONFIG\" > {m}/old.args\n\
             sleep 300 & p=$!; wait $p",
            m = marks.display(),
            a = agent_dir.display()
        ),
    );
    fake_agent(
        &agent_dir,
        "2.0.0",
        "echo 'new agent: bad config' >&2; exit 1",
    );
    write_trial(
        &agent_dir,
        &Trial {
            version: "2.0.0".into(),
            previous: Some("1.0.0".into()),
            healthy_within_secs: 60,
            deadline_unix_secs: 0,
        },
    )
    .unwrap();
    switch_link(&agent_dir, "previous", Some("1.0.0")).unwrap();
    switch_link(&agent_dir, "current", Some("2.0.0")).unwrap();

    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .args(["supervise", "--", "run", "--extra"])
        .env("DROVER_LOG", "warn")
        .spawn()
        .unwrap();
    wait_for("the previous agent to run", || {
        marks.join("old.args").exists()
    });
    let args = std::fs::read_to_string(marks.join("old.args")).unwrap();
    assert_eq!(
        args.trim(),
        format!("run --extra 1 {} {}", data.display(), config.display())
    );
    assert_eq!(current_version(&agent_dir).as_deref(), Some("1.0.0"));
    assert!(selfupdate::read_trial(&agent_dir).is_none());
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(marks.join("report.json")).unwrap()).unwrap();
    assert_eq!(seen["version"], "2.0.0", "the old agent found the report");
    let report = take_revert_report(&agent_dir).unwrap();
    assert_eq!(report.reason, "agent_crashed");
    assert_eq!(report.restored.as_deref(), Some("1.0.0"));

    // SAFETY: kill(2) on the child we spawned.
    unsafe {
        libc::kill(supervisor.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = supervisor.wait().unwrap();
    assert!(status.success(), "supervisor: {status}");
    assert!(marks.join("old.term").exists(), "SIGTERM was forwarded");
}
