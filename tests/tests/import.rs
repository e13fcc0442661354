//! Issue 13: key import. The brand's old HSM, played by Python `cryptography`
//! (`tests/old_hsm.py`), wraps docs/protocol.md's master `K_M` under the service's
//! import key; officers import it under dual control (held, then approved by a
//! second officer); the token's KCV is 08D7B4; a card personalised from `K_M`
//! outside the service is authenticated through CardAuthentication and a DEBIT
//! verifies. A wrong KCV, another key's ciphertext, an unknown class and a
//! truncated blob are refused with precise statuses and leave no token object
//! and no key row.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::config::ServiceSettings;
use brandkms_clients::{Client, terminal};
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, register, status_of, tie_up};
use tonic::Code;

use brandkms_tests::{PROTOCOL_KM as KM, PROTOCOL_KM_KCV as KM_KCV};
const SERVICE: u16 = 0x0A01;

/// Wraps `key` as the old HSM does: (wrapped, KCV).
fn old_hsm(p: &pb::ImportParameters, key: &str) -> (Vec<u8>, String) {
    let spki = hex::encode(&p.spki_der);
    let fingerprint = hex::encode(&p.fingerprint_sha256);
    let text = brandkms_tests::old_hsm(&[&spki, &fingerprint, key], "");
    let (wrapped, kcv) = text.trim().split_once(' ').unwrap();
    (hex::decode(wrapped).unwrap(), kcv.to_string())
}

fn import(alias: &str, wrapped: Vec<u8>, kcv: &str) -> pb::ImportKeyRequest {
    pb::ImportKeyRequest {
        alias: alias.into(),
        key_class: pb::KeyClass::CardAccess as i32,
        algorithm: pb::KeyAlgorithm::Tdes2 as i32,
        service_code: u32::from(SERVICE),
        purpose: pb::Purpose::Purchase as i32,
        exportable: false,
        allow_legacy_des: false,
        wrapped_key: wrapped,
        expected_kcv: hex::decode(kcv).unwrap(),
        import_key_version: 1,
        ..Default::default()
    }
}

