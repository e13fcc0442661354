//! Test support: one fresh SoftHSM2 token per test process, in a temporary
//! directory selected with `SOFTHSM2_CONF`, removed by the next test process once
//! this one has exited. Compiled only for tests (`testing` feature).
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::commands::softhsm::{TokenDir, create_token};
use crate::hsm::{Hsm, HsmParams};

/// Label of the test token.
pub const TEST_TOKEN_LABEL: &str = "brandkms-test";
/// User PIN of the test token.
pub const TEST_PIN: &str = "test-user-pin";
/// SO PIN of the test token.
pub const TEST_SO_PIN: &str = "test-so-pin";

/// The process's test token.
#[derive(Debug)]
pub struct TestToken {
    /// Its directory.
    pub dir: PathBuf,
    /// Its configuration files and module.
    pub env: TokenDir,
}

impl TestToken {
    /// Parameters to open the token.
    pub fn params(&self) -> HsmParams {
        HsmParams {
            module: self.env.module.clone(),
            token_label: TEST_TOKEN_LABEL.to_string(),
            pin: Zeroizing::new(TEST_PIN.to_string()),
            sessions: 4,
            benchmark_token_delay: std::time::Duration::ZERO,
        }
    }

    /// Environment for a child process (`kms` binary) that uses this token.
    pub fn child_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("SOFTHSM2_CONF", self.env.softhsm2_conf.clone()),
            ("OPENSSL_CONF", self.env.openssl_conf.clone()),
        ]
    }
}

static TOKEN: OnceLock<TestToken> = OnceLock::new();
static HSM: OnceLock<Hsm> = OnceLock::new();

fn root() -> PathBuf {
    std::env::temp_dir().join("brandkms-test-tokens")
}

/// Removes the token directories of test processes that have exited.
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process's fresh token; created on first use, with `SOFTHSM2_CONF` and
/// `OPENSSL_CONF` set for this process before the module is loaded.
pub fn token() -> &'static TestToken {
    TOKEN.get_or_init(|| {
        let root = root();
        sweep(&root);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = root.join(format!("{}-{nanos}", std::process::id()));
        let env = create_token(&dir, TEST_TOKEN_LABEL, TEST_SO_PIN, TEST_PIN)
            .expect("create the test token (is softhsm2 installed?)");
        set_module_env(&env);
        TestToken { dir, env }
    })
}

#[allow(unsafe_code)]
fn set_module_env(env: &TokenDir) {
    // SAFETY: runs once, inside `OnceLock::get_or_init`, before the PKCS#11 module
    // is loaded; the only other readers of these variables are that module and
    // OpenSSL inside it, which read them at `C_Initialize`, after this returns.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &env.softhsm2_conf);
        std::env::set_var("OPENSSL_CONF", &env.openssl_conf);
    }
}

/// The process's HSM connection to its test token.
pub fn hsm() -> Hsm {
    HSM.get_or_init(|| Hsm::open(&token().params()).expect("open the test token"))
        .clone()
}

/// Opens a token other than the process's test token (e.g. a dev deployment's),
/// selecting it with `SOFTHSM2_CONF`. Only for a test binary that uses no other
/// token: the module reads the variable once per process.
pub fn open_other_token(env: &TokenDir, params: &HsmParams) -> Hsm {
    assert!(
        TOKEN.get().is_none(),
        "this process already uses the test token"
    );
    set_module_env(env);
    Hsm::open(params).expect("open the token")
}

/// Opens the token of a deployment `kms init --dev` wrote into `dir` (its
/// `softhsm/` configuration, its `pin`, the dev token label), moving this
/// process into `dir` as `kms` does: the token directory is relative to the
/// deployment. Only for a test binary that uses no other token and no path
/// relative to the package after this call.
pub fn open_deployment_token(dir: &Path) -> Hsm {
    let pin = std::fs::read_to_string(dir.join("pin")).expect("the deployment's pin file");
    let module = crate::commands::softhsm::module_path().expect("the SoftHSM2 module");
    std::env::set_current_dir(dir).expect("move into the deployment");
    open_other_token(
        &TokenDir {
            module: module.clone(),
            softhsm2_conf: dir.join("softhsm/softhsm2.conf"),
            openssl_conf: dir.join("softhsm/openssl.cnf"),
        },
        &HsmParams {
            module,
            token_label: crate::commands::dev::DEV_TOKEN_LABEL.to_string(),
            pin: Zeroizing::new(pin),
            sessions: 2,
            benchmark_token_delay: std::time::Duration::ZERO,
        },
    )
}

