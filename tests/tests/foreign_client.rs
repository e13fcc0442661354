//! Issue 12, item 4: a foreign PKCS#11 client (PyKCS11, `tests/foreign_pkcs11.py`)
//! holding the service's user PIN tries to wrap every brand secret key in the
//! token under a key of its own, AES and imported RSA, while the service is
//! serving: card-access masters (exportable and not, two- and three-key),
//! transport keys after their delivery, internal keys. Every attempt fails; the
//! same exportable master still reaches its participant under the participant's
//! trusted key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use brandkms::testing::{TEST_PIN, TEST_TOKEN_LABEL, token};
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, participant_rsa, register, tie_up};

/// The Python that has PyKCS11: Debian's (python3-pykcs11), else `python3`.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

async fn card_key(officer: &Client, alias: &str, algorithm: pb::KeyAlgorithm, exportable: bool) {
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: alias.into(),
            service_code: 1,
            purpose: pb::Purpose::Load as i32,
            algorithm: algorithm as i32,
            exportable,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_foreign_pkcs11_client_with_the_pin_cannot_wrap_any_brand_key() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    card_key(&officer, "key-a", pb::KeyAlgorithm::Tdes2, true).await;
    card_key(&officer, "key-t", pb::KeyAlgorithm::Tdes3, true).await;
    card_key(&officer, "key-k", pb::KeyAlgorithm::Tdes2, false).await;
    register(&officer, "issuer-2-3", pb::EntityKind::Issuer).await;
    for alias in ["key-a", "key-t"] {
        tie_up(&officer, "issuer-2-3", alias, pb::TieUpMode::Supply, None).await;
    }

    // The issuer's transport key (delivered once), and its trusted key.
    let issuer = s.client("issuer-2-3").await;
    let (_, spki) = participant_rsa(&s, 2048).await;
    issuer
        .distribution()
        .establish_transport_key(pb::EstablishTransportKeyRequest {
            rsa_public_key_spki_der: spki,
        })
        .await
        .unwrap();
    let (private, spki) = participant_rsa(&s, 2048).await;
    brandkms_tests::trust_key(&officer, "issuer-2-3", spki).await;
    // The service delivers an exportable master under the trusted key.
    let delivered = issuer
        .distribution()
        .request_key(pb::RequestKeyRequest {
            alias: "key-a".into(),
            version: 0,
        })
        .await
        .unwrap();
    let blob = delivered.wrapped_key.clone();
    let (_, kcv) = s
        .state
        .hsm
        .run(move |h| h.unwrap_for_tests(&private, &blob, true, cryptoki::object::KeyType::DES2))
        .await
        .unwrap();
    assert_eq!(kcv.to_vec(), delivered.kcv);

    // The foreign client, with the PIN, on the same token, while the service runs.
    let t = token();
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("foreign_pkcs11.py"))
        .arg(&t.env.module)
        .arg(TEST_TOKEN_LABEL)
        .arg(TEST_PIN)
        .envs(t.child_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "foreign_pkcs11.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tried: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{tried:#?}");
    for label in [
        "brandkms/key-a/v1",
        "brandkms/key-t/v1",
        "brandkms/key-k/v1",
        "brandkms/transport.issuer-2-3/v1",
    ] {
        assert!(tried.contains_key(label), "{label} not tried: {tried:#?}");
    }
    for (label, outcomes) in &tried {
        for (how, outcome) in outcomes {
            assert_ne!(
                outcome, "wrapped",
                "{label} wrapped under the client's own {how} key"
            );
        }
    }
    // Exportable masters: only a trusted key may wrap them.
    assert_eq!(tried["brandkms/key-a/v1"]["aes"], "CKR_KEY_NOT_WRAPPABLE");
    s.stop().await;
}
