//! The store on SQLite and on PostgreSQL (when BRANDKMS_TEST_DATABASE_URL is set;
//! always under CI), with the audit chain MACed in a real token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::audit::{AuditEvent, Auditor, Outcome};
use brandkms::hsm::{Exportability, KeyRole, KeySpec, ObjectId, SecretAlgorithm};
use brandkms::store::entities::{self, EntityRecord};
use brandkms::store::keys::{self, KeyRecord, KeyVersionRecord};
use brandkms::store::{Store, audit as audit_rows, now_ms};
use brandkms::testing::{self, TestDb};
use brandkms_policy::{Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, Purpose};

async fn each_db<F, Fut>(f: F)
where
    F: Fn(Store, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dbs: Vec<TestDb> = testing::databases().await;
    for db in &dbs {
        let store = Store::connect(&db.settings)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", db.backend));
        f(store.clone(), db.backend).await;
        store.close().await;
    }
}

fn entity(id: &str, kind: EntityKind) -> EntityRecord {
    let now = now_ms();
    EntityRecord {
        id: id.to_string(),
        kind,
        name: format!("entity {id}"),
        online: true,
        tamper_resistant: false,
        status: EntityStatus::Active,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn entities_round_trip_and_ids_are_unique() {
    each_db(|store, backend| async move {
        let mut tx = store.begin().await.unwrap();
        entities::insert(&mut tx, &entity("issuer-2-3", EntityKind::Issuer))
            .await
            .unwrap();
        entities::insert(&mut tx, &entity("cybershop-k", EntityKind::Cybershop))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut conn = store.conn().await.unwrap();
        let got = entities::get(&mut conn, "issuer-2-3")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            entity("issuer-2-3", EntityKind::Issuer).with_times(&got),
            "{backend}"
        );
        assert_eq!(entities::list(&mut conn).await.unwrap().len(), 2);
        assert!(
            entities::set_status(&mut conn, "cybershop-k", EntityStatus::Suspended, now_ms())
                .await
                .unwrap()
        );
        assert!(
            !entities::set_status(&mut conn, "nobody", EntityStatus::Suspended, now_ms())
                .await
                .unwrap()
        );
        let shop = entities::get(&mut conn, "cybershop-k")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shop.status, EntityStatus::Suspended);

        let dup = entities::insert(&mut conn, &entity("issuer-2-3", EntityKind::Issuer))
            .await
            .unwrap_err();
        assert!(dup.is_unique_violation(), "{backend}: {dup}");
    })
    .await;
}

trait WithTimes {
    fn with_times(self, other: &EntityRecord) -> EntityRecord;
}

impl WithTimes for EntityRecord {
    fn with_times(mut self, other: &EntityRecord) -> EntityRecord {
        self.created_at = other.created_at;
        self.updated_at = other.updated_at;
        self
    }
}

fn key(alias: &str) -> KeyRecord {
    KeyRecord {
        alias: alias.to_string(),
        class: KeyClass::CardAccess,
        algorithm: Algorithm::Tdes2,
        purpose: Some(Purpose::Load),
        service_code: Some(0x0A01),
        exportable: true,
        owner_entity: None,
        created_at: now_ms(),
    }
}

fn version(alias: &str, version: u32, state: KeyState, id: u8) -> KeyVersionRecord {
    let now = now_ms();
    KeyVersionRecord {
        alias: alias.to_string(),
        version,
        state,
        cka_id: ObjectId([id; 16]),
        kcv: "08D7B4".to_string(),
        weak: false,
        created_at: now,
        state_changed_at: now,
        destroy_after: None,
        destroyed_at: None,
        not_before: Some(now - 1),
        not_after: Some(now + 86_400_000),
        compromised_at: None,
    }
}

