//! The operator API as a client sees it, on both backends: roles on every
//! route, audit of every mutation, error shapes, token lifecycle.
//! Requests go straight into the router (no sockets); `server.rs` covers the
//! real TLS listener.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use drover_proto::api::{AuditOutcome, Role};
use drover_server::api::{AppState, openapi_document, router};
use drover_server::auth::mint_token;
use drover_server::store::{SqlStore, Store, TokenRecord};
use drover_testkit::Backend;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    app: Router,
    store: Arc<SqlStore>,
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new(backend: Backend) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.fresh_url(dir.path()).await;
        let store = Arc::new(SqlStore::connect(&url).await.unwrap());
        let app = router(AppState::for_tests(store.clone()));
        Api {
            app,
            store,
            backend,
            _dir: dir,
        }
    }

    /// Stores a token with `role` (and optional expiry/revocation) directly.
    async fn token(
        &self,
        role: Role,
        expires_at: Option<i64>,
        revoked_at: Option<i64>,
    ) -> (String, String) {
        let m = mint_token();
        let rec = TokenRecord {
            id: m.id.clone(),
            name: format!("{role}-token"),
            role,
            secret_hash: m.secret_hash,
            created_at: drover_server::clock::now_ms(),
            created_by: None,
            expires_at,
            revoked_at,
            last_used_at: None,
        };
        self.store.create_token(&rec, None).await.unwrap();
        (m.id, m.bearer)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    async fn audit(&self, admin: &str) -> Vec<Value> {
        let (s, page) = self
            .call(Method::GET, "/api/v1/audit?limit=1000", Some(admin), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        page["entries"].as_array().unwrap().clone()
    }
}

/// Every error must be `{"error": {"code": <string>, "message": <non-empty string>}}`.
fn assert_error_shape(status: StatusCode, body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "status {status}, body {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.len() > 10,
        "error message must say what to do: {body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "nothing but `error`: {body}"
    );
}

/// A body that a route will accept from an admin, for walking every route.
fn sample_body(method: &Method, path: &str, public_key_pem: &str) -> Option<String> {
    let body = match (method.as_str(), path) {
        ("POST", "/api/v1/tokens") => r#"{"name":"walker","role":"viewer"}"#.to_string(),
        ("POST", "/api/v1/enroll-tokens") => r#"{"name":"walker","uses":1}"#.to_string(),
        ("POST", "/api/v1/devices/{id}/tags") => r#"{"set":{"walk":"1"}}"#.to_string(),
        ("PUT", "/api/v1/devices/{id}/desired") | ("PUT", "/api/v1/groups/{name}/desired") => {
            r#"{"config":{"walk":"1"}}"#.to_string()
        }
        ("POST", "/api/v1/devices/preauthorize") => {
            json!({ "public_key_pem": public_key_pem }).to_string()
        }
        ("POST", "/api/v1/groups") => r#"{"name":"walkers","query":"status = online"}"#.to_string(),
        ("PUT", "/api/v1/artifacts/{sha256}") => "not the artifact".to_string(),
        ("POST", "/api/v1/releases") => {
            r#"{"manifest":{"manifest":"{}","signatures":[]}}"#.to_string()
        }
        ("POST", "/api/v1/deployments") => r#"{"release":"none@1.0.0","group":"g"}"#.to_string(),
        ("PUT", "/api/v1/groups/{name}/rules") | ("PUT", "/api/v1/devices/{id}/rules") => {
            r#"{"text":"version = 1\n"}"#.to_string()
        }
        _ => return None,
    };
    Some(body)
}

/// Ids to put into each route's path parameters.
struct Fixture {
    token_id: String,
    enroll_token_id: String,
    device_id: String,
    group: String,
}

fn concrete(path: &str, f: &Fixture) -> String {
    let id = if path.starts_with("/api/v1/enroll-tokens") {
        &f.enroll_token_id
    } else if path.starts_with("/api/v1/devices") {
        &f.device_id
    } else {
        &f.token_id
    };
    path.replace("{id}", id)
        .replace("{name}", &f.group)
        .replace("{sha256}", &"ab".repeat(32))
}

/// A bare device record.
fn device_record(
    id: &str,
    enrollment: drover_server::store::Enrollment,
) -> drover_server::store::DeviceRecord {
    drover_server::store::DeviceRecord {
        id: id.into(),
        public_key: format!("pk-{id}"),
        enrollment,
        hostname: None,
        tags: Default::default(),
        inventory: Default::default(),
        inventory_hash: None,
        desired: Default::default(),
        reported: None,
        agent_version: None,
        cert_serial: None,
        cert_not_after: None,
        enrolled_via: None,
        created_at: 1,
        updated_at: 1,
        last_seen: None,
        version: 1,
    }
}

