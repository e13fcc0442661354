//! `kms backup` and `kms verify-restore`: the backup and restore drill
//! (docs/runbooks/backup-and-restore.md).
//!
//! `kms backup` copies the database consistently while `kms serve` runs
//! (SQLite's `VACUUM INTO`, one read transaction; PostgreSQL: `pg_dump`, as the
//! runbook says) and, for a SoftHSM2 token, the token directory first: the
//! copied audit anchors are then never ahead of the copied records. A key made
//! while the backup runs fails it (its object may be missing from the copied
//! token): run it again.
//!
//! `kms verify-restore` checks a restored database against a restored token
//! without writing to the token: every live key version's object is present and
//! the token computes the check value (DES, TDES, AES, HMAC: `CKA_CHECK_VALUE`)
//! or public-key fingerprint (RSA: SHA-256 of the SubjectPublicKeyInfo built
//! from the token's modulus and exponent) the database recorded; objects no row
//! knows are reported; every audit chain verifies against its records, MACs and
//! anchors.

use std::path::{Path, PathBuf};

use crate::audit::{AuditVerifier, VerifyReport};
use crate::hsm::{Hsm, HsmError, TokenObject};
use crate::ops::rsa_public;
use crate::ops::versions::LABEL_PREFIX;
use crate::store::keys::{self as key_rows, KeyVersionRecord};
use crate::store::{Backend, Store};

/// What `kms backup` wrote.
#[derive(Debug)]
pub struct BackupReport {
    /// The database copy.
    pub database: PathBuf,
    /// The token directory copy, when the module is SoftHSM2 and it was asked.
    pub token: Option<PathBuf>,
    /// Live key versions in the copy.
    pub key_versions: usize,
}

/// Writes the backup into `out` (created; must not exist or be empty).
pub async fn backup(
    store: &Store,
    out: &Path,
    softhsm2_conf: Option<&Path>,
) -> Result<BackupReport, String> {
    if store.backend() != Backend::Sqlite {
        return Err("the database is PostgreSQL: back it up with pg_dump \
             (docs/runbooks/backup-and-restore.md), then check a restore with kms verify-restore"
            .into());
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| format!("{}: {e}", out.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} is not empty", out.display()));
    }
    create_private_dir(out)?;
    // An empty directory given may be open to others: the copy is not.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let started = crate::store::now_ms();

    // The token first, so that its audit anchors are not ahead of the records.
    let token = match softhsm2_conf {
        Some(conf) => Some(copy_softhsm_token(conf, out)?),
        None => None,
    };

    let database = out.join("kms.db");
    let mut conn = store.conn().await.map_err(|e| e.to_string())?;
    let target = database.display().to_string().replace('\'', "''");
    sqlx::query(&format!("VACUUM INTO '{target}'"))
        .execute(&mut *conn)
        .await
        .map_err(|e| format!("VACUUM INTO {}: {e}", database.display()))?;
    restrict(&database)?;
    let versions = key_rows::live_versions(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if token.is_some()
        && let Some(v) = versions.iter().find(|v| v.created_at >= started)
    {
        return Err(format!(
            "{} v{} was created while the backup ran: its object may be missing from \
             the copied token; delete {} and run kms backup again",
            v.alias,
            v.version,
            out.display()
        ));
    }
    Ok(BackupReport {
        database,
        token,
        key_versions: versions.len(),
    })
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn restrict(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Copies a SoftHSM2 token directory into `out/softhsm/tokens`, with a
/// `softhsm2.conf` naming it relative to `out` (a deployment directory once
/// `kms.toml` joins it) and the `openssl.cnf` beside the original.
fn copy_softhsm_token(conf: &Path, out: &Path) -> Result<PathBuf, String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let tokens = super::doctor::token_directory(conf, &cwd)
        .ok_or_else(|| format!("{} names no directories.tokendir", conf.display()))?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if canonical(out).starts_with(canonical(&tokens)) {
        return Err(format!(
            "{} lies inside the token directory {}: choose another",
            out.display(),
            tokens.display()
        ));
    }
    let softhsm = out.join("softhsm");
    let copy = softhsm.join("tokens");
    copy_tree(&tokens, &copy)?;
    let text = std::fs::read_to_string(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let rewritten: String = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if key.trim() == "directories.tokendir" => {
                "directories.tokendir = softhsm/tokens\n".to_string()
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let new_conf = softhsm.join("softhsm2.conf");
    std::fs::write(&new_conf, rewritten).map_err(|e| format!("{}: {e}", new_conf.display()))?;
    if let Some(openssl) = conf.parent().map(|d| d.join("openssl.cnf"))
        && openssl.is_file()
    {
        std::fs::copy(&openssl, softhsm.join("openssl.cnf"))
            .map_err(|e| format!("{}: {e}", openssl.display()))?;
    }
    Ok(copy)
}

/// Copies a directory tree, files with their permissions; symbolic links and
/// other special files are refused.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    create_private_dir(to)?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        } else {
            return Err(format!(
                "{}: not a file or directory",
                entry.path().display()
            ));
        }
    }
    Ok(())
}

/// Why a version's value could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchecked {
    /// No object with its `CKA_ID`.
    Missing,
    /// The token refused (a refused copy, several objects with the id, ...).
    Failed(String),
}

