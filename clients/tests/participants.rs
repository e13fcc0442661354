//! The participant commands end to end, as separate processes against a real
//! server: an issuer personalises simulated cards from masters delivered into
//! its own token; a cybershop buys with one; the loading portal loads another
//! for an offline issuer; officers report the proxy loads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

use brandkms_clients::card::Card;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, tie_up};

fn run(
    bin: &str,
    server: &TestServer,
    entity: &str,
    token: Option<&brandkms::commands::softhsm::TokenDir>,
    args: &[&str],
) -> Output {
    let pki = &server.pki;
    let mut c = Command::new(bin);
    c.env_remove("KMSCTL_PROFILE")
        .env("HOME", pki)
        .env("ISSUER_PIN", "issuer-pin")
        .args(args)
        .args(["--endpoint", &format!("https://{}", server.addr)])
        .args(["--ca", &pki.join("ca.pem").display().to_string()])
        .args([
            "--cert",
            &pki.join(format!("{entity}.pem")).display().to_string(),
        ])
        .args([
            "--key",
            &pki.join(format!("{entity}-key.pem")).display().to_string(),
        ]);
    if let Some(t) = token {
        c.env("SOFTHSM2_CONF", &t.softhsm2_conf)
            .env("OPENSSL_CONF", &t.openssl_conf)
            .env("ISSUER_PKCS11_MODULE", &t.module)
            .env("ISSUER_TOKEN_LABEL", "issuer-2-2");
    }
    c.output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn balance(path: &Path) -> u64 {
    Card::load(path).unwrap().balance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_and_proxy_load_with_personalised_cards() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = server.client("officer-1").await;
    let mut admin = officer.admin();
    for (alias, code) in [("key-k", 0x0A01), ("key-e", 0x0E01)] {
        admin
            .create_key(pb::CreateKeyRequest {
                alias: alias.into(),
                service_code: code,
                purpose: pb::Purpose::Purchase as i32,
                exportable: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (id, kind, online) in [
        ("issuer-2-2", pb::EntityKind::Issuer, true),
        ("issuer-2-1", pb::EntityKind::Issuer, false),
        ("cybershop-k", pb::EntityKind::Cybershop, false),
        ("loading-portal", pb::EntityKind::LoadingPortal, false),
    ] {
        admin
            .register_entity(pb::RegisterEntityRequest {
                id: id.into(),
                kind: kind as i32,
                name: id.into(),
                online,
                tamper_resistant: false,
            })
            .await
            .unwrap();
    }
    // Issuer 2-2 personalises cards for both keys (for key E it stands in for
    // the offline issuer's personalisation bureau); the cybershop holds K; the
    // loading portal loads E for issuer 2-1, which is never supplied E.
    for (entity, alias, mode, limit) in [
        ("issuer-2-2", "key-k", pb::TieUpMode::Supply, None),
        ("issuer-2-2", "key-e", pb::TieUpMode::Supply, None),
        ("cybershop-k", "key-k", pb::TieUpMode::Hold, Some(10_000)),
        ("issuer-2-1", "key-e", pb::TieUpMode::ProxyLoad, None),
        ("loading-portal", "key-e", pb::TieUpMode::ProxyLoad, None),
    ] {
        tie_up(&officer, entity, alias, mode, limit).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let token = brandkms::commands::softhsm::create_token(
        &dir.path().join("token"),
        "issuer-2-2",
        "issuer-so",
        "issuer-pin",
    )
    .unwrap();
    let issuer = env!("CARGO_BIN_EXE_issuer");
    // The key ceremony: the issuer's RSA public key, marked trusted.
    let der = dir.path().join("issuer-2-2-rsa.der");
    let der_arg = der.display().to_string();
    ok(run(
        issuer,
        &server,
        "issuer-2-2",
        Some(&token),
        &["public-key", "--out", &der_arg],
    ));
    brandkms_tests::trust_key(&officer, "issuer-2-2", std::fs::read(&der).unwrap()).await;
    ok(run(issuer, &server, "issuer-2-2", Some(&token), &["sync"]));
    let card_k = dir.path().join("card-k.json");
    let card_e = dir.path().join("card-e.json");
    for (alias, path, cid) in [
        ("key-k", &card_k, "0123456789012345"),
        ("key-e", &card_e, "1122334455667788"),
    ] {
        let out = ok(run(
            issuer,
            &server,
            "issuer-2-2",
            Some(&token),
            &[
                "personalise",
                "--alias",
                alias,
                "--card-id",
                cid,
                "--balance",
                "5000",
                "--out",
                &path.display().to_string(),
            ],
        ));
        assert!(out.contains("personalised"), "{out}");
    }
    assert_eq!(balance(&card_k), 5000);

    let shop = env!("CARGO_BIN_EXE_cybershop");
    let purchase = |amount: &str| {
        run(
            shop,
            &server,
            "cybershop-k",
            None,
            &[
                "purchase",
                "--card",
                &card_k.display().to_string(),
                "--alias",
                "key-k",
                "--amount",
                amount,
            ],
        )
    };
    let out = ok(purchase("2000"));
    assert!(
        out.contains("receipt genuine: status ok, card balance 3000 JPY"),
        "{out}"
    );
    assert_eq!(balance(&card_k), 3000);
    let refused = purchase("20000");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("rule 5 (limit_exceeded)"), "{stderr}");
    assert_eq!(balance(&card_k), 3000);

    let portal = env!("CARGO_BIN_EXE_loading-portal");
    let out = ok(run(
        portal,
        &server,
        "loading-portal",
        None,
        &[
            "load",
            "--card",
            &card_e.display().to_string(),
            "--alias",
            "key-e",
            "--amount",
            "4000",
        ],
    ));
    assert!(out.contains("proxy load for issuer-2-1"), "{out}");
    assert_eq!(balance(&card_e), 9000);

    let kmsctl = env!("CARGO_BIN_EXE_kmsctl");
    let report = ok(run(
        kmsctl,
        &server,
        "officer-1",
        None,
        &["proxy-loads", "report"],
    ));
    assert!(
        report.contains("issuer-2-1") && report.contains("4000"),
        "{report}"
    );
    let own = ok(run(
        kmsctl,
        &server,
        "issuer-2-1",
        None,
        &["--json", "proxy-loads", "list"],
    ));
    let loads: serde_json::Value = serde_json::from_str(&own).unwrap();
    assert_eq!(loads[0]["status"], "confirmed");
    assert_eq!(loads[0]["amount"], 4000);
    server.stop().await;
}