/// Puts a device, a group and an enrollment token into the store.
async fn fixture(api: &Api, token_id: String) -> Fixture {
    use drover_server::store::{Change, DeviceRecord, EnrollTokenRecord, Enrollment, GroupRecord};
    let device = DeviceRecord {
        public_key: "00".into(),
        hostname: Some("walker".into()),
        ..device_record("0123456789abcdef01234567", Enrollment::Pending)
    };
    let group = GroupRecord {
        name: "fixture".into(),
        query: None,
        members: vec![device.id.clone()],
        desired: Default::default(),
        created_at: 1,
        updated_at: 1,
        version: 1,
    };
    let token = EnrollTokenRecord {
        id: "00000000000000ee".into(),
        name: "fixture".into(),
        secret_hash: "00".into(),
        tags: Default::default(),
        uses_left: None,
        expires_at: None,
        created_at: 1,
        created_by: None,
        revoked_at: None,
        version: 1,
    };
    let changes = [
        Change::PutDevice {
            device: device.clone(),
            expected_version: None,
        },
        Change::PutGroup {
            group: group.clone(),
            expected_version: None,
        },
        Change::PutEnrollToken {
            token: token.clone(),
            expected_version: None,
        },
    ];
    assert!(api.store.apply(&changes, None).await.unwrap());
    Fixture {
        token_id,
        enroll_token_id: token.id,
        device_id: device.id,
        group: group.name,
    }
}

/// Every operation of the OpenAPI document, with the role it declares.
fn operations() -> Vec<(Method, String, Role)> {
    let doc = serde_json::to_value(openapi_document()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scopes = &op["security"][0]["bearer"];
            let role: Role = serde_json::from_value(scopes[0].clone())
                .unwrap_or_else(|_| panic!("{method} {path} declares no bearer role: {op}"));
            ops.push((method.to_uppercase().parse().unwrap(), path.clone(), role));
        }
    }
    assert!(ops.len() >= 5, "the document lists the routes: {ops:?}");
    ops
}

#[tokio::test]
async fn every_route_enforces_its_role_and_every_mutation_is_audited() {
    for backend in Backend::ALL {
        let api = Api::new(backend).await;
        let (_, admin) = api.token(Role::Admin, None, None).await;
        let (target_id, _) = api.token(Role::Viewer, None, None).await;
        let fx = fixture(&api, target_id).await;
        let key_pem = rcgen::KeyPair::generate().unwrap().public_key_pem();
        let tokens: Vec<(Role, String)> = {
            let mut v = vec![(Role::Admin, admin.clone())];
            for r in [Role::Viewer, Role::Operator] {
                v.push((r, api.token(r, None, None).await.1));
            }
            v
        };
        let mut mutations = 0;
        for (method, path, needed) in operations() {
            let uri = concrete(&path, &fx);
            let body = sample_body(&method, &path, &key_pem);
            let body = body.as_deref();
            // No token: 401 with the error shape.
            let (s, b) = api.call(method.clone(), &uri, None, body).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{backend:?} {method} {path} without token: {b}"
            );
            // HEAD answers carry no body.
            let head = method == Method::HEAD;
            if !head {
                assert_error_shape(s, &b, "missing_token");
            }
            for (role, token) in &tokens {
                let before = api.audit(&admin).await.len();
                let (s, b) = api.call(method.clone(), &uri, Some(token), body).await;
                if role.allows(needed) {
                    assert!(
                        s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                        "{backend:?} {method} {path} as {role}: {s} {b}"
                    );
                } else {
                    assert_eq!(
                        s,
                        StatusCode::FORBIDDEN,
                        "{backend:?} {method} {path} as {role}: {b}"
                    );
                    if !head {
                        assert_error_shape(s, &b, "forbidden");
                    }
                }
                let after = api.audit(&admin).await;
                if method != Method::GET && !head {
                    mutations += 1;
                    assert_eq!(
                        after.len(),
                        before + 1,
                        "{backend:?} {method} {path} as {role} was not audited"
                    );
                    let e = &after[0];
                    assert_eq!(e["method"], method.as_str());
                    assert_eq!(e["path"], uri);
                    assert_eq!(e["status"], s.as_u16());
                    let outcome = if s == StatusCode::FORBIDDEN {
                        "denied"
                    } else if s.is_success() {
                        "success"
                    } else {
                        "failed"
                    };
                    assert_eq!(e["outcome"], outcome, "{e}");
                } else {
                    assert_eq!(after.len(), before, "{backend:?} reads are not audited");
                }
            }
        }
        assert!(mutations > 0, "the walk covered mutating routes");
        let _ = api.backend;
    }
}

