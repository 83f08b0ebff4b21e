//! Updates end to end with real processes: a `drover server`, three
//! `drover-agent run` processes with the `app` installer, and the `drover`
//! CLI building, signing, publishing and deploying releases.
//!
//! A good release is committed on every device; a broken one (the new app
//! crashes at start) is rolled back by every device on its own, the old
//! version keeps running, and the server shows the reason.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AgentProc, Cli, enroll_token, failure, start_server, wait_for};
use serde_json::Value;

const APP: &str = "kiosk";

/// An `app` payload: a script the restart command runs; `exit_code` 0 is a
/// healthy start.
fn app_script(dir: &Path, version: &str, exit_code: i32) -> std::path::PathBuf {
    let path = dir.join(format!("{APP}-{version}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# kiosk {version}\necho \"started {version}\" >> \"$DROVER_APP_DIR/../starts.log\"\nexit {exit_code}\n"
        ),
    )
    .unwrap();
    path
}

fn agent_toml(apps: &Path, root_pub: &str) -> String {
    format!(
        r#"
[update]
device_type = "e2e-box"
release_root_keys = ["{root_pub}"]
min_free_bytes = 0
health_timeout_secs = 20

[update.app]
root = {apps:?}
restart_command = ["/bin/sh", "-c", "exec \"$DROVER_APP_DIR/$DROVER_APP_NAME\""]
restart_timeout_secs = 20
"#
    )
}

fn current_version(apps: &Path) -> Option<String> {
    let target = std::fs::read_link(apps.join(APP).join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().to_string())
}

