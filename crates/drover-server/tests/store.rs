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

mod devices {
    use super::*;
    use drover_server::store::{
        Change, DeviceRecord, EnrollTokenRecord, Enrollment, GroupRecord, PreauthRecord, Reported,
    };

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            public_key: format!("pk-{id}"),
            enrollment: Enrollment::Pending,
            hostname: Some("h".into()),
            tags: [("region".to_string(), "eu".to_string())].into(),
            inventory: [("arch".to_string(), "aarch64".to_string())].into(),
            inventory_hash: Some("ih".into()),
            desired: [("k".to_string(), "v".to_string())].into(),
            reported: Some(Reported {
                revision: "r".into(),
                status: drover_server::store::ApplyStatus::Applied,
                config: Default::default(),
                error: None,
                at: 5,
            }),
            agent_version: Some("0.1.0".into()),
            cert_serial: Some("01".into()),
            cert_not_after: Some(99),
            enrolled_via: Some("operator".into()),
            created_at: 1,
            updated_at: 2,
            last_seen: Some(3),
            version: 1,
        }
    }

    #[tokio::test]
    async fn devices_round_trip_and_updates_need_the_version_they_read() {
        each_backend(|store, backend, _| async move {
            let d = device("aaaaaaaaaaaaaaaaaaaaaaaa");
            assert!(
                store
                    .apply(
                        &[Change::PutDevice {
                            device: d.clone(),
                            expected_version: None
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.get_device(&d.id).await.unwrap(),
                Some(d.clone()),
                "{backend:?}"
            );
            assert_eq!(
                store
                    .get_device_by_key(&d.public_key)
                    .await
                    .unwrap()
                    .map(|x| x.id),
                Some(d.id.clone())
            );
            // Inserting the same id again is a conflict.
            let again = store
                .apply(
                    &[Change::PutDevice {
                        device: d.clone(),
                        expected_version: None,
                    }],
                    None,
                )
                .await;
            assert!(
                matches!(again, Err(drover_server::store::StoreError::Conflict(_))),
                "{backend:?}: {again:?}"
            );

            let mut changed = d.clone();
            changed.enrollment = Enrollment::Accepted;
            assert!(
                store
                    .apply(
                        &[Change::PutDevice {
                            device: changed.clone(),
                            expected_version: Some(1)
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            // A writer that read version 1 loses, and nothing of its unit of work stays.
            let mut stale = d.clone();
            stale.tags.clear();
            let group = GroupRecord {
                name: "g".into(),
                query: None,
                members: vec![],
                desired: Default::default(),
                created_at: 1,
                updated_at: 1,
                version: 1,
            };
            let ok = store
                .apply(
                    &[
                        Change::PutGroup {
                            group,
                            expected_version: None,
                        },
                        Change::PutDevice {
                            device: stale,
                            expected_version: Some(1),
                        },
                    ],
                    Some(&audit("x", "y")),
                )
                .await
                .unwrap();
            assert!(!ok, "{backend:?}: stale version must lose");
            assert!(
                store.get_group("g").await.unwrap().is_none(),
                "{backend:?}: rolled back"
            );
            assert!(
                store
                    .list_audit(&AuditQuery {
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .is_empty()
            );
            let now = store.get_device(&d.id).await.unwrap().unwrap();
            assert_eq!(
                (now.enrollment, now.version, now.tags.len()),
                (Enrollment::Accepted, 2, 1)
            );

            // Presence: last_seen only moves forward, without a version bump.
            store
                .touch_devices(&[(d.id.clone(), 10), ("unknown".into(), 10)])
                .await
                .unwrap();
            store.touch_devices(&[(d.id.clone(), 7)]).await.unwrap();
            let now = store.get_device(&d.id).await.unwrap().unwrap();
            assert_eq!((now.last_seen, now.version), (Some(10), 2));
            assert_eq!(store.list_devices().await.unwrap().len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn enrollment_token_uses_run_out_exactly() {
        each_backend(|store, backend, _| async move {
            let t = EnrollTokenRecord {
                id: "t1".into(),
                name: "n".into(),
                secret_hash: "h".into(),
                tags: Default::default(),
                uses_left: Some(3),
                expires_at: Some(1_000),
                created_at: 1,
                created_by: None,
                revoked_at: None,
                version: 1,
            };
            assert!(
                store
                    .apply(
                        &[Change::PutEnrollToken {
                            token: t,
                            expected_version: None
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            // Ten concurrent uses of a three-use token: exactly three succeed.
            let consume = [Change::ConsumeEnrollToken {
                id: "t1".into(),
                now: 500,
            }];
            let results = futures_join_all((0..10).map(|_| store.apply(&consume, None))).await;
            let used = results
                .into_iter()
                .filter(|r| matches!(r, Ok(true)))
                .count();
            assert_eq!(used, 3, "{backend:?}");
            assert_eq!(
                store
                    .get_enroll_token("t1")
                    .await
                    .unwrap()
                    .unwrap()
                    .uses_left,
                Some(0)
            );
            // Expired: no use even with uses left.
            let mut t2 = store.get_enroll_token("t1").await.unwrap().unwrap();
            t2.id = "t2".into();
            t2.uses_left = None;
            assert!(
                store
                    .apply(
                        &[Change::PutEnrollToken {
                            token: t2,
                            expected_version: None
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .apply(
                        &[Change::ConsumeEnrollToken {
                            id: "t2".into(),
                            now: 500
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .apply(
                        &[Change::ConsumeEnrollToken {
                            id: "t2".into(),
                            now: 2_000
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert_eq!(store.list_enroll_tokens().await.unwrap().len(), 2);
        })
        .await;
    }

    async fn futures_join_all<F: std::future::Future>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut out = Vec::new();
        let pinned: Vec<_> = futs.map(Box::pin).collect();
        // Poll them concurrently on this task.
        let mut pending: Vec<_> = pinned.into_iter().map(Some).collect();
        let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut all = true;
            for (i, slot) in pending.iter_mut().enumerate() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            results[i] = Some(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => all = false,
                    }
                }
            }
            if all {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.extend(results.into_iter().map(|r| r.expect("ready")));
        out
    }

    #[tokio::test]
    async fn groups_and_preauthorized_keys_round_trip() {
        each_backend(|store, backend, _| async move {
            let g = GroupRecord {
                name: "eu".into(),
                query: Some("tag.region = eu".into()),
                members: vec!["a".into(), "b".into()],
                desired: [("ntp".to_string(), "pool".to_string())].into(),
                created_at: 1,
                updated_at: 1,
                version: 1,
            };
            assert!(
                store
                    .apply(
                        &[Change::PutGroup {
                            group: g.clone(),
                            expected_version: None
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.get_group("eu").await.unwrap(),
                Some(g.clone()),
                "{backend:?}"
            );
            assert!(
                store
                    .apply(&[Change::DeleteGroup { name: "eu".into() }], None)
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .apply(&[Change::DeleteGroup { name: "eu".into() }], None)
                    .await
                    .unwrap(),
                "deleting twice reports nothing deleted"
            );
            let p = PreauthRecord {
                public_key: "pk".into(),
                device_id: "d".into(),
                tags: Default::default(),
                created_at: 1,
                created_by: None,
            };
            assert!(
                store
                    .apply(&[Change::PutPreauth(p.clone())], None)
                    .await
                    .unwrap()
            );
            assert_eq!(store.get_preauth("pk").await.unwrap(), Some(p));
            assert_eq!(store.list_preauth().await.unwrap().len(), 1);
            assert!(
                store
                    .apply(
                        &[Change::DeletePreauth {
                            public_key: "pk".into()
                        }],
                        None
                    )
                    .await
                    .unwrap()
            );
            assert!(store.get_preauth("pk").await.unwrap().is_none());
        })
        .await;
    }
}

mod releases {
    use super::*;
    use drover_proto::device::UpdateState;
    use drover_server::store::{
        ArtifactRecord, DeploymentRecord, ReleaseRecord, ReleaseStore, UpdateStatusRecord,
    };

    fn release(id: &str) -> ReleaseRecord {
        let (name, version) = id.split_once('@').unwrap();
        ReleaseRecord {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            device_types: vec!["rpi4".into(), "x86".into()],
            manifest: r#"{"manifest":"{}","signatures":[]}"#.into(),
            key_list: None,
            created_at: 10,
            created_by: Some("ci".into()),
        }
    }

    #[tokio::test]
    async fn releases_deployments_and_reports_round_trip() {
        each_backend(|store, backend, _| async move {
            let a = ArtifactRecord {
                sha256: "ab".repeat(32),
                size: 42,
                created_at: 1,
            };
            assert!(store.put_artifact(&a).await.unwrap());
            assert!(
                !store.put_artifact(&a).await.unwrap(),
                "{backend:?}: second put is a no-op"
            );
            assert_eq!(
                store.get_artifact(&a.sha256).await.unwrap(),
                Some(a.clone())
            );
            assert_eq!(store.get_artifact(&"cd".repeat(32)).await.unwrap(), None);

            let r = release("app@1.0.0");
            assert!(
                store
                    .create_release(&r, &audit("releases.publish", "op"))
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .create_release(&r, &audit("releases.publish", "op"))
                    .await
                    .unwrap(),
                "{backend:?}: the same id twice is refused"
            );
            assert_eq!(store.get_release(&r.id).await.unwrap(), Some(r.clone()));
            assert_eq!(store.list_releases().await.unwrap(), vec![r.clone()]);
            let q = AuditQuery {
                action: Some("releases.publish".into()),
                limit: 10,
                ..Default::default()
            };
            assert_eq!(
                store.list_audit(&q).await.unwrap().len(),
                1,
                "{backend:?}: one audit entry"
            );

            let d1 = DeploymentRecord {
                id: "dep_1".into(),
                release_id: r.id.clone(),
                target: "group:g".into(),
                allow_downgrade: true,
                created_at: 20,
                created_by: Some("op".into()),
            };
            let devices = vec!["d1".to_string(), "d2".to_string()];
            store
                .create_deployment(&d1, &devices, &audit("deployments.create", "op"))
                .await
                .unwrap();
            assert_eq!(
                store.get_deployment("dep_1").await.unwrap(),
                Some(d1.clone())
            );
            let dd = store.deployment_devices("dep_1").await.unwrap();
            assert_eq!(dd.len(), 2);
            assert!(dd.iter().all(|x| x.state == UpdateState::Pending));
            let mut targets = store.device_targets().await.unwrap();
            targets.sort();
            assert_eq!(
                targets,
                vec![("d1".into(), "dep_1".into()), ("d2".into(), "dep_1".into())]
            );

            // A newer deployment takes over d2's target only.
            let d2 = DeploymentRecord {
                id: "dep_2".into(),
                allow_downgrade: false,
                created_at: 30,
                ..d1.clone()
            };
            store
                .create_deployment(&d2, &["d2".to_string()], &audit("deployments.create", "op"))
                .await
                .unwrap();
            let mut targets = store.device_targets().await.unwrap();
            targets.sort();
            assert_eq!(
                targets,
                vec![("d1".into(), "dep_1".into()), ("d2".into(), "dep_2".into())],
                "{backend:?}"
            );
            assert_eq!(
                store
                    .list_deployments(10)
                    .await
                    .unwrap()
                    .iter()
                    .map(|d| d.id.as_str())
                    .collect::<Vec<_>>(),
                vec!["dep_2", "dep_1"]
            );

            let report = UpdateStatusRecord {
                deployment_id: "dep_1",
                device_id: "d1",
                state: UpdateState::RolledBack,
                progress: Some(100),
                reason: Some("health_check_failed"),
                message: Some("http check failed"),
                at: 40,
            };
            assert!(store.record_update_status(&report).await.unwrap());
            let outsider = UpdateStatusRecord {
                device_id: "d3",
                ..report.clone()
            };
            assert!(
                !store.record_update_status(&outsider).await.unwrap(),
                "{backend:?}: a device outside the deployment writes nothing"
            );
            let dd = store.deployment_devices("dep_1").await.unwrap();
            let d1row = dd.iter().find(|x| x.device_id == "d1").unwrap();
            assert_eq!(d1row.state, UpdateState::RolledBack);
            assert_eq!(d1row.reason.as_deref(), Some("health_check_failed"));
            assert_eq!(d1row.progress, Some(100));
            assert_eq!(d1row.updated_at, 40);
        })
        .await;
    }
}
