//! Proxy card authentication end to end: the real server over mTLS, the token,
//! SQLite and PostgreSQL, and the software card simulator as the card.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms::hsm::EcbDerive;
use brandkms::ops::card_protocol::{CardKey, FROM_CARD, TO_CARD, mac_input};
use brandkms_clients::Client;
use brandkms_clients::card::{self, Card};
use brandkms_proto::v1 as pb;
use brandkms_tests::{
    TestServer, audit_records, card_with, on_each_database, refusal_of, register, status_of, tie_up,
};
use tonic::Code;

fn h<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

const KM: &str = "0123456789ABCDEFFEDCBA9876543210";
const OTHER_KM: &str = "1111111111111111222222222222222233333333333333330000000000000000";
const CID: &str = "0123456789012345";
const SERVICE_K: u16 = 0x0A01;
const SERVICE_E: u16 = 0x0E01;

/// Keys K (hold for cybershop-k, limit 10,000) and E (proxy loading for the
/// offline issuer 2-1 through the loading portal), both with known masters.
async fn seed(s: &TestServer) -> Client {
    let officer = s.client("officer-1").await;
    brandkms::testing::import_card_master(&s.state, "key-k", SERVICE_K, &hex::decode(KM).unwrap())
        .await;
    brandkms::testing::import_card_master(&s.state, "key-e", SERVICE_E, &hex::decode(KM).unwrap())
        .await;
    for (id, kind) in [
        ("cybershop-k", pb::EntityKind::Cybershop),
        ("cybershop-l", pb::EntityKind::Cybershop),
        ("loading-portal", pb::EntityKind::LoadingPortal),
        ("issuer-2-1", pb::EntityKind::Issuer),
        ("issuer-2-2", pb::EntityKind::Issuer),
    ] {
        register(&officer, id, kind).await;
    }
    tie_up(
        &officer,
        "cybershop-k",
        "key-k",
        pb::TieUpMode::Hold,
        Some(10_000),
    )
    .await;
    tie_up(
        &officer,
        "issuer-2-1",
        "key-e",
        pb::TieUpMode::ProxyLoad,
        None,
    )
    .await;
    tie_up(
        &officer,
        "loading-portal",
        "key-e",
        pb::TieUpMode::ProxyLoad,
        None,
    )
    .await;
    officer
}

struct Authenticated {
    session_id: String,
}

/// Passes 1 to 3 with the card; panics unless both sides authenticate.
async fn authenticate(
    shop: &Client,
    card: &mut Card,
    alias: &str,
    service_code: u16,
) -> Authenticated {
    let mut cards = shop.cards();
    let ch = cards
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: alias.into(),
            key_version: card.key_version(service_code).unwrap(),
            card_id: card.cid().unwrap().to_vec(),
        })
        .await
        .unwrap();
    let c1 = card
        .answer_challenge(
            ch.service_code as u16,
            ch.key_version,
            &ch.rb.clone().try_into().unwrap(),
        )
        .unwrap();
    let r = cards
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id,
            c1: c1.to_vec(),
        })
        .await
        .unwrap();
    assert!(r.authenticated);
    card.accept_service(&r.c2.try_into().unwrap()).unwrap();
    Authenticated {
        session_id: r.session_id,
    }
}

fn seal_request(session: &str, op: pb::CardOp, amount: u64) -> pb::SealCommandRequest {
    pb::SealCommandRequest {
        session_id: session.into(),
        op: op as i32,
        amount,
        currency: "JPY".into(),
    }
}

/// Seals, delivers to the card, verifies the receipt; returns the verification.
async fn transact(
    shop: &Client,
    card: &mut Card,
    session: &str,
    op: pb::CardOp,
    amount: u64,
) -> (pb::SealedCommand, pb::ReceiptVerification) {
    let mut cards = shop.cards();
    let sealed = cards
        .seal_command(seal_request(session, op, amount))
        .await
        .unwrap();
    let (receipt, mac) = card
        .process(sealed.counter, &sealed.payload, &sealed.mac)
        .unwrap();
    let verified = cards
        .verify_receipt(pb::VerifyReceiptRequest {
            session_id: session.into(),
            counter: sealed.counter,
            payload: receipt.to_vec(),
            mac: mac.to_vec(),
        })
        .await
        .unwrap();
    (sealed, verified)
}

