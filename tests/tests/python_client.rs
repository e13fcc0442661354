//! Issue 14, item 11: the Python client (`clients/python`) against a real server.
//! `clients/python/build.sh` makes its virtualenv (once per test process, under
//! the cargo target directory or `$BRANDKMS_PY_VENV`, so that reruns are quick;
//! it needs `python3 -m venv` and PyPI), installs the pinned dependencies and
//! generates the stubs from the protos. Then, as subprocesses: the Python card's
//! unit tests (docs/protocol.md's vectors); a cybershop purchase with the Python
//! software card on the Rust simulator's card file (a debit, a refusal above the
//! tie-up's limit with its rule code, a debit with the connection from `KMSCTL_*`
//! variables); and the clearing house decrypting a settlement file the Rust SDK
//! sealed, with bad lines reported and account numbers kept out of the output.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use brandkms_clients::card::Card;
use brandkms_proto::v1 as pb;
use brandkms_tests::{PROTOCOL_KM, TestServer, protocol_card, register, tie_up};

const SERVICE_K: u16 = 0x0A01;
const PANS: [&str; 3] = ["4111111111111111", "5500000000000004", "4000000000000002"];
/// Connection variables of a developer's shell must not leak into the examples.
const KMSCTL_VARS: [&str; 6] = [
    "KMSCTL_PROFILE",
    "KMSCTL_ENDPOINT",
    "KMSCTL_CA",
    "KMSCTL_CERT",
    "KMSCTL_KEY",
    "KMSCTL_SERVER_NAME",
];

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("clients")
        .join("python")
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The virtualenv's python, after `clients/python/build.sh` (run once per process;
/// the script is idempotent, cheap when nothing changed, and takes a lock).
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = std::env::var_os("BRANDKMS_PY_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv"));
            let out = std::process::Command::new("bash")
                .arg(python_dir().join("build.sh"))
                .env("BRANDKMS_PY_VENV", &venv)
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "clients/python/build.sh failed (it needs python3-venv and PyPI):\n{}\n{}",
                lossy(&out.stdout),
                lossy(&out.stderr)
            );
            venv.join("bin").join("python")
        })
        .clone()
}

/// Runs the venv's python in clients/python with `args` and extra `env`.
async fn run(python: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = tokio::process::Command::new(python);
    cmd.current_dir(python_dir()).args(args);
    for v in KMSCTL_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// A kmsctl profile for `entity` (TOML: endpoint, ca, cert, key, server_name).
fn write_profile(s: &TestServer, entity: &str, path: &Path) {
    let o = s.options(entity);
    let mut t = toml::Table::new();
    let mut set = |k: &str, v: String| {
        t.insert(k.to_string(), toml::Value::String(v));
    };
    set("endpoint", o.endpoint.clone());
    set("ca", o.ca.display().to_string());
    set("cert", o.cert.display().to_string());
    set("key", o.key.display().to_string());
    set("server_name", o.domain.clone().unwrap());
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

/// Standard base64 with padding (RFC 4648), as settlement files carry blobs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4usize {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `examples/purchase.py`'s arguments: a debit of `amount` JPY with key-k.
fn purchase_args<'a>(card: &'a str, amount: &'a str, profile: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "examples/purchase.py",
        "--card",
        card,
        "--alias",
        "key-k",
        "--amount",
        amount,
    ];
    if let Some(p) = profile {
        args.extend(["--profile", p]);
    }
    args
}

