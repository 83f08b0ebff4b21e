//! The rules engine against real processes, sockets and files made by the
//! tests: conditions, actions, policy, hot reload, refusals. Bounds on
//! waiting are generous; nothing asserts how fast something happened.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A copy of `sleep` under another name, so its `comm` is that name.
fn renamed_sleep(dir: &Path, name: &str) -> PathBuf {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a sleep binary");
    let path = dir.join(name);
    std::fs::copy(sleep, &path).unwrap();
    path
}

fn spawn(path: &Path, secs: &str) -> Child {
    Command::new(path)
        .arg(secs)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for `check` to return `Some`.
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn engine(dir: &Path, proc_dir: &Path, allow: &[ActionKind]) -> RulesHandle {
    let h = RulesHandle::spawn(RulesParts {
        data_dir: Some(dir.to_path_buf()),
        config: RulesConfig {
            interval_secs: 1,
            policy: Policy {
                allow: allow.to_vec(),
            },
            ..RulesConfig::default()
        },
        proc_dir: proc_dir.to_path_buf(),
        sys_dir: PathBuf::from("/sys"),
    });
    h.set_connected(true);
    h
}

fn target(version: &str, text: &str) -> Option<RuleSetTarget> {
    Some(RuleSetTarget {
        source: "group:test".into(),
        version: version.into(),
        text: text.into(),
    })
}

/// Collects events from the engine (acknowledging each batch) until one
/// satisfies `want`; returns every event seen, as (name, labels, message).
async fn events_until(
    h: &mut RulesHandle,
    seen: &mut Vec<(String, BTreeMap<String, String>, String)>,
    what: &str,
    want: impl Fn(&(String, BTreeMap<String, String>, String)) -> bool,
) {
    let start = Instant::now();
    while !seen.iter().any(&want) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; events: {seen:?}"
        );
        let out = tokio::time::timeout(Duration::from_secs(1), h.next()).await;
        if let Ok(RulesOut::Send(AgentMessage::Telemetry(b))) = out {
            for r in &b.records {
                if let RecordBody::Event { name, message, .. } = &r.body {
                    seen.push((name.clone(), r.labels.clone(), message.clone()));
                }
            }
            h.ack(TelemetryAck {
                boot_id: b.boot_id.clone(),
                up_to_seq: b.records.last().map_or(0, |r| r.seq),
                rejected: vec![],
            });
        }
    }
}

fn action_result<'a>(
    seen: &'a [(String, BTreeMap<String, String>, String)],
    action: &str,
) -> Option<&'a (String, BTreeMap<String, String>, String)> {
    seen.iter().find(|(n, l, _)| {
        n == "rules.action" && l.get("action").map(String::as_str) == Some(action)
    })
}

