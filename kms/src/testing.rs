//! Test support: one fresh SoftHSM2 token per test process, in a temporary
//! directory selected with `SOFTHSM2_CONF`, removed by the next test process once
//! this one has exited. Compiled only for tests (`testing` feature).
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::hsm::{Hsm, HsmParams};
use crate::softhsm::{TokenDir, create_token};

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
