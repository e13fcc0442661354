//! Issue 14, item 8: the backup and restore drill. `kms backup` copies the
//! token directory and then the database while the service serves;
//! `kms verify-restore` on a fresh directory holding only that copy finds every
//! live key version's object with its recorded check value or fingerprint
//! (computed in the token) and every audit chain intact. It fails, naming the
//! cause, on a recorded check value that does not match and on a token newer
//! than the database (its audit anchors vouch for records the restored database
//! lacks). On PostgreSQL, `pg_dump` and `pg_restore` (the runbook's commands)
//! restore a database that verifies. (A test binary of its own: it copies the
//! whole test token.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use brandkms::testing::{self, TEST_PIN, TEST_TOKEN_LABEL};
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, kms_binary, register};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kms(args: &[&str], config: &Path, database_url: Option<&str>) -> Output {
    let mut cmd = Command::new(kms_binary());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("BRANDKMS_PIN", TEST_PIN)
        .env("RUST_LOG", "warn")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("OPENSSL_CONF")
        .env_remove("BRANDKMS_DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("BRANDKMS_DATABASE_URL", url);
    }
    cmd.output().unwrap()
}

async fn keys(officer: &Client, suffix: &str) {
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: format!("card{suffix}"),
            service_code: 0x0A01,
            purpose: pb::Purpose::Purchase as i32,
            algorithm: pb::KeyAlgorithm::Tdes2 as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: format!("settle{suffix}"),
            key_class: pb::KeyClass::Settlement as i32,
            algorithm: pb::KeyAlgorithm::Rsa2048 as i32,
            owner_entity: "clearing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// docs/protocol.md's `K_M`, wrapped by the old HSM under the import key and
/// imported as `imported` (an unwrapped key: SoftHSM2 keeps no check value for
/// it, so verify-restore computes one).
async fn import_km(officer: &Client) {
    let p = brandkms_tests::import_parameters(officer).await;
    let out = brandkms_tests::old_hsm(
        &[
            &hex::encode(&p.spki_der),
            &hex::encode(&p.fingerprint_sha256),
            brandkms_tests::PROTOCOL_KM,
        ],
        "",
    );
    let (wrapped, kcv) = out.trim().split_once(' ').unwrap();
    officer
        .admin()
        .import_key(pb::ImportKeyRequest {
            alias: "imported".into(),
            key_class: pb::KeyClass::CardAccess as i32,
            algorithm: pb::KeyAlgorithm::Tdes2 as i32,
            service_code: 0x0A02,
            purpose: pb::Purpose::Purchase as i32,
            wrapped_key: hex::decode(wrapped).unwrap(),
            expected_kcv: hex::decode(kcv).unwrap(),
            import_key_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A deployment directory holding only what a restore brings back: the
/// database `kms.db` and `softhsm/` from the backup, and a config naming them.
fn restored_deployment(dir: &Path, backup: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(backup.join("kms.db"), dir.join("kms.db")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(backup.join("softhsm"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    let module = brandkms::commands::softhsm::module_path().unwrap();
    let config = dir.join("kms.toml");
    std::fs::write(
        &config,
        format!(
            "[hsm]\nmodule = \"{}\"\ntoken_label = \"{TEST_TOKEN_LABEL}\"\nsessions = 2\n\
             [hsm.env]\nSOFTHSM2_CONF = \"./softhsm/softhsm2.conf\"\nOPENSSL_CONF = \"./softhsm/openssl.cnf\"\n\
             [database]\nurl = \"sqlite://kms.db\"\n",
            module.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_into_a_fresh_directory_and_verifies() {
    let s = TestServer::start(testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    register(&officer, "clearing", pb::EntityKind::ClearingHouse).await;
    keys(&officer, "").await;
    import_km(&officer).await;

    // The backup, while the service serves.
    let work = tempfile::tempdir().unwrap();
    let live_config = s.write_config(work.path(), 0);
    let backup = work.path().join("backup");
    let out = kms(
        &[
            "backup",
            "--softhsm-token",
            "--out",
            backup.to_str().unwrap(),
        ],
        &live_config,
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("database copied to"), "{said}");
    assert!(said.contains("SoftHSM2 token directory copied"), "{said}");
    let again = kms(
        &["backup", "--out", backup.to_str().unwrap()],
        &live_config,
        None,
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("is not empty"),
        "{}",
        text(&again.stderr)
    );

    // Work after the backup: another key pair, more audit records.
    keys(&officer, "-late").await;

    // The restore, in a fresh directory: it verifies.
    let restored = restored_deployment(&work.path().join("restored"), &backup);
    let out = kms(&["verify-restore"], &restored, None);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    for line in [
        "ok        card v1 KCV ",
        "ok        settle v1 fingerprint ",
        "ok        brandkms.audit-mac v1 KCV ",
        "ok        imported v1 KCV 08D7B4",
        "ok        brandkms.import v1 fingerprint ",
        "ok        audit chain ",
        "restore verified: ",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }
    assert!(!report.contains("card-late"), "{report}");

    // A recorded check value that the token does not compute: not verified.
    let tampered = restored_deployment(&work.path().join("tampered"), &backup);
    let mut conn = brandkms::store::connect_one(&format!(
        "sqlite://{}",
        tampered.with_file_name("kms.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE key_versions SET kcv = '000000' WHERE alias = 'card'")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let out = kms(&["verify-restore"], &tampered, None);
    let report = text(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("MISMATCH  card v1: recorded KCV 000000, the token computes "),
        "{report}"
    );
    assert!(report.contains("restore NOT verified"), "{report}");

    // The live token, newer than the backup's database: its anchors vouch for
    // records the database lacks, and the later keys have no rows.
    let newer = restored_deployment(&work.path().join("newer"), &backup);
    let tokens = newer.with_file_name("softhsm").join("tokens");
    std::fs::remove_dir_all(&tokens).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(testing::token().dir.join("tokens"))
        .arg(&tokens)
        .status()
        .unwrap();
    assert!(status.success());
    let out = kms(&["verify-restore"], &newer, None);
    let report = text(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("BROKEN    audit chain "), "{report}");
    assert!(report.contains("orphan    object "), "{report}");
    assert!(report.contains("restore NOT verified"), "{report}");

    s.stop().await;
}

/// PostgreSQL: `kms backup` names pg_dump; a `pg_dump`/`pg_restore` copy into a
/// new database verifies against the token.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_pg_dump_and_pg_restore_give_a_database_that_verifies() {
    let Some(db) = testing::postgres_db().await else {
        return;
    };
    let s = TestServer::start(db).await;
    let officer = s.client("officer-1").await;
    register(&officer, "clearing", pb::EntityKind::ClearingHouse).await;
    keys(&officer, "").await;
    let work = tempfile::tempdir().unwrap();
    let config = s.write_config(work.path(), 0);

    let out = kms(
        &["backup", "--out", work.path().join("b").to_str().unwrap()],
        &config,
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pg_dump"),
        "{}",
        text(&out.stderr)
    );

    let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .max()
        .unwrap();
    let url = s.database_url().to_string();
    let dump = work.path().join("kms.dump");
    let out = Command::new(pg_bin.join("pg_dump"))
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", text(&out.stderr));
    let (base, name) = url.rsplit_once('/').unwrap();
    let restored_name = format!("{name}_restored");
    let mut admin = brandkms::store::connect_one(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {restored_name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let restored_url = format!("{base}/{restored_name}");
    let out = Command::new(pg_bin.join("pg_restore"))
        .args(["--no-owner", "--dbname"])
        .arg(&restored_url)
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", text(&out.stderr));

    let out = kms(&["verify-restore"], &config, Some(&restored_url));
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(
        report.contains("ok        settle v1 fingerprint "),
        "{report}"
    );
    assert!(report.contains("restore verified: "), "{report}");
    s.stop().await;
    sqlx::query(&format!("DROP DATABASE {restored_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
