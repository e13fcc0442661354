//! Issue 13, items 4 and 5: a version's cryptoperiod and its compromise, end to
//! end. Past its not-after (or before its not-before) a version does no new
//! work, here a new card authentication; a version marked compromised (held
//! under dual control, approved by a second officer) is refused at once on
//! another `kms serve` process that had just used it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::config::ServiceSettings;
use brandkms_clients::terminal::{self, TransactionError};
use brandkms_clients::{Client, ClientError};
use brandkms_proto::v1 as pb;
use brandkms_tests::{
    PROTOCOL_CID, PROTOCOL_KM, TestServer, on_each_database, protocol_card, refusal_of, register,
    status_of, tie_up,
};
use tonic::Code;

const SERVICE: u16 = 0x0A01;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The service's token holds `K_M` as `alias`; a cybershop holds it (hold).
async fn seed(s: &TestServer, alias: &str) -> Client {
    let officer = s.client("officer-1").await;
    let km = hex::decode(PROTOCOL_KM).unwrap();
    brandkms::testing::import_card_master(&s.state, alias, SERVICE, &km).await;
    register_once(&officer, "cybershop-k", pb::EntityKind::Cybershop).await;
    tie_up(&officer, "cybershop-k", alias, pb::TieUpMode::Hold, None).await;
    officer
}

async fn register_once(officer: &Client, id: &str, kind: pb::EntityKind) {
    let known = officer
        .admin()
        .list_entities_all(pb::ListEntitiesRequest::default())
        .await
        .unwrap();
    if !known.iter().any(|e| e.id == id) {
        register(officer, id, kind).await;
    }
}

/// A purchase of 100 JPY with a card personalised from `K_M`.
async fn purchase(shop: &Client, alias: &str) -> Result<(), ClientError> {
    let mut card = protocol_card(SERVICE);
    match terminal::transact(
        shop,
        &mut card,
        alias,
        SERVICE,
        pb::CardOp::Debit,
        100,
        "JPY",
    )
    .await
    {
        Ok(t) => {
            assert!(t.receipt.genuine);
            Ok(())
        }
        Err(TransactionError::Client(e)) => Err(e),
        Err(other) => panic!("{other}"),
    }
}

/// The first step of a new authentication with version `version` (0: active).
async fn begin(shop: &Client, alias: &str, version: u32) -> Result<pb::Challenge, ClientError> {
    shop.cards()
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: alias.into(),
            key_version: version,
            card_id: hex::decode(PROTOCOL_CID).unwrap(),
        })
        .await
}

async fn set_period(officer: &Client, alias: &str, not_before: i64, not_after: i64) -> pb::Key {
    let change = officer
        .admin()
        .set_key_version_cryptoperiod(pb::SetKeyVersionCryptoperiodRequest {
            alias: alias.into(),
            version: 0,
            not_before,
            not_after,
        })
        .await
        .unwrap();
    match change.result {
        Some(pb::key_change::Result::Key(k)) => k,
        other => panic!("dual control is off here: {other:?}"),
    }
}