#[tokio::test]
async fn a_forbidden_process_is_killed_and_reported_and_a_bad_set_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let miner = renamed_sleep(dir.path(), "rt-miner-a");
    let mut child = spawn(&miner, "300");
    let mut h = engine(dir.path(), Path::new("/proc"), &[ActionKind::Kill]);
    let text = "version = 1\n[[rules]]\nname = \"no-miner\"\ncondition = { kind = \"process_running\", name = \"rt-miner-a\" }\nactions = [\n  { kind = \"event\", severity = \"critical\", message = \"miner found\" },\n  { kind = \"kill\", grace_secs = 5 },\n]\n";
    h.offer(target("1", text));
    let status = wait_for("the killed process", || child.try_wait().unwrap()).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "SIGTERM ended it");
    let mut seen = Vec::new();
    events_until(&mut h, &mut seen, "the kill outcome", |e| {
        action_result(std::slice::from_ref(e), "kill").is_some()
    })
    .await;
    let (_, labels, message) = action_result(&seen, "kill").unwrap();
    assert_eq!(labels["result"], "ok", "{message}");
    assert_eq!(labels["rule"], "no-miner");
    let user = seen
        .iter()
        .find(|(n, _, _)| n == "rule.no-miner")
        .expect("the event action");
    assert!(
        user.2.contains("miner found") && user.2.contains("rt-miner-a"),
        "{}",
        user.2
    );
    assert!(seen.iter().any(|(n, _, _)| n == "rules.loaded"));
    assert_eq!(h.status().version.as_deref(), Some("1"));
    assert_eq!(h.inventory()["rules.version"], "1");

    // An invalid set is refused with its line; version 1 stays active.
    h.offer(target("2", "version = 2\n[[rules]]\nname = \"x\"\n"));
    let err = wait_for("the refusal", || h.status().error).await;
    assert!(
        err.contains("line") && err.contains("version 1 from group:test stays active"),
        "{err}"
    );
    assert_eq!(h.status().version.as_deref(), Some("1"));
    // ... and it still acts: a new miner is killed too.
    let mut again = spawn(&miner, "300");
    wait_for("the second kill", || again.try_wait().unwrap()).await;

    // A rule whose hash is the agent's own binary is refused.
    let me = observe::sha256_file(Path::new("/proc/self/exe"), u64::MAX).unwrap();
    let suicide = format!(
        "version = 3\n[[rules]]\nname = \"by-hash\"\ncondition = {{ kind = \"process_running\", sha256 = \"{me}\" }}\nactions = [{{ kind = \"kill\" }}]\n"
    );
    h.offer(target("3", &suicide));
    let err = wait_for("the self-kill refusal", || {
        h.status().error.filter(|e| e.contains("version 3"))
    })
    .await;
    assert!(
        err.contains("the agent itself") && err.contains("line 3"),
        "{err}"
    );
    assert_eq!(h.status().version.as_deref(), Some("1"));

    // The active set survives a restart (DATA/rules.json).
    let stored: Stored =
        serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
    assert_eq!((stored.version.as_str(), stored.text.as_str()), ("1", text));
    // No rule set in the desired state: rules stop.
    h.offer(None);
    wait_for("rules unloaded", || {
        h.status().version.is_none().then_some(())
    })
    .await;
    assert!(!dir.path().join(FILE).exists());
}