/// The import key's parameters, after making one.
async fn parameters(officer: &Client) -> pb::ImportParameters {
    let p = brandkms_tests::import_parameters(officer).await;
    assert_eq!(
        p.fingerprint_sha256,
        <sha2::Sha256 as sha2::Digest>::digest(&p.spki_der).to_vec()
    );
    assert_eq!(p.wrapping, "RSA-OAEP-SHA1-MGF1-SHA1");
    assert!(p.spki_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    p
}

#[tokio::test]
async fn a_master_from_the_old_hsm_is_imported_under_dual_control_and_authenticates_a_card() {
    // Dual control as in production: ImportKey is held for a second officer.
    let s =
        TestServer::start_with(brandkms::testing::sqlite_db(), ServiceSettings::default()).await;
    let officer = s.client("officer-1").await;
    let p = parameters(&officer).await;
    let (wrapped, kcv) = old_hsm(&p, KM);
    assert_eq!(kcv, KM_KCV, "the old HSM's own KCV");

    let held = officer
        .admin()
        .import_key(import("key-m", wrapped, &kcv))
        .await
        .unwrap();
    let Some(pb::key_change::Result::Pending(approval)) = held.result else {
        panic!("ImportKey must be held for a second officer: {held:?}");
    };
    let (c, _) = status_of(
        officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "key-m".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound, "nothing is imported before the approval");
    let approved = s
        .client("officer-2")
        .await
        .admin()
        .approve(pb::ApprovalRef { id: approval.id })
        .await
        .unwrap();
    let Some(pb::approve_response::Result::Key(key)) = approved.result else {
        panic!("the approval carries out the import: {approved:?}");
    };
    assert_eq!(key.versions.len(), 1);
    assert_eq!(hex::encode_upper(&key.versions[0].kcv), KM_KCV);
    assert_eq!(key.versions[0].state, pb::KeyState::Active as i32);

    // A card personalised from K_M long ago, outside the service.
    register(&officer, "cybershop-k", pb::EntityKind::Cybershop).await;
    tie_up(&officer, "cybershop-k", "key-m", pb::TieUpMode::Hold, None).await;
    purchase_with_protocol_card(&s, "key-m").await;
    s.stop().await;
}

/// A card personalised from `K_M` long ago buys for 2,000 JPY at cybershop K
/// through `alias`: authenticated, the DEBIT sealed, the receipt genuine.
async fn purchase_with_protocol_card(s: &TestServer, alias: &str) {
    let mut c = brandkms_tests::protocol_card(SERVICE);
    let t = terminal::transact(
        &s.client("cybershop-k").await,
        &mut c,
        alias,
        SERVICE,
        pb::CardOp::Debit,
        2000,
        "JPY",
    )
    .await
    .unwrap();
    assert!(t.receipt.genuine);
    assert_eq!(c.balance, 3000);
}

#[tokio::test]
async fn refused_imports_leave_nothing_behind() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    let p = parameters(&officer).await;
    let (wrapped, kcv) = old_hsm(&p, KM);

    // A KCV other than the key's: unwrapped, found different, destroyed.
    let (c, m) = status_of(
        officer
            .admin()
            .import_key(import("key-x", wrapped.clone(), "000000"))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(
        m.contains(&format!("check value is {KM_KCV}, not 000000")),
        "{m}"
    );

    // A ciphertext under another key (an RSA key the old HSM made up).
    let other = other_public_key();
    let (foreign, _) = old_hsm(&other, KM);
    let (c, m) = status_of(
        officer
            .admin()
            .import_key(import("key-x", foreign, &kcv))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("does not unwrap under this import key"), "{m}");

    // Cut short.
    let (c, m) = status_of(
        officer
            .admin()
            .import_key(import("key-x", wrapped[..100].to_vec(), &kcv))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("does not unwrap under this import key"), "{m}");

    // A class that is not imported, and one that does not exist.
    for class in [pb::KeyClass::Settlement as i32, 99] {
        let mut r = import("key-x", wrapped.clone(), &kcv);
        r.key_class = class;
        let (c, m) = status_of(officer.admin().import_key(r).await);
        assert_eq!(c, Code::InvalidArgument, "{m}");
    }
    // No import key version, one that does not exist, a reserved alias.
    let mut r = import("key-x", wrapped.clone(), &kcv);
    r.import_key_version = 0;
    let (c, m) = status_of(officer.admin().import_key(r).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("import_key_version is required"), "{m}");
    let mut r = import("key-x", wrapped.clone(), &kcv);
    r.import_key_version = 7;
    let (c, m) = status_of(officer.admin().import_key(r).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let (c, m) = status_of(
        officer
            .admin()
            .import_key(import("brandkms.import", wrapped.clone(), &kcv))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("the service's own"), "{m}");
    // A not-before in the future: the version would be active and serve
    // nothing.
    let mut r = import("key-x", wrapped.clone(), &kcv);
    r.not_before = 4_102_444_800_000;
    let (c, m) = status_of(officer.admin().import_key(r).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("is in the future"), "{m}");
    // A KCV of the wrong length.
    let mut r = import("key-x", wrapped.clone(), &kcv);
    r.expected_kcv = vec![0; 4];
    let (c, m) = status_of(officer.admin().import_key(r).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("expected_kcv is 3 bytes"), "{m}");

    // No key row, no token object.
    let (c, _) = status_of(
        officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "key-x".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    // (The test token is shared by this file's tests, which run at once: only
    // key-x's objects are this test's to count.)
    assert!(
        !token_objects(&s)
            .await
            .iter()
            .any(|l| l.starts_with("brandkms/key-x/")),
        "an object of key-x was left in the token"
    );
    let report = brandkms::commands::reconcile::check(&s.state.hsm, &s.state.store)
        .await
        .unwrap();
    assert!(
        report.missing.is_empty()
            && !report
                .orphans
                .iter()
                .any(|o| o.label.starts_with("brandkms/key-x/")),
        "{report:?}"
    );

    // A newer import key retires the old one, whose object is destroyed:
    // what was wrapped for it is refused, naming why.
    let mut conn = s.state.store.conn().await.unwrap();
    let v1 = brandkms::store::keys::versions(&mut conn, "brandkms.import")
        .await
        .unwrap()
        .remove(0);
    drop(conn);
    officer
        .admin()
        .create_import_key(pb::CreateImportKeyRequest {})
        .await
        .unwrap();
    let id = v1.cka_id;
    assert!(!s.state.hsm.run(move |h| h.exists(&id)).await.unwrap());
    let (c, m) = status_of(
        officer
            .admin()
            .import_key(import("key-x", wrapped.clone(), &kcv))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("import key version 1 is"), "{m}");

    // And the same key wrapped for the current import key goes through.
    let p2 = officer
        .admin()
        .get_import_parameters(pb::GetImportParametersRequest {})
        .await
        .unwrap();
    assert_eq!(p2.version, 2);
    let (wrapped, kcv) = old_hsm(&p2, KM);
    let mut r = import("key-x", wrapped, &kcv);
    r.import_key_version = 2;
    let done = officer.admin().import_key(r).await.unwrap();
    let Some(pb::key_change::Result::Key(key)) = done.result else {
        panic!("{done:?}");
    };
    assert_eq!(hex::encode_upper(&key.versions[0].kcv), KM_KCV);
    s.stop().await;
}

/// The batch file as a request (what `kmsctl key import-batch` sends).
fn batch_request(text: &str) -> pb::ImportKeysRequest {
    let file: toml::Value = toml::from_str(text).unwrap();
    let s = |v: &toml::Value, k: &str| v[k].as_str().unwrap().to_string();
    pb::ImportKeysRequest {
        kek_alias: s(&file, "kek"),
        kek_version: 0,
        keys: file["key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| pb::BulkKey {
                alias: s(k, "alias"),
                algorithm: pb::KeyAlgorithm::Tdes2 as i32,
                service_code: u32::try_from(k["service_code"].as_integer().unwrap()).unwrap(),
                purpose: pb::Purpose::Purchase as i32,
                wrapped_key: hex::decode(s(k, "wrapped")).unwrap(),
                expected_kcv: hex::decode(s(k, "kcv")).unwrap(),
                ..Default::default()
            })
            .collect(),
    }
}

/// Approves `pending` as officer-2 and returns what it produced.
async fn approved(s: &TestServer, pending: pb::Approval) -> pb::approve_response::Result {
    s.client("officer-2")
        .await
        .admin()
        .approve(pb::ApprovalRef { id: pending.id })
        .await
        .unwrap()
        .result
        .unwrap()
}

/// Issue 13, item 3: a hundred keys wrapped under an AES-256 KEK that was
/// itself imported under the import key, one of them stated with a wrong KCV.
#[tokio::test]
async fn a_batch_under_an_imported_kek_imports_each_key_on_its_own() {
    let s =
        TestServer::start_with(brandkms::testing::sqlite_db(), ServiceSettings::default()).await;
    let officer = s.client("officer-1").await;
    let p = parameters(&officer).await;

    // The old HSM's KEK, wrapped under the import key; held, then approved.
    let kek = hex::encode_upper(rand::random::<[u8; 32]>());
    let (wrapped, kek_kcv) = old_hsm(&p, &kek);
    let mut r = import("kek.old-hsm", wrapped, &kek_kcv);
    r.key_class = pb::KeyClass::ImportKek as i32;
    r.algorithm = pb::KeyAlgorithm::Aes256 as i32;
    r.service_code = 0;
    r.purpose = 0;
    let held = officer.admin().import_key(r).await.unwrap();
    let Some(pb::key_change::Result::Pending(a)) = held.result else {
        panic!("{held:?}");
    };
    let pb::approve_response::Result::Key(kek_key) = approved(&s, a).await else {
        panic!("the KEK import returns the key");
    };
    assert_eq!(kek_key.key_class, pb::KeyClass::ImportKek as i32);
    assert_eq!(hex::encode_upper(&kek_key.versions[0].kcv), kek_kcv);

    // 100 keys: docs/protocol.md's K_M first, then fresh ones.
    let mut lines = format!("bulk-000 {KM}\n");
    for i in 1..100 {
        let key = hex::encode_upper(rand::random::<[u8; 16]>());
        lines.push_str(&format!("bulk-{i:03} {key}\n"));
    }
    let mut request = batch_request(&brandkms_tests::old_hsm(
        &["batch", &kek, "kek.old-hsm"],
        &lines,
    ));
    assert_eq!(request.keys.len(), 100);
    assert_eq!(hex::encode_upper(&request.keys[0].expected_kcv), KM_KCV);
    request.keys[57].expected_kcv = vec![0, 0, 0];
    request.keys[1].exportable = true;

    // Refused as a whole: a duplicate alias, a KEK that is not one.
    let mut twice = request.clone();
    twice.keys[1].alias = "bulk-000".into();
    let (c, m) = status_of(officer.admin().import_keys(twice).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("keys[1]: alias bulk-000 appears twice"), "{m}");
    brandkms::testing::import_card_master(&s.state, "key-m", SERVICE, &hex::decode(KM).unwrap())
        .await;
    let mut not_kek = request.clone();
    not_kek.kek_alias = "key-m".into();
    let (c, m) = status_of(officer.admin().import_keys(not_kek).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("not an import KEK"), "{m}");

    // Held as one proposal; the second officer's approval runs it.
    let resent = request.clone();
    let held = officer.admin().import_keys(request).await.unwrap();
    let Some(pb::import_keys_change::Result::Pending(a)) = held.result else {
        panic!("{held:?}");
    };
    assert!(
        a.summary.contains("import 100 card-access keys"),
        "{}",
        a.summary
    );
    let pb::approve_response::Result::ImportedKeys(done) = approved(&s, a).await else {
        panic!("the batch returns what became of each key");
    };
    assert_eq!((done.imported, done.refused), (99, 1));
    let refused = &done.results[57];
    assert_eq!(refused.alias, "bulk-057");
    assert!(!refused.imported);
    assert_eq!(refused.code, Code::InvalidArgument as i32);
    assert!(
        refused.reason.contains("not 000000; nothing was kept"),
        "{}",
        refused.reason
    );
    assert_eq!(hex::encode_upper(&done.results[0].kcv), KM_KCV);
    assert!(
        done.results
            .iter()
            .enumerate()
            .all(|(i, r)| r.imported == (i != 57))
    );

    // Audited: the batch begins (closing the approval), a record per key,
    // and the end names the refused one.
    let records = brandkms_tests::audit_records(&officer, "Admin/ImportKeys").await;
    let about = |alias: &str| records.iter().filter(|r| r.key_alias == alias).count();
    assert_eq!(about("bulk-000"), 1);
    assert_eq!(about("bulk-057"), 1);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.key_alias.starts_with("bulk-"))
            .count(),
        100
    );
    let batch: Vec<&pb::AuditRecord> = records
        .iter()
        .filter(|r| r.key_alias == "kek.old-hsm")
        .collect();
    assert!(
        batch
            .iter()
            .any(|r| r.reason.contains("begins") && r.reason.contains("approves"))
    );
    assert!(
        batch
            .iter()
            .any(|r| r.reason.contains("ends: 99 imported, 1 refused: bulk-057")),
        "{batch:?}"
    );

    // The refused key left no row and no object; the imported ones are
    // sensitive, never extractable (not exportable), and unwrap nothing.
    let (c, _) = status_of(
        officer
            .admin()
            .get_key(pb::GetKeyRequest {
                alias: "bulk-057".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let labels = token_objects(&s).await;
    assert!(!labels.iter().any(|l| l.starts_with("brandkms/bulk-057/")));
    assert_eq!(
        labels
            .iter()
            .filter(|l| l.starts_with("brandkms/bulk-"))
            .count(),
        99
    );
    let mut conn = s.state.store.conn().await.unwrap();
    let imported = brandkms::store::keys::versions(&mut conn, "bulk-000")
        .await
        .unwrap();
    let kek_rows = brandkms::store::keys::versions(&mut conn, "kek.old-hsm")
        .await
        .unwrap();
    drop(conn);
    for id in [imported[0].cka_id, kek_rows[0].cka_id] {
        let attrs = s
            .state
            .hsm
            .run(move |h| h.attributes_for_tests(&id))
            .await
            .unwrap();
        for want in [
            "Sensitive(true)",
            "Extractable(false)",
            "Encrypt(false)",
            "Wrap(false)",
        ] {
            assert!(attrs.iter().any(|a| a == want), "{want} not in {attrs:?}");
        }
    }

    // The same batch proposed again imports nothing twice.
    let again = officer.admin().import_keys(resent.clone()).await.unwrap();
    let Some(pb::import_keys_change::Result::Pending(a)) = again.result else {
        panic!("{again:?}");
    };
    let pb::approve_response::Result::ImportedKeys(twice) = approved(&s, a).await else {
        panic!("the batch returns what became of each key");
    };
    assert_eq!((twice.imported, twice.refused), (0, 100));
    assert_eq!(twice.results[0].code, Code::AlreadyExists as i32);
    assert!(
        twice.results[0].reason.contains("was imported before"),
        "{}",
        twice.results[0].reason
    );

    // A card personalised from K_M long ago authenticates through bulk-000.
    register(&officer, "cybershop-k", pb::EntityKind::Cybershop).await;
    tie_up(
        &officer,
        "cybershop-k",
        "bulk-000",
        pb::TieUpMode::Hold,
        None,
    )
    .await;
    purchase_with_protocol_card(&s, "bulk-000").await;
    s.stop().await;
}

/// Labels of the brandkms token objects.
async fn token_objects(s: &TestServer) -> Vec<String> {
    s.state
        .hsm
        .run(|h| h.list_objects("brandkms/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.label)
        .collect()
}

/// Import parameters naming an RSA key that is not the service's.
fn other_public_key() -> pb::ImportParameters {
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 3072).unwrap();
    let spki = key
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    pb::ImportParameters {
        fingerprint_sha256: <sha2::Sha256 as sha2::Digest>::digest(&spki).to_vec(),
        spki_der: spki,
        ..Default::default()
    }
}
