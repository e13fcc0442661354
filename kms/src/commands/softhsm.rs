//! SoftHSM2 tokens for development deployments and tests: a directory of its own
//! with `softhsm2.conf`, `tokens/` and an `openssl.cnf` that activates OpenSSL's
//! legacy provider (single DES). The same layout as `softhsm/mktoken.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian and others install the SoftHSM2 module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// An OpenSSL configuration with the default and legacy providers active.
pub const OPENSSL_LEGACY_CNF: &str = "\
# OpenSSL configuration for SoftHSM2: the legacy provider provides single DES.
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect

[provider_sect]
default = default_sect
legacy = legacy_sect

[default_sect]
activate = 1

[legacy_sect]
activate = 1
";

/// Errors while creating a SoftHSM2 token.
#[derive(Debug, thiserror::Error)]
pub enum SoftHsmError {
    /// No libsofthsm2.so in the usual places.
    #[error("libsofthsm2.so not found (install Debian's softhsm2 package)")]
    ModuleNotFound,
    /// Writing the token directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `softhsm2-util` failed or is missing.
    #[error("softhsm2-util --init-token failed: {0}")]
    InitToken(String),
}

/// A token directory and the environment that selects it.
#[derive(Clone, Debug)]
pub struct TokenDir {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// `SOFTHSM2_CONF` for this token.
    pub softhsm2_conf: PathBuf,
    /// `OPENSSL_CONF` with the legacy provider active.
    pub openssl_conf: PathBuf,
}

/// The installed SoftHSM2 module.
pub fn module_path() -> Result<PathBuf, SoftHsmError> {
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(SoftHsmError::ModuleNotFound)
}

/// Creates `dir` with its own configuration and initialises a token labelled
/// `label` in it. PINs reach `softhsm2-util` as arguments: development only.
pub fn create_token(
    dir: &Path,
    label: &str,
    so_pin: &str,
    user_pin: &str,
) -> Result<TokenDir, SoftHsmError> {
    create(dir, None, label, so_pin, user_pin)
}

/// Creates `root/softhsm` with its own configuration, whose token directory is
/// written relative to `root` (`softhsm/tokens`): `kms` runs in its config
/// file's directory, `root`, so a copy of the deployment (`cp -a`) has a token of
/// its own. Other programs that open the token must run in `root` too.
pub fn create_deployment_token(
    root: &Path,
    label: &str,
    so_pin: &str,
    user_pin: &str,
) -> Result<TokenDir, SoftHsmError> {
    create(&root.join("softhsm"), Some(root), label, so_pin, user_pin)
}

fn create(
    dir: &Path,
    root: Option<&Path>,
    label: &str,
    so_pin: &str,
    user_pin: &str,
) -> Result<TokenDir, SoftHsmError> {
    let module = module_path()?;
    let tokens = dir.join("tokens");
    let tokendir = root
        .and_then(|r| tokens.strip_prefix(r).ok())
        .unwrap_or(&tokens)
        .to_path_buf();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SoftHsmError::Io { path, source }
    };
    std::fs::create_dir_all(&tokens).map_err(io(&tokens))?;
    let softhsm2_conf = dir.join("softhsm2.conf");
    let conf = format!(
        "# SoftHSM2 configuration written by brandkms\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        tokendir.display()
    );
    std::fs::write(&softhsm2_conf, conf).map_err(io(&softhsm2_conf))?;
    let openssl_conf = dir.join("openssl.cnf");
    std::fs::write(&openssl_conf, OPENSSL_LEGACY_CNF).map_err(io(&openssl_conf))?;
    let mut init = Command::new("softhsm2-util");
    if let Some(root) = root {
        init.current_dir(root);
    }
    let out = init
        .env("SOFTHSM2_CONF", &softhsm2_conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", so_pin, "--pin", user_pin])
        .output()
        .map_err(|e| SoftHsmError::InitToken(e.to_string()))?;
    if !out.status.success() {
        return Err(SoftHsmError::InitToken(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(TokenDir {
        module,
        softhsm2_conf,
        openssl_conf,
    })
}
