//! Key distribution end to end: an issuer establishes a transport key, receives a
//! key wrapped under it and unwraps it in a token, with the brand's KCV; the policy
//! refuses a cybershop and an unconsented bank centre, naming the rule; rotation
//! shows in entitlements and deliveries. (The participant's RSA key pair and the
//! unwrapped keys live in the test token, standing for the participant's own.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms::hsm::ObjectId;
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, on_each_database, participant_rsa, status_of};
use cryptoki::object::KeyType;
use tonic::Code;

/// Establishes the caller's transport key and unwraps it; returns its id in the token.
async fn establish(s: &TestServer, client: &Client) -> ObjectId {
    let (private, spki) = participant_rsa(s, 2048).await;
    let t = client
        .distribution()
        .establish_transport_key(pb::EstablishTransportKeyRequest {
            rsa_public_key_spki_der: spki,
        })
        .await
        .unwrap();
    let wrapped = t.wrapped_key.clone();
    let (id, kcv) = s
        .state
        .hsm
        .run(move |h| h.unwrap_for_tests(&private, &wrapped, true, KeyType::AES))
        .await
        .unwrap();
    assert_eq!(kcv.to_vec(), t.kcv, "the transport key's KCV");
    id
}

/// The key ceremony for `entity`: a participant RSA key pair (in the test
/// token), its public half marked trusted by the security officer through
/// `officer`; returns the private half's id.
async fn trust(s: &TestServer, officer: &Client, entity: &str) -> ObjectId {
    let (private, spki) = participant_rsa(s, 2048).await;
    let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki));
    let key = brandkms_tests::trust_key(officer, entity, spki).await;
    assert_eq!(key.alias, format!("trusted.{entity}"));
    let active = key
        .versions
        .iter()
        .find(|v| v.state == pb::KeyState::Active as i32)
        .unwrap();
    assert_eq!(hex::encode(&active.kcv), fingerprint);
    private
}

/// Unwraps a delivered key under what it names (the transport key, or the
/// participant's RSA key for a delivery under its trusted key) and returns
/// its KCV.
async fn unwrap_kcv(s: &TestServer, under: ObjectId, wrapped: &pb::WrappedKey) -> Vec<u8> {
    let blob = wrapped.wrapped_key.clone();
    let rsa = wrapped.wrapping.starts_with("RSA-OAEP");
    let (_, kcv) = s
        .state
        .hsm
        .run(move |h| h.unwrap_for_tests(&under, &blob, rsa, KeyType::DES2))
        .await
        .unwrap();
    kcv.to_vec()
}

fn request(alias: &str) -> pb::RequestKeyRequest {
    pb::RequestKeyRequest {
        alias: alias.into(),
        version: 0,
    }
}