#[tokio::test]
async fn keys_and_versions_round_trip() {
    each_db(|store, backend| async move {
        let mut tx = store.begin().await.unwrap();
        keys::insert_key(&mut tx, &key("key-a")).await.unwrap();
        keys::insert_version(&mut tx, &version("key-a", 1, KeyState::AuthOnly, 1))
            .await
            .unwrap();
        keys::insert_version(&mut tx, &version("key-a", 2, KeyState::Active, 2))
            .await
            .unwrap();
        keys::insert_version(&mut tx, &version("key-a", 3, KeyState::Destroyed, 3))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut conn = store.conn().await.unwrap();
        assert_eq!(
            keys::key(&mut conn, "key-a")
                .await
                .unwrap()
                .unwrap()
                .service_code,
            Some(0x0A01)
        );
        assert!(keys::key(&mut conn, "key-z").await.unwrap().is_none());
        let versions = keys::versions(&mut conn, "key-a").await.unwrap();
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2, 3],
            "{backend}"
        );
        assert_eq!(versions[1].cka_id, ObjectId([2; 16]));
        let live = keys::live_versions(&mut conn).await.unwrap();
        assert_eq!(live.len(), 2, "destroyed versions are not live");
        assert_eq!(
            keys::version(&mut conn, "key-a", 2)
                .await
                .unwrap()
                .unwrap()
                .state,
            KeyState::Active
        );

        // A CKA_ID belongs to one version only.
        let dup = keys::insert_version(&mut conn, &version("key-a", 4, KeyState::Active, 2))
            .await
            .unwrap_err();
        assert!(dup.is_unique_violation(), "{backend}: {dup}");
        // A version of an unknown key is refused.
        assert!(
            keys::insert_version(&mut conn, &version("key-x", 1, KeyState::Active, 9))
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing() {
    each_db(|store, _| async move {
        let mut tx = store.begin().await.unwrap();
        keys::insert_key(&mut tx, &key("key-r")).await.unwrap();
        tx.rollback().await.unwrap();
        let mut conn = store.conn().await.unwrap();
        assert!(keys::key(&mut conn, "key-r").await.unwrap().is_none());
    })
    .await;
}

async fn auditor(store: &Store) -> Auditor {
    let hsm = testing::hsm();
    let spec = KeySpec {
        algorithm: SecretAlgorithm::HmacSha256,
        role: KeyRole::AuditMac,
        export: Exportability::Never,
    };
    let key = hsm
        .run(move |s| s.generate(&spec, "brandkms-test/audit"))
        .await
        .unwrap();
    Auditor::start(store, hsm, key.id).await.unwrap()
}

fn event(i: u32) -> AuditEvent {
    AuditEvent::allowed("officer-1", "admin.create_key")
        .key(&format!("key-{i}"), Some(1))
        .outcome(
            if i.is_multiple_of(2) {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            (!i.is_multiple_of(2)).then(|| "rule 7: officer role required".to_string()),
        )
}

/// Appends `n` records one after the other (one batch each).
async fn append_some(auditor: &Auditor, n: u32) {
    for i in 0..n {
        auditor.record(&event(i)).await.unwrap();
    }
}

async fn exec(store: &Store, sql: &str, chain: &str) {
    sqlx::query(sql)
        .bind(chain)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_audit_chain_verifies_and_finds_an_altered_record() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        append_some(&auditor, 6).await;
        let report = auditor.verify(&store).await.unwrap();
        assert_eq!(report.records(), 6, "{backend}");
        assert!(report.intact(), "{backend}: {report:?}");
        assert_eq!(report.chains[0].anchored, Some(6), "{backend}");

        exec(
            &store,
            "UPDATE audit_records SET outcome = 'allowed' WHERE chain = $1 AND seq = 4",
            auditor.chain(),
        )
        .await;
        let report = auditor.verify(&store).await.unwrap();
        let (chain, broken) = report.first_broken().unwrap();
        assert_eq!(chain.chain, auditor.chain());
        assert_eq!(broken.seq, 4, "{backend}: {broken:?}");
        assert!(broken.problem.contains("altered"), "{broken:?}");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_record_and_a_deleted_tail_are_found() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        append_some(&auditor, 5).await;
        // The newest records go: nothing in the database says they existed, but
        // the chain's anchor in the token does.
        exec(
            &store,
            "DELETE FROM audit_records WHERE chain = $1 AND seq >= 4",
            auditor.chain(),
        )
        .await;
        let report = auditor.verify(&store).await.unwrap();
        let (_, broken) = report.first_broken().unwrap();
        assert_eq!(broken.seq, 4, "{backend}: {broken:?}");
        assert!(
            broken.problem.contains("records missing") && broken.problem.contains("record 5"),
            "{backend}: {broken:?}"
        );
        exec(
            &store,
            "DELETE FROM audit_records WHERE chain = $1 AND seq = 2",
            auditor.chain(),
        )
        .await;
        let report = auditor.verify(&store).await.unwrap();
        let (_, broken) = report.first_broken().unwrap();
        assert_eq!(broken.seq, 2, "{backend}: {broken:?}");
        assert!(broken.problem.contains("missing"));
    })
    .await;
}

#[tokio::test]
async fn wiped_audit_tables_are_found() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        append_some(&auditor, 3).await;
        sqlx::query("DELETE FROM audit_records")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_chains")
            .execute(store.pool())
            .await
            .unwrap();
        let report = auditor.verify(&store).await.unwrap();
        let (chain, broken) = report.first_broken().unwrap();
        assert_eq!(chain.chain, auditor.chain(), "{backend}");
        assert!(
            broken.problem.contains("chain missing from the database"),
            "{backend}: {broken:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_record_with_a_recomputed_hash_fails_its_mac() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        append_some(&auditor, 3).await;
        // A database administrator who rewrites a record and its hash cannot
        // recompute the MAC: it needs the token's audit key.
        let mut conn = store.conn().await.unwrap();
        let rows = audit_rows::page(&mut conn, auditor.chain(), 0, 10)
            .await
            .unwrap();
        let mut forged = rows[2].clone();
        forged.reason = Some("forged".to_string());
        forged.hash = hex::encode(brandkms::audit::record_hash(
            &forged,
            brandkms::audit::FORMAT,
        ));
        exec(
            &store,
            "DELETE FROM audit_records WHERE chain = $1 AND seq = 3",
            auditor.chain(),
        )
        .await;
        audit_rows::insert(&mut conn, &[forged]).await.unwrap();
        let broken = auditor.verify(&store).await.unwrap();
        let (_, broken) = broken.first_broken().unwrap();
        assert_eq!(broken.seq, 3, "{backend}: {broken:?}");
        assert!(broken.problem.contains("MAC"), "{backend}: {broken:?}");
    })
    .await;
}

