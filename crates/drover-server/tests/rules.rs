//! Agent-side rule sets on the server, on both backends: the store, the
//! API (a refused set names its line and changes nothing; precedence of a
//! device's own set over its groups'), and the desired state that carries
//! the chosen set with a revision that covers it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use drover_proto::api::{AuditOutcome, Role};
use drover_server::api::{AppState, router};
use drover_server::auth::mint_token;
use drover_server::store::{
    Change, DeviceRecord, Enrollment, GroupRecord, NewAudit, RuleSetRecord, RuleStore, SqlStore,
    Store, TokenRecord,
};
use drover_testkit::Backend;
use serde_json::{Value, json};
use tower::ServiceExt;

const DEVICE: &str = "0123456789abcdef01234567";

const MINER: &str = "version = 3\n\n[[rules]]\nname = \"no-miner\"\ncondition = { kind = \"process_running\", name = \"cryptominer\" }\nactions = [{ kind = \"kill\" }]\n";

fn audit(action: &str) -> NewAudit {
    NewAudit {
        at: 2_000,
        actor: "t1".into(),
        actor_name: "tester".into(),
        action: action.into(),
        target: Some("g".into()),
        method: "PUT".into(),
        path: "/api/v1/groups/g/rules".into(),
        status: 200,
        outcome: AuditOutcome::Success,
        detail: json!({}),
    }
}

