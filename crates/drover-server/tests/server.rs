//! The server started in-process on a real TLS socket.

use drover_proto::api::Role;
use drover_server::auth::mint_token;
use drover_server::store::{SqlStore, Store, TokenRecord};
use drover_server::{ServerConfig, start};

fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

fn config(dir: &std::path::Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir.join("data"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg
}

#[tokio::test]
async fn serves_the_api_over_tls_signed_by_the_fleet_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path())).await.unwrap();
    let token = server
        .admin_token
        .clone()
        .expect("first start mints an admin token");
    let ca = std::fs::read(server.data_dir.join("ca.crt")).unwrap();
    let http = client_trusting(&ca);
    let me: serde_json::Value = http
        .get(format!("{}/api/v1/whoami", server.public_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    let metrics = http
        .get(format!("{}/metrics", server.public_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("drover_http_requests_total"), "{metrics}");
    // A client that does not trust the fleet CA is refused by TLS.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = drover_server::pki::FleetCa::load_or_create(other.path()).unwrap();
    let stranger = client_trusting(other_ca.cert_pem().as_bytes());
    assert!(
        stranger
            .get(format!("{}/healthz", server.public_url))
            .send()
            .await
            .is_err()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_fleet_whose_admin_tokens_all_expired_gets_a_new_one_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    // A database whose only admin token expired long ago, and a viewer.
    let store = SqlStore::connect(&cfg.database_url()).await.unwrap();
    for (role, expires_at) in [(Role::Admin, Some(1_000)), (Role::Viewer, None)] {
        let m = mint_token();
        let rec = TokenRecord {
            id: m.id,
            name: format!("old-{role}"),
            role,
            secret_hash: m.secret_hash,
            created_at: 1,
            created_by: None,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        store.create_token(&rec, None).await.unwrap();
    }
    store.close().await;

    let server = start(cfg.clone()).await.unwrap();
    let token = server
        .admin_token
        .clone()
        .expect("a new admin token when none is usable");
    let on_disk = std::fs::read_to_string(cfg.data_dir.join("admin.token")).unwrap();
    assert_eq!(on_disk.trim(), token);
    server.shutdown().await;

    // With a usable admin token in place, a restart mints nothing.
    let server = start(cfg).await.unwrap();
    assert!(server.admin_token.is_none());
    server.shutdown().await;
}