#[tokio::test]
async fn the_service_reproduces_the_protocol_vectors() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    seed(&s).await;
    let shop = s.client("cybershop-k").await;
    let ra = h::<8>("A1A2A3A4A5A6A7A8");
    let rb = h::<8>("B1B2B3B4B5B6B7B8");
    brandkms::testing::fix_rb(Some(rb));
    let mut card = card_with(&hex::decode(KM).unwrap(), SERVICE_K, h(CID), 5000);
    let mut cards = shop.cards();
    let ch = cards
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: "key-k".into(),
            key_version: 1,
            card_id: h::<8>(CID).to_vec(),
        })
        .await
        .unwrap();
    brandkms::testing::fix_rb(None);
    assert_eq!(ch.rb, rb);
    assert_eq!(ch.service_code, u32::from(SERVICE_K));
    let c1 = card.answer_challenge_with(SERVICE_K, 1, &rb, ra).unwrap();
    assert_eq!(hex::encode_upper(c1), "97104CE0EA4DA1C92747D09AF302C9E3");
    let r = cards
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id,
            c1: c1.to_vec(),
        })
        .await
        .unwrap();
    assert!(r.authenticated);
    assert_eq!(hex::encode_upper(&r.c2), "DD265EA85AA3A3C8A2CF215FEAEDCDCA");
    card.accept_service(&r.c2.clone().try_into().unwrap())
        .unwrap();

    // K_S's KCV and the MACs, computed in the token with the service's own code.
    let mut conn = s.state.store.conn().await.unwrap();
    let master = brandkms::store::keys::version(&mut conn, "key-k", 1)
        .await
        .unwrap()
        .unwrap()
        .cka_id;
    drop(conn);
    let key = CardKey {
        master,
        derive: EcbDerive::Des3,
        cid: h(CID),
    };
    let (kc_kcv, ks_kcv, debit, receipt_ok, load) = s
        .state
        .hsm
        .run(move |t| {
            let kc = t.derive_card_key(
                &key.master,
                key.derive,
                &brandkms::ops::card_protocol::card_key_data(&key.cid),
            )?;
            // K_C may encrypt, so E_KC(0^8) is its KCV; K_S may only MAC, so its
            // KCV is checked on E_KC(session data), the derivation done by hand.
            let kc_kcv = t.tdes_ecb_encrypt_handle(kc.handle(), &[0u8; 8])?;
            let ks_bytes = t.tdes_ecb_encrypt_handle(
                kc.handle(),
                brandkms::ops::card_protocol::session_key_data(&ra, &rb).as_slice(),
            )?;
            drop(kc);
            let ks_kcv = card::kcv(&ks_bytes).unwrap();
            let debit = brandkms::ops::card_protocol::mac(
                t,
                &key,
                &ra,
                &rb,
                &mac_input(
                    TO_CARD,
                    0,
                    &h::<29>("012000000000000007D04A505900112233445566778899AABBCCDDEEFF"),
                ),
            )?;
            let receipt_ok = brandkms::ops::card_protocol::verify_mac(
                t,
                &key,
                &ra,
                &rb,
                &mac_input(
                    FROM_CARD,
                    0,
                    &h::<29>("01000000000000000BB84A505900112233445566778899AABBCCDDEEFF"),
                ),
                &h::<8>("266778764E7FC8F3"),
            )?;
            let load = brandkms::ops::card_protocol::mac(
                t,
                &key,
                &ra,
                &rb,
                &mac_input(
                    TO_CARD,
                    1,
                    &h::<29>("011000000000000013884A5059000102030405060708090A0B0C0D0E0F"),
                ),
            )?;
            Ok((kc_kcv, ks_kcv, debit, receipt_ok, load))
        })
        .await
        .unwrap();
    assert_eq!(hex::encode_upper(&kc_kcv[..3]), "1DA5E1");
    assert_eq!(hex::encode_upper(ks_kcv), "F2FCA7");
    assert_eq!(hex::encode_upper(debit), "C94D9DCE7DE29AF2");
    assert!(receipt_ok);
    assert_eq!(hex::encode_upper(load), "CA2BFDE2887398FD");

    // And a purchase through the RPCs on that session.
    let (_, v) = transact(&shop, &mut card, &r.session_id, pb::CardOp::Debit, 2000).await;
    assert!(v.genuine);
    assert_eq!(
        (v.status, v.balance, card.balance),
        (pb::ReceiptStatus::Ok as i32, 3000, 3000)
    );
    s.stop().await;
}

