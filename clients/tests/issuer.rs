//! The issuer command end to end: a second SoftHSM2 token (the issuer's own, in a
//! directory and process of its own) receives the keys the issuer's supply tie-ups
//! cover; each KCV after unwrapping in that token matches the brand's record, also
//! after a rotation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use brandkms_proto::v1 as pb;
use brandkms_tests::TestServer;

const ISSUER: &str = env!("CARGO_BIN_EXE_issuer");

fn sync(server: &TestServer, token: &brandkms::commands::softhsm::TokenDir) -> Output {
    issuer(server, token, &["sync"])
}

/// The key ceremony for issuer 2-3: `issuer public-key` writes its RSA public
/// key (made in its token) and prints the fingerprint, which must match; an
/// officer has it marked trusted.
async fn trust(server: &TestServer, token: &brandkms::commands::softhsm::TokenDir) {
    let der = server.pki.join("issuer-2-3-rsa.der");
    let out = issuer(
        server,
        token,
        &["public-key", "--out", &der.display().to_string()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spki = std::fs::read(&der).unwrap();
    let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki));
    assert!(stdout.contains(&fingerprint), "{stdout}");
    let officer = server.client("officer-1").await;
    brandkms_tests::trust_key(&officer, "issuer-2-3", spki).await;
}

fn issuer(
    server: &TestServer,
    token: &brandkms::commands::softhsm::TokenDir,
    command: &[&str],
) -> Output {
    let pki = &server.pki;
    Command::new(ISSUER)
        .env("SOFTHSM2_CONF", &token.softhsm2_conf)
        .env("OPENSSL_CONF", &token.openssl_conf)
        .env("ISSUER_PIN", "issuer-pin")
        .env("HOME", pki)
        .args(command)
        .args([
            "--module",
            &token.module.display().to_string(),
            "--token-label",
            "issuer-2-3",
        ])
        .args(["--endpoint", &format!("https://{}", server.addr)])
        .args(["--ca", &pki.join("ca.pem").display().to_string()])
        .args(["--cert", &pki.join("issuer-2-3.pem").display().to_string()])
        .args([
            "--key",
            &pki.join("issuer-2-3-key.pem").display().to_string(),
        ])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_receives_its_keys_into_its_own_token() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = server.client("officer-1").await;
    let mut admin = officer.admin();
    for alias in ["key-a", "key-b"] {
        admin
            .create_key(pb::CreateKeyRequest {
                alias: alias.into(),
                service_code: 7,
                purpose: pb::Purpose::Load as i32,
                exportable: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    admin
        .register_entity(pb::RegisterEntityRequest {
            id: "issuer-2-3".into(),
            kind: pb::EntityKind::Issuer as i32,
            name: "Issuer 2-3".into(),
            online: true,
            tamper_resistant: false,
        })
        .await
        .unwrap();
    admin
        .create_tie_up(pb::CreateTieUpRequest {
            entity_id: "issuer-2-3".into(),
            keys: ["key-a", "key-b"]
                .iter()
                .map(|a| pb::TieUpKey {
                    alias: a.to_string(),
                    mode: pb::TieUpMode::Supply as i32,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .done()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token = brandkms::commands::softhsm::create_token(
        dir.path(),
        "issuer-2-3",
        "issuer-so",
        "issuer-pin",
    )
    .unwrap();
    trust(&server, &token).await;
    let out = sync(&server, &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("transport key transport.issuer-2-3 v1 established"),
        "{stdout}"
    );
    for alias in ["key-a", "key-b"] {
        let k = admin
            .get_key(pb::GetKeyRequest {
                alias: alias.into(),
            })
            .await
            .unwrap();
        let line = format!(
            "{alias} v1 (RSA-OAEP-SHA1-MGF1-SHA1) stored in token as brandkms/{alias}/v1, KCV {} matches",
            hex::encode_upper(&k.versions[0].kcv)
        );
        assert!(stdout.contains(&line), "{line} in {stdout}");
    }

    // After a rotation the next sync fetches v2 (the transport key is reused).
    let rotated = admin
        .rotate_key(pb::RotateKeyRequest {
            alias: "key-a".into(),
        })
        .await
        .unwrap()
        .done()
        .unwrap();
    let out = sync(&server, &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("transport key"), "{stdout}");
    let line = format!(
        "key-a v2 (RSA-OAEP-SHA1-MGF1-SHA1) stored in token as brandkms/key-a/v2, KCV {} matches",
        hex::encode_upper(&rotated.versions[1].kcv)
    );
    assert!(stdout.contains(&line), "{line} in {stdout}");

    let deliveries = admin
        .list_distributions(pb::ListDistributionsRequest {
            alias: "key-a".into(),
            entity_id: "issuer-2-3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .distributions;
    assert_eq!(
        deliveries.iter().map(|d| d.version).collect::<Vec<_>>(),
        [1, 2]
    );
    server.stop().await;
}