#[tokio::test]
async fn without_policy_a_kill_is_denied_and_reported_and_the_process_lives() {
    let dir = tempfile::tempdir().unwrap();
    let miner = renamed_sleep(dir.path(), "rt-miner-b");
    let mut child = spawn(&miner, "300");
    let mut h = engine(dir.path(), Path::new("/proc"), &[]);
    h.offer(target(
        "1",
        "version = 1\n[[rules]]\nname = \"no-miner\"\ncondition = { kind = \"process_running\", name = \"rt-miner-b\" }\nactions = [{ kind = \"kill\" }]\n",
    ));
    let mut seen = Vec::new();
    events_until(&mut h, &mut seen, "the denied kill", |e| {
        action_result(std::slice::from_ref(e), "kill").is_some()
    })
    .await;
    let (_, labels, message) = action_result(&seen, "kill").unwrap();
    assert_eq!(labels["result"], "denied");
    assert!(message.contains("[rules.policy]"), "{message}");
    assert_eq!(h.inventory()["rules.denied"], "no-miner:kill");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the process still runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn ports_files_missing_processes_and_metrics_fire_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = udp.local_addr().unwrap().port();
    let ports = observe::listening(Path::new("/proc"));
    assert!(ports.contains(&(drover_rules::Protocol::Tcp, port)));
    assert!(ports.contains(&(drover_rules::Protocol::Udp, uport)));
    drop(udp);
    assert!(
        !observe::listening(Path::new("/proc")).contains(&(drover_rules::Protocol::Udp, uport))
    );

    let watched = dir.path().join("watched.conf");
    std::fs::write(&watched, "a = 1\n").unwrap();
    let text = format!(
        "version = \"c1\"\n\
         [[rules]]\nname = \"port\"\ncondition = {{ kind = \"port_listening\", port = {port} }}\nactions = [{{ kind = \"event\" }}]\n\
         [[rules]]\nname = \"file\"\ncondition = {{ kind = \"file_changed\", path = {watched:?} }}\nactions = [{{ kind = \"event\" }}]\n\
         [[rules]]\nname = \"gone\"\ncondition = {{ kind = \"process_missing\", name = \"rt-never-runs\" }}\nactions = [{{ kind = \"event\" }}]\n"
    );
    let mut h = engine(dir.path(), Path::new("/proc"), &[]);
    h.offer(target("c1", &text));
    let mut seen = Vec::new();
    let named = |n: &'static str| move |e: &(String, BTreeMap<String, String>, String)| e.0 == n;
    events_until(&mut h, &mut seen, "the port rule", named("rule.port")).await;
    events_until(
        &mut h,
        &mut seen,
        "the missing process rule",
        named("rule.gone"),
    )
    .await;
    assert!(
        !seen.iter().any(|e| e.0 == "rule.file"),
        "an unchanged file does not fire: {seen:?}"
    );
    std::fs::write(&watched, "a = 22\n").unwrap();
    events_until(&mut h, &mut seen, "the file rule", named("rule.file")).await;
    let file = seen.iter().find(|e| e.0 == "rule.file").unwrap();
    assert!(
        file.2.contains("size") && file.2.contains("sha256"),
        "{}",
        file.2
    );
    assert_eq!(
        seen.iter().filter(|e| e.0 == "rule.port").count(),
        1,
        "a condition that keeps holding fires once"
    );
    drop(tcp);

    // Metrics: the agent's own samples, here from a fake /proc.
    let fake = dir.path().join("proc");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("loadavg"), "5.00 1.00 1.00 1/100 123\n").unwrap();
    let mut m = engine(&dir.path().join("m"), &fake, &[]);
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    m.offer(target(
        "m1",
        "version = \"m1\"\n[[rules]]\nname = \"load\"\ncondition = { kind = \"metric\", metric = \"load1\", above = 2.0, window_secs = 2 }\nactions = [{ kind = \"event\", severity = \"warning\" }]\n[[rules]]\nname = \"calm\"\ncondition = { kind = \"metric\", metric = \"load1\", below = 2.0, window_secs = 2 }\nactions = [{ kind = \"event\" }]\n",
    ));
    let mut seen = Vec::new();
    events_until(&mut m, &mut seen, "the load rule", named("rule.load")).await;
    let load = seen.iter().find(|e| e.0 == "rule.load").unwrap();
    assert!(load.2.contains("load1 averaged 5.00"), "{}", load.2);
    assert!(!seen.iter().any(|e| e.0 == "rule.calm"));
}

