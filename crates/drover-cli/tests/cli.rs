//! The operator CLI against a real server: profiles, tokens, audit, tables,
//! `--json`, and exit codes that tell failures apart.

mod common;

use common::*;

#[test]
fn operator_workflow_with_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), None, &[]);
    let admin = Cli::new();
    admin.login(&server, &server.admin_token());

    // Human output: aligned table with a header.
    let out = admin.run(&[
        "tokens",
        "create",
        "--role",
        "viewer",
        "--name",
        "dashboard",
        "--expires",
        "30d",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Created viewer token") && text.contains("drv_"),
        "{text}"
    );
    let viewer_token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("drv_"))
        .map(|t| format!("drv_{t}"))
        .unwrap();

    let out = admin.run(&["tokens", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap();
    for col in [
        "ID",
        "NAME",
        "ROLE",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = table.lines().find(|l| l.contains("dashboard")).unwrap();
    assert_eq!(
        row.find("viewer"),
        header.find("ROLE"),
        "columns are aligned:\n{table}"
    );

    // JSON output for scripts.
    let list = admin.json(&["tokens", "list"]);
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    let viewer = tokens.iter().find(|t| t["name"] == "dashboard").unwrap();
    let viewer_id = viewer["id"].as_str().unwrap().to_string();
    assert!(viewer["expires_at"].is_string());
    let shown = admin.json(&["tokens", "show", &viewer_id]);
    assert_eq!(shown["role"], "viewer");

    // A viewer can read the audit log but not change anything: exit code 3.
    let viewer_cli = Cli::new();
    viewer_cli.login(&server, &viewer_token);
    let (code, err) = failure(&viewer_cli.run(&["tokens", "create", "--role", "admin"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("admin role"),
        "{err}"
    );
    let log = viewer_cli.json(&["audit", "--limit", "10"]);
    let first = &log["entries"][0];
    assert_eq!(
        (first["action"].as_str(), first["outcome"].as_str()),
        (Some("tokens.create"), Some("denied")),
        "{log}"
    );

    // Revoke: the viewer is locked out at once.
    let revoked = admin.json(&["tokens", "revoke", &viewer_id]);
    assert!(revoked["revoked_at"].is_string());
    let (code, err) = failure(&viewer_cli.run(&["whoami"]));
    assert_eq!(code, 3);
    assert!(err.contains("revoked"), "{err}");

    // Audit filters and paging, in a table.
    let out = admin.run(&["audit", "--action", "tokens.revoke"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tokens.revoke") && !text.contains("tokens.create"),
        "{text}"
    );
    let page = admin.json(&["audit", "--limit", "1"]);
    let next = page["next_before"].as_i64().expect("a next page exists");
    let older = admin.json(&["audit", "--limit", "1", "--before", &next.to_string()]);
    assert!(older["entries"][0]["id"].as_i64().unwrap() < next + 1);

    // Logout forgets the profile.
    assert!(admin.run(&["logout"]).status.success());
    assert!(!admin.profile.exists());
}

#[test]
fn failures_have_distinct_exit_codes_and_one_line_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), None, &[]);
    let cli = Cli::new();

    // Not logged in.
    let (code, err) = failure(&cli.run(&["tokens", "list"]));
    assert_eq!(code, 3);
    assert!(err.contains("drover login"), "{err}");

    // Bad login: wrong token, untrusted certificate, nothing listening.
    let ca = server.ca();
    let ca = ca.to_str().unwrap();
    let bogus =
        "drv_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000";
    let (code, err) = failure(&cli.run(&[
        "login",
        "--server",
        &server.url(),
        "--token",
        bogus,
        "--ca-cert",
        ca,
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(!cli.profile.exists(), "a failed login stores nothing");
    let (code, err) = failure(&cli.run(&["login", "--server", &server.url(), "--token", bogus]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    let (code, err) = failure(&cli.run(&[
        "login",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        bogus,
        "--ca-cert",
        ca,
    ]));
    assert_eq!(code, 5, "{err}");
    let (code, _) = failure(&cli.run(&["login", "--server", "ftp://x", "--token", bogus]));
    assert_eq!(code, 2);
    let (code, err) = failure(&cli.run(&[
        "login",
        "--server",
        &server.url(),
        "--token",
        bogus,
        "--ca-cert",
        "/nonexistent",
    ]));
    assert_eq!(code, 2, "{err}");

    cli.login(&server, &server.admin_token());
    // Not found, bad ids, bad flags.
    let (code, err) = failure(&cli.run(&["tokens", "revoke", "ffffffffffffffff"]));
    assert_eq!(code, 4, "{err}");
    let (code, _) = failure(&cli.run(&["tokens", "show", "../etc"]));
    assert_eq!(code, 2);
    let (code, err) = failure(&cli.run(&["tokens", "create", "--role", "root"]));
    assert_eq!(code, 2, "{err}");
    let (code, _) = failure(&cli.run(&["tokens", "create", "--role", "viewer", "--expires", "5y"]));
    assert_eq!(code, 2);
    let (code, err) =
        failure(&cli.run(&["tokens", "create", "--role", "viewer", "--name", "bad/name"]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // --json errors are JSON on stderr.
    let out = cli.run(&["tokens", "revoke", "ffffffffffffffff", "--json"]);
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON error");
    assert_eq!(err["error"]["code"], "not_found");
    assert!(out.stdout.is_empty());

    // The last admin token cannot be revoked.
    let me = cli.json(&["whoami"]);
    let (code, err) = failure(&cli.run(&["tokens", "revoke", me["token_id"].as_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("last usable admin token"), "{err}");

    // A corrupt profile says how to fix it.
    std::fs::write(&cli.profile, "server = [").unwrap();
    let (code, err) = failure(&cli.run(&["whoami"]));
    assert_eq!(code, 2);
    assert!(err.contains("drover login"), "{err}");
}

#[test]
fn flags_and_environment_override_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), None, &[]);
    let cli = Cli::new();
    let out = std::process::Command::new(DROVER)
        .args(["whoami", "--json"])
        .env("DROVER_CONFIG", &cli.profile)
        .env("DROVER_SERVER", server.url())
        .env("DROVER_TOKEN", server.admin_token())
        .env("DROVER_CA_CERT", server.ca())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["role"], "admin");
}

#[test]
fn demo_runs_a_fleet_that_the_cli_can_explore() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(DROVER)
        .args([
            "demo",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--devices",
            "6",
            "--data",
        ])
        .arg(dir.path().join("demo"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut doc = String::new();
    loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "demo exited early"
        );
        doc.push_str(&line);
        if line == "}\n" {
            break;
        }
    }
    let info: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let cli = Cli::new();
    let ca = info["ca_cert"].as_str().unwrap();
    let out = cli.run(&[
        "login",
        "--server",
        info["url"].as_str().unwrap(),
        "--token",
        info["admin_token"].as_str().unwrap(),
        "--ca-cert",
        ca,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let online = wait_for(
        "6 devices online and in sync",
        std::time::Duration::from_secs(30),
        || {
            let list = cli.json(&["devices", "list", "--query", "status = online"]);
            let devices = list["devices"].as_array().unwrap().clone();
            (devices.len() == 6 && devices.iter().all(|d| d["in_sync"] == true)).then_some(devices)
        },
    );
    assert!(
        online.iter().any(|d| d["tags"]["region"] == "eu")
            && online.iter().any(|d| d["tags"]["region"] == "us")
    );
    let groups = cli.json(&["groups", "list"]);
    assert_eq!(groups["groups"].as_array().unwrap().len(), 3);
    // The update the demo suggests: its devices trust the demo root key.
    let app = dir.path().join("app.txt");
    std::fs::write(&app, "hello v1\n").unwrap();
    let bundle = dir.path().join("demo-app.drover");
    cli.json(&[
        "release",
        "build",
        "--name",
        "demo-app",
        "--version",
        "1.0.0",
        "--device-type",
        info["device_type"].as_str().unwrap(),
        "--payload",
        &format!("app:{}", app.display()),
        "--key",
        info["release_root_key"].as_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    cli.json(&["release", "publish", bundle.to_str().unwrap()]);
    let dep = cli.json(&["deploy", "demo-app@1.0.0", "--group", "eu", "--wait", "60"]);
    assert_eq!(dep["counts"]["committed"], 3, "{dep}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "demo stops cleanly on SIGTERM: {status}");
}