fn build(cli: &Cli, dir: &Path, version: &str, payload: &Path, extra: &[&str]) -> String {
    let out = dir.join(format!("{APP}-{version}.drover"));
    let key = dir.join("release.key");
    let keys = dir.join("keys.json");
    let payload_spec = format!("app:{}", payload.display());
    let mut args = vec![
        "release",
        "build",
        "--name",
        APP,
        "--version",
        version,
        "--device-type",
        "e2e-box",
        "--payload",
        &payload_spec,
        "--provenance",
        "commit=0123abc,build=e2e-1",
        "--key",
        key.to_str().unwrap(),
        "--key-list",
        keys.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli.json(&args);
    out.to_string_lossy().to_string()
}

/// A server in DIR/server, a logged-in CLI and a root key DIR/root.key;
/// returns the root's public key.
fn fleet(d: &Path) -> (common::ServerProc, Cli, String) {
    let server = start_server(&d.join("server"), None, &[]);
    let cli = Cli::new();
    cli.login(&server, &server.admin_token());
    let root = cli.json(&[
        "release",
        "keygen",
        "--root",
        "-o",
        d.join("root.key").to_str().unwrap(),
    ]);
    let root_pub = root["public_key"]
        .as_str()
        .expect("keygen prints the public key")
        .to_string();
    (server, cli, root_pub)
}

/// Waits until the device is online, showing the agent's log if it is not.
fn wait_online(cli: &Cli, a: &AgentProc) -> String {
    let id = a.device_id();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::device(cli, &id)["connection"] != "online" {
        assert!(
            std::time::Instant::now() < deadline,
            "device {id} did not come online: {}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    id
}

/// A release key, vouched for by the root in DIR/root.key through a key list.
fn release_keys(cli: &Cli, d: &Path) {
    cli.json(&[
        "release",
        "keygen",
        "-o",
        d.join("release.key").to_str().unwrap(),
    ]);
    cli.json(&[
        "release",
        "keys",
        "sign",
        "--root-key",
        d.join("root.key").to_str().unwrap(),
        "--key",
        d.join("release.key.pub").to_str().unwrap(),
        "--version",
        "1",
        "-o",
        d.join("keys.json").to_str().unwrap(),
    ]);
}

#[test]
fn a_signed_release_is_committed_everywhere_and_a_broken_one_rolls_back_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, cli, root_pub) = fleet(d);
    release_keys(&cli, d);

    // Three devices: one trusts the root from its config, two from the token.
    let token = enroll_token(
        &cli,
        &[
            "--tag",
            "site=e2e",
            "--release-root",
            d.join("root.key.pub").to_str().unwrap(),
        ],
    );
    let mut agents = Vec::new();
    for i in 0..3 {
        let apps = d.join(format!("apps{i}"));
        let toml = if i == 0 {
            agent_toml(&apps, &root_pub)
        } else {
            agent_toml(&apps, &root_pub)
                .replace(&format!("release_root_keys = [\"{root_pub}\"]\n"), "")
        };
        let mut a = AgentProc::new(d, &format!("dev{i}"), &toml);
        let out = a.enroll_with(&token);
        assert!(
            out.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a.start();
        agents.push((a, apps));
    }
    for (a, _) in &agents {
        wait_online(&cli, a);
    }
    cli.json(&["groups", "create", "lobby", "--query", "tag.site = \"e2e\""]);

    // Release 1.0.0: starts fine, and a health command passes.
    let v1 = build(
        &cli,
        d,
        "1.0.0",
        &app_script(d, "1.0.0", 0),
        &["--health", "command=/bin/true", "--health-timeout", "20"],
    );
    let published = cli.json(&["release", "publish", &v1]);
    assert_eq!(published["id"], "kiosk@1.0.0", "{published}");
    let dep: Value = cli.json(&["deploy", "kiosk@1.0.0", "--group", "lobby", "--wait", "120"]);
    let devices = dep["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{dep}");
    for x in devices {
        assert_eq!(x["state"], "committed", "{dep}");
    }
    for (a, apps) in &agents {
        assert_eq!(
            current_version(apps).as_deref(),
            Some("1.0.0"),
            "{}",
            a.log_text()
        );
        let id = a.device_id();
        // Traceability: the device reports what it runs.
        wait_for(
            "installed version in the inventory",
            Duration::from_secs(30),
            || {
                let dev = common::device(&cli, &id);
                (dev["inventory"]["update.kiosk.version"] == "1.0.0").then_some(())
            },
        );
    }

    // Release 1.1.0: the new app exits 1 at start. Every device rolls back by itself.
    let v2 = build(&cli, d, "1.1.0", &app_script(d, "1.1.0", 1), &[]);
    cli.json(&["release", "publish", &v2]);
    let out = cli.run(&[
        "deploy",
        "kiosk@1.1.0",
        "--group",
        "lobby",
        "--wait",
        "120",
        "--json",
    ]);
    let (code, stderr) = failure(&out);
    assert_eq!(
        code, 1,
        "deploy --wait fails when devices did not commit: {stderr}"
    );
    assert!(stderr.contains("did not commit"), "{stderr}");
    let dep: Value = serde_json::from_slice(&out.stdout).unwrap();
    for x in dep["devices"].as_array().unwrap() {
        assert_eq!(x["state"], "rolled_back", "{dep}");
        assert_eq!(x["reason"], "restart_failed", "{dep}");
    }
    for (a, apps) in &agents {
        assert_eq!(
            current_version(apps).as_deref(),
            Some("1.0.0"),
            "the old version runs again: {}",
            a.log_text()
        );
        assert!(
            apps.join(APP).join("1.0.0").join(APP).exists(),
            "nothing of 1.0.0 is lost"
        );
        let starts = std::fs::read_to_string(apps.join(APP).join("starts.log")).unwrap();
        assert!(
            starts.contains("started 1.1.0"),
            "the new app was tried: {starts}"
        );
        assert!(
            starts.trim_end().ends_with("started 1.0.0"),
            "and the old one restarted after it: {starts}"
        );
    }
    let show = cli.json(&["deployments", "show", dep["id"].as_str().unwrap()]);
    assert_eq!(show["counts"]["rolled_back"], 3, "{show}");
}

/// A real ELF "agent" that answers `--version` like a release 9.9.9 and
/// exits 1 at once when run as the daemon.
fn broken_agent_binary(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("broken.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <string.h>\nint main(int c, char **v) {\n  if (c > 1 && strcmp(v[1], \"--version\") == 0) { puts(\"drover-agent 9.9.9\"); return 0; }\n  fputs(\"broken agent: exiting at once\\n\", stderr);\n  return 1;\n}\n",
    )
    .unwrap();
    let bin = dir.join("drover-agent-9.9.9");
    let out = std::process::Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn a_self_update_to_an_agent_that_exits_at_once_is_reverted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, cli, root_pub) = fleet(d);
    let token = enroll_token(&cli, &[]);

    let agent_dir = d.join("agent-versions");
    let toml = format!(
        r#"
[update]
device_type = "e2e-box"
release_root_keys = ["{root_pub}"]
min_free_bytes = 0
health_timeout_secs = 15

[update.agent]
dir = {agent_dir:?}
healthy_within_secs = 15
"#
    );
    let mut a = AgentProc::new(d, "dev", &toml);
    let out = a.enroll_with(&token);
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What systemd runs: the supervisor, which runs `drover-agent run`.
    let log = std::fs::File::create(&a.log).unwrap();
    a.child = Some(
        std::process::Command::new(common::agent_bin())
            .arg("--config")
            .arg(&a.config)
            .arg("supervise")
            .env("DROVER_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let id = wait_online(&cli, &a);

    let bin = broken_agent_binary(d);
    let bundle = d.join("agent-9.9.9.drover");
    cli.json(&[
        "release",
        "build",
        "--name",
        "drover-agent",
        "--version",
        "9.9.9",
        "--device-type",
        "e2e-box",
        "--payload",
        &format!("agent:{}", bin.display()),
        "--key",
        d.join("root.key").to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    cli.json(&["release", "publish", bundle.to_str().unwrap()]);
    let out = cli.run(&[
        "deploy",
        "drover-agent@9.9.9",
        "--device",
        &id,
        "--wait",
        "120",
        "--json",
    ]);
    let dep: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "deploy: {} {}",
            String::from_utf8_lossy(&out.stderr),
            a.log_text()
        )
    });
    let x = &dep["devices"][0];
    assert_eq!(x["state"], "rolled_back", "{dep}\n{}", a.log_text());
    assert_eq!(x["reason"], "agent_crashed", "{dep}");
    // The old agent is back: connected, and it still runs the old version.
    wait_for("device online again", Duration::from_secs(30), || {
        (common::device(&cli, &id)["connection"] == "online").then_some(())
    });
    assert_eq!(
        common::device(&cli, &id)["agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("broken agent: exiting at once"),
        "the new one was tried: {}",
        a.log_text()
    );
}

/// `drover_artifact_bytes_served_total` from the server's /metrics.
fn bytes_served(server: &common::ServerProc) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(server.ca())
        .arg(format!("{}/metrics", server.url()))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("drover_artifact_bytes_served_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[test]
fn an_agent_killed_mid_download_resumes_where_it_stopped_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, cli, root_pub) = fleet(d);
    let token = enroll_token(&cli, &[]);
    let apps = d.join("apps");
    // 1 MiB/s: the 3 MiB payload takes about three seconds.
    let toml = agent_toml(&apps, &root_pub).replace(
        "min_free_bytes = 0",
        "min_free_bytes = 0\nmax_download_bytes_per_sec = 1048576",
    );
    let mut a = AgentProc::new(d, "dev", &toml);
    assert!(a.enroll_with(&token).status.success());
    a.start();
    let id = wait_online(&cli, &a);

    // A 3 MiB app: a shell script padded with a comment of random-ish bytes.
    let size = 3 << 20;
    let mut body = b"#!/bin/sh\nexit 0\n# ".to_vec();
    let mut x: u32 = 12345;
    while body.len() < size {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        body.push(b'a' + (x >> 16) as u8 % 26);
    }
    let payload = d.join("kiosk-big");
    std::fs::write(&payload, &body).unwrap();
    release_keys(&cli, d);
    let bundle = build(&cli, d, "2.0.0", &payload, &[]);
    cli.json(&["release", "publish", &bundle]);
    let dep = cli.json(&["deploy", "kiosk@2.0.0", "--device", &id]);
    let dep_id = dep["id"].as_str().unwrap().to_string();

    // Kill -9 once a good part of the payload is on disk.
    let part = a
        .data
        .join("update")
        .join(format!("{}.part", drover_release::sha256_hex(&body)));
    wait_for("a partial download", Duration::from_secs(30), || {
        std::fs::metadata(&part)
            .ok()
            .filter(|m| m.len() >= (1 << 20))
            .map(|_| ())
    });
    a.kill9();
    let had = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        had > 0 && had < size as u64,
        "killed mid-way: {had} of {size} bytes"
    );
    let served_before = bytes_served(&server);
    a.start();
    let show = cli.json(&["deployments", "show", &dep_id, "--wait", "60"]);
    assert_eq!(
        show["devices"][0]["state"],
        "committed",
        "{show}\n{}",
        a.log_text()
    );
    assert_eq!(current_version(&apps).as_deref(), Some("2.0.0"));
    let installed = std::fs::read(apps.join(APP).join("2.0.0").join(APP)).unwrap();
    assert!(installed == body, "the installed payload is byte-identical");
    let after_restart = bytes_served(&server) - served_before;
    assert!(
        after_restart <= size as u64 - had + (256 << 10),
        "the restarted agent fetched only the rest ({after_restart} bytes after having {had} of {size})"
    );
}

#[test]
fn with_the_server_killed_mid_update_the_device_finishes_alone_and_reports_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("server");
    let (server, cli, root_pub) = fleet(d);
    let port = server.port();
    release_keys(&cli, d);
    let token = enroll_token(&cli, &[]);
    let apps = d.join("apps");
    let mut a = AgentProc::new(d, "dev", &agent_toml(&apps, &root_pub));
    assert!(a.enroll_with(&token).status.success());
    a.start();
    let id = wait_online(&cli, &a);

    // The health check takes a few seconds: the server dies meanwhile.
    let flag = d.join("health-started");
    let script = d.join("health.sh");
    std::fs::write(&script, format!("touch {}\nsleep 4\n", flag.display())).unwrap();
    let check = format!("command=/bin/sh {}", script.display());
    let bundle = build(
        &cli,
        d,
        "3.0.0",
        &app_script(d, "3.0.0", 0),
        &["--health", &check, "--health-timeout", "30"],
    );
    cli.json(&["release", "publish", &bundle]);
    let dep = cli.json(&["deploy", "kiosk@3.0.0", "--device", &id]);
    let dep_id = dep["id"].as_str().unwrap().to_string();
    wait_for("the health check to start", Duration::from_secs(60), || {
        flag.exists().then_some(())
    });
    let mut server = server;
    server.signal(libc::SIGKILL);
    server.wait(Duration::from_secs(10));

    // Alone, the device finishes: the new version is committed on disk.
    wait_for("commit without a server", Duration::from_secs(60), || {
        let j: Value = serde_json::from_slice(
            &std::fs::read(a.data.join("update").join("journal.json")).ok()?,
        )
        .ok()?;
        (j["state"] == "committed").then_some(())
    });
    assert_eq!(current_version(&apps).as_deref(), Some("3.0.0"));

    // The server comes back on the same address; the device reports.
    let server = start_server(&data, None, &["--listen", &format!("127.0.0.1:{port}")]);
    let show = cli.json(&["deployments", "show", &dep_id, "--wait", "60"]);
    assert_eq!(
        show["devices"][0]["state"],
        "committed",
        "{show}\n{}",
        a.log_text()
    );
    drop(server);
}
