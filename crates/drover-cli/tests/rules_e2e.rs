//! Agent-side rules end to end with real processes: a `drover server`, a
//! `drover-agent run` whose local policy allows `kill`, and a forbidden
//! process (a copy of `sleep` named `cryptominer`) on the "device".
//!
//! - `drover rules apply rules.toml --group g` at run time: the process is
//!   killed, the events reach the server (`drover metrics events`), and
//!   the device reports the active version.
//! - An invalid rule set is refused by the CLI (and never sent) with the
//!   file, line and reason.
//! - A set the server accepts but the device must refuse (a kill rule whose
//!   hash is the agent's own binary) reaches the device in the desired
//!   state, is refused there with the line and reason, and the previous
//!   set stays active: a new forbidden process is still killed.
//!
//! Time bounds are generous waits, never assertions about speed.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{AgentProc, Cli, agent_bin, enroll_token, failure, start_server, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn forbidden(dir: &Path) -> Child {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a sleep binary");
    let miner = dir.join("cryptominer");
    if !miner.exists() {
        std::fs::copy(sleep, &miner).unwrap();
    }
    Command::new(&miner)
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The device's events on the server, as (name, labels, message). Every
/// one is of this boot: rule events add no boot the server could mistake
/// for a reboot.
fn events(cli: &Cli, device: &str) -> Vec<(String, Value, String)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let v = cli.json(&["metrics", "events", device, "--since", "1h"]);
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["boot_id"], boot.trim(), "{e}");
            (
                e["name"].as_str().unwrap().to_string(),
                e["labels"].clone(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_rule_pushed_at_run_time_kills_a_forbidden_process_and_the_event_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None, &[]);
    let cli = Cli::new();
    cli.login(&server, &server.admin_token());
    let token = enroll_token(&cli, &["--uses", "1"]);
    let mut agent = AgentProc::new(
        dir.path(),
        "dev",
        "[telemetry]\ninterval_secs = 1\nstatsd_port = 0\n\n[rules]\ninterval_secs = 1\n\n[rules.policy]\nallow = [\"kill\"]\n",
    );
    let out = agent.enroll_with(&token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = agent.device_id();
    agent.start();
    wait_for("the device online", WAIT, || {
        (common::device(&cli, &device)["connection"] == "online").then_some(())
    });
    cli.json(&["groups", "create", "g", "--device", &device]);

    // A forbidden process runs before any rule exists.
    let mut miner = forbidden(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    assert!(miner.try_wait().unwrap().is_none(), "nothing kills it yet");

    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"# Kill cryptominers on sight.
version = 1

[[rules]]
name = "no-cryptominer"
condition = { kind = "process_running", name = "cryptominer" }
actions = [
  { kind = "event", severity = "critical", message = "forbidden process" },
  { kind = "kill", grace_secs = 3 },
]
"#,
    )
    .unwrap();
    let stored = cli.json(&["rules", "apply", rules.to_str().unwrap(), "--group", "g"]);
    assert_eq!(stored["version"], "1");
    assert_eq!(stored["scope"], "group:g");

    let status = wait_for("the forbidden process killed", WAIT, || {
        miner.try_wait().unwrap()
    });
    assert!(
        matches!(status.signal(), Some(libc::SIGTERM | libc::SIGKILL)),
        "killed by the rule, not ended otherwise: {status:?}"
    );

    // The events reach the server through its API.
    let seen = wait_for("the rule's events on the server", WAIT, || {
        let ev = events(&cli, &device);
        let killed = ev
            .iter()
            .any(|(n, l, _)| n == "rules.action" && l["action"] == "kill" && l["result"] == "ok");
        let fired = ev.iter().any(|(n, _, _)| n == "rule.no-cryptominer");
        (killed && fired).then_some(ev)
    });
    let fired = seen
        .iter()
        .find(|(n, _, _)| n == "rule.no-cryptominer")
        .unwrap();
    assert_eq!(fired.1["rule"], "no-cryptominer");
    assert_eq!(fired.1["rules_version"], "1");
    assert!(fired.2.contains("cryptominer (pid"), "{}", fired.2);

    // The device reports the active version.
    let reported = wait_for("the device reporting rules version 1", WAIT, || {
        let r = cli.json(&["rules", "show", "--device", &device]);
        (r["reported_version"] == "1").then_some(r)
    });
    assert_eq!(reported["reported_source"], "group:g");
    assert_eq!(reported["effective_version"], "1");
    assert!(reported["reported_error"].is_null(), "{reported}");

    // An invalid set is refused by the CLI with the file, line and reason;
    // nothing is sent, the stored set is unchanged.
    let bad = dir.path().join("rules-bad.toml");
    std::fs::write(
        &bad,
        "version = 2\n\n[[rules]]\nname = \"x\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"reboot\" }]\n",
    )
    .unwrap();
    let (code, stderr) =
        failure(&cli.run(&["rules", "apply", bad.to_str().unwrap(), "--group", "g"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("rules-bad.toml: line 6, column 12") && stderr.contains("reboot"),
        "{stderr}"
    );
    assert_eq!(cli.json(&["rules", "show", "--group", "g"])["version"], "1");

    // Valid for the server, refused by the device: a kill rule matching the
    // agent's own binary by hash. It travels in the desired state.
    let own = sha256_of(&agent_bin());
    let suicide = dir.path().join("rules-self.toml");
    std::fs::write(
        &suicide,
        format!(
            "version = 2\n\n[[rules]]\nname = \"kill-by-hash\"\ncondition = {{ kind = \"process_running\", sha256 = \"{own}\" }}\nactions = [{{ kind = \"kill\" }}]\n"
        ),
    )
    .unwrap();
    let stored = cli.json(&["rules", "apply", suicide.to_str().unwrap(), "--group", "g"]);
    assert_eq!(stored["version"], "2");
    let refused = wait_for("the device refusing version 2", WAIT, || {
        let r = cli.json(&["rules", "show", "--device", &device]);
        r["reported_error"]
            .as_str()
            .filter(|e| e.contains("version 2"))
            .map(|_| r.clone())
    });
    let err = refused["reported_error"].as_str().unwrap();
    assert!(
        err.contains("line 4") && err.contains("the agent itself"),
        "{err}"
    );
    assert!(err.contains("version 1 from group:g stays active"), "{err}");
    assert_eq!(refused["reported_version"], "1");
    assert_eq!(refused["effective_version"], "2", "the server wants 2");
    assert!(
        agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the agent lives"
    );

    // Version 1 still acts.
    let mut again = forbidden(dir.path());
    wait_for("the second forbidden process killed", WAIT, || {
        again.try_wait().unwrap()
    });
    let ev = events(&cli, &device);
    assert!(
        ev.iter()
            .any(|(n, _, m)| n == "rules.refused" && m.contains("the agent itself")),
        "the refusal is an event too: {ev:?}"
    );
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(0));
}