async fn seed(officer: &Client) {
    let mut admin = officer.admin();
    for (alias, exportable) in [("key-a", true), ("key-b", true), ("key-k", false)] {
        admin
            .create_key(pb::CreateKeyRequest {
                alias: alias.into(),
                service_code: 1,
                purpose: pb::Purpose::Load as i32,
                exportable,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (id, kind) in [
        ("issuer-2-3", pb::EntityKind::Issuer),
        ("issuer-2-4", pb::EntityKind::Issuer),
        ("bank-center-b", pb::EntityKind::BankCenter),
        ("cybershop-k", pb::EntityKind::Cybershop),
    ] {
        admin
            .register_entity(pb::RegisterEntityRequest {
                id: id.into(),
                kind: kind as i32,
                name: id.into(),
                online: true,
                tamper_resistant: false,
            })
            .await
            .unwrap();
    }
    let tie =
        |entity: &str, keys: &[(&str, pb::TieUpMode)], sponsor: &str| pb::CreateTieUpRequest {
            entity_id: entity.into(),
            keys: keys
                .iter()
                .map(|(a, m)| pb::TieUpKey {
                    alias: a.to_string(),
                    mode: *m as i32,
                })
                .collect(),
            sponsor_issuer: sponsor.into(),
            ..Default::default()
        };
    use pb::TieUpMode::{Hold, Supply};
    for t in [
        tie("issuer-2-3", &[("key-a", Supply), ("key-b", Supply)], ""),
        tie("issuer-2-4", &[("key-a", Supply)], ""),
        tie(
            "bank-center-b",
            &[("key-a", Supply), ("key-b", Supply)],
            "issuer-2-3",
        ),
        tie("cybershop-k", &[("key-a", Hold), ("key-k", Hold)], ""),
    ] {
        admin.create_tie_up(t).await.unwrap().done().unwrap();
    }
}

#[tokio::test]
async fn keys_reach_entitled_participants_wrapped_and_no_one_else() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        seed(&officer).await;
        let brand_kcv = |k: &pb::Key, v: u32| {
            k.versions
                .iter()
                .find(|x| x.version == v)
                .unwrap()
                .kcv
                .clone()
        };

        // An exportable master can be wrapped only under a trusted key: a
        // transport key is not enough, and the refusal says what to do.
        let issuer = s.client("issuer-2-3").await;
        establish(&s, &issuer).await;
        let (c, m) = status_of(issuer.distribution().request_key(request("key-a")).await);
        assert_eq!(c, Code::FailedPrecondition, "{m}");
        assert!(m.contains("kmsctl entity trust-key"), "{m}");

        // The issuer receives key A under its trusted key and finds the brand's
        // KCV after unwrapping.
        let transport = trust(&s, &officer, "issuer-2-3").await;
        let delivered = issuer
            .distribution()
            .request_key(request("key-a"))
            .await
            .unwrap();
        assert_eq!(delivered.wrapping, "RSA-OAEP-SHA1-MGF1-SHA1");
        assert_eq!(delivered.transport_alias, "trusted.issuer-2-3");
        let key_a = officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "key-a".into(),
            })
            .await
            .unwrap();
        assert_eq!(delivered.version, 1);
        assert_eq!(delivered.kcv, brand_kcv(&key_a, 1));
        assert_eq!(
            unwrap_kcv(&s, transport, &delivered).await,
            delivered.kcv,
            "{}",
            s.backend
        );

        // A cybershop is never supplied, and is told the rule.
        let shop = s.client("cybershop-k").await;
        let (c, m) = status_of(shop.distribution().request_key(request("key-a")).await);
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 3 (cybershop_never_supplied)"), "{m}");
        let (_, spki) = participant_rsa(&s, 2048).await;
        let (c, m) = status_of(
            shop.distribution()
                .establish_transport_key(pb::EstablishTransportKeyRequest {
                    rsa_public_key_spki_der: spki,
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied, "{m}");

        // The bank centre needs issuer 2-3's consent; revoking it denies again.
        let bank = s.client("bank-center-b").await;
        let bank_transport = trust(&s, &officer, "bank-center-b").await;
        let (c, m) = status_of(bank.distribution().request_key(request("key-a")).await);
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 4 (consent_missing)"), "{m}");
        let consent = pb::ConsentRequest {
            issuer: String::new(),
            third_party: "bank-center-b".into(),
            alias: "key-a".into(),
        };
        assert!(
            issuer
                .distribution()
                .grant_consent(consent.clone())
                .await
                .unwrap()
                .standing
        );
        let got = bank
            .distribution()
            .request_key(request("key-a"))
            .await
            .unwrap();
        assert_eq!(unwrap_kcv(&s, bank_transport, &got).await, got.kcv);
        let revoked = issuer
            .distribution()
            .revoke_consent(consent.clone())
            .await
            .unwrap();
        assert!(!revoked.standing);
        let (c, m) = status_of(bank.distribution().request_key(request("key-a")).await);
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 4"), "{m}");

        // After a rotation the entitlement shows version 2 and the delivery is v2.
        officer
            .admin()
            .rotate_key(pb::RotateKeyRequest {
                alias: "key-a".into(),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        let entitled = issuer
            .distribution()
            .list_entitled_keys(pb::ListEntitledKeysRequest::default())
            .await
            .unwrap()
            .keys;
        let a = entitled.iter().find(|k| k.alias == "key-a").unwrap();
        assert_eq!(
            (a.current_version, a.mode),
            (2, pb::TieUpMode::Supply as i32)
        );
        let v2 = issuer
            .distribution()
            .request_key(request("key-a"))
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        let key_a = officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "key-a".into(),
            })
            .await
            .unwrap();
        assert_eq!(unwrap_kcv(&s, transport, &v2).await, brand_kcv(&key_a, 2));
        let mut conn = s.state.store.conn().await.unwrap();
        let deliveries = brandkms::store::distribution::distributions(
            &mut conn,
            Some("key-a"),
            Some("issuer-2-3"),
        )
        .await
        .unwrap();
        let versions: Vec<u32> = deliveries.iter().map(|d| d.version).collect();
        assert_eq!(versions, [1, 2], "{}", s.backend);
        assert!(
            deliveries
                .iter()
                .all(|d| d.transport_alias == "trusted.issuer-2-3")
        );
        // Who received a given version (to tell them when it is compromised).
        let receivers = |version: u32| {
            let officer = officer.clone();
            async move {
                let mut who: Vec<String> = officer
                    .admin()
                    .list_distributions_all(pb::ListDistributionsRequest {
                        alias: "key-a".into(),
                        version,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.entity_id)
                    .collect();
                who.sort();
                who.dedup();
                who
            }
        };
        assert_eq!(receivers(1).await, ["bank-center-b", "issuer-2-3"]);
        assert_eq!(receivers(2).await, ["issuer-2-3"]);
        let (c, m) = status_of(
            officer
                .admin()
                .list_distributions(pb::ListDistributionsRequest {
                    version: 1,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{m}");
        s
    })
    .await;
}

#[tokio::test]
async fn bad_distribution_inputs_get_precise_statuses() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        seed(&officer).await;
        let issuer = s.client("issuer-2-3").await;
        let mut dist = issuer.distribution();

        let (_, small) = participant_rsa(&s, 1024).await;
        let (c, m) = status_of(
            dist.establish_transport_key(pb::EstablishTransportKeyRequest {
                rsa_public_key_spki_der: small,
            })
            .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("1024 bits"), "{m}");
        let (c, _) = status_of(
            dist.establish_transport_key(pb::EstablishTransportKeyRequest {
                rsa_public_key_spki_der: vec![0x30, 0x03, 1, 2, 3],
            })
            .await,
        );
        assert_eq!(c, Code::InvalidArgument);

        establish(&s, &issuer).await;
        // An alias that does not exist answers like one without a tie-up (rule
        // 1); a missing version of a key the caller's tie-up names is NotFound.
        let refused = brandkms_tests::refusal_of(dist.request_key(request("key-zz")).await);
        assert_eq!(refused, (Code::PermissionDenied, "no_tie_up".into()));
        let (c, _) = status_of(
            dist.request_key(pb::RequestKeyRequest {
                alias: "key-a".into(),
                version: 9,
            })
            .await,
        );
        assert_eq!(c, Code::NotFound);

        // A destroyed version.
        let mut admin = officer.admin();
        admin
            .rotate_key(pb::RotateKeyRequest {
                alias: "key-b".into(),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        admin
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "key-b".into(),
                version: 1,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        admin
            .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                alias: "key-b".into(),
                version: 1,
                waiting_days: Some(1),
            })
            .await
            .unwrap()
            .done()
            .unwrap();
        s.state.clock.advance(Duration::from_secs(2 * 86_400));
        brandkms::ops::keys::run_due_destructions(&s.state)
            .await
            .unwrap();
        let (c, m) = status_of(
            dist.request_key(pb::RequestKeyRequest {
                alias: "key-b".into(),
                version: 1,
            })
            .await,
        );
        assert_eq!(c, Code::FailedPrecondition, "{m}");
        assert!(m.contains("destroyed"), "{m}");

        // Consent by an issuer for a key that is not its own.
        let other = s.client("issuer-2-4").await;
        let (c, m) = status_of(
            other
                .distribution()
                .grant_consent(pb::ConsentRequest {
                    issuer: String::new(),
                    third_party: "bank-center-b".into(),
                    alias: "key-b".into(),
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("not_issuers_key"), "{m}");
        assert!(
            other
                .distribution()
                .list_consents(pb::ListConsentsRequest::default())
                .await
                .unwrap()
                .consents
                .is_empty()
        );
        s
    })
    .await;
}

/// Issue 12, item 6 and item 4's first point: each EstablishTransportKey used to
/// leave a token object behind for good, extractable. Now the newest version
/// alone keeps an object, and it is no longer extractable once delivered.
#[tokio::test]
async fn a_transport_key_is_delivered_once_and_superseded_ones_are_destroyed() {
    on_each_database(|s| async move {
        let officer = s.client("officer-1").await;
        seed(&officer).await;
        let issuer = s.client("issuer-2-3").await;
        for _ in 0..3 {
            establish(&s, &issuer).await;
        }
        let key = officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "transport.issuer-2-3".into(),
            })
            .await
            .unwrap();
        let states: Vec<(u32, i32)> = key.versions.iter().map(|v| (v.version, v.state)).collect();
        assert_eq!(
            states,
            [
                (1, pb::KeyState::Destroyed as i32),
                (2, pb::KeyState::Destroyed as i32),
                (3, pb::KeyState::Active as i32),
            ]
        );
        let mut conn = s.state.store.conn().await.unwrap();
        let versions = brandkms::store::keys::versions(&mut conn, "transport.issuer-2-3")
            .await
            .unwrap();
        drop(conn);
        for v in versions {
            let id = v.cka_id;
            let present = s.state.hsm.run(move |h| h.exists(&id)).await.unwrap();
            assert_eq!(present, v.version == 3, "object of version {}", v.version);
            if v.version == 3 {
                let extractable = s
                    .state
                    .hsm
                    .run(move |h| h.is_extractable(&id))
                    .await
                    .unwrap();
                assert!(
                    !extractable,
                    "the delivered transport key stays extractable"
                );
            }
        }
        // An exportable master is wrapped only under a trusted key, never under
        // a transport key.
        let (c, m) = status_of(issuer.distribution().request_key(request("key-a")).await);
        assert_eq!(c, Code::FailedPrecondition, "{m}");
        s
    })
    .await;
}

/// Issue 12, item 6: EstablishTransportKey is limited per entity, answered
/// ResourceExhausted with the time to wait; other entities are not affected.
#[tokio::test]
async fn establishing_transport_keys_is_limited_per_entity() {
    for db in brandkms::testing::databases().await {
        let service = brandkms::config::ServiceSettings {
            transport_keys_per_hour: 2,
            ..TestServer::single_officer()
        };
        let s = TestServer::start_with(db, service).await;
        let officer = s.client("officer-1").await;
        seed(&officer).await;
        let issuer = s.client("issuer-2-3").await;
        establish(&s, &issuer).await;
        establish(&s, &issuer).await;
        let (_, spki) = participant_rsa(&s, 2048).await;
        let (code, message) = status_of(
            issuer
                .distribution()
                .establish_transport_key(pb::EstablishTransportKeyRequest {
                    rsa_public_key_spki_der: spki,
                })
                .await,
        );
        assert_eq!(code, Code::ResourceExhausted, "{message}");
        assert!(message.contains("retry in"), "{message}");
        establish(&s, &s.client("issuer-2-4").await).await;
        s.stop().await;
    }
}

/// Issue 12, item 4: the key ceremony refuses a fingerprint other than the
/// key's, an SO PIN the token refuses and a caller who is not an officer, each
/// changing nothing; after it, the participant's key is a trusted, public,
/// unmodifiable token object, and a second ceremony supersedes the first.
#[tokio::test]
async fn the_trust_ceremony_checks_fingerprint_so_pin_and_caller() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    seed(&officer).await;
    let (_, spki) = participant_rsa(&s, 2048).await;
    let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki));
    let ask = |fingerprint: &str, so_pin: &str| pb::TrustParticipantKeyRequest {
        entity_id: "issuer-2-3".into(),
        spki_der: spki.clone(),
        fingerprint_sha256: fingerprint.into(),
        so_pin: so_pin.into(),
    };
    let (c, m) = status_of(
        officer
            .admin()
            .trust_participant_key(ask(&"0".repeat(64), brandkms::testing::TEST_SO_PIN))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains(&fingerprint), "{m}");
    let (c, m) = status_of(
        officer
            .admin()
            .trust_participant_key(ask(&fingerprint, "not-the-so-pin"))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("refused the security officer's PIN"), "{m}");
    assert!(!m.contains("not-the-so-pin"), "the PIN is never echoed");
    let issuer = s.client("issuer-2-3").await;
    let (c, m) = status_of(
        issuer
            .admin()
            .trust_participant_key(ask(&fingerprint, brandkms::testing::TEST_SO_PIN))
            .await,
    );
    assert_eq!(c, Code::PermissionDenied, "{m}");
    let (c, _) = status_of(
        officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "trusted.issuer-2-3".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound, "nothing was recorded");
    // The service still works after the refused SO login.
    assert!(issuer.healthy().await.unwrap());

    trust(&s, &officer, "issuer-2-3").await;
    trust(&s, &officer, "issuer-2-3").await;
    let key = officer
        .admin()
        .get_key(pb::GetKeyRequest {
            alias: "trusted.issuer-2-3".into(),
        })
        .await
        .unwrap();
    let states: Vec<(u32, i32)> = key.versions.iter().map(|v| (v.version, v.state)).collect();
    assert_eq!(
        states,
        [
            (1, pb::KeyState::Destroyed as i32),
            (2, pb::KeyState::Active as i32)
        ]
    );
    // The trusted object: public, trusted, wraps only, cannot be changed or copied.
    let mut conn = s.state.store.conn().await.unwrap();
    let v2 = brandkms::store::keys::versions(&mut conn, "trusted.issuer-2-3")
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.version == 2)
        .unwrap();
    let attributes = s
        .state
        .hsm
        .run(move |h| h.attributes_for_tests(&v2.cka_id))
        .await
        .unwrap();
    for expected in [
        "Trusted(true)",
        "Private(false)",
        "Modifiable(false)",
        "Copyable(false)",
        "Wrap(true)",
        "Encrypt(false)",
    ] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} not in {attributes:?}"
        );
    }
    // Every audit record of the ceremony, refusals included, is free of the PIN.
    let records = brandkms_tests::audit_records(&officer, "Admin/TrustParticipantKey").await;
    assert_eq!(records.len(), 5, "{records:#?}");
    assert!(
        records
            .iter()
            .all(|r| !r.reason.contains(brandkms::testing::TEST_SO_PIN)
                && !r.reason.contains("not-the-so-pin"))
    );
    s.stop().await;
}