#[tokio::test]
async fn concurrent_appends_share_batches_and_keep_one_chain() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let auditor = auditor.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        auditor.record(&event(t * 10 + i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let report = auditor.verify(&store).await.unwrap();
        assert_eq!((report.records(), report.intact()), (80, true), "{backend}");
        // Batches formed: some records are covered by a later record's MAC.
        let unmaced: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_records WHERE chain = $1 AND mac IS NULL",
        )
        .bind(auditor.chain())
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(unmaced > 0, "{backend}: no two requests shared a batch");
    })
    .await;
}

/// A change's own error, for the writer's generic error type.
#[derive(Debug)]
struct Failed(String);

impl From<brandkms::audit::AuditError> for Failed {
    fn from(e: brandkms::audit::AuditError) -> Self {
        Failed(e.to_string())
    }
}

#[tokio::test]
async fn a_failed_change_in_a_batch_is_rolled_back_alone() {
    each_db(|store, backend| async move {
        let auditor = auditor(&store).await;
        let tasks: Vec<_> = (0..16u32)
            .map(|i| {
                let auditor = auditor.clone();
                tokio::spawn(async move {
                    let record = entity(&format!("issuer-batch-{i}"), EntityKind::Issuer);
                    auditor
                        .commit(event(i), false, move |tx| {
                            Box::pin(async move {
                                entities::insert(tx, &record)
                                    .await
                                    .map_err(|e| Failed(e.to_string()))?;
                                if i % 3 == 0 {
                                    return Err(Failed(format!(
                                        "change {i} fails after its insert"
                                    )));
                                }
                                Ok(i)
                            })
                        })
                        .await
                })
            })
            .collect();
        let mut kept = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(i) => kept.push(i),
                Err(Failed(e)) => assert!(e.contains("fails after its insert"), "{backend}: {e}"),
            }
        }
        assert_eq!(kept.len(), 10, "{backend}");
        let mut conn = store.conn().await.unwrap();
        for i in 0..16u32 {
            let present = entities::get(&mut conn, &format!("issuer-batch-{i}"))
                .await
                .unwrap()
                .is_some();
            assert_eq!(present, i % 3 != 0, "{backend}: entity {i}");
        }
        let report = auditor.verify(&store).await.unwrap();
        assert_eq!((report.records(), report.intact()), (10, true), "{backend}");
    })
    .await;
}