#[tokio::test]
async fn a_version_outside_its_cryptoperiod_refuses_a_new_authentication() {
    on_each_database(|s| async move {
        let officer = seed(&s, "key-k").await;
        seed(&s, "key-n").await;
        let shop = s.client("cybershop-k").await;
        purchase(&shop, "key-k").await.unwrap();

        // Its not-after has passed: no new authentication, naming the rule.
        let ended = now_ms() - 1000;
        let key = set_period(&officer, "key-k", 0, ended).await;
        assert_eq!(key.versions[0].not_after, ended);
        assert_eq!(
            refusal_of(begin(&shop, "key-k", 0).await),
            (Code::PermissionDenied, "key_expired".into())
        );
        assert_eq!(
            refusal_of(purchase(&shop, "key-k").await),
            (Code::PermissionDenied, "key_expired".into())
        );
        // Listed among the versions ending within a day; key-n has no end.
        let expiring = officer
            .admin()
            .list_keys_all(pb::ListKeysRequest {
                expiring_within_secs: 86_400,
                ..Default::default()
            })
            .await
            .unwrap();
        let aliases: Vec<&str> = expiring.iter().map(|k| k.alias.as_str()).collect();
        assert_eq!(aliases, ["key-k"]);

        // Not begun yet: refused too.
        set_period(&officer, "key-k", now_ms() + 3_600_000, 0).await;
        assert_eq!(
            refusal_of(begin(&shop, "key-k", 0).await),
            (Code::PermissionDenied, "key_not_yet_valid".into())
        );
        // An empty period is refused and changes nothing.
        let t = now_ms();
        let (c, m) = status_of(
            officer
                .admin()
                .set_key_version_cryptoperiod(pb::SetKeyVersionCryptoperiodRequest {
                    alias: "key-k".into(),
                    version: 0,
                    not_before: t,
                    not_after: t,
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("must be later than not_before"), "{m}");
        // A window around now: used again.
        set_period(&officer, "key-k", now_ms() - 1000, now_ms() + 3_600_000).await;
        purchase(&shop, "key-k").await.unwrap();
        purchase(&shop, "key-n").await.unwrap();
        s
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_version_is_refused_at_once_on_a_second_instance() {
    // Dual control as in production: marking a version compromised is held.
    let s =
        TestServer::start_with(brandkms::testing::sqlite_db(), ServiceSettings::default()).await;
    let officer = seed(&s, "key-k").await;
    seed(&s, "key-r").await;
    let (_second, other) = s.second_process("cybershop-k").await;
    // The second instance serves both keys (and has their facts cached).
    purchase(&other, "key-k").await.unwrap();
    purchase(&other, "key-r").await.unwrap();
    let shop = s.client("cybershop-k").await;
    // A session begun before the compromise on the first instance.
    let challenge = begin(&shop, "key-k", 0).await.unwrap();

    let compromise = |alias: &str, rotate: bool| pb::MarkKeyVersionCompromisedRequest {
        alias: alias.into(),
        version: 1,
        rotate,
        reason: "master seen in a memory dump of the old HSM's host".into(),
    };
    let held = officer
        .admin()
        .mark_key_version_compromised(compromise("key-k", false))
        .await
        .unwrap();
    let Some(pb::key_change::Result::Pending(a)) = held.result else {
        panic!("held for a second officer: {held:?}");
    };
    // Not yet approved: still served.
    purchase(&other, "key-k").await.unwrap();
    let second = s.client("officer-2").await;
    second
        .admin()
        .approve(pb::ApprovalRef { id: a.id })
        .await
        .unwrap();

    // At once, on the other process: refused, naming the rule.
    assert_eq!(
        refusal_of(purchase(&other, "key-k").await),
        (Code::PermissionDenied, "key_compromised".into())
    );
    assert_eq!(
        refusal_of(begin(&other, "key-k", 1).await),
        (Code::PermissionDenied, "key_compromised".into())
    );
    // The authentication begun before it goes no further.
    let mut card = protocol_card(SERVICE);
    let rb: [u8; 8] = challenge.rb.clone().try_into().unwrap();
    let c1 = card.answer_challenge(SERVICE, 1, &rb).unwrap();
    let done = other
        .cards()
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: challenge.challenge_id.clone(),
            c1: c1.to_vec(),
        })
        .await;
    assert_eq!(
        refusal_of(done),
        (Code::PermissionDenied, "key_compromised".into())
    );
    // Marking it again is refused.
    let (c, m) = status_of(
        officer
            .admin()
            .mark_key_version_compromised(compromise("key-k", false))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");

    // With rotation in the same command: version 1 refused everywhere,
    // version 2 active and served.
    let held = officer
        .admin()
        .mark_key_version_compromised(compromise("key-r", true))
        .await
        .unwrap();
    let Some(pb::key_change::Result::Pending(a)) = held.result else {
        panic!("{held:?}");
    };
    let approved = second
        .admin()
        .approve(pb::ApprovalRef { id: a.id })
        .await
        .unwrap();
    let Some(pb::approve_response::Result::Key(key)) = approved.result else {
        panic!("{approved:?}");
    };
    assert_eq!(key.versions.len(), 2);
    assert!(key.versions[0].compromised_at > 0);
    assert_eq!(key.versions[1].state, pb::KeyState::Active as i32);
    assert_eq!(
        refusal_of(begin(&other, "key-r", 1).await),
        (Code::PermissionDenied, "key_compromised".into())
    );
    begin(&other, "key-r", 0).await.unwrap();

    // Under dual control, narrowing a cryptoperiod runs; letting a version
    // serve longer is held for the second officer.
    let period = |not_after: i64| pb::SetKeyVersionCryptoperiodRequest {
        alias: "key-r".into(),
        version: 0,
        not_before: 0,
        not_after,
    };
    let soon = now_ms() + 3_600_000;
    let narrowed = officer
        .admin()
        .set_key_version_cryptoperiod(period(soon))
        .await
        .unwrap();
    assert!(
        matches!(&narrowed.result, Some(pb::key_change::Result::Key(k)) if k.versions[1].not_after == soon),
        "{narrowed:?}"
    );
    let widened = officer
        .admin()
        .set_key_version_cryptoperiod(period(soon + 86_400_000))
        .await
        .unwrap();
    let Some(pb::key_change::Result::Pending(a)) = widened.result else {
        panic!("a widening is held: {widened:?}");
    };
    assert_eq!(a.rule, "widen_cryptoperiod");
    s.stop().await;
}
