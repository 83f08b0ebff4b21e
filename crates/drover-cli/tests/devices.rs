//! Devices end to end: real `drover server` and `drover-agent` processes.
//! Enrollment in each mode, revocation, renewal, presence, inventory and
//! desired-state convergence after outages, dynamic groups following tags.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Fast presence for tests: heartbeat every second, offline after three.
const FAST: &[&str] = &[
    "--heartbeat-interval-secs",
    "1",
    "--offline-after-secs",
    "3",
];

fn admin_cli(server: &ServerProc) -> Cli {
    let cli = Cli::new();
    cli.login(server, &server.admin_token());
    cli
}

fn connection(cli: &Cli, id: &str) -> String {
    device(cli, id)["connection"].as_str().unwrap().to_string()
}

fn wait_connection(cli: &Cli, id: &str, want: &str, limit: Duration) {
    wait_for(&format!("device {id} {want}"), limit, || {
        (connection(cli, id) == want).then_some(())
    });
}

#[test]
fn token_enrollment_inventory_groups_and_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None, FAST);
    let cli = admin_cli(&server);
    let token = enroll_token(&cli, &["--tag", "region=eu", "--uses", "1"]);

    // An inventory script and an apply hook, as an operator would install them.
    let scripts = dir.path().join("inventory.d");
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join("10-site");
    std::fs::write(&script, "#!/bin/sh\necho site=lab-7\necho 'bad key!=x'\n").unwrap();
    let hook = dir.path().join("hook.sh");
    let applied_log = dir.path().join("applied.log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$DROVER_REVISION\" >> {:?}\n",
            applied_log
        ),
    )
    .unwrap();
    for f in [&script, &hook] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let extra = format!(
        "apply_hook = {hook:?}\n[inventory]\ninterval_secs = 60\nscripts_dir = {scripts:?}\n"
    );
    let mut agent = AgentProc::new(dir.path(), "dev1", &extra);
    let out = agent.enroll_with(&token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mode(&agent.data.join("device.key")),
        0o600,
        "the private key stays private"
    );
    let id = agent.device_id();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    // The token had one use: a second device is refused, with the reason.
    let other = AgentProc::new(dir.path(), "dev2", "");
    let out = other.enroll_with(&token);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrollment_token_used_up"));

    agent.start();
    wait_connection(&cli, &id, "online", Duration::from_secs(15));
    let d = wait_for("inventory", Duration::from_secs(10), || {
        let d = device(&cli, &id);
        (d["inventory"]["custom.site"] == "lab-7").then_some(d)
    });
    assert_eq!(d["tags"]["region"], "eu", "the token's tags");
    assert_eq!(d["enrollment"], "accepted");
    assert!(d["enrolled_via"].as_str().unwrap().starts_with("token:"));
    for key in [
        "kernel.release",
        "arch",
        "boot_id",
        "hostname",
        "agent.version",
        "os.id",
    ] {
        assert!(
            d["inventory"][key].is_string(),
            "inventory has {key}: {}",
            d["inventory"]
        );
    }
    assert!(
        d["inventory"]["custom_errors.10-site"].is_string(),
        "a bad script line is reported"
    );

    // A dynamic group picks the device up by tag; its configuration arrives.
    cli.json(&["groups", "create", "eu", "--query", "tag.region = eu"]);
    cli.json(&["groups", "set-desired", "eu", "ntp=eu.pool", "mode=fast"]);
    cli.json(&["devices", "set-desired", &id, "mode=safe"]);
    let desired_file = agent.data.join("desired.json");
    let written: Value = wait_for("desired.json", Duration::from_secs(10), || {
        let v: Value = serde_json::from_slice(&std::fs::read(&desired_file).ok()?).ok()?;
        (v["mode"] == "safe" && v["ntp"] == "eu.pool").then_some(v)
    });
    assert_eq!(written.as_object().unwrap().len(), 2, "{written}");
    let d = wait_for("in sync", Duration::from_secs(10), || {
        let d = device(&cli, &id);
        (d["in_sync"] == true).then_some(d)
    });
    assert!(d["drift"].as_array().unwrap().is_empty());
    assert_eq!(d["desired"]["groups"], serde_json::json!(["eu"]));
    assert!(
        std::fs::read_to_string(&applied_log)
            .unwrap()
            .contains(d["desired"]["revision"].as_str().unwrap())
    );

    // Moving the device to another region moves it between groups and
    // changes what it should run.
    cli.json(&["groups", "create", "us", "--query", "tag.region = us"]);
    cli.json(&["groups", "set-desired", "us", "ntp=us.pool"]);
    cli.json(&["devices", "tag", &id, "region=us"]);
    assert_eq!(
        cli.json(&["groups", "show", "eu"])["members"],
        serde_json::json!([])
    );
    assert_eq!(
        cli.json(&["groups", "show", "us"])["members"],
        serde_json::json!([id])
    );
    wait_for("us configuration", Duration::from_secs(10), || {
        let v: Value = serde_json::from_slice(&std::fs::read(&desired_file).ok()?).ok()?;
        (v["ntp"] == "us.pool").then_some(())
    });
    let listed = cli.json(&[
        "devices",
        "list",
        "--query",
        "tag.region = us and status = online",
    ]);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
    let listed = cli.json(&["devices", "list", "--query", "tag.region = eu"]);
    assert!(listed["devices"].as_array().unwrap().is_empty());

    // A query with a mistake says where.
    let (code, err) = failure(&cli.run(&["devices", "list", "--query", "tag.region == us"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("column"), "{err}");
}

#[test]
fn pending_devices_wait_for_an_operator_and_rejected_ones_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None, FAST);
    let cli = admin_cli(&server);
    let fp = server.info["ca_fingerprint"].as_str().unwrap().to_string();
    let url = server.url();

    let mut agent = AgentProc::new(dir.path(), "pending", "");
    let out = agent.cmd(&["enroll", "--server", &url, "--ca-fingerprint", &fp]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));
    let id = agent.device_id();
    assert_eq!(device(&cli, &id)["enrollment"], "pending");
    // `run` keeps asking; acceptance lets it in without touching the device.
    agent.start();
    std::thread::sleep(Duration::from_millis(500));
    cli.json(&["devices", "accept", &id]);
    wait_connection(&cli, &id, "online", Duration::from_secs(20));
    assert_eq!(device(&cli, &id)["enrolled_via"], "operator");

    // A wrong CA fingerprint is refused before anything is sent.
    let stranger = AgentProc::new(dir.path(), "stranger", "");
    let wrong = "ab".repeat(32);
    let out = stranger.cmd(&["enroll", "--server", &url, "--ca-fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the expected one"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rejection: the waiting agent stops with exit code 3.
    let mut rejected = AgentProc::new(dir.path(), "rejected", "");
    rejected.cmd(&["enroll", "--server", &url, "--ca-fingerprint", &fp]);
    let rid = rejected.device_id();
    rejected.start();
    cli.json(&["devices", "reject", &rid]);
    assert_eq!(
        rejected.wait_exit(Duration::from_secs(20)),
        Some(3),
        "{}",
        rejected.log_text()
    );
    assert!(rejected.log_text().contains("device_rejected"));
    let (code, _) = failure(&cli.run(&["devices", "accept", &rid]));
    assert_eq!(code, 1, "a rejected device cannot be accepted later");
}

#[test]
fn preauthorized_keys_are_accepted_on_first_contact() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None, FAST);
    let cli = admin_cli(&server);
    let agent = AgentProc::new(dir.path(), "factory", "");
    let out = agent.cmd(&["key"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pem: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let pem_file = dir.path().join("factory.pub");
    std::fs::write(&pem_file, &pem).unwrap();
    let pre = cli.json(&[
        "devices",
        "preauthorize",
        "--public-key",
        pem_file.to_str().unwrap(),
        "--tag",
        "line=3",
    ]);
    assert_eq!(pre["device_id"], agent.device_id());
    let (code, _) = failure(&cli.run(&[
        "devices",
        "preauthorize",
        "--public-key",
        pem_file.to_str().unwrap(),
    ]));
    assert_eq!(code, 1, "the same key twice is a conflict");
    std::fs::write(dir.path().join("junk.pub"), "not a key").unwrap();
    let (code, _) = failure(&cli.run(&[
        "devices",
        "preauthorize",
        "--public-key",
        dir.path().join("junk.pub").to_str().unwrap(),
    ]));
    assert_eq!(code, 2);

    let fp = server.info["ca_fingerprint"].as_str().unwrap();
    let out = agent.cmd(&["enroll", "--server", &server.url(), "--ca-fingerprint", fp]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enrolled as device"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let d = device(&cli, &agent.device_id());
    assert_eq!(
        (d["enrollment"].as_str(), d["enrolled_via"].as_str()),
        (Some("accepted"), Some("preauthorized"))
    );
    assert_eq!(d["tags"]["line"], "3");
}

#[test]
fn revocation_closes_the_connection_and_refuses_the_key_forever() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None, FAST);
    let cli = admin_cli(&server);
    let token = enroll_token(&cli, &[]);
    let mut victim = AgentProc::new(dir.path(), "victim", "");
    let mut bystander = AgentProc::new(dir.path(), "bystander", "");
    for a in [&mut victim, &mut bystander] {
        assert!(a.enroll_with(&token).status.success());
        a.start();
    }
    let (vid, bid) = (victim.device_id(), bystander.device_id());
    wait_connection(&cli, &vid, "online", Duration::from_secs(15));
    wait_connection(&cli, &bid, "online", Duration::from_secs(15));

    cli.json(&["devices", "revoke", &vid]);
    assert_eq!(
        victim.wait_exit(Duration::from_secs(10)),
        Some(3),
        "the agent stops within seconds"
    );
    assert!(victim.log_text().contains("device_revoked"));
    // Starting it again: refused at connect time.
    victim.start();
    assert_eq!(victim.wait_exit(Duration::from_secs(10)), Some(3));
    // Enrolling the same key again with a valid token: refused.
    let out = victim.enroll_with(&token);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("device_revoked"));
    // The other device never noticed.
    assert_eq!(connection(&cli, &bid), "online");
    let log = cli.json(&["audit", "--action", "devices.revoke"]);
    assert_eq!(log["entries"][0]["target"], vid);
}