#[tokio::test]
async fn actions_kill_after_the_grace_period_run_commands_and_say_what_is_unsupported() {
    // A process that ignores SIGTERM gets SIGKILL.
    let mut stubborn = Command::new("/bin/sh")
        .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = stubborn.id();
    let (_, start) = wait_for("the shell", || observe::stat(Path::new("/proc"), pid)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let o = actions::kill(Path::new("/proc"), pid, start, "sh", Duration::from_secs(1)).await;
    assert_eq!(o.result, "ok", "{o:?}");
    assert!(o.message.contains("SIGKILL"), "{o:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(stubborn.wait().unwrap().signal(), Some(libc::SIGKILL));
    // Never the agent itself, its parent or pid 1.
    for pid in [std::process::id(), 1] {
        let o = actions::kill(Path::new("/proc"), pid, 0, "x", Duration::from_secs(1)).await;
        assert_eq!(o.result, "denied", "{o:?}");
    }

    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let o =
        actions::run_command(&argv(&["/bin/sh", "-c", "exit 0"]), Duration::from_secs(10)).await;
    assert_eq!(o.result, "ok");
    let o = actions::run_command(
        &argv(&["/bin/sh", "-c", "echo broken >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(o.result, "failed");
    assert!(
        o.message.contains("exited 3") && o.message.contains("broken"),
        "{o:?}"
    );
    let o = actions::run_command(&argv(&["/bin/sleep", "30"]), Duration::from_secs(1)).await;
    assert!(
        o.result == "failed" && o.message.contains("timed out"),
        "{o:?}"
    );
    let o = actions::run_command(&argv(&["/nonexistent/x"]), Duration::from_secs(1)).await;
    assert!(
        o.result == "failed" && o.message.contains("cannot start"),
        "{o:?}"
    );

    if actions::systemd_running() {
        println!("systemd runs here: stop_service's unsupported path is not exercised");
    } else {
        let o = actions::stop_service("kiosk").await;
        assert_eq!(o.result, "unsupported");
        assert!(o.message.contains("systemd does not run"), "{o:?}");
    }
}

#[tokio::test]
async fn blocks_go_through_nft_or_say_clearly_that_they_cannot() {
    let script = actions::nft_script(
        "no-c2",
        Some("192.0.2.7"),
        Some(4444),
        Some(drover_rules::Protocol::Tcp),
        drover_rules::Direction::Both,
    );
    assert!(script.contains("add rule inet drover input ip saddr 192.0.2.7 tcp dport 4444 drop"));
    assert!(script.contains("add rule inet drover output ip daddr 192.0.2.7 tcp dport 4444 drop"));
    let v6 = actions::nft_script(
        "r",
        Some("2001:db8::/32"),
        None,
        None,
        drover_rules::Direction::In,
    );
    assert!(v6.contains("input ip6 saddr 2001:db8::/32 drop"), "{v6}");
    assert!(!v6.contains("output ip6"), "{v6}");

    let has_nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    let o = actions::block(&script).await;
    if !has_nft {
        println!(
            "skipped the real nftables block: `nft` is not installed here (Debian package nftables)"
        );
        assert_eq!(o.result, "unsupported");
        assert!(o.message.contains("NOT blocked"), "{o:?}");
        return;
    }
    if o.result != "ok" {
        println!(
            "skipped checking the table: nft refused here: {}",
            o.message
        );
        assert_eq!(o.result, "unsupported");
        return;
    }
    let listed = Command::new("nft")
        .args(["list", "table", "inet", "drover"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("192.0.2.7") && listed.contains("4444"),
        "{listed}"
    );
    actions::clear_blocks().await;
    let gone = Command::new("nft")
        .args(["list", "table", "inet", "drover"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the table is removed");
}

#[test]
fn the_rules_section_of_agent_toml_defaults_to_events_only_and_refuses_typos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "").unwrap();
    let c = crate::config::AgentConfig::load(&path, true).unwrap();
    assert!(c.rules.enabled);
    assert_eq!(c.rules.interval_secs, 2);
    assert_eq!(
        c.rules.policy,
        Policy::default(),
        "nothing destructive by default"
    );
    std::fs::write(
        &path,
        "[rules]\ninterval_secs = 5\n[rules.policy]\nallow = [\"kill\", \"block\"]\n",
    )
    .unwrap();
    let c = crate::config::AgentConfig::load(&path, true).unwrap();
    assert_eq!(c.rules.interval_secs, 5);
    assert!(
        c.rules.policy.allows(ActionKind::Kill) && !c.rules.policy.allows(ActionKind::RunCommand)
    );
    for bad in [
        "[rules.policy]\nallow = [\"reboot\"]\n",
        "[rules]\nintervall_secs = 5\n",
        "[rules]\ninterval_secs = 0\n",
    ] {
        std::fs::write(&path, bad).unwrap();
        let e = crate::config::AgentConfig::load(&path, true).unwrap_err();
        assert!(e.contains("agent.toml"), "{bad}: {e}");
    }
}
