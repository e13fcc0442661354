//! Issue 13: key import. The brand's old HSM, played by Python `cryptography`
//! (`tests/old_hsm.py`), wraps PROTOCOL.md's master `K_M` under the service's
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

use std::path::Path;
use std::process::Command;

use brandkms::config::ServiceSettings;
use brandkms_clients::card::{self, Card, CardKeyEntry};
use brandkms_clients::{Client, terminal};
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, register, status_of, tie_up};
use tonic::Code;

/// PROTOCOL.md's two-key master and its KCV.
const KM: &str = "0123456789ABCDEFFEDCBA9876543210";
const KM_KCV: &str = "08D7B4";
const CID: &str = "0123456789012345";
const SERVICE: u16 = 0x0A01;

/// Wraps `key` as the old HSM does: (wrapped, KCV).
fn old_hsm(p: &pb::ImportParameters, key: &str) -> (Vec<u8>, String) {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("old_hsm.py"))
        .arg(hex::encode(&p.spki_der))
        .arg(hex::encode(&p.fingerprint_sha256))
        .arg(key)
        .output()
        .expect("python3 (with python3-cryptography; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "old_hsm.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
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
    }
}

/// The import key's parameters, after making one.
async fn parameters(officer: &Client) -> pb::ImportParameters {
    officer
        .admin()
        .create_import_key(pb::CreateImportKeyRequest {})
        .await
        .unwrap();
    let p = officer
        .admin()
        .get_import_parameters(pb::GetImportParametersRequest {})
        .await
        .unwrap();
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
    let cid: [u8; 8] = hex::decode(CID).unwrap().try_into().unwrap();
    let kc = card::diversify(&hex::decode(KM).unwrap(), &cid).unwrap();
    let mut c = Card::personalise(
        cid,
        vec![CardKeyEntry {
            service_code: SERVICE,
            version: 1,
            key: hex::encode_upper(kc.as_slice()),
        }],
        5000,
        100_000,
        "JPY",
    );
    let shop = s.client("cybershop-k").await;
    let t = terminal::transact(
        &shop,
        &mut c,
        "key-m",
        SERVICE,
        pb::CardOp::Debit,
        2000,
        "JPY",
    )
    .await
    .unwrap();
    assert!(t.receipt.genuine);
    assert_eq!(c.balance, 3000);
    s.stop().await;
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