#[test]
fn the_python_card_reproduces_the_protocol_vectors() {
    let out = std::process::Command::new(python())
        .current_dir(python_dir())
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .output()
        .unwrap();
    let err = lossy(&out.stderr);
    assert!(out.status.success(), "python -m unittest:\n{err}");
    assert!(
        err.contains("test_the_card_runs_the_vector_session"),
        "{err}"
    );
    assert!(err.contains("test_derivations"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_examples_purchase_with_a_python_card_and_decrypt_a_settlement_file() {
    let py = tokio::task::spawn_blocking(python).await.unwrap();
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    brandkms::testing::import_card_master(
        &s.state,
        "key-k",
        SERVICE_K,
        &hex::decode(PROTOCOL_KM).unwrap(),
    )
    .await;
    for (id, kind) in [
        ("cybershop-k", pb::EntityKind::Cybershop),
        ("clearing-house", pb::EntityKind::ClearingHouse),
        ("store-s", pb::EntityKind::MerchantTerminal),
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
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: "settle".into(),
            key_class: pb::KeyClass::Settlement as i32,
            algorithm: pb::KeyAlgorithm::Rsa2048 as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    // The store's tie-up lets it ask; rule 6 refuses it the decryption.
    for entity in ["clearing-house", "store-s"] {
        tie_up(&officer, entity, "settle", pb::TieUpMode::Hold, None).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let profile = |entity: &str| {
        let p = dir.path().join(format!("{entity}.toml"));
        write_profile(&s, entity, &p);
        p.display().to_string()
    };
    let (shop, clearing, store) = (
        profile("cybershop-k"),
        profile("clearing-house"),
        profile("store-s"),
    );

    // A purchase: the Python card on the Rust simulator's card file (5,000 JPY).
    let card = dir.path().join("card.json");
    protocol_card(SERVICE_K).save(&card).unwrap();
    let card_arg = card.display().to_string();
    let out = run(&py, &purchase_args(&card_arg, "2000", Some(&shop)), &[]).await;
    let (stdout, stderr) = (lossy(&out.stdout), lossy(&out.stderr));
    assert!(out.status.success(), "purchase.py:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(": debit 2000 JPY (counter 0, txn "),
        "{stdout}"
    );
    assert!(
        stdout.contains("receipt genuine: status ok, card balance 3000 JPY"),
        "{stdout}"
    );
    assert_eq!(Card::load(&card).unwrap().balance, 3000);

    // Above the tie-up's limit: refused by rule 5, its code shown; the card unchanged.
    let out = run(&py, &purchase_args(&card_arg, "20000", Some(&shop)), &[]).await;
    let stderr = lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert!(stderr.contains("limit_exceeded"), "{stderr}");
    assert_eq!(Card::load(&card).unwrap().balance, 3000);

    // The connection from KMSCTL_* variables instead of a profile (and no
    // default profile: HOME is the test's directory).
    let o = s.options("cybershop-k");
    let env = [
        ("HOME", dir.path().display().to_string()),
        ("KMSCTL_ENDPOINT", o.endpoint.clone()),
        ("KMSCTL_CA", o.ca.display().to_string()),
        ("KMSCTL_CERT", o.cert.display().to_string()),
        ("KMSCTL_KEY", o.key.display().to_string()),
    ];
    let out = run(&py, &purchase_args(&card_arg, "500", None), &env).await;
    let stdout = lossy(&out.stdout);
    assert!(
        out.status.success(),
        "purchase.py with KMSCTL_*:\n{stdout}\n{}",
        lossy(&out.stderr)
    );
    assert!(stdout.contains("card balance 2500 JPY"), "{stdout}");
    assert_eq!(Card::load(&card).unwrap().balance, 2500);

    // A settlement file: three account numbers sealed by the Rust SDK, a line
    // that is not base64, a blob whose ciphertext does not decrypt.
    let public = s
        .client("store-s")
        .await
        .settlement()
        .get_public_key(pb::GetPublicKeyRequest {
            alias: "settle".into(),
            version: 0,
        })
        .await
        .unwrap();
    let mut lines: Vec<String> = PANS
        .iter()
        .map(|p| base64(&brandkms_clients::sdk::seal(&public, p.as_bytes()).unwrap()))
        .collect();
    lines.push("not a blob".into());
    let bad = brandkms_proto::blob::SealedBlob {
        alias: "settle".into(),
        version: public.version,
        oaep_hash: 1,
        ciphertext: vec![1u8; 10],
    }
    .encode()
    .unwrap();
    lines.push(base64(&bad));
    let file = dir.path().join("day.txt");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file_arg = file.display().to_string();
    let results = dir.path().join("day.results");
    let results_arg = results.display().to_string();

    let out = run(
        &py,
        &[
            "examples/settlement.py",
            "--profile",
            &clearing,
            &file_arg,
            "--out",
            &results_arg,
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = (lossy(&out.stdout), lossy(&out.stderr));
    assert!(out.status.success(), "settlement.py:\n{stdout}\n{stderr}");
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!("line {n}: decrypted (16 bytes)")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("line 4: failed: InvalidArgument: not base64"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 5: failed: InvalidArgument: decryption failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decrypted 3 of 5 lines; 2 failed"),
        "{stdout}"
    );
    for pan in PANS {
        assert!(
            !stdout.contains(pan) && !stderr.contains(pan),
            "an account number in the output:\n{stdout}\n{stderr}"
        );
    }
    // The results, as `clearing decrypt` writes them, readable by the owner only.
    assert_eq!(
        std::fs::read_to_string(&results).unwrap(),
        format!("1\t{}\n2\t{}\n3\t{}\n", PANS[0], PANS[1], PANS[2])
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&results).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Not a clearing house: every line refused by rule 6, with its rule code;
    // --strict makes that exit status 2.
    let store_results = dir.path().join("store.results").display().to_string();
    let out = run(
        &py,
        &[
            "examples/settlement.py",
            "--profile",
            &store,
            &file_arg,
            "--out",
            &store_results,
            "--strict",
        ],
        &[],
    )
    .await;
    let stdout = lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        lossy(&out.stderr)
    );
    assert!(
        stdout.contains("line 1: failed: PermissionDenied: rule 6 (not_clearing_house)"),
        "{stdout}"
    );
    assert!(stdout.contains("decrypted 0 of 5 lines"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&store_results).unwrap(), "");

    s.stop().await;
}