#[tokio::test]
async fn two_writers_on_one_database_keep_two_chains() {
    each_db(|store, backend| async move {
        let a = auditor(&store).await;
        let b = Auditor::start(&store, testing::hsm(), *a.key())
            .await
            .unwrap();
        assert_ne!(a.chain(), b.chain());
        let (x, y) = tokio::join!(append_some(&a, 20), append_some(&b, 20));
        let ((), ()) = (x, y);
        let report = a.verify(&store).await.unwrap();
        assert!(report.intact(), "{backend}: {report:?}");
        assert_eq!(report.chains.len(), 2, "{backend}");
        assert!(
            report.chains.iter().all(|c| c.records == 20),
            "{backend}: {report:?}"
        );
    })
    .await;
}

/// Two instances (two pools on one database) racing for a lease: exactly one
/// holds it; its holder renews it; the other takes it over only once it expired,
/// or at once when it was released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_at_a_time_holds_a_lease() {
    use brandkms::store::leases::{self, Tenure};
    for db in testing::databases().await {
        let backend = db.backend;
        let (a, b) = (
            Store::connect(&db.settings).await.unwrap(),
            Store::connect(&db.settings).await.unwrap(),
        );
        let take = |store: &Store, name: String, holder: &'static str, now: i64| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conn = store.conn().await.unwrap();
                leases::acquire(&mut conn, &name, holder, now, 3000)
                    .await
                    .unwrap()
            })
        };
        let now = now_ms();
        for round in 0..50 {
            let name = format!("race-{round}");
            let (x, y) = (
                take(&a, name.clone(), "host:1:a", now),
                take(&b, name.clone(), "host:2:b", now),
            );
            let (x, y) = (x.await.unwrap(), y.await.unwrap());
            assert_eq!(
                [x, y].iter().filter(|t| **t == Tenure::Held).count(),
                1,
                "{backend} round {round}: {x:?} {y:?}"
            );
            let mut conn = a.conn().await.unwrap();
            let held = leases::lease(&mut conn, &name).await.unwrap().unwrap();
            let winner = if x == Tenure::Held {
                "host:1:a"
            } else {
                "host:2:b"
            };
            assert_eq!(held.holder, winner, "{backend}");
            assert_eq!((held.acquired_at, held.expires_at), (now, now + 3000));
        }

        // The holder renews; the other is refused until the lease has expired.
        let name = "purger".to_string();
        assert_eq!(
            take(&a, name.clone(), "a", now).await.unwrap(),
            Tenure::Held
        );
        assert_eq!(
            take(&a, name.clone(), "a", now + 2000).await.unwrap(),
            Tenure::Held
        );
        assert_eq!(
            take(&b, name.clone(), "b", now + 4000).await.unwrap(),
            Tenure::HeldElsewhere,
            "{backend}: renewed until now + 5000"
        );
        let mut conn = b.conn().await.unwrap();
        let held = leases::lease(&mut conn, &name).await.unwrap().unwrap();
        assert_eq!(
            (held.holder.as_str(), held.acquired_at, held.expires_at),
            ("a", now, now + 5000),
            "{backend}"
        );
        assert_eq!(
            take(&b, name.clone(), "b", now + 5000).await.unwrap(),
            Tenure::Held,
            "{backend}: taken over once expired"
        );
        assert_eq!(
            take(&a, name.clone(), "a", now + 5001).await.unwrap(),
            Tenure::HeldElsewhere,
            "{backend}"
        );
        let held = leases::lease(&mut conn, &name).await.unwrap().unwrap();
        assert_eq!(
            (held.holder.as_str(), held.acquired_at),
            ("b", now + 5000),
            "{backend}"
        );

        // Only the holder's release counts; after it, the other takes it at once.
        leases::release(&mut conn, &name, "a").await.unwrap();
        assert_eq!(
            take(&a, name.clone(), "a", now + 5002).await.unwrap(),
            Tenure::HeldElsewhere,
            "{backend}"
        );
        leases::release(&mut conn, &name, "b").await.unwrap();
        assert!(leases::lease(&mut conn, &name).await.unwrap().is_none());
        assert_eq!(
            take(&a, name.clone(), "a", now + 5003).await.unwrap(),
            Tenure::Held,
            "{backend}"
        );
        drop(conn);
        a.close().await;
        b.close().await;
    }
}