#[test]
fn certificates_are_renewed_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--device-cert-validity-secs", "15"]);
    let server = start_server(&dir.path().join("server"), None, &args);
    let cli = admin_cli(&server);
    let token = enroll_token(&cli, &[]);
    let mut agent = AgentProc::new(dir.path(), "renew", "");
    assert!(agent.enroll_with(&token).status.success());
    let first = std::fs::read_to_string(agent.data.join("device.crt")).unwrap();
    let first_expiry = device(&cli, &agent.device_id())["certificate_expires_at"].clone();
    agent.start();
    let id = agent.device_id();
    wait_connection(&cli, &id, "online", Duration::from_secs(15));
    // Renewal starts with a third of the life left (5 s of 15 s).
    wait_for("renewed certificate", Duration::from_secs(20), || {
        let now = std::fs::read_to_string(agent.data.join("device.crt")).ok()?;
        (now != first).then_some(())
    });
    assert_ne!(device(&cli, &id)["certificate_expires_at"], first_expiry);
    // Past the first certificate's expiry, a restarted agent connects with the new one.
    std::thread::sleep(Duration::from_secs(6));
    agent.kill9();
    wait_connection(&cli, &id, "offline", Duration::from_secs(10));
    agent.start();
    wait_connection(&cli, &id, "online", Duration::from_secs(15));
}

