//! `kmsctl` end to end: the real binary against a real server (token, SQLite,
//! mTLS), one subcommand for every Admin call, tables by default and `--json`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use brandkms_tests::{TestServer, old_hsm};

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

struct Ctl<'a> {
    server: &'a TestServer,
    entity: &'a str,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let pki = &self.server.pki;
        Command::new(KMSCTL)
            .env_remove("KMSCTL_PROFILE")
            .env("HOME", pki) // no default profile
            .args(["--endpoint", &format!("https://{}", self.server.addr)])
            .args(["--ca", &pki.join("ca.pem").display().to_string()])
            .args([
                "--cert",
                &pki.join(format!("{}.pem", self.entity))
                    .display()
                    .to_string(),
            ])
            .args([
                "--key",
                &pki.join(format!("{}-key.pem", self.entity))
                    .display()
                    .to_string(),
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kmsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_covers_every_admin_call() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let ctl = Ctl {
        server: &server,
        entity: "officer-1",
    };
    assert_eq!(ctl.ok(&["health"]).trim(), "SERVING");
    let table = ctl.ok(&[
        "key",
        "create",
        "key-a",
        "--service-code",
        "0x0A01",
        "--purpose",
        "load",
        "--exportable",
    ]);
    assert!(table.contains("VERSION  STATE"), "{table}");
    let key = ctl.json(&["key", "rotate", "key-a"]);
    assert_eq!(key["versions"][0]["state"], "auth_only");
    assert_eq!(key["versions"][1]["state"], "active");
    let keys = ctl.json(&["key", "list", "--class", "card_access"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(ctl.json(&["key", "show", "key-a"])["service_code"], 0x0A01);
    assert_eq!(
        ctl.json(&["key", "state", "key-a", "1", "retired"])["versions"][0]["state"],
        "retired"
    );
    assert_eq!(
        ctl.json(&["key", "destroy", "key-a", "1", "--days", "3"])["versions"][0]["state"],
        "pending_destruction"
    );
    assert_eq!(
        ctl.json(&["key", "cancel-destroy", "key-a", "1"])["versions"][0]["state"],
        "retired"
    );

    let e = ctl.json(&[
        "entity",
        "register",
        "issuer-2-3",
        "--kind",
        "issuer",
        "--name",
        "Issuer 2-3",
        "--online",
    ]);
    assert_eq!(e[0]["status"], "active");
    ctl.ok(&[
        "entity",
        "register",
        "bank-center-b",
        "--kind",
        "bank_center",
        "--name",
        "Bank B",
    ]);
    assert_eq!(
        ctl.json(&["entity", "suspend", "bank-center-b"])[0]["status"],
        "suspended"
    );
    assert_eq!(
        ctl.json(&["entity", "resume", "bank-center-b"])[0]["status"],
        "active"
    );
    assert_eq!(
        ctl.json(&["entity", "list", "--kind", "issuer"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let t = ctl.json(&[
        "tieup",
        "create",
        "bank-center-b",
        "--cover",
        "key-a:supply",
        "--sponsor",
        "issuer-2-3",
        "--limit",
        "5000",
    ]);
    let id = t[0]["id"].as_str().unwrap().to_string();
    assert_eq!(t[0]["per_transaction_limit"], 5000);
    let t = ctl.json(&[
        "tieup",
        "update",
        &id,
        "--state",
        "suspended",
        "--until",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(t[0]["state"], "suspended");
    assert_eq!(
        ctl.json(&["tieup", "terminate", &id])[0]["state"],
        "terminated"
    );
    assert_eq!(
        ctl.json(&["tieup", "list", "--entity", "bank-center-b"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert!(
        ctl.json(&["distribution", "list", "--alias", "key-a"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(ctl.ok(&["distribution", "list"]).starts_with("TIME"));

    let records = ctl.json(&["audit", "list", "--operation", "Admin/CreateKey"]);
    assert_eq!(records.as_array().unwrap().len(), 1);
    assert!(ctl.ok(&["audit", "verify"]).contains("audit trail intact"));

    // Failures: the status and message, no backtrace, a non-zero exit.
    let dup = ctl.run(&[
        "key",
        "create",
        "key-a",
        "--service-code",
        "1",
        "--purpose",
        "load",
    ]);
    assert_eq!(dup.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&dup.stderr);
    assert!(
        stderr.starts_with("kmsctl: error: AlreadyExists: "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let bad = ctl.run(&[
        "key",
        "create",
        "key-z",
        "--service-code",
        "1",
        "--purpose",
        "spend",
    ]);
    assert_eq!(bad.status.code(), Some(2), "a bad value is a usage error");
    let issuer = Ctl {
        server: &server,
        entity: "issuer-2-3",
    };
    let denied = issuer.run(&["key", "list"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied: rule 7"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_proposes_approves_and_rejects_under_dual_control() {
    let server = TestServer::start_with(
        brandkms::testing::sqlite_db(),
        brandkms::config::ServiceSettings::default(),
    )
    .await;
    let one = Ctl {
        server: &server,
        entity: "officer-1",
    };
    let two = Ctl {
        server: &server,
        entity: "officer-2",
    };
    one.ok(&[
        "key",
        "create",
        "key-a",
        "--service-code",
        "0x0A01",
        "--purpose",
        "load",
    ]);
    let held = one.ok(&["key", "rotate", "key-a"]);
    assert!(held.contains("held for a second officer as ap-"), "{held}");
    assert!(held.contains("kmsctl approve ap-"), "{held}");
    let pending = two.json(&["approvals", "list", "--state", "pending"]);
    let id = pending[0]["id"].as_str().unwrap().to_string();
    assert_eq!(pending[0]["proposer"], "officer-1");
    assert_eq!(pending[0]["rule"], "rotate_key");
    let table = two.ok(&["approvals", "list"]);
    assert!(table.contains("PROPOSER") && table.contains(&id), "{table}");

    let own = one.run(&["approve", &id]);
    assert_eq!(own.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert!(
        stderr.contains("PermissionDenied: rule 7 (self_approval)"),
        "{stderr}"
    );
    let approved = two.json(&["approve", &id]);
    assert_eq!(approved["approval"]["state"], "approved");
    assert_eq!(approved["result"]["key"]["versions"][1]["version"], 2);

    let held = one.json(&["key", "rotate", "key-a"]);
    let second = held["pending"]["id"].as_str().unwrap().to_string();
    let rejected = two.json(&["reject", &second, "--reason", "not now"]);
    assert_eq!(rejected[0]["state"], "rejected");
    assert_eq!(rejected[0]["reason"], "not now");
    let again = two.run(&["approve", &second]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("FailedPrecondition"));
    let bad = two.run(&["approvals", "list", "--state", "maybe"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    server.stop().await;
}

/// The services a reflection client of version `$v` (`v1`, `v1alpha`) lists.
macro_rules! reflected_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer");
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn the_server_offers_reflection_v1_and_v1alpha() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let client = server.client("officer-1").await;
    let v1 = reflected_services!(v1, client.channel());
    assert!(v1.contains(&"brandkms.v1.Admin".to_string()), "{v1:?}");
    // Python's grpcio-reflection client speaks only v1alpha.
    let v1alpha = reflected_services!(v1alpha, client.channel());
    let brand = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.starts_with("brandkms."))
            .cloned()
            .collect()
    };
    assert_eq!(brand(&v1alpha), brand(&v1));
    assert!(v1alpha.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()));
    server.stop().await;
}

/// Issue 13: the import commands: make an import key, write its public key
/// and read its fingerprint, have the old HSM (Python `cryptography`, the
/// repository's `tests/old_hsm.py`) wrap docs/protocol.md's `K_M` under it, and
/// import it: the token's KCV is 08D7B4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_imports_a_key_from_the_old_hsm() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let ctl = Ctl {
        server: &server,
        entity: "officer-1",
    };
    let made = ctl.json(&["key", "create-import-key"]);
    assert_eq!(made["alias"], "brandkms.import");
    let dir = tempfile::tempdir().unwrap();
    let spki = dir.path().join("import.der");
    let p = ctl.json(&[
        "key",
        "import-parameters",
        "--out",
        &spki.display().to_string(),
    ]);
    assert_eq!(p["wrapping"], "RSA-OAEP-SHA1-MGF1-SHA1");
    let der = std::fs::read(&spki).unwrap();
    let fingerprint = p["fingerprint_sha256"].as_str().unwrap();
    let text = old_hsm(
        &[
            &hex::encode(&der),
            fingerprint,
            "0123456789ABCDEFFEDCBA9876543210",
        ],
        "",
    );
    let (wrapped, kcv) = text.trim().split_once(' ').unwrap();
    let blob = dir.path().join("key-m.wrapped");
    std::fs::write(&blob, hex::decode(wrapped).unwrap()).unwrap();
    let key = ctl.json(&[
        "key",
        "import",
        "key-m",
        "--wrapped",
        &blob.display().to_string(),
        "--kcv",
        kcv,
        "--import-key-version",
        "1",
        "--service-code",
        "0x0A01",
        "--purpose",
        "purchase",
    ]);
    assert_eq!(key["versions"][0]["kcv"], "08D7B4", "{key}");
    assert_eq!(key["versions"][0]["state"], "active", "{key}");
    server.stop().await;
}

/// Issue 13, items 3 to 6 through kmsctl: an import KEK, a batch under it, a
/// cryptoperiod, the versions ending soon, a compromise with rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_migrates_keys_in_bulk_and_manages_their_lifecycle() {
    let server = TestServer::start(brandkms::testing::sqlite_db()).await;
    let ctl = Ctl {
        server: &server,
        entity: "officer-1",
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    ctl.json(&["key", "create-import-key"]);
    let p = ctl.json(&["key", "import-parameters", "--out", &path("import.der")]);
    let der = hex::encode(std::fs::read(path("import.der")).unwrap());
    let fingerprint = p["fingerprint_sha256"].as_str().unwrap();

    // The old HSM's KEK, under the import key.
    let kek = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    let out = old_hsm(&[&der, fingerprint, kek], "");
    let (wrapped, kcv) = out.trim().split_once(' ').unwrap();
    std::fs::write(path("kek.wrapped"), hex::decode(wrapped).unwrap()).unwrap();
    let key = ctl.json(&[
        "key",
        "import",
        "kek.old-hsm",
        "--class",
        "import_kek",
        "--wrapped",
        &path("kek.wrapped"),
        "--kcv",
        kcv,
        "--import-key-version",
        "1",
    ]);
    assert_eq!(key["class"], "import_kek", "{key}");
    assert_eq!(key["versions"][0]["kcv"], kcv, "{key}");

    // Three masters in one batch file, under the KEK.
    let keys = "migrated-a 0123456789ABCDEFFEDCBA9876543210\n\
                migrated-b 00112233445566778899AABBCCDDEEFF 0x0A02 load\n\
                migrated-c 0F1E2D3C4B5A69788796A5B4C3D2E1F0\n";
    std::fs::write(
        path("batch.toml"),
        old_hsm(&["batch", kek, "kek.old-hsm"], keys),
    )
    .unwrap();
    let done = ctl.json(&["key", "import-batch", &path("batch.toml")]);
    assert_eq!(done["imported"], 3, "{done}");
    assert_eq!(done["results"][0]["kcv"], "08D7B4", "{done}");
    let b = ctl.json(&["key", "show", "migrated-b"]);
    assert_eq!(b["purpose"], "load", "{b}");
    assert_eq!(b["service_code"], 0x0A02, "{b}");

    // A cryptoperiod, and the versions ending within 30 days.
    let a = ctl.json(&[
        "key",
        "cryptoperiod",
        "migrated-a",
        "--not-after",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(a["versions"][0]["not_after"], 1_767_225_600_000_i64, "{a}");
    let ending = ctl.json(&["key", "list", "--expiring", "30d"]);
    assert_eq!(ending.as_array().unwrap().len(), 1, "{ending}");
    assert_eq!(ending[0]["alias"], "migrated-a", "{ending}");
    let table = ctl.ok(&["key", "list", "--expiring", "30d"]);
    assert!(
        table.contains("migrated-a") && table.contains("2026-01-01"),
        "{table}"
    );

    // Compromise with rotation: version 1 marked, version 2 active; nobody
    // received it.
    let c = ctl.json(&[
        "key",
        "compromise",
        "migrated-c",
        "1",
        "--reason",
        "old HSM backup tape lost",
        "--rotate",
    ]);
    let versions = &c["result"]["key"]["versions"];
    assert!(versions[0]["compromised_at"].as_i64().unwrap() > 0, "{c}");
    assert_eq!(versions[1]["state"], "active", "{c}");
    assert_eq!(c["received_by"], serde_json::json!([]), "{c}");
    let text = ctl.ok(&["key", "show", "migrated-c"]);
    assert!(text.contains("COMPROMISED"), "{text}");
    server.stop().await;
}