/// A fresh database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Connection settings.
    pub settings: crate::config::DatabaseSettings,
    _dir: Option<tempfile::TempDir>,
}

/// Environment variable with a PostgreSQL URL whose user may create databases.
pub const PG_URL_ENV: &str = "BRANDKMS_TEST_DATABASE_URL";

/// A fresh SQLite database in a temporary directory.
pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    TestDb {
        backend: "sqlite",
        settings: crate::config::DatabaseSettings {
            url,
            max_connections: 4,
        },
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database, when [`PG_URL_ENV`] is set. Under CI (`CI` set)
/// its absence is an error, so that PostgreSQL tests never pass by being skipped.
pub async fn postgres_db() -> Option<TestDb> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let Ok(base) = std::env::var(PG_URL_ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{PG_URL_ENV} must be set under CI: PostgreSQL tests may not be skipped"
        );
        return None;
    };
    let name = format!(
        "brandkms_t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = crate::store::connect_one(&base)
        .await
        .expect("connect to the PostgreSQL test server");
    drop_stale_databases(&mut conn).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database name");
    Some(TestDb {
        backend: "postgres",
        settings: crate::config::DatabaseSettings {
            url: format!("{prefix}/{name}"),
            max_connections: 4,
        },
        _dir: None,
    })
}

/// Drops the databases of test processes that have exited.
async fn drop_stale_databases(conn: &mut sqlx::AnyConnection) {
    use sqlx::Row;
    let Ok(rows) = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'brandkms_t_%'")
        .fetch_all(&mut *conn)
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String, _>(0) else {
            continue;
        };
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut *conn)
                .await;
        }
    }
}

/// Every database the tests run against: SQLite always, PostgreSQL when given.
pub async fn databases() -> Vec<TestDb> {
    let mut dbs = vec![sqlite_db()];
    dbs.extend(postgres_db().await);
    dbs
}

static FIXED_RB: std::sync::Mutex<Option<[u8; 8]>> = std::sync::Mutex::new(None);

/// Test-only seam: every challenge of this process draws `rb` instead of token
/// randomness (to reproduce docs/protocol.md's vectors). `None` restores randomness.
pub fn fix_rb(rb: Option<[u8; 8]>) {
    *FIXED_RB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = rb;
}

/// The fixed RB, if a test set one.
pub fn fixed_rb() -> Option<[u8; 8]> {
    *FIXED_RB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Test-only: imports a known card-access master (e.g. docs/protocol.md's `K_M`) into
/// the service's token as `alias` version 1, active, with its rows and audit
/// record, so that a test can compute the card keys in software.
pub async fn import_card_master(
    state: &crate::ops::AppState,
    alias: &str,
    service_code: u16,
    value: &[u8],
) -> crate::store::keys::KeyVersionRecord {
    use brandkms_policy::{Algorithm, KeyClass, KeyState, Purpose};

    use crate::hsm::{Exportability, KeyRole, KeySpec, SecretAlgorithm};
    let algorithm = match value.len() {
        8 => (SecretAlgorithm::Des, Algorithm::Des),
        16 => (SecretAlgorithm::Tdes2, Algorithm::Tdes2),
        _ => (SecretAlgorithm::Tdes3, Algorithm::Tdes3),
    };
    let spec = KeySpec {
        algorithm: algorithm.0,
        role: KeyRole::CardMaster,
        export: Exportability::Never,
    };
    let value = value.to_vec();
    crate::ops::versions::create_version(
        &state.hsm,
        &state.store,
        crate::ops::versions::AuditKey::Existing(&state.auditor),
        move |s, label| s.import_for_tests(&spec, label, &value),
        crate::ops::versions::NewVersion {
            key: Some(crate::store::keys::KeyRecord {
                alias: alias.to_string(),
                class: KeyClass::CardAccess,
                algorithm: algorithm.1,
                purpose: Some(Purpose::Purchase),
                service_code: Some(service_code),
                exportable: false,
                owner_entity: None,
                created_at: state.clock.now_ms(),
            }),
            alias: alias.to_string(),
            version: 1,
            state: KeyState::Active,
            weak: algorithm.1 == Algorithm::Des,
            demote_active_to: None,
            oaep_hash: None,
            period: Default::default(),
        },
        crate::audit::AuditEvent::allowed("local:test", "test.import_card_master"),
    )
    .await
    .expect("import a card master")
}
