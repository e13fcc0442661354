//! The Admin service end to end: real server, real token, SQLite and PostgreSQL,
//! mTLS with generated certificates, driven through the SDK.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, audit_records, on_each_database, status_of};
use tonic::Code;

fn card_key(alias: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        alias: alias.to_string(),
        key_class: pb::KeyClass::CardAccess as i32,
        service_code: 0x0A01,
        purpose: pb::Purpose::Load as i32,
        algorithm: pb::KeyAlgorithm::Tdes2 as i32,
        allow_legacy_des: false,
        exportable: true,
        owner_entity: String::new(),
    }
}

fn card_access() -> pb::ListKeysRequest {
    pb::ListKeysRequest {
        key_class: pb::KeyClass::CardAccess as i32,
        ..Default::default()
    }
}

fn entity(id: &str, kind: pb::EntityKind) -> pb::RegisterEntityRequest {
    pb::RegisterEntityRequest {
        id: id.to_string(),
        kind: kind as i32,
        name: format!("participant {id}"),
        online: true,
        tamper_resistant: false,
    }
}

#[tokio::test]
async fn refusals_get_the_right_status_and_are_audited() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        officer
            .admin()
            .register_entity(entity("issuer-2-3", pb::EntityKind::Issuer))
            .await
            .unwrap();
        officer
            .admin()
            .register_entity(entity("issuer-2-4", pb::EntityKind::Issuer))
            .await
            .unwrap();
        officer
            .admin()
            .suspend_entity(pb::EntityRef {
                id: "issuer-2-4".into(),
            })
            .await
            .unwrap();

        // Another CA's certificate, claiming to be an officer: refused at the TLS
        // handshake (the call fails in transport; no handler, no audit append).
        let foreign = s.client("foreign-officer-1").await;
        let (c, m) = status_of(
            foreign
                .admin()
                .list_keys(pb::ListKeysRequest::default())
                .await,
        );
        assert!(
            matches!(c, Code::Unknown | Code::Unavailable) && m.contains("transport"),
            "{}: {c:?} {m}",
            s.backend
        );

        // A brand certificate for an entity nobody registered.
        let unknown = s.client("cybershop-l").await;
        let (c, m) = status_of(
            unknown
                .admin()
                .list_keys(pb::ListKeysRequest::default())
                .await,
        );
        assert_eq!(c, Code::Unauthenticated, "{m}");
        assert!(m.contains("not registered"), "{m}");

        // A suspended entity.
        let suspended = s.client("issuer-2-4").await;
        let (c, m) = status_of(
            suspended
                .admin()
                .list_keys(pb::ListKeysRequest::default())
                .await,
        );
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert!(m.starts_with("rule 2"), "{m}");

        // An active entity that is not an officer.
        let issuer = s.client("issuer-2-3").await;
        let (c, m) = status_of(issuer.admin().create_key(card_key("key-x")).await);
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert!(m.starts_with("rule 7"), "{m}");

        let records = audit_records(&officer, "").await;
        let denied = |caller: &str| {
            records.iter().any(|r| {
                r.caller == caller
                    && r.outcome == pb::AuditOutcome::Denied as i32
                    && !r.cert_fingerprint.is_empty()
            })
        };
        assert!(
            !records.iter().any(|r| r.caller == "unauthenticated"),
            "a refused handshake appends no record of its own"
        );
        assert!(denied("cybershop-l"), "unknown entity refusal audited");
        assert!(denied("issuer-2-4"), "suspended entity refusal audited");
        assert!(
            records.iter().any(|r| r.caller == "issuer-2-3"
                && r.operation == "Admin/CreateKey"
                && r.reason.starts_with("rule 7")),
            "non-officer refusal audited with its rule"
        );
        assert!(
            officer
                .admin()
                .list_keys(card_access())
                .await
                .unwrap()
                .keys
                .is_empty()
        );
        s
    })
    .await;
}

