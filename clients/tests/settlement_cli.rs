//! Settlement files end to end, as separate processes: a store seals card numbers
//! (`terminal seal`), an independent implementation (Python's `cryptography`,
//! with the parameters GetPublicKey reports and the README's blob layout) adds
//! one, the clearing house decrypts the file (`clearing decrypt`), reporting bad
//! lines without stopping, signs a result, and the store verifies it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, register, tie_up};

fn run(bin: &str, server: &TestServer, entity: &str, args: &[&str]) -> Output {
    let pki = &server.pki;
    Command::new(bin)
        .env_remove("KMSCTL_PROFILE")
        .env("HOME", pki)
        .args(["--endpoint", &format!("https://{}", server.addr)])
        .args(["--ca", &pki.join("ca.pem").display().to_string()])
        .args([
            "--cert",
            &pki.join(format!("{entity}.pem")).display().to_string(),
        ])
        .args([
            "--key",
            &pki.join(format!("{entity}-key.pem")).display().to_string(),
        ])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

/// Seals with Python's `cryptography` (OpenSSL), building the blob by the
/// README's layout; prints one base64 line.
const PYTHON_SEAL: &str = r#"
import base64, struct, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
pem, alias, version, hash_code, value = sys.argv[1:6]
key = serialization.load_pem_public_key(pem.encode())
h = hashes.SHA1() if hash_code == "1" else hashes.SHA256()
ct = key.encrypt(value.encode(), padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None))
blob = b"BKS1" + bytes([len(alias)]) + alias.encode() + struct.pack(">IBH", int(version), int(hash_code), len(ct)) + ct
print(base64.b64encode(blob).decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_decrypt_sign_and_verify_settlement_files() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = server.client("officer-1").await;
    let mut admin = officer.admin();
    admin
        .create_key(pb::CreateKeyRequest {
            alias: "settle".into(),
            key_class: pb::KeyClass::Settlement as i32,
            algorithm: pb::KeyAlgorithm::Rsa2048 as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    for (id, kind) in [
        ("clearing-house", pb::EntityKind::ClearingHouse),
        ("store-s", pb::EntityKind::MerchantTerminal),
    ] {
        register(&officer, id, kind).await;
    }
    tie_up(
        &officer,
        "clearing-house",
        "settle",
        pb::TieUpMode::Hold,
        None,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settlement.txt");
    let file_arg = file.display().to_string();
    let terminal = env!("CARGO_BIN_EXE_terminal");
    let (_, stderr) = ok(run(
        terminal,
        &server,
        "store-s",
        &[
            "seal",
            "--alias",
            "settle",
            "--out",
            &file_arg,
            "4111111111111111",
            "5500000000000004",
            "4000000000000002",
        ],
    ));
    assert!(
        stderr.contains("sealed 3 values under settle v1"),
        "{stderr}"
    );

    // Two bad lines, then a line sealed by Python's cryptography.
    let public = server
        .client("store-s")
        .await
        .settlement()
        .get_public_key(pb::GetPublicKeyRequest {
            alias: "settle".into(),
            version: 0,
        })
        .await
        .unwrap();
    let python = Command::new("python3")
        .args(["-c", PYTHON_SEAL, &public.pem, "settle", "1"])
        .arg(if public.oaep_hash == pb::OaepHash::Sha256 as i32 {
            "2"
        } else {
            "1"
        })
        .arg("6011000990139424")
        .output()
        .expect("python3 (with python3-cryptography; tests/run.sh installs it)");
    assert!(
        python.status.success(),
        "python3 cryptography: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("not base64!!\n");
    text.push_str("QktTMgAAAA==\n");
    text.push_str(&String::from_utf8(python.stdout).unwrap());
    std::fs::write(&file, text).unwrap();

    let clearing = env!("CARGO_BIN_EXE_clearing");
    let results = dir.path().join("results.txt");
    let (stdout, stderr) = ok(run(
        clearing,
        &server,
        "clearing-house",
        &[
            "decrypt",
            &file_arg,
            "--out",
            &results.display().to_string(),
            "--quiet",
        ],
    ));
    assert!(stdout.contains("decrypted 4 of 6 lines"), "{stdout}");
    assert!(stdout.contains("2 failed"), "{stdout}");
    assert!(stderr.contains("line 4: not base64"), "{stderr}");
    assert!(stderr.contains("line 5: not a sealed blob"), "{stderr}");
    let out = std::fs::read_to_string(&results).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "1\t4111111111111111",
            "2\t5500000000000004",
            "3\t4000000000000002",
            "6\t6011000990139424"
        ]
    );

    // A store may not decrypt the file: every line says why.
    let (stdout, stderr) = ok(run(
        clearing,
        &server,
        "store-s",
        &[
            "decrypt",
            &file_arg,
            "--out",
            &dir.path().join("store.txt").display().to_string(),
            "--quiet",
        ],
    ));
    assert!(stdout.contains("decrypted 0 of 6 lines"), "{stdout}");
    assert!(stderr.contains("line 1: rule 1"), "{stderr}");

    // The clearing house signs the result; the store verifies it.
    let signature = dir.path().join("results.sig");
    let sig_arg = signature.display().to_string();
    let results_arg = results.display().to_string();
    let (stdout, _) = ok(run(
        clearing,
        &server,
        "clearing-house",
        &[
            "sign",
            "--alias",
            "settle",
            &results_arg,
            "--signature",
            &sig_arg,
        ],
    ));
    assert!(stdout.contains("with settle v1"), "{stdout}");
    let verify = |entity: &str| {
        run(
            clearing,
            &server,
            entity,
            &[
                "verify",
                "--alias",
                "settle",
                "--version",
                "1",
                &results_arg,
                "--signature",
                &sig_arg,
            ],
        )
    };
    let (stdout, _) = ok(verify("store-s"));
    assert!(stdout.contains("signature valid"), "{stdout}");
    std::fs::write(&results, "1\t4111111111111112\n").unwrap();
    let forged = verify("store-s");
    assert_eq!(forged.status.code(), Some(1));
    server.stop().await;
}