/// One live key version's check.
#[derive(Debug)]
pub struct VersionCheck {
    /// The row.
    pub version: KeyVersionRecord,
    /// What the token computes: `Ok(value)` (check value or fingerprint, as
    /// recorded: upper-case hex KCV or lower-case hex fingerprint) or why it
    /// cannot.
    pub computed: Result<String, Unchecked>,
}

impl VersionCheck {
    /// True when the object is there with the recorded value.
    pub fn matches(&self) -> bool {
        self.computed.as_deref() == Ok(self.version.kcv.as_str())
    }
}

/// The result of `kms verify-restore`.
#[derive(Debug)]
pub struct RestoreReport {
    /// Every live key version, checked.
    pub versions: Vec<VersionCheck>,
    /// Token objects no row knows (made after the database backup, or left by
    /// a crash: `kms reconcile` tells).
    pub orphans: Vec<TokenObject>,
    /// The audit chains.
    pub audit: VerifyReport,
}

impl RestoreReport {
    /// True when every version's object checks and every chain verifies.
    pub fn verified(&self) -> bool {
        self.versions.iter().all(VersionCheck::matches) && self.audit.intact()
    }
}

/// Checks a restored database against a restored token; writes nothing to
/// the token (the store's connection has already run the migrations).
pub async fn verify_restore(hsm: &Hsm, store: &Store) -> Result<RestoreReport, String> {
    let mut conn = store.conn().await.map_err(|e| e.to_string())?;
    let versions = key_rows::live_versions(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    drop(conn);
    let rows = versions.clone();
    let computed = hsm
        .run_long(move |s| {
            Ok(rows
                .iter()
                .map(|v| {
                    let result = if v.kcv.len() == 64 {
                        s.rsa_public(&v.cka_id).and_then(|(n, e)| {
                            rsa_public::encode(&n, &e)
                                .map(|info| hex::encode(info.fingerprint))
                                .map_err(|_| HsmError::InvalidInput("not an RSA public key"))
                        })
                    } else {
                        s.computed_kcv(&v.cka_id).map(hex::encode_upper)
                    };
                    result.map_err(|e| match e {
                        HsmError::ObjectNotFound(_) => Unchecked::Missing,
                        other => Unchecked::Failed(other.to_string()),
                    })
                })
                .collect::<Vec<_>>())
        })
        .await
        .map_err(|e| e.to_string())?;
    let objects = hsm
        .run(|s| s.list_objects(LABEL_PREFIX))
        .await
        .map_err(|e| e.to_string())?;
    let orphans = objects
        .into_iter()
        .filter(|o| !versions.iter().any(|v| v.cka_id == o.id))
        .collect();
    let key = super::init::internal_key(store, super::init::AUDIT_KEY)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the database has no {} row: not a brandkms database, or not initialised",
                super::init::AUDIT_KEY
            )
        })?;
    let audit = AuditVerifier::new(hsm.clone(), key)
        .verify(store)
        .await
        .map_err(|e| format!("audit: {e}"))?;
    Ok(RestoreReport {
        versions: versions
            .into_iter()
            .zip(computed)
            .map(|(version, computed)| VersionCheck { version, computed })
            .collect(),
        orphans,
        audit,
    })
}