#[test]
fn devices_converge_after_agent_and_server_outages() {
    for backend in drover_testkit::Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let db = database_for(backend);
        let data = dir.path().join("server");
        let server = start_server(&data, db.as_deref(), FAST);
        let port = server.port().to_string();
        let cli = admin_cli(&server);
        let token = enroll_token(&cli, &[]);
        let mut agent = AgentProc::new(dir.path(), "roamer", "");
        assert!(agent.enroll_with(&token).status.success());
        agent.start();
        let id = agent.device_id();
        wait_connection(&cli, &id, "online", Duration::from_secs(15));
        let seen_before = device(&cli, &id)["last_seen"].clone();

        // The device drops off (kill -9): offline after the timeout.
        agent.kill9();
        wait_connection(&cli, &id, "offline", Duration::from_secs(10));
        assert_ne!(device(&cli, &id)["last_seen"], Value::Null, "{backend:?}");
        // Changes made while it is away…
        cli.json(&["devices", "set-desired", &id, "feature=on"]);
        cli.json(&["devices", "tag", &id, "site=depot"]);
        assert_eq!(device(&cli, &id)["in_sync"], false);
        // …arrive when it comes back.
        agent.start();
        wait_for(
            "convergence after agent outage",
            Duration::from_secs(15),
            || {
                let d = device(&cli, &id);
                (d["in_sync"] == true && d["connection"] == "online").then_some(())
            },
        );
        let desired: Value =
            serde_json::from_slice(&std::fs::read(agent.data.join("desired.json")).unwrap())
                .unwrap();
        assert_eq!(desired["feature"], "on");

        // The server goes away (cleanly on one backend, kill -9 on the
        // other) and comes back on the same address.
        if backend == drover_testkit::Backend::Sqlite {
            assert!(server.stop().success());
        } else {
            let mut server = server;
            server.signal(libc::SIGKILL);
            server.wait(Duration::from_secs(10));
        }
        let server = start_server(
            &data,
            db.as_deref(),
            &[FAST, &["--listen", &format!("127.0.0.1:{port}")]].concat(),
        );
        wait_connection(&cli, &id, "online", Duration::from_secs(20));
        cli.json(&["devices", "set-desired", &id, "feature=off"]);
        wait_for(
            "convergence after server restart",
            Duration::from_secs(15),
            || {
                let v: Value =
                    serde_json::from_slice(&std::fs::read(agent.data.join("desired.json")).ok()?)
                        .ok()?;
                (v["feature"] == "off").then_some(())
            },
        );
        assert_ne!(device(&cli, &id)["last_seen"], seen_before);
        drop(server);
    }
}