#[tokio::test]
async fn purchases_proxy_loads_and_refusals() {
    on_each_database(|s: TestServer| async move {
        let officer = seed(&s).await;
        let km = hex::decode(KM).unwrap();
        let shop = s.client("cybershop-k").await;
        let mut card = card_with(&km, SERVICE_K, h(CID), 5000);

        // A purchase debits the simulated card.
        let session = authenticate(&shop, &mut card, "key-k", SERVICE_K).await;
        let (sealed, v) = transact(
            &shop,
            &mut card,
            &session.session_id,
            pb::CardOp::Debit,
            2000,
        )
        .await;
        assert!(v.genuine, "{}", s.backend);
        assert_eq!((v.balance, card.balance), (3000, 3000));
        assert_eq!(v.txn_id, sealed.txn_id);
        assert_eq!(sealed.counter, 0);
        assert!(sealed.proxy_load_issuer.is_empty());

        // A replayed receipt is not verified again; a tampered one is not verified.
        let mut cards = shop.cards();
        let sealed = cards
            .seal_command(seal_request(
                &session.session_id,
                pb::CardOp::ReadBalance,
                0,
            ))
            .await
            .unwrap();
        assert_eq!(sealed.counter, 1, "counters only grow");
        let (receipt, mac) = card
            .process(sealed.counter, &sealed.payload, &sealed.mac)
            .unwrap();
        let mut tampered = receipt;
        tampered[9] ^= 0x01;
        let verify = |payload: Vec<u8>| pb::VerifyReceiptRequest {
            session_id: session.session_id.clone(),
            counter: sealed.counter,
            payload,
            mac: mac.to_vec(),
        };
        assert!(
            !cards
                .verify_receipt(verify(tampered.to_vec()))
                .await
                .unwrap()
                .genuine
        );
        assert!(
            cards
                .verify_receipt(verify(receipt.to_vec()))
                .await
                .unwrap()
                .genuine
        );
        let replay = cards
            .verify_receipt(verify(receipt.to_vec()))
            .await
            .unwrap();
        assert!(!replay.genuine);
        assert_eq!(replay.balance, 0, "a refused receipt says nothing");
        assert_eq!(
            replay.status,
            pb::ReceiptStatus::Unspecified as i32,
            "a non-genuine receipt's status is UNSPECIFIED, never OK"
        );

        // Above the tie-up's per-transaction limit: denied naming rule 5.
        let (c, m) = status_of(
            cards
                .seal_command(seal_request(&session.session_id, pb::CardOp::Debit, 10_001))
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 5 (limit_exceeded)"), "{m}");
        // ... and the machine-readable reason (google.rpc.ErrorInfo) is the rule's code.
        let refused = refusal_of(
            cards
                .seal_command(seal_request(&session.session_id, pb::CardOp::Debit, 10_001))
                .await,
        );
        assert_eq!(refused, (Code::PermissionDenied, "limit_exceeded".into()));
        // A cybershop may not load a card (hold does not cover proxy loading).
        let (c, m) = status_of(
            cards
                .seal_command(seal_request(&session.session_id, pb::CardOp::Load, 100))
                .await,
        );
        assert_eq!(c, Code::PermissionDenied, "{m}");

        // A card with the wrong key is rejected and receives nothing else; its
        // challenge is used up.
        let mut impostor = card_with(&hex::decode(OTHER_KM).unwrap()[..24], SERVICE_K, h(CID), 9);
        let ch = cards
            .begin_authentication(pb::BeginAuthenticationRequest {
                alias: "key-k".into(),
                key_version: 1,
                card_id: h::<8>(CID).to_vec(),
            })
            .await
            .unwrap();
        let c1 = impostor
            .answer_challenge(SERVICE_K, 1, &ch.rb.clone().try_into().unwrap())
            .unwrap();
        let complete = pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id.clone(),
            c1: c1.to_vec(),
        };
        let r = cards
            .complete_authentication(complete.clone())
            .await
            .unwrap();
        assert!(!r.authenticated);
        assert!(r.c2.is_empty() && r.session_id.is_empty());
        let (c, _) = status_of(cards.complete_authentication(complete.clone()).await);
        assert_eq!(c, Code::NotFound, "a used challenge");
        // An unknown challenge and an unknown session get the same code.
        let (c, _) = status_of(
            cards
                .complete_authentication(pb::CompleteAuthenticationRequest {
                    challenge_id: "ch-unknown".into(),
                    ..complete
                })
                .await,
        );
        assert_eq!(c, Code::NotFound, "an unknown challenge");
        let (c, _) = status_of(
            cards
                .seal_command(seal_request("cs-unknown", pb::CardOp::Debit, 1))
                .await,
        );
        assert_eq!(c, Code::NotFound, "an unknown session");
        // Key version 0 means the active version, as everywhere in the API.
        let active = cards
            .begin_authentication(pb::BeginAuthenticationRequest {
                alias: "key-k".into(),
                key_version: 0,
                card_id: h::<8>(CID).to_vec(),
            })
            .await
            .unwrap();
        assert_eq!(active.key_version, 1);

        // An expired challenge.
        let ch = cards
            .begin_authentication(pb::BeginAuthenticationRequest {
                alias: "key-k".into(),
                key_version: 1,
                card_id: h::<8>(CID).to_vec(),
            })
            .await
            .unwrap();
        let c1 = card
            .answer_challenge(SERVICE_K, 1, &ch.rb.clone().try_into().unwrap())
            .unwrap();
        s.state.clock.advance(Duration::from_secs(31));
        let (c, m) = status_of(
            cards
                .complete_authentication(pb::CompleteAuthenticationRequest {
                    challenge_id: ch.challenge_id,
                    c1: c1.to_vec(),
                })
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition, "{m}");
        // ... and the session expired with it (120 s).
        s.state.clock.advance(Duration::from_secs(120));
        let (c, m) = status_of(
            cards
                .seal_command(seal_request(&session.session_id, pb::CardOp::Debit, 1))
                .await,
        );
        assert_eq!(c, Code::FailedPrecondition, "{m}");

        // A cybershop without a tie-up on the key is denied naming the rule.
        let other_shop = s.client("cybershop-l").await;
        let (c, m) = status_of(
            other_shop
                .cards()
                .begin_authentication(pb::BeginAuthenticationRequest {
                    alias: "key-k".into(),
                    key_version: 1,
                    card_id: h::<8>(CID).to_vec(),
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 1"), "{m}");
        // Another's session is not found.
        let (c, _) = status_of(
            other_shop
                .cards()
                .seal_command(seal_request(&session.session_id, pb::CardOp::Debit, 1))
                .await,
        );
        assert_eq!(c, Code::NotFound);

        // A proxy load for the offline issuer 2-1, by the loading portal.
        let portal = s.client("loading-portal").await;
        let mut card_e = card_with(&km, SERVICE_E, h("1122334455667788"), 1000);
        let session_e = authenticate(&portal, &mut card_e, "key-e", SERVICE_E).await;
        let (sealed, v) = transact(
            &portal,
            &mut card_e,
            &session_e.session_id,
            pb::CardOp::Load,
            5000,
        )
        .await;
        assert_eq!(sealed.proxy_load_issuer, "issuer-2-1");
        assert!(v.genuine);
        assert_eq!(card_e.balance, 6000);
        // Under proxy_load the portal reads the balance but never debits
        // (issue 12, item 7): a DEBIT is refused, naming rule 5.
        let (_, balance) = transact(
            &portal,
            &mut card_e,
            &session_e.session_id,
            pb::CardOp::ReadBalance,
            0,
        )
        .await;
        assert!(balance.genuine);
        assert_eq!(balance.balance, 6000);
        let debit = refusal_of(
            portal
                .cards()
                .seal_command(seal_request(&session_e.session_id, pb::CardOp::Debit, 7000))
                .await,
        );
        assert_eq!(
            debit,
            (Code::PermissionDenied, "mode_does_not_allow".into())
        );
        assert_eq!(card_e.balance, 6000);
        let issuer = s.client("issuer-2-1").await;
        let loads = issuer
            .proxy_loads()
            .list_proxy_loads(pb::ListProxyLoadsRequest::default())
            .await
            .unwrap()
            .loads;
        assert_eq!(loads.len(), 1);
        assert_eq!(
            (
                loads[0].status,
                loads[0].amount,
                loads[0].requested_by.as_str()
            ),
            (
                pb::ProxyLoadStatus::Confirmed as i32,
                5000,
                "loading-portal"
            )
        );
        assert_eq!(loads[0].txn_id, sealed.txn_id);
        assert_eq!(loads[0].card_id, card_e.cid().unwrap().to_vec());
        let summary = officer
            .proxy_loads()
            .summarize_proxy_loads(pb::SummarizeProxyLoadsRequest::default())
            .await
            .unwrap();
        assert_eq!(summary.totals.len(), 1);
        assert_eq!(
            (summary.totals[0].count, summary.totals[0].total),
            (1, 5000)
        );
        // Issuer 2-2 sees none of them, and may not ask for 2-1's.
        let other = s.client("issuer-2-2").await;
        assert!(
            other
                .proxy_loads()
                .list_proxy_loads(pb::ListProxyLoadsRequest::default())
                .await
                .unwrap()
                .loads
                .is_empty()
        );
        let refused = refusal_of(
            other
                .proxy_loads()
                .list_proxy_loads(pb::ListProxyLoadsRequest {
                    issuer: "issuer-2-1".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(
            refused,
            (Code::PermissionDenied, "others_proxy_loads".into())
        );
        let refused = refusal_of(
            shop.proxy_loads()
                .list_proxy_loads(pb::ListProxyLoadsRequest::default())
                .await,
        );
        assert_eq!(
            refused,
            (Code::PermissionDenied, "proxy_loads_not_listed".into())
        );

        // A retired version no longer authenticates.
        officer
            .admin()
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "key-k".into(),
                version: 1,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        let (c, m) = status_of(
            cards
                .begin_authentication(pb::BeginAuthenticationRequest {
                    alias: "key-k".into(),
                    key_version: 1,
                    card_id: h::<8>(CID).to_vec(),
                })
                .await,
        );
        assert_eq!(c, Code::PermissionDenied, "{m}");
        assert!(m.contains("retired") && m.contains("key_state"), "{m}");
        s
    })
    .await;
}

async fn counts(s: &TestServer) -> Vec<i64> {
    use sqlx::Row;
    let mut conn = s.state.store.conn().await.unwrap();
    let mut out = Vec::new();
    for table in [
        "card_challenges",
        "card_sessions",
        "card_commands",
        "proxy_loads",
    ] {
        let r = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        out.push(r.try_get::<i64, _>("n").unwrap());
    }
    out
}

#[tokio::test]
async fn malformed_inputs_are_invalid_and_change_nothing() {
    on_each_database(|s: TestServer| async move {
        seed(&s).await;
        let shop = s.client("cybershop-k").await;
        let mut card = card_with(&hex::decode(KM).unwrap(), SERVICE_K, h(CID), 5000);
        let session = authenticate(&shop, &mut card, "key-k", SERVICE_K)
            .await
            .session_id;
        let before = counts(&s).await;
        let mut cards = shop.cards();
        let begin = |card_id: Vec<u8>, version: u32| pb::BeginAuthenticationRequest {
            alias: "key-k".into(),
            key_version: version,
            card_id,
        };
        for (what, r) in [
            (
                "7-byte card id",
                cards
                    .begin_authentication(begin(vec![1; 7], 1))
                    .await
                    .map(|_| ()),
            ),
            (
                "9-byte card id",
                cards
                    .begin_authentication(begin(vec![1; 9], 1))
                    .await
                    .map(|_| ()),
            ),
            (
                "unknown version",
                cards
                    .begin_authentication(begin(vec![1; 8], 99))
                    .await
                    .map(|_| ()),
            ),
        ] {
            let expected = if what == "unknown version" {
                Code::NotFound
            } else {
                Code::InvalidArgument
            };
            assert_eq!(status_of(r).0, expected, "{what}");
        }
        let ch = cards
            .begin_authentication(begin(h::<8>(CID).to_vec(), 1))
            .await
            .unwrap();
        let before = {
            let mut b = before;
            b[0] += 1;
            b
        };
        for c1 in [vec![0u8; 15], vec![0u8; 17], Vec::new()] {
            let r = cards
                .complete_authentication(pb::CompleteAuthenticationRequest {
                    challenge_id: ch.challenge_id.clone(),
                    c1,
                })
                .await;
            assert_eq!(status_of(r).0, Code::InvalidArgument);
        }
        let seal = |op: i32, amount: u64, currency: &str| pb::SealCommandRequest {
            session_id: session.clone(),
            op,
            amount,
            currency: currency.into(),
        };
        for (what, req) in [
            ("unknown op", seal(99, 10, "JPY")),
            ("no op", seal(0, 10, "JPY")),
            (
                "negative amount (as u64)",
                seal(pb::CardOp::Debit as i32, (-5i64) as u64, "JPY"),
            ),
            (
                "overflowing amount",
                seal(pb::CardOp::Load as i32, u64::MAX, "JPY"),
            ),
            ("zero debit", seal(pb::CardOp::Debit as i32, 0, "JPY")),
            (
                "read balance with an amount",
                seal(pb::CardOp::ReadBalance as i32, 5, "JPY"),
            ),
            (
                "lowercase currency",
                seal(pb::CardOp::Debit as i32, 10, "jpy"),
            ),
            ("short currency", seal(pb::CardOp::Debit as i32, 10, "JP")),
            ("long currency", seal(pb::CardOp::Debit as i32, 10, "JPYY")),
            ("digits", seal(pb::CardOp::Debit as i32, 10, "392")),
        ] {
            let (c, m) = status_of(cards.seal_command(req).await);
            assert_eq!(c, Code::InvalidArgument, "{what}: {m}");
        }
        let verify = |payload: Vec<u8>, mac: Vec<u8>| pb::VerifyReceiptRequest {
            session_id: session.clone(),
            counter: 0,
            payload,
            mac,
        };
        for (payload, mac) in [
            (vec![0; 28], vec![0; 8]),
            (vec![0; 30], vec![0; 8]),
            (vec![0; 29], vec![0; 7]),
        ] {
            let (c, _) = status_of(cards.verify_receipt(verify(payload, mac)).await);
            assert_eq!(c, Code::InvalidArgument);
        }
        let (c, _) = status_of(
            cards
                .seal_command(pb::SealCommandRequest {
                    session_id: "Not A Session".into(),
                    ..seal(pb::CardOp::Debit as i32, 10, "JPY")
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument);
        assert_eq!(counts(&s).await, before, "{}", s.backend);
        s
    })
    .await;
}

/// Challenges and sessions expired more than the grace period ago go with the
/// sessions' commands, answered or not, in one purge summarised by one audit
/// record; live ones, the proxy loads and the operations' audit records stay.
#[tokio::test]
async fn the_purger_deletes_expired_challenges_and_sessions_and_keeps_proxy_loads() {
    for db in brandkms::testing::databases().await {
        let service = brandkms::config::ServiceSettings {
            purge_interval_secs: 1,
            ..TestServer::single_officer()
        };
        let s = TestServer::start_with(db, service).await;
        let officer = seed(&s).await;
        let km = hex::decode(KM).unwrap();
        // A proxy load (answered) and a DEBIT the card never answered, in one
        // session; a challenge never completed.
        let portal = s.client("loading-portal").await;
        let mut card_e = card_with(&km, SERVICE_E, h("1122334455667788"), 1000);
        let old = authenticate(&portal, &mut card_e, "key-e", SERVICE_E).await;
        let (_, v) = transact(
            &portal,
            &mut card_e,
            &old.session_id,
            pb::CardOp::Load,
            5000,
        )
        .await;
        assert!(v.genuine);
        portal
            .cards()
            .seal_command(seal_request(&old.session_id, pb::CardOp::ReadBalance, 0))
            .await
            .unwrap();
        let shop = s.client("cybershop-k").await;
        shop.cards()
            .begin_authentication(pb::BeginAuthenticationRequest {
                alias: "key-k".into(),
                key_version: 1,
                card_id: h::<8>(CID).to_vec(),
            })
            .await
            .unwrap();
        assert_eq!(counts(&s).await, [2, 1, 2, 1], "{}", s.backend);

        // Past the session's lifetime and the grace period; then a live session.
        s.state.clock.advance(
            Duration::from_secs(s.state.settings.session_ttl_secs)
                + brandkms::server::PURGE_GRACE
                + Duration::from_secs(1),
        );
        let mut card = card_with(&km, SERVICE_K, h(CID), 5000);
        let live = authenticate(&shop, &mut card, "key-k", SERVICE_K).await;
        transact(&shop, &mut card, &live.session_id, pb::CardOp::Debit, 100).await;

        let started = std::time::Instant::now();
        let purges = loop {
            let purges = audit_records(&officer, "Retention/Purge").await;
            if !purges.is_empty() || started.elapsed() > Duration::from_secs(30) {
                break purges;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(purges.len(), 1, "{}: {purges:?}", s.backend);
        assert!(
            purges[0].reason.starts_with(
                "purged expired card rows: challenges 2, sessions 1, sealed commands 2 "
            ),
            "{}",
            purges[0].reason
        );
        assert_eq!(purges[0].caller, "local:retention");
        assert_eq!(counts(&s).await, [1, 1, 1, 1], "{}", s.backend);

        // The live session goes on; the old one is gone.
        let (sealed, v) =
            transact(&shop, &mut card, &live.session_id, pb::CardOp::Debit, 100).await;
        assert_eq!(sealed.counter, 1);
        assert!(v.genuine);
        let (c, _) = status_of(
            portal
                .cards()
                .seal_command(seal_request(&old.session_id, pb::CardOp::Debit, 1))
                .await,
        );
        assert_eq!(c, Code::NotFound);
        let loads = s
            .client("issuer-2-1")
            .await
            .proxy_loads()
            .list_proxy_loads(pb::ListProxyLoadsRequest::default())
            .await
            .unwrap()
            .loads;
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].status, pb::ProxyLoadStatus::Confirmed as i32);
        // The four commands sealed are still in the audit trail.
        let sealed = audit_records(&officer, "CardAuthentication/SealCommand").await;
        assert_eq!(
            sealed
                .iter()
                .filter(|r| r.outcome == pb::AuditOutcome::Allowed as i32)
                .count(),
            4
        );
        let verified = officer
            .admin()
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert!(verified.intact, "{verified:?}");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_transactions_complete_with_distinct_sessions() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    seed(&s).await;
    let km = hex::decode(KM).unwrap();
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let shop = s.client("cybershop-k").await;
        let mut card = card_with(&km, SERVICE_K, [i; 8], 10_000);
        tasks.push(tokio::spawn(async move {
            let a = authenticate(&shop, &mut card, "key-k", SERVICE_K).await;
            let (_, v) = transact(&shop, &mut card, &a.session_id, pb::CardOp::Debit, 100).await;
            assert!(v.genuine);
            assert_eq!(card.balance, 9_900);
            a.session_id
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await.unwrap());
    }
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 32);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_begun_in_one_process_continues_in_another_kms_process() {
    let first = TestServer::start(brandkms::testing::sqlite_db()).await;
    seed(&first).await;
    let shop = first.client("cybershop-k").await;
    let mut card = card_with(&hex::decode(KM).unwrap(), SERVICE_K, h(CID), 5000);
    let session = authenticate(&shop, &mut card, "key-k", SERVICE_K).await;

    // A second `kms serve` process on the same database file and token.
    let (_child, other) = first.second_process("cybershop-k").await;
    let (sealed, v) = transact(
        &other,
        &mut card,
        &session.session_id,
        pb::CardOp::Debit,
        700,
    )
    .await;
    assert_eq!(sealed.counter, 0);
    assert!(v.genuine);
    assert_eq!(card.balance, 4300);
    // And back on the first process, the counter goes on.
    let (sealed, v) = transact(
        &shop,
        &mut card,
        &session.session_id,
        pb::CardOp::Debit,
        300,
    )
    .await;
    assert_eq!(sealed.counter, 1);
    assert!(v.genuine);
    assert_eq!(card.balance, 4000);
    first.stop().await;
}

/// Issue 12, item 8: every card-call record names the key, refused ones
/// included; a participant gets the same answer for an alias that does not
/// exist as for one it has no tie-up on.
#[tokio::test]
async fn refusals_name_the_key_and_do_not_tell_which_aliases_exist() {
    on_each_database(|s| async move {
        let officer = seed(&s).await;
        let shop = s.client("cybershop-k").await;
        let begin = |alias: &str| pb::BeginAuthenticationRequest {
            alias: alias.into(),
            key_version: 0,
            card_id: h::<8>(CID).to_vec(),
        };
        let missing = refusal_of(
            shop.cards()
                .begin_authentication(begin("no-such-key"))
                .await,
        );
        let not_mine = refusal_of(shop.cards().begin_authentication(begin("key-e")).await);
        assert_eq!(missing, (Code::PermissionDenied, "no_tie_up".into()));
        assert_eq!(missing, not_mine);
        // An officer is told the truth.
        let km = hex::decode(KM).unwrap();
        let (c, _) = status_of(
            officer
                .admin()
                .get_key(pb::GetKeyRequest {
                    alias: "no-such-key".into(),
                })
                .await,
        );
        assert_eq!(c, Code::NotFound);

        // A DEBIT above the tie-up's limit is refused; its record names key-k v1.
        let mut card = card_with(&km, SERVICE_K, h::<8>(CID), 100_000);
        let session = authenticate(&shop, &mut card, "key-k", SERVICE_K).await;
        let refused = refusal_of(
            shop.cards()
                .seal_command(seal_request(&session.session_id, pb::CardOp::Debit, 10_001))
                .await,
        );
        assert_eq!(refused, (Code::PermissionDenied, "limit_exceeded".into()));
        let records = audit_records(&officer, "CardAuthentication/SealCommand").await;
        let denied = records
            .iter()
            .find(|r| r.outcome == pb::AuditOutcome::Denied as i32)
            .expect("the refused seal is audited");
        assert_eq!(
            (denied.key_alias.as_str(), denied.key_version),
            ("key-k", Some(1))
        );
        s
    })
    .await;
}