#[tokio::test]
async fn bad_inputs_are_invalid_arguments_and_change_nothing() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        admin.create_key(card_key("key-a")).await.unwrap();
        admin
            .register_entity(entity("issuer-2-3", pb::EntityKind::Issuer))
            .await
            .unwrap();
        let keys_before = admin.list_keys(card_access()).await.unwrap();
        let objects_before = token_objects(&s).await;

        let bad_keys = [
            (
                "unknown algorithm",
                pb::CreateKeyRequest {
                    algorithm: 99,
                    ..card_key("key-b")
                },
            ),
            ("empty alias", card_key("")),
            ("alias characters", card_key("Key A")),
            ("alias length", card_key(&"k".repeat(65))),
            (
                "service code",
                pb::CreateKeyRequest {
                    service_code: 70_000,
                    ..card_key("key-b")
                },
            ),
            (
                "DES without the legacy flag",
                pb::CreateKeyRequest {
                    algorithm: pb::KeyAlgorithm::Des as i32,
                    ..card_key("key-b")
                },
            ),
            (
                "no purpose",
                pb::CreateKeyRequest {
                    purpose: 0,
                    ..card_key("key-b")
                },
            ),
            (
                "unknown class",
                pb::CreateKeyRequest {
                    key_class: 42,
                    ..card_key("key-b")
                },
            ),
        ];
        for (what, req) in bad_keys {
            let (c, m) = status_of(admin.create_key(req).await);
            assert_eq!(c, Code::InvalidArgument, "{}: {what}: {m}", s.backend);
        }
        admin
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "key-a".into(),
                version: 1,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        let (c, m) = status_of(
            admin
                .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                    alias: "key-a".into(),
                    version: 1,
                    waiting_days: Some(0),
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "waiting period 0: {m}");

        let tie = |entity: &str, alias: &str, from: i64, until: i64| pb::CreateTieUpRequest {
            entity_id: entity.into(),
            keys: vec![pb::TieUpKey {
                alias: alias.into(),
                mode: pb::TieUpMode::Supply as i32,
            }],
            valid_from: from,
            valid_until: until,
            ..Default::default()
        };
        for (what, req) in [
            ("unknown key", tie("issuer-2-3", "key-z", 0, 0)),
            ("unknown entity", tie("issuer-9-9", "key-a", 0, 0)),
            (
                "window ends before it starts",
                tie("issuer-2-3", "key-a", 2_000_000_000_000, 1_900_000_000_000),
            ),
            (
                "no mode",
                pb::CreateTieUpRequest {
                    keys: vec![pb::TieUpKey {
                        alias: "key-a".into(),
                        mode: 0,
                    }],
                    ..tie("issuer-2-3", "key-a", 0, 0)
                },
            ),
        ] {
            let (c, m) = status_of(admin.create_tie_up(req).await);
            assert_eq!(c, Code::InvalidArgument, "{what}: {m}");
        }

        // Nothing changed but the state change made on purpose above.
        let keys_after = admin.list_keys(card_access()).await.unwrap();
        assert_eq!(keys_after.keys.len(), keys_before.keys.len());
        assert_eq!(keys_after.keys[0].versions.len(), 1);
        assert_eq!(
            keys_after.keys[0].versions[0].state,
            pb::KeyState::Retired as i32
        );
        assert!(
            admin
                .list_tie_ups(pb::ListTieUpsRequest::default())
                .await
                .unwrap()
                .tie_ups
                .is_empty()
        );
        assert_eq!(
            token_objects(&s).await,
            objects_before,
            "no token object was created"
        );
        // Each refusal is audited with its reason.
        let failed = audit_records(&officer, "")
            .await
            .into_iter()
            .filter(|r| r.outcome == pb::AuditOutcome::Failed as i32)
            .count();
        assert_eq!(failed, 13);
        s
    })
    .await;
}

