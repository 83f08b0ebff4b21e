//! Store behaviour, run against every backend (SQLite and PostgreSQL).

use drover_proto::api::{AuditOutcome, Role};
use drover_server::store::{AuditQuery, NewAudit, RevokeOutcome, SqlStore, Store, TokenRecord};
use drover_testkit::Backend;

fn token(id: &str, role: Role) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("name-{id}"),
        role,
        secret_hash: "ab".repeat(32),
        created_at: 1_000,
        created_by: None,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    }
}

fn audit(action: &str, actor: &str) -> NewAudit {
    NewAudit {
        at: 2_000,
        actor: actor.into(),
        actor_name: "tester".into(),
        action: action.into(),
        target: Some("t".into()),
        method: "POST".into(),
        path: "/api/v1/x".into(),
        status: 201,
        outcome: AuditOutcome::Success,
        detail: serde_json::json!({"k": "v"}),
    }
}

/// Runs `f` once per backend with a fresh, migrated store.
async fn each_backend<F, Fut>(f: F)
where
    F: Fn(SqlStore, Backend, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.fresh_url(dir.path()).await;
        let store = SqlStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        f(store, backend, url).await;
    }
}

#[tokio::test]
async fn tokens_round_trip_with_their_audit_entry() {
    each_backend(|store, backend, _| async move {
        let t = token("0123456789abcdef", Role::Operator);
        store
            .create_token(&t, Some(&audit("tokens.create", "admin1")))
            .await
            .unwrap();
        assert_eq!(
            store.get_token(&t.id).await.unwrap(),
            Some(t.clone()),
            "{backend:?}"
        );
        assert_eq!(store.list_tokens().await.unwrap(), vec![t.clone()]);
        assert_eq!(store.count_tokens().await.unwrap(), 1);
        assert_eq!(store.get_token("nope").await.unwrap(), None);
        let log = store
            .list_audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].entry,
            audit("tokens.create", "admin1"),
            "{backend:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_change_writes_neither_row_nor_audit() {
    each_backend(|store, backend, _| async move {
        let t = token("0123456789abcdef", Role::Viewer);
        store.create_token(&t, None).await.unwrap();
        // Same id again: the insert fails, so its audit entry must not stay.
        let err = store
            .create_token(&t, Some(&audit("tokens.create", "x")))
            .await;
        assert!(err.is_err(), "{backend:?}: duplicate id must fail");
        let log = store
            .list_audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            log.is_empty(),
            "{backend:?}: audit entry of a failed change was kept"
        );
    })
    .await;
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked() {
    each_backend(|store, backend, _| async move {
        store.create_token(&token("aaaaaaaaaaaaaaaa", Role::Admin), None).await.unwrap();
        store.create_token(&token("bbbbbbbbbbbbbbbb", Role::Admin), None).await.unwrap();
        store.create_token(&token("cccccccccccccccc", Role::Viewer), None).await.unwrap();
        let a = audit("tokens.revoke", "aaaaaaaaaaaaaaaa");
        assert!(matches!(store.revoke_token("bbbbbbbbbbbbbbbb", 5, &a).await.unwrap(), RevokeOutcome::Revoked(t) if t.revoked_at == Some(5)));
        assert_eq!(store.revoke_token("aaaaaaaaaaaaaaaa", 6, &a).await.unwrap(), RevokeOutcome::LastAdmin, "{backend:?}");
        assert!(matches!(store.revoke_token("bbbbbbbbbbbbbbbb", 7, &a).await.unwrap(), RevokeOutcome::AlreadyRevoked(_)));
        assert_eq!(store.revoke_token("dddddddddddddddd", 7, &a).await.unwrap(), RevokeOutcome::NotFound);
        assert!(matches!(store.revoke_token("cccccccccccccccc", 8, &a).await.unwrap(), RevokeOutcome::Revoked(_)));
        // Only the two real revocations were audited.
        let log = store.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(log.len(), 2, "{backend:?}");
        assert!(store.get_token("aaaaaaaaaaaaaaaa").await.unwrap().unwrap().revoked_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn concurrent_revocations_leave_one_admin() {
    each_backend(|store, backend, _| async move {
        store
            .create_token(&token("aaaaaaaaaaaaaaaa", Role::Admin), None)
            .await
            .unwrap();
        store
            .create_token(&token("bbbbbbbbbbbbbbbb", Role::Admin), None)
            .await
            .unwrap();
        let a = audit("tokens.revoke", "x");
        let (r1, r2) = tokio::join!(
            store.revoke_token("aaaaaaaaaaaaaaaa", 5, &a),
            store.revoke_token("bbbbbbbbbbbbbbbb", 5, &a)
        );
        let revoked = [r1.unwrap(), r2.unwrap()]
            .iter()
            .filter(|r| matches!(r, RevokeOutcome::Revoked(_)))
            .count();
        assert_eq!(revoked, 1, "{backend:?}: exactly one admin must survive");
    })
    .await;
}

#[tokio::test]
async fn audit_pages_backwards_and_filters() {
    each_backend(|store, backend, _| async move {
        for i in 0..25 {
            let actor = if i % 2 == 0 { "even" } else { "odd" };
            store
                .append_audit(&audit(&format!("act.{}", i % 3), actor))
                .await
                .unwrap();
        }
        let page1 = store
            .list_audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page1.len(), 10);
        assert!(
            page1.windows(2).all(|w| w[0].id > w[1].id),
            "{backend:?}: newest first"
        );
        let page2 = store
            .list_audit(&AuditQuery {
                limit: 10,
                before: Some(page1[9].id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page2.len(), 10);
        assert!(page2[0].id < page1[9].id);
        let odd = store
            .list_audit(&AuditQuery {
                limit: 100,
                actor: Some("odd".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(odd.len(), 12);
        let act0 = store
            .list_audit(&AuditQuery {
                limit: 100,
                action: Some("act.0".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(act0.len(), 9);
    })
    .await;
}

#[tokio::test]
async fn reopening_keeps_state_and_does_not_reapply_migrations() {
    each_backend(|store, backend, url| async move {
        store
            .create_token(&token("0123456789abcdef", Role::Admin), None)
            .await
            .unwrap();
        store.set_meta("k", "v1").await.unwrap();
        store.set_meta("k", "v2").await.unwrap();
        store.close().await;
        let again = SqlStore::connect(&url).await.unwrap();
        assert_eq!(again.count_tokens().await.unwrap(), 1, "{backend:?}");
        assert_eq!(again.get_meta("k").await.unwrap().as_deref(), Some("v2"));
        assert_eq!(again.get_meta("missing").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_closed_pool_reports_unavailable() {
    each_backend(|store, backend, _| async move {
        store.close().await;
        let err = store.ping().await.unwrap_err();
        assert!(
            matches!(err, drover_server::store::StoreError::Unavailable(_)),
            "{backend:?}: {err:?}"
        );
    })
    .await;
}