/// Expired challenges and sessions go, with every command of those sessions
/// (answered or not), in batches; unexpired ones and proxy loads stay.
#[tokio::test]
async fn expired_card_rows_are_purged_in_batches_and_proxy_loads_stay() {
    use brandkms::store::cards::{
        self, ChallengeRecord, CommandRecord, ProxyLoadRecord, Purged, SessionRecord,
    };
    each_db(|store, backend| async move {
        let mut conn = store.conn().await.unwrap();
        entities::insert(&mut conn, &entity("shop", EntityKind::Cybershop))
            .await
            .unwrap();
        entities::insert(&mut conn, &entity("issuer", EntityKind::Issuer))
            .await
            .unwrap();
        let now = now_ms();
        // Five expired challenges (two used), one open.
        for (i, expires_at) in [
            now - 10,
            now - 20,
            now - 30,
            now - 40,
            now - 50,
            now + 30_000,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("ch-{i}");
            cards::insert_challenge(
                &mut conn,
                &ChallengeRecord {
                    id: id.clone(),
                    caller: "shop".into(),
                    alias: "key-k".into(),
                    version: 1,
                    card_id: "0123456789012345".into(),
                    rb: "B1B2B3B4B5B6B7B8".into(),
                    created_at: expires_at - 30_000,
                    expires_at,
                },
            )
            .await
            .unwrap();
            if i < 2 {
                assert!(
                    cards::take_challenge(&mut conn, &id, "shop", expires_at - 1)
                        .await
                        .unwrap()
                );
            }
        }
        // Three expired sessions with three commands each (the first answered,
        // one a proxy load), one live session with one command.
        for (s, expires_at) in [now - 10, now - 20, now - 30, now + 120_000]
            .into_iter()
            .enumerate()
        {
            let session_id = format!("cs-{s}");
            cards::insert_session(
                &mut conn,
                &SessionRecord {
                    id: session_id.clone(),
                    caller: "shop".into(),
                    alias: "key-k".into(),
                    version: 1,
                    card_id: "0123456789012345".into(),
                    sealed_nonces: "00".into(),
                    created_at: expires_at - 120_000,
                    expires_at,
                    next_counter: 0,
                },
            )
            .await
            .unwrap();
            let commands = if expires_at > now { 1 } else { 3 };
            for counter in 0..commands {
                let txn_id = format!("{s:016X}{counter:016X}");
                cards::insert_command(
                    &mut conn,
                    &CommandRecord {
                        session_id: session_id.clone(),
                        counter,
                        op: "load".into(),
                        amount: 500,
                        currency: "JPY".into(),
                        txn_id: txn_id.clone(),
                        sealed_at: expires_at - 60_000,
                        receipt_at: None,
                    },
                )
                .await
                .unwrap();
                if counter == 0 {
                    assert!(
                        cards::mark_receipt(&mut conn, &session_id, 0, expires_at - 1)
                            .await
                            .unwrap()
                    );
                    cards::insert_proxy_load(
                        &mut conn,
                        &ProxyLoadRecord {
                            txn_id,
                            issuer: "issuer".into(),
                            requested_by: "shop".into(),
                            alias: "key-k".into(),
                            version: 1,
                            card_id: "0123456789012345".into(),
                            amount: 500,
                            currency: "JPY".into(),
                            status: "pending".into(),
                            at: expires_at - 60_000,
                            confirmed_at: None,
                        },
                    )
                    .await
                    .unwrap();
                }
            }
        }

        let purged = cards::purge_expired(&mut conn, now, 2).await.unwrap();
        assert_eq!(
            purged,
            Purged {
                challenges: 5,
                sessions: 3,
                commands: 9,
            },
            "{backend}"
        );
        let left = |table: &'static str| {
            let pool = store.pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            [
                left("card_challenges").await,
                left("card_sessions").await,
                left("card_commands").await,
                left("proxy_loads").await,
            ],
            [1, 1, 1, 4],
            "{backend}"
        );
        assert!(cards::session(&mut conn, "cs-3").await.unwrap().is_some());
        assert!(
            cards::command(&mut conn, "cs-3", 0)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            cards::open_challenge(&mut conn, "ch-5", "shop")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            cards::purge_expired(&mut conn, now, 2)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}