async fn token_objects(s: &TestServer) -> usize {
    let mut conn = s.state.store.conn().await.unwrap();
    brandkms::store::keys::live_versions(&mut conn)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn rotation_keeps_the_old_version_and_destruction_waits_and_can_be_cancelled() {
    for db in brandkms::testing::databases().await {
        let service = brandkms::config::ServiceSettings {
            destruction_check_secs: 1,
            ..TestServer::single_officer()
        };
        let s = TestServer::start_with(db, service).await;
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        let created = admin.create_key(card_key("key-a")).await.unwrap();
        assert_eq!(created.versions.len(), 1);
        assert_eq!(created.versions[0].kcv.len(), 3);

        let rotated = admin
            .rotate_key(pb::RotateKeyRequest {
                alias: "key-a".into(),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        let states: Vec<i32> = rotated.versions.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [pb::KeyState::AuthOnly as i32, pb::KeyState::Active as i32],
            "{}",
            s.backend
        );
        assert_ne!(rotated.versions[0].kcv, rotated.versions[1].kcv);
        // The old version's object is still in the token, usable for authentication.
        let v1 = version_id(&s, "key-a", 1).await;
        assert!(s.state.hsm.run(move |h| h.exists(&v1)).await.unwrap());

        // Only a retired version is scheduled; it waits, and can be cancelled.
        let (c, _) = status_of(
            admin
                .schedule_key_version_destruction(destroy("key-a", 1, Some(1)))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        set_state(&mut admin, "key-a", 1, pb::KeyState::Retired).await;
        let pending = admin
            .schedule_key_version_destruction(destroy("key-a", 1, Some(1)))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(
            pending.versions[0].state,
            pb::KeyState::PendingDestruction as i32
        );
        let one_day = pending.versions[0].destroy_after - pending.versions[0].state_changed_at;
        assert_eq!(one_day, 86_400_000);
        // Several scheduler periods pass: not due, nothing destroyed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let v1 = version_id(&s, "key-a", 1).await;
        assert!(s.state.hsm.run(move |h| h.exists(&v1)).await.unwrap());
        let cancelled = admin
            .cancel_key_version_destruction(pb::CancelKeyVersionDestructionRequest {
                alias: "key-a".into(),
                version: 1,
            })
            .await
            .unwrap();
        assert_eq!(cancelled.versions[0].state, pb::KeyState::Retired as i32);

        // Scheduled again with the default period (7 days); 8 days later it goes.
        let pending = admin
            .schedule_key_version_destruction(destroy("key-a", 1, None))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(
            pending.versions[0].destroy_after - pending.versions[0].state_changed_at,
            7 * 86_400_000
        );
        s.state.clock.advance(Duration::from_secs(8 * 86_400));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let k = admin
                .get_key(pb::GetKeyRequest {
                    alias: "key-a".into(),
                })
                .await
                .unwrap();
            if k.versions[0].state == pb::KeyState::Destroyed as i32 {
                assert!(k.versions[0].destroyed_at > 0);
                assert_eq!(k.versions[1].state, pb::KeyState::Active as i32);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never destroyed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let v1 = version_id(&s, "key-a", 1).await;
        assert!(!s.state.hsm.run(move |h| h.exists(&v1)).await.unwrap());
        let (c, _) = status_of(
            admin
                .cancel_key_version_destruction(pb::CancelKeyVersionDestructionRequest {
                    alias: "key-a".into(),
                    version: 1,
                })
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        assert!(
            audit_records(&officer, "")
                .await
                .iter()
                .any(|r| r.operation == "scheduler.destroy_key_version")
        );
        s.stop().await;
    }
}

fn destroy(
    alias: &str,
    version: u32,
    days: Option<u32>,
) -> pb::ScheduleKeyVersionDestructionRequest {
    pb::ScheduleKeyVersionDestructionRequest {
        alias: alias.into(),
        version,
        waiting_days: days,
    }
}

async fn set_state(
    admin: &mut brandkms_clients::sdk::Admin,
    alias: &str,
    version: u32,
    state: pb::KeyState,
) {
    admin
        .set_key_version_state(pb::SetKeyVersionStateRequest {
            alias: alias.into(),
            version,
            state: state as i32,
        })
        .await
        .unwrap();
}

async fn version_id(s: &TestServer, alias: &str, version: u32) -> brandkms::hsm::ObjectId {
    let mut conn = s.state.store.conn().await.unwrap();
    brandkms::store::keys::version(&mut conn, alias, version)
        .await
        .unwrap()
        .unwrap()
        .cka_id
}

async fn verify(admin: &mut brandkms_clients::sdk::Admin) -> pb::VerifyAuditResponse {
    admin
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
}

/// Issue 14, item 2: the `x-request-id` a caller receives (the `id` of the
/// request's log lines) is in the request's audit record, covered by its hash
/// (format-3 chains), and `ListAudit` finds the record by it.
#[tokio::test]
async fn the_request_id_a_caller_receives_is_in_its_audit_record() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let response = pb::admin_client::AdminClient::new(officer.channel())
            .create_key(card_key("key-r"))
            .await
            .unwrap();
        let id = response
            .metadata()
            .get("x-request-id")
            .expect("an x-request-id")
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 32, "{id}");
        let mut admin = officer.admin();
        let found = admin
            .list_audit(pb::ListAuditRequest {
                request_id: id.clone(),
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .records;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].operation, "Admin/CreateKey");
        assert_eq!(found[0].key_alias, "key-r");
        assert_eq!(found[0].request_id, id);
        // Another request has another id; every record of a request has one
        // (host commands' records, `local:...`, belong to no request).
        let all = admin
            .list_audit(pb::ListAuditRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .records;
        assert!(all.iter().filter(|r| r.request_id == id).count() == 1);
        assert!(
            all.iter()
                .filter(|r| !r.caller.starts_with("local:"))
                .all(|r| !r.request_id.is_empty()),
            "every record of a request has its id: {all:?}"
        );

        // The hash covers it: changing it breaks the chain there.
        assert!(verify(&mut admin).await.intact, "{}", s.backend);
        sqlx::query("UPDATE audit_records SET request_id = 'forged' WHERE request_id = $1")
            .bind(&id)
            .execute(s.state.store.pool())
            .await
            .unwrap();
        let report = verify(&mut admin).await;
        assert!(!report.intact, "{report:?}");
        assert!(report.problem.contains("altered"), "{report:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn verify_audit_finds_an_altered_and_a_deleted_record() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        admin.create_key(card_key("key-a")).await.unwrap();
        admin
            .register_entity(entity("issuer-2-3", pb::EntityKind::Issuer))
            .await
            .unwrap();
        let report = admin
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert!(report.intact, "{}: {report:?}", s.backend);
        assert!(report.records >= 5);

        let chain = s.state.auditor.chain().to_string();
        sqlx::query("UPDATE audit_records SET caller = 'officer-2' WHERE chain = $1 AND seq = 3")
            .bind(&chain)
            .execute(s.state.store.pool())
            .await
            .unwrap();
        let report = admin
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert!(!report.intact);
        assert_eq!(
            (report.first_broken_chain.as_str(), report.first_broken_seq),
            (chain.as_str(), 3),
            "{report:?}"
        );

        sqlx::query("DELETE FROM audit_records WHERE chain = $1 AND seq = 2")
            .bind(&chain)
            .execute(s.state.store.pool())
            .await
            .unwrap();
        let report = admin
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert_eq!(report.first_broken_seq, 2, "{report:?}");
        assert!(report.problem.contains("missing"), "{report:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn entities_and_tie_ups_round_trip() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        admin.create_key(card_key("key-a")).await.unwrap();
        admin
            .create_key(pb::CreateKeyRequest {
                purpose: pb::Purpose::Purchase as i32,
                ..card_key("key-b")
            })
            .await
            .unwrap();
        admin
            .register_entity(entity("issuer-2-3", pb::EntityKind::Issuer))
            .await
            .unwrap();
        admin
            .register_entity(entity("bank-center-b", pb::EntityKind::BankCenter))
            .await
            .unwrap();
        let (c, _) = status_of(
            admin
                .register_entity(entity("issuer-2-3", pb::EntityKind::Issuer))
                .await,
        );
        assert_eq!(c, Code::AlreadyExists);

        let t = admin
            .create_tie_up(pb::CreateTieUpRequest {
                entity_id: "bank-center-b".into(),
                keys: vec![
                    pb::TieUpKey {
                        alias: "key-a".into(),
                        mode: pb::TieUpMode::Supply as i32,
                    },
                    pb::TieUpKey {
                        alias: "key-b".into(),
                        mode: pb::TieUpMode::Supply as i32,
                    },
                ],
                sponsor_issuer: "issuer-2-3".into(),
                per_transaction_limit: Some(50_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(t.state, pb::TieUpState::Active as i32);
        assert_eq!(t.keys.len(), 2);
        let (c, m) = status_of(
            admin
                .create_tie_up(pb::CreateTieUpRequest {
                    entity_id: "bank-center-b".into(),
                    keys: vec![pb::TieUpKey {
                        alias: "key-a".into(),
                        mode: pb::TieUpMode::Hold as i32,
                    }],
                    sponsor_issuer: "bank-center-b".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "a sponsor must be an issuer: {m}");

        let updated = admin
            .update_tie_up(pb::UpdateTieUpRequest {
                id: t.id.clone(),
                state: pb::TieUpState::Suspended as i32,
                valid_until: Some(t.valid_from + 86_400_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(updated.state, pb::TieUpState::Suspended as i32);
        assert_eq!(updated.valid_until, t.valid_from + 86_400_000);
        let ended = admin
            .terminate_tie_up(pb::TieUpRef { id: t.id.clone() })
            .await
            .unwrap();
        assert_eq!(ended.state, pb::TieUpState::Terminated as i32);
        let (c, _) = status_of(
            admin
                .update_tie_up(pb::UpdateTieUpRequest {
                    id: t.id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        let (c, _) = status_of(
            admin
                .terminate_tie_up(pb::TieUpRef {
                    id: "tu-nope".into(),
                })
                .await,
        );
        assert_eq!(c, Code::NotFound);

        let listed = admin
            .list_tie_ups(pb::ListTieUpsRequest {
                entity_id: "bank-center-b".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.tie_ups.len(), 1);
        let entities = admin
            .list_entities(pb::ListEntitiesRequest::default())
            .await
            .unwrap()
            .entities;
        assert_eq!(entities.len(), 4, "two officers and two participants");
        let resumed = admin
            .resume_entity(pb::EntityRef {
                id: "issuer-2-3".into(),
            })
            .await;
        assert_eq!(
            status_of(resumed).0,
            Code::FailedPrecondition,
            "already active"
        );
        s
    })
    .await;
}

#[tokio::test]
async fn every_list_pages_and_list_audit_pages_through_2500_records() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();

        // 2,500 records of one operation, appended by the service's own auditor
        // (token MAC, chained), plus the officers' calls around them.
        for i in 0..2500u32 {
            let event = brandkms::audit::AuditEvent::allowed("officer-1", "Test/Fill").outcome(
                brandkms::audit::Outcome::Allowed,
                Some(format!("record {i}")),
            );
            s.state.auditor.record(&event).await.unwrap();
        }
        let fill = |page_token: String| pb::ListAuditRequest {
            operation: "Test/Fill".into(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin.list_audit(fill(token)).await.unwrap();
            pages.push(page.records.len());
            let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, [1000, 1000, 500], "{}", s.backend);
        let all = admin.list_audit_all(fill(String::new())).await.unwrap();
        let mut seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), 2500, "no record twice, none skipped");
        assert!(all.iter().all(|r| r.hash.len() == 32));

        // The default page is 100; above 1000 is lowered to 1000; a token only
        // serves the filters it was given with.
        let first = admin.list_audit(fill(String::new())).await.unwrap();
        let default = admin
            .list_audit(pb::ListAuditRequest {
                operation: "Test/Fill".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(default.records.len(), 100);
        let largest = admin
            .list_audit(pb::ListAuditRequest {
                page_size: 5000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            largest.records.len(),
            1000,
            "a larger page_size is lowered to 1000"
        );
        let (c, m) = status_of(
            admin
                .list_audit(pb::ListAuditRequest {
                    operation: "Admin/GetKey".into(),
                    page_token: first.next_page_token,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("page_token"), "{m}");

        // The registries page too: three keys, one per page, in alias order.
        for alias in ["key-c", "key-a", "key-b"] {
            admin.create_key(card_key(alias)).await.unwrap();
        }
        let mut aliases = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_keys(pb::ListKeysRequest {
                    page_size: 1,
                    page_token: token,
                    ..card_access()
                })
                .await
                .unwrap();
            aliases.extend(page.keys.into_iter().map(|k| k.alias));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(aliases, ["key-a", "key-b", "key-c"]);
        let entities = admin
            .list_entities_all(pb::ListEntitiesRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(entities.len(), 2, "the two officers");
        s
    })
    .await;
}

#[tokio::test]
async fn version_0_names_the_active_version_and_the_audit_names_the_number() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        admin.create_key(card_key("key-v")).await.unwrap();
        // Destroying "the active version" is refused: only a retired one is.
        let (c, m) = status_of(
            admin
                .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                    alias: "key-v".into(),
                    version: 0,
                    waiting_days: Some(7),
                })
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition, "{m}");
        let retired = admin
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "key-v".into(),
                version: 0,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        assert_eq!(retired.versions[0].state, pb::KeyState::Retired as i32);
        let record = audit_records(&officer, "Admin/SetKeyVersionState")
            .await
            .pop()
            .unwrap();
        assert_eq!(
            (record.key_alias.as_str(), record.key_version),
            ("key-v", Some(1))
        );
        // Now there is no active version to name.
        let (c, _) = status_of(
            admin
                .set_key_version_state(pb::SetKeyVersionStateRequest {
                    alias: "key-v".into(),
                    version: 0,
                    state: pb::KeyState::Active as i32,
                })
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition);
        s
    })
    .await;
}

#[tokio::test]
async fn verify_audit_during_concurrent_appends_never_reports_a_break() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut admin = officer.admin();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let state = std::sync::Arc::clone(&s.state);
                tokio::spawn(async move {
                    for i in 0..150u32 {
                        let event = brandkms::audit::AuditEvent::allowed("officer-1", "Test/Load")
                            .outcome(
                                brandkms::audit::Outcome::Allowed,
                                Some(format!("writer {w} record {i}")),
                            );
                        state.auditor.record(&event).await.unwrap();
                    }
                })
            })
            .collect();
        let mut reports = Vec::new();
        while !writers.iter().all(|w| w.is_finished()) {
            reports.push(
                admin
                    .verify_audit(pb::VerifyAuditRequest::default())
                    .await
                    .unwrap(),
            );
        }
        for w in writers {
            w.await.unwrap();
        }
        assert!(!reports.is_empty());
        for r in &reports {
            assert!(
                r.intact,
                "{}: a false alarm during appends: {r:?}",
                s.backend
            );
        }
        let last = admin
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert!(last.intact && last.records >= 600, "{last:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn a_thousand_refused_handshakes_make_one_summary_record_per_period() {
    let settings = brandkms::config::ServiceSettings {
        refused_handshake_summary_secs: 2,
        ..TestServer::single_officer()
    };
    let s = TestServer::start_with(brandkms::testing::sqlite_db(), settings).await;
    let officer = s.client("officer-1").await;
    // Records other than this test's own listings.
    let others = |records: Vec<pb::AuditRecord>| {
        records
            .into_iter()
            .filter(|r| r.operation != "Admin/ListAudit")
            .count()
    };
    let before = others(audit_records(&officer, "").await);
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        let r = match brandkms_clients::Client::connect(&s.options("foreign-officer-1")).await {
            Ok(foreign) => foreign.healthy().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a foreign certificate was served");
    }
    // Wait (polling, at most 60 s) until the summaries account for all 1,000.
    let counted = |summaries: &[pb::AuditRecord]| -> u64 {
        summaries
            .iter()
            .map(|r| {
                r.reason
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let summaries = loop {
        let summaries = audit_records(&officer, "TLS/RefusedHandshakes").await;
        if counted(&summaries) >= 1000 || started.elapsed().as_secs() > 60 {
            break summaries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(counted(&summaries), 1000, "{summaries:?}");
    let periods = started.elapsed().as_secs() / 2 + 1;
    assert!(
        summaries.len() as u64 <= periods,
        "{} summaries in {periods} periods",
        summaries.len()
    );
    assert!(
        summaries
            .iter()
            .all(|r| r.outcome == pb::AuditOutcome::Denied as i32)
    );
    // Nothing else was appended for them: the audit trail grew by the summaries
    // and this test's own reads.
    let after = others(audit_records(&officer, "").await);
    assert_eq!(after - before, summaries.len(), "{before} -> {after}");
    s.stop().await;
}
