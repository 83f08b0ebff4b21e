//! `drover server` as a real process: first start, restart, signals, a
//! second server on the same data directory, a database that is down.

mod common;

use std::time::Duration;

use common::*;
use drover_testkit::Backend;

#[test]
fn first_start_creates_ca_admin_token_and_private_files() {
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let db = database_for(backend);
        let server = start_server(&data, db.as_deref(), &[]);
        let token = server.info["admin_token"]
            .as_str()
            .expect("first start prints the admin token")
            .to_string();
        assert_eq!(
            server.admin_token(),
            token,
            "{backend:?}: admin.token holds the printed token"
        );
        assert_eq!(mode(&data), 0o700, "data dir is private");
        assert_eq!(mode(&data.join("admin.token")), 0o600);
        assert_eq!(mode(&data.join("ca.key")), 0o600);
        assert_eq!(mode(&data.join("server.key")), 0o600);
        assert!(
            std::fs::read_to_string(data.join("ca.crt"))
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(
            server.info["backend"],
            if backend == Backend::Sqlite {
                "sqlite"
            } else {
                "postgres"
            }
        );
        // The server's certificate chains to the CA it wrote: a CLI that
        // trusts only ca.crt can log in.
        let cli = Cli::new();
        cli.login(&server, &token);
        assert_eq!(mode(&cli.profile), 0o600, "the profile holds a token");
        let me = cli.json(&["whoami"]);
        assert_eq!(me["role"], "admin");
        let log = cli.json(&["audit"]);
        assert_eq!(
            log["entries"][0]["action"], "tokens.bootstrap",
            "{backend:?}: {log}"
        );
        assert!(server.stop().success());
    }
}

#[test]
fn restart_keeps_tokens_ca_and_audit() {
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let db = database_for(backend);
        let server = start_server(&data, db.as_deref(), &[]);
        let fingerprint = server.info["ca_fingerprint"].clone();
        let cli = Cli::new();
        cli.login(&server, &server.admin_token());
        let created = cli.json(&["tokens", "create", "--role", "operator", "--name", "keeper"]);
        let op_token = created["token"].as_str().unwrap().to_string();
        let status = server.stop();
        assert!(
            status.success(),
            "{backend:?}: SIGTERM is a clean exit, got {status}"
        );

        let server = start_server(&data, db.as_deref(), &[]);
        assert!(
            server.info["admin_token"].is_null(),
            "{backend:?}: no second admin token"
        );
        assert_eq!(
            server.info["ca_fingerprint"], fingerprint,
            "same CA after restart"
        );
        // The port changed (port 0), so log in again with the kept token.
        let op = Cli::new();
        op.login(&server, &op_token);
        assert_eq!(op.json(&["whoami"])["role"], "operator");
        let log = op.json(&["audit"]);
        let actions: Vec<_> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            actions,
            ["tokens.create", "tokens.bootstrap"],
            "{backend:?}"
        );
        drop(server);
    }
}

#[test]
fn kill_9_leaves_a_data_dir_the_next_server_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start_server(&data, None, &[]);
    let token = server.admin_token();
    server.signal(libc::SIGKILL);
    server.wait(Duration::from_secs(10));
    let server = start_server(&data, None, &[]);
    let cli = Cli::new();
    cli.login(&server, &token);
    assert_eq!(cli.json(&["whoami"])["role"], "admin");
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start_server(&data, None, &[]);
    let Err((code, err)) = try_start_server(&data, None, &[]) else {
        panic!("a second server started on the same data directory");
    };
    assert_eq!(code, Some(1));
    assert!(err.contains("in use by another drover server"), "{err}");
    assert!(
        err.contains(&first.child.id().to_string()),
        "names the pid holding it: {err}"
    );
    // The first one is unharmed.
    let cli = Cli::new();
    cli.login(&first, &first.admin_token());
}

#[test]
fn a_database_that_is_down_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let Err((code, err)) = try_start_server(
        &dir.path().join("d"),
        Some("postgres://drover:secret@127.0.0.1:1/fleet"),
        &[],
    ) else {
        panic!("started without a database");
    };
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot open the database"), "{err}");
    assert!(
        err.contains("postgres://drover:***@127.0.0.1:1/fleet"),
        "URL shown without its password: {err}"
    );
    assert!(!err.contains("secret"), "password leaked: {err}");
    let Err((_, err)) = try_start_server(&dir.path().join("e"), Some("mysql://x/y"), &[]) else {
        panic!("started with an unsupported database");
    };
    assert!(err.contains("use sqlite:PATH or postgres://"), "{err}");
}

#[test]
fn insecure_http_and_public_url_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("a"), None, &["--insecure-http"]);
    assert!(
        server.url().starts_with("http://127.0.0.1:"),
        "{}",
        server.url()
    );
    let cli = Cli::new();
    let out = cli.run(&[
        "login",
        "--server",
        &server.url(),
        "--token",
        &server.admin_token(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);

    let Err((_, err)) = try_start_server(
        &dir.path().join("b"),
        None,
        &["--public-url", "http://fleet.example:8443"],
    ) else {
        panic!("accepted an http public URL on a TLS server");
    };
    assert!(err.contains("invalid --public-url"), "{err}");

    // A public host name goes into the server certificate.
    let server = start_server(
        &dir.path().join("c"),
        None,
        &["--public-url", "https://fleet.example:8443"],
    );
    let pem = std::fs::read_to_string(server.data.join("server.crt")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer| d.to_vec())
        .unwrap();
    assert!(
        der.windows(12).any(|w| w == &b"fleet.example"[..12]),
        "certificate names the public host"
    );
}

#[test]
fn bring_your_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // A certificate from a CA the operator runs (here: another fleet CA).
    std::fs::create_dir_all(dir.path().join("byo")).unwrap();
    let (ca, _) = drover_server::pki::FleetCa::load_or_create(&dir.path().join("byo")).unwrap();
    let (cert, key) = ca.issue_server_cert(&["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let server = start_server(
        &dir.path().join("data"),
        None,
        &[
            "--tls-cert",
            dir.path().join("tls.crt").to_str().unwrap(),
            "--tls-key",
            dir.path().join("tls.key").to_str().unwrap(),
        ],
    );
    let cli = Cli::new();
    // The fleet CA does not vouch for this certificate…
    let out = cli.run(&[
        "login",
        "--server",
        &server.url(),
        "--token",
        &server.admin_token(),
        "--ca-cert",
        server.ca().to_str().unwrap(),
    ]);
    let (code, err) = failure(&out);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("--ca-cert"), "says how to fix it: {err}");
    // …the operator's CA does.
    let byo_ca = dir.path().join("byo/ca.crt");
    let out = cli.run(&[
        "login",
        "--server",
        &server.url(),
        "--token",
        &server.admin_token(),
        "--ca-cert",
        byo_ca.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