#[tokio::test]
async fn rule_sets_are_stored_replaced_and_deleted_with_their_audit_entries() {
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::connect(&backend.fresh_url(dir.path()).await)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        let mut r = RuleSetRecord {
            scope: "group:g".into(),
            version: "1".into(),
            text: "version = 1\n".into(),
            sha256: "aa".into(),
            updated_at: 10,
            updated_by: Some("op".into()),
        };
        store
            .put_rule_set(&r, &audit("groups.set_rules"))
            .await
            .unwrap();
        r.version = "2".into();
        r.text = "version = 2\n".into();
        store
            .put_rule_set(&r, &audit("groups.set_rules"))
            .await
            .unwrap();
        assert_eq!(
            store.get_rule_set("group:g").await.unwrap(),
            Some(r.clone())
        );
        assert_eq!(store.list_rule_sets().await.unwrap(), vec![r]);
        assert!(
            store
                .delete_rule_set("group:g", &audit("groups.delete_rules"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_rule_set("group:g", &audit("groups.delete_rules"))
                .await
                .unwrap()
        );
        assert_eq!(store.get_rule_set("group:g").await.unwrap(), None);
        let actions: Vec<String> = store
            .list_audit(&drover_server::store::AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.entry.action)
            .collect();
        assert_eq!(
            actions,
            [
                "groups.delete_rules",
                "groups.set_rules",
                "groups.set_rules"
            ],
            "{backend:?}: one entry per change, none for the refused delete"
        );
    }
}

struct Api {
    app: axum::Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new(backend: Backend) -> (Api, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqlStore::connect(&backend.fresh_url(dir.path()).await)
                .await
                .unwrap(),
        );
        let mut tokens = Vec::new();
        for role in [Role::Operator, Role::Viewer] {
            let m = mint_token();
            let rec = TokenRecord {
                id: m.id.clone(),
                name: format!("{role}-token"),
                role,
                secret_hash: m.secret_hash,
                created_at: drover_server::clock::now_ms(),
                created_by: None,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            };
            store.create_token(&rec, None).await.unwrap();
            tokens.push(m.bearer);
        }
        let device = DeviceRecord {
            id: DEVICE.into(),
            public_key: "00".into(),
            enrollment: Enrollment::Accepted,
            hostname: None,
            tags: Default::default(),
            inventory: [("rules.version".to_string(), "2".to_string())].into(),
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
        };
        let group = |name: &str| GroupRecord {
            name: name.into(),
            query: None,
            members: vec![DEVICE.into()],
            desired: Default::default(),
            created_at: 1,
            updated_at: 1,
            version: 1,
        };
        let changes = [
            Change::PutDevice {
                device,
                expected_version: None,
            },
            Change::PutGroup {
                group: group("a-first"),
                expected_version: None,
            },
            Change::PutGroup {
                group: group("b-second"),
                expected_version: None,
            },
        ];
        assert!(store.apply(&changes, None).await.unwrap());
        let state = AppState::for_tests(store);
        let api = Api {
            app: router(state.clone()),
            state,
            _dir: dir,
        };
        let viewer = tokens.pop().unwrap();
        (api, tokens.pop().unwrap(), viewer)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
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
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn desired(&self) -> drover_server::devices::Effective {
        let device = self.state.store.get_device(DEVICE).await.unwrap().unwrap();
        let groups = self.state.devices.groups().await.unwrap();
        self.state
            .devices
            .effective_full(&device, &groups, "online")
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_refused_rule_set_names_its_line_and_the_device_set_wins_over_its_groups() {
    for backend in Backend::ALL {
        let (api, op, viewer) = Api::new(backend).await;
        let empty_revision = api.desired().await.revision;
        assert!(api.desired().await.rules.is_none());

        // Refused: line and reason, nothing stored, nothing pushed.
        let bad = "version = 4\n[[rules]]\nname = \"x\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"reboot\" }]\n";
        let (s, b) = api
            .call(
                Method::PUT,
                "/api/v1/groups/b-second/rules",
                &op,
                Some(json!({ "text": bad })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert_eq!(b["error"]["code"], "invalid_rules");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("line 5, column 12") && msg.contains("reboot"),
            "{msg}"
        );
        let (s, _) = api
            .call(Method::GET, "/api/v1/groups/b-second/rules", &viewer, None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // A viewer may read but not store.
        let (s, _) = api
            .call(
                Method::PUT,
                "/api/v1/groups/b-second/rules",
                &viewer,
                Some(json!({ "text": MINER })),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, b) = api
            .call(
                Method::PUT,
                "/api/v1/groups/b-second/rules",
                &op,
                Some(json!({ "text": MINER })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["version"], "3");
        assert_eq!(b["rules"], json!(["no-miner"]));
        let (s, b) = api
            .call(Method::GET, "/api/v1/groups/b-second/rules", &viewer, None)
            .await;
        assert_eq!((s, b["text"].as_str()), (StatusCode::OK, Some(MINER)));
        let (s, _) = api
            .call(
                Method::PUT,
                "/api/v1/groups/nope/rules",
                &op,
                Some(json!({ "text": MINER })),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "a group must exist");

        let eff = api.desired().await;
        let rules = eff
            .rules
            .clone()
            .expect("the group's set rides in the desired state");
        assert_eq!(
            (rules.source.as_str(), rules.version.as_str()),
            ("group:b-second", "3")
        );
        assert_ne!(
            eff.revision, empty_revision,
            "the revision covers the rule set"
        );

        // The device's own set wins.
        let own = MINER.replace("version = 3", "version = 9");
        let path = format!("/api/v1/devices/{DEVICE}/rules");
        let (s, b) = api
            .call(Method::PUT, &path, &op, Some(json!({ "text": own })))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let eff2 = api.desired().await;
        assert_eq!(
            eff2.rules.as_ref().unwrap().source,
            format!("device:{DEVICE}")
        );
        assert_ne!(eff2.revision, eff.revision);
        let (s, b) = api.call(Method::GET, &path, &viewer, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["effective_version"], "9");
        assert_eq!(b["reported_version"], "2", "what the device reports: {b}");

        // Deleting it falls back to the group's; the revision follows.
        let (s, _) = api.call(Method::DELETE, &path, &op, None).await;
        assert_eq!(s, StatusCode::OK);
        let eff3 = api.desired().await;
        assert_eq!(eff3.rules.as_ref().unwrap().source, "group:b-second");
        assert_eq!(eff3.revision, eff.revision, "same inputs, same revision");
        let (s, _) = api.call(Method::DELETE, &path, &op, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