#[tokio::test]
async fn token_lifecycle_create_use_revoke() {
    for backend in Backend::ALL {
        let api = Api::new(backend).await;
        let (admin_id, admin) = api.token(Role::Admin, None, None).await;
        let (s, created) = api
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&admin),
                Some(r#"{"name":"ci bot","role":"operator","expires_in_secs":3600}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let secret = created["token"].as_str().unwrap().to_string();
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["role"], "operator");
        assert_eq!(created["created_by"], admin_id);
        assert!(created["expires_at"].is_string());

        // The new token works and knows who it is.
        let (s, me) = api
            .call(Method::GET, "/api/v1/whoami", Some(&secret), None)
            .await;
        assert_eq!(
            (s, me["role"].clone(), me["token_id"].clone()),
            (StatusCode::OK, json!("operator"), json!(id))
        );

        // Listing never shows secrets or hashes.
        let (_, list) = api
            .call(Method::GET, "/api/v1/tokens", Some(&admin), None)
            .await;
        let text = list.to_string();
        assert!(
            !text.contains(&secret[21..]) && !text.contains("secret"),
            "{text}"
        );

        // Revoke: the token stops working at once, with its own error code.
        let (s, revoked) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{revoked}");
        assert!(revoked["revoked_at"].is_string());
        let (s, b) = api
            .call(Method::GET, "/api/v1/whoami", Some(&secret), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_error_shape(s, &b, "token_revoked");
        let (s, b) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");

        // Audit: create and revoke recorded as successes with their target.
        let log = api.audit(&admin).await;
        let actions: Vec<_> = log
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap(),
                    e["target"].clone(),
                )
            })
            .collect();
        assert!(
            actions.contains(&("tokens.create", "success", json!(id))),
            "{backend:?} {actions:?}"
        );
        assert!(
            actions.contains(&("tokens.revoke", "success", json!(id))),
            "{actions:?}"
        );
        assert!(
            actions.contains(&("tokens.revoke", "failed", Value::Null)),
            "the second revoke is recorded as failed: {actions:?}"
        );

        // The last admin cannot revoke itself.
        let (s, b) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{admin_id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert_error_shape(s, &b, "conflict");
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_distinct_codes() {
    let api = Api::new(Backend::Sqlite).await;
    let (_, expired) = api.token(Role::Admin, Some(1_000), None).await;
    let (_, revoked) = api.token(Role::Admin, None, Some(1_000)).await;
    let (_, good) = api.token(Role::Admin, None, None).await;
    let forged = format!("{}{}", &good[..good.len() - 4], "0000");
    let unknown = mint_token().bearer;
    for (token, code) in [
        (expired.as_str(), "token_expired"),
        (revoked.as_str(), "token_revoked"),
        (forged.as_str(), "invalid_token"),
        (unknown.as_str(), "invalid_token"),
        ("not-a-token", "invalid_token"),
    ] {
        let (s, b) = api
            .call(Method::GET, "/api/v1/whoami", Some(token), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{token}: {b}");
        assert_error_shape(s, &b, code);
    }
    let (s, _) = api
        .call(Method::GET, "/api/v1/whoami", Some(&good), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    for backend in Backend::ALL {
        let api = Api::new(backend).await;
        let (_, admin) = api.token(Role::Admin, None, None).await;
        let big = format!(r#"{{"name":"{}","role":"viewer"}}"#, "a".repeat(100 * 1024));
        let cases: Vec<(Option<&str>, StatusCode, &str)> = vec![
            (Some("{not json"), StatusCode::BAD_REQUEST, "invalid_json"),
            (
                Some(r#"{"name":"x","role":"viewer","extra":1}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(r#"{"name":"x","role":"root"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(r#"{"role":"viewer"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(r#"{"name":"","role":"viewer"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(r#"{"name":"x\u0000y","role":"viewer"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(r#"{"name":"x","role":"viewer","expires_in_secs":5}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(big.as_str()),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
        ];
        let before = api.store.count_tokens().await.unwrap();
        for (body, status, code) in cases {
            let (s, b) = api
                .call(Method::POST, "/api/v1/tokens", Some(&admin), body)
                .await;
            assert_eq!(
                s,
                status,
                "{backend:?} {:?}: {b}",
                body.map(|b| &b[..b.len().min(60)])
            );
            assert_error_shape(s, &b, code);
        }
        // No content type.
        let req = Request::post("/api/v1/tokens")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .body(Body::from(r#"{"name":"x","role":"viewer"}"#))
            .unwrap();
        let resp = api.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            api.store.count_tokens().await.unwrap(),
            before,
            "{backend:?}: nothing was created"
        );

        // Unknown routes and methods, bad query strings.
        let (s, b) = api
            .call(Method::GET, "/api/v1/nope", Some(&admin), None)
            .await;
        assert_error_shape(s, &b, "not_found");
        let (s, b) = api
            .call(Method::PATCH, "/api/v1/tokens", Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_error_shape(s, &b, "method_not_allowed");
        let (s, b) = api
            .call(Method::GET, "/api/v1/audit?limit=0", Some(&admin), None)
            .await;
        assert_error_shape(s, &b, "invalid_request");
        let (s, b) = api
            .call(Method::GET, "/api/v1/audit?limit=abc", Some(&admin), None)
            .await;
        assert_error_shape(s, &b, "invalid_request");
        let (s, b) = api
            .call(Method::GET, "/api/v1/tokens/ffff", Some(&admin), None)
            .await;
        assert_error_shape(s, &b, "not_found");

        // Failed mutations are in the audit log with their reason.
        let failed: Vec<_> = api
            .audit(&admin)
            .await
            .into_iter()
            .filter(|e| e["outcome"] == "failed")
            .collect();
        assert!(failed.len() >= 8, "{backend:?}: {failed:?}");
        assert!(
            failed
                .iter()
                .all(|e| e["detail"]["error"]["code"].is_string()),
            "{failed:?}"
        );
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_public() {
    let api = Api::new(Backend::Sqlite).await;
    let (s, doc) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/v1/tokens"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let (s, h) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, h["status"].clone()), (StatusCode::OK, json!("ok")));
}

#[tokio::test]
async fn a_database_that_disappears_gets_503_and_the_server_recovers() {
    use drover_testkit::TcpProxy;
    // PostgreSQL behind a proxy we can cut.
    let url = drover_testkit::postgres_url().await;
    let (prefix, rest) = url.split_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let target = tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    let proxied = format!("{prefix}@{}/{db}", proxy.addr);
    let store = Arc::new(SqlStore::connect(&proxied).await.unwrap());
    let app = router(AppState::for_tests(store.clone()));
    let dir = tempfile::tempdir().unwrap();
    let api = Api {
        app,
        store,
        backend: Backend::Postgres,
        _dir: dir,
    };
    let (_, admin) = api.token(Role::Admin, None, None).await;

    proxy.cut();
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(r#"{"name":"x","role":"viewer"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_error_shape(s, &b, "database_unavailable");
    let (s, h) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["status"], "degraded");
    // The server itself still answers requests that need no database.
    let (s, _) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);

    proxy.restore();
    let mut ok = false;
    for _ in 0..50 {
        let (s, _) = api
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&admin),
                Some(r#"{"name":"after","role":"viewer"}"#),
            )
            .await;
        if s == StatusCode::CREATED {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the server recovers once the database is back");
    let names: Vec<_> = api
        .store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        !names.contains(&"x".to_string()),
        "the refused request left nothing behind"
    );
    let _ = AuditOutcome::Success;
}

impl Api {
    /// `PUT` of raw bytes with a Content-Length, as `drover release publish` sends.
    async fn put_bytes(&self, path: &str, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_LENGTH, bytes.len())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn put_device(&self, id: &str, enrollment: drover_server::store::Enrollment) {
        use drover_server::store::Change;
        let d = device_record(id, enrollment);
        let put = Change::PutDevice {
            device: d,
            expected_version: None,
        };
        assert!(self.store.apply(&[put], None).await.unwrap());
    }
}

fn signed_release(version: &str, payload: &[u8]) -> Value {
    use drover_release::keys::KeyRole;
    use drover_release::{KeyPair, Manifest, Payload, SignedManifest};
    let key = KeyPair::from_seed(KeyRole::Root, [7; 32]).unwrap();
    let m = Manifest {
        format: 1,
        name: "kiosk".into(),
        version: version.into(),
        device_types: vec!["rpi4".into()],
        created_at: 1_800_000_000,
        expires_at: None,
        payloads: vec![Payload {
            kind: "app".into(),
            sha256: drover_release::sha256_hex(payload),
            size: payload.len() as u64,
            module: None,
            delta: None,
        }],
        health: None,
        provenance: None,
    };
    serde_json::to_value(SignedManifest::sign(&m, &key).unwrap()).unwrap()
}

#[tokio::test]
async fn releases_are_published_only_with_their_artifacts_and_deployed_to_accepted_devices() {
    use drover_server::store::{Enrollment, ReleaseStore};
    for backend in Backend::ALL {
        let api = Api::new(backend).await;
        let (_, op) = api.token(Role::Operator, None, None).await;
        let payload = b"#!/bin/sh\necho v1\n".repeat(100);
        let sha = drover_release::sha256_hex(&payload);
        let art = format!("/api/v1/artifacts/{sha}");

        // Artifacts: named by their hash, checked while stored.
        let (s, _) = api.call(Method::HEAD, &art, Some(&op), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, b) = api.put_bytes(&art, &op, b"something else".to_vec()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["code"], "hash_mismatch");
        let (s, _) = api.call(Method::HEAD, &art, Some(&op), None).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{backend:?}: a bad upload leaves nothing"
        );
        let (s, b) = api
            .put_bytes("/api/v1/artifacts/NOTAHASH", &op, payload.clone())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

        // A release whose payload is not uploaded yet is refused.
        let body = json!({ "manifest": signed_release("1.0.0", &payload) }).to_string();
        let (s, b) = api
            .call(Method::POST, "/api/v1/releases", Some(&op), Some(&body))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["code"], "artifact_missing");

        let (s, b) = api.put_bytes(&art, &op, payload.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["created"], true);
        let (s, b) = api.put_bytes(&art, &op, payload.clone()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["created"], false);

        let (s, b) = api
            .call(Method::POST, "/api/v1/releases", Some(&op), Some(&body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend:?}: {b}");
        assert_eq!(b["id"], "kiosk@1.0.0");
        assert_eq!(b["payloads"][0]["sha256"], sha);
        assert_eq!(b["signed_by"].as_array().unwrap().len(), 1);
        // Publishing the same release again is harmless; changing it is not.
        let (s, _) = api
            .call(Method::POST, "/api/v1/releases", Some(&op), Some(&body))
            .await;
        assert_eq!(s, StatusCode::OK);
        let mut other = signed_release("1.0.0", &payload);
        other["signatures"][0]["sig"] = json!("AAAA");
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/releases",
                Some(&op),
                Some(&json!({ "manifest": other }).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        let mut unsigned = signed_release("1.0.1", &payload);
        unsigned["signatures"] = json!([]);
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/releases",
                Some(&op),
                Some(&json!({ "manifest": unsigned }).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("signature")
        );
        let (s, b) = api
            .call(Method::GET, "/api/v1/releases/kiosk@1.0.0", Some(&op), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");

        // Deployments.
        let accepted = "aaaaaaaaaaaaaaaaaaaaaaaa";
        let pending = "bbbbbbbbbbbbbbbbbbbbbbbb";
        api.put_device(accepted, Enrollment::Accepted).await;
        api.put_device(pending, Enrollment::Pending).await;
        for (req, status) in [
            (
                json!({"release": "kiosk@9.9.9", "devices": [accepted]}),
                StatusCode::NOT_FOUND,
            ),
            (json!({"release": "kiosk@1.0.0"}), StatusCode::BAD_REQUEST),
            (
                json!({"release": "kiosk@1.0.0", "devices": [accepted], "group": "g"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"release": "kiosk@1.0.0", "devices": [pending]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"release": "kiosk@1.0.0", "devices": ["cccccccccccccccccccccccc"]}),
                StatusCode::NOT_FOUND,
            ),
            (
                json!({"release": "kiosk@1.0.0", "group": "nope"}),
                StatusCode::NOT_FOUND,
            ),
        ] {
            let (s, b) = api
                .call(
                    Method::POST,
                    "/api/v1/deployments",
                    Some(&op),
                    Some(&req.to_string()),
                )
                .await;
            assert_eq!(s, status, "{backend:?} {req}: {b}");
        }
        assert!(
            api.store.device_targets().await.unwrap().is_empty(),
            "refusals change nothing"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/deployments",
                Some(&op),
                Some(&json!({"release": "kiosk@1.0.0", "devices": [accepted]}).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["counts"]["pending"], 1);
        let id = b["id"].as_str().unwrap().to_string();
        assert_eq!(
            api.store.device_targets().await.unwrap(),
            vec![(accepted.to_string(), id.clone())]
        );
        let (s, b) = api
            .call(
                Method::GET,
                &format!("/api/v1/deployments/{id}"),
                Some(&op),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["devices"][0]["device_id"], accepted);
        assert_eq!(b["devices"][0]["state"], "pending");
        let (s, b) = api
            .call(Method::GET, "/api/v1/deployments", Some(&op), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["deployments"][0]["id"], id.as_str());
    }
}
