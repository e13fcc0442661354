//! Key versions: the token object is written first, then its rows and their audit
//! record in one transaction; if the rows cannot be written, the object is
//! destroyed. A crash in between leaves an orphan object that `kms reconcile`
//! reports (and removes with `--fix`); nothing is silently lost.

use brandkms_policy::KeyState;

use crate::audit::{AuditError, AuditEvent, Auditor};
use crate::failpoint;
use crate::hsm::{GeneratedKey, Hsm, HsmError, HsmSession, ObjectId};
use crate::ops::OpsError;
use crate::store::keys::{self as rows, KeyRecord, KeyVersionRecord};
use crate::store::{Conn, Store, StoreError, now_ms};

/// Every token object brandkms creates carries a label with this prefix.
pub const LABEL_PREFIX: &str = "brandkms/";

/// The label of a key version's token object.
pub fn object_label(alias: &str, version: u32) -> String {
    format!("{LABEL_PREFIX}{alias}/v{version}")
}

/// The key `alias` if it exists, and the number its next version takes.
pub async fn next_version(
    conn: &mut Conn,
    alias: &str,
) -> Result<(Option<KeyRecord>, u32), StoreError> {
    let (existing, _, next) = versions_and_next(conn, alias).await?;
    Ok((existing, next))
}

/// As [`next_version`], with the key's versions (oldest first).
pub async fn versions_and_next(
    conn: &mut Conn,
    alias: &str,
) -> Result<(Option<KeyRecord>, Vec<KeyVersionRecord>, u32), StoreError> {
    let existing = rows::key(conn, alias).await?;
    let versions = rows::versions(conn, alias).await?;
    let next = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    Ok((existing, versions, next))
}

/// The one key/version loader: key `alias` and its version `version`, or its
/// active version when `version` is `None` (the wire's absent or 0). No key or
/// no such version: `NotFound`; no active version: `FailedPrecondition`.
pub async fn key_version(
    conn: &mut Conn,
    alias: &str,
    version: Option<u32>,
) -> Result<(KeyRecord, KeyVersionRecord), OpsError> {
    let key = rows::key(conn, alias)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no key {alias:?}")))?;
    let v = match version {
        Some(n) => rows::version(conn, alias, n)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("key {alias:?} has no version {n}")))?,
        None => rows::versions(conn, alias)
            .await?
            .into_iter()
            .find(|v| v.state == KeyState::Active)
            .ok_or_else(|| {
                OpsError::FailedPrecondition(format!("key {alias:?} has no active version"))
            })?,
    };
    Ok((key, v))
}

/// Errors while creating a key version.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The token failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What to record for a new version.
#[derive(Clone, Debug)]
pub struct NewVersion {
    /// The key row, when this is the key's first version.
    pub key: Option<KeyRecord>,
    /// The alias.
    pub alias: String,
    /// The version number.
    pub version: u32,
    /// The initial state.
    pub state: KeyState,
    /// True for single DES.
    pub weak: bool,
    /// Rotation: the state the key's active versions move to, in the same transaction.
    pub demote_active_to: Option<KeyState>,
    /// RSA keys, with their first version: the OAEP hash their ciphertexts use.
    pub oaep_hash: Option<crate::hsm::OaepHash>,
    /// The version's cryptoperiod.
    pub period: Cryptoperiod,
}

/// A version's cryptoperiod (Unix ms): no use before `not_before`, no new work
/// from `not_after` on; `None` leaves that side unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cryptoperiod {
    /// Start, inclusive.
    pub not_before: Option<i64>,
    /// End of new work, exclusive.
    pub not_after: Option<i64>,
}

impl Cryptoperiod {
    /// Checks that the period is not empty.
    pub fn checked(self) -> Result<Self, OpsError> {
        match (self.not_before, self.not_after) {
            (Some(b), Some(a)) if a <= b => Err(crate::ops::invalid(format!(
                "not_after ({}) must be later than not_before ({})",
                crate::clock::rfc3339(a),
                crate::clock::rfc3339(b)
            ))),
            _ => Ok(self),
        }
    }
}

/// Which key MACs the audit record of the creation.
#[derive(Clone, Copy, Debug)]
pub enum AuditKey<'a> {
    /// The service's audit key.
    Existing(&'a Auditor),
    /// The key being created is the audit key itself.
    TheNewKey,
}

/// Generates a token object with `generate`, then writes its rows and `event` in
/// one transaction; destroys the object if that fails.
pub async fn create_version<G>(
    hsm: &Hsm,
    store: &Store,
    audit_key: AuditKey<'_>,
    generate: G,
    new: NewVersion,
    event: AuditEvent,
) -> Result<KeyVersionRecord, KeyError>
where
    G: FnOnce(&HsmSession<'_>, &str) -> Result<GeneratedKey, HsmError> + Send + 'static,
{
    let generate = move |s: &HsmSession<'_>, label: &str| generate(s, label).map(|g| (g, ()));
    create_version_with(hsm, store, audit_key, generate, new, event)
        .await
        .map(|(v, ())| v)
}

/// As [`create_version`], for a generator that also returns something made in the
/// same token call (e.g. the new key wrapped for its recipient).
pub async fn create_version_with<G, X>(
    hsm: &Hsm,
    store: &Store,
    audit_key: AuditKey<'_>,
    generate: G,
    new: NewVersion,
    event: AuditEvent,
) -> Result<(KeyVersionRecord, X), KeyError>
where
    G: FnOnce(&HsmSession<'_>, &str) -> Result<(GeneratedKey, X), HsmError> + Send + 'static,
    X: Send + 'static,
{
    let label = object_label(&new.alias, new.version);
    let (generated, extra) = hsm.run_long(move |s| generate(s, &label)).await?;
    let v = record_version(hsm, store, audit_key, generated, new, event).await?;
    Ok((v, extra))
}

/// Records a key version whose token object `generated` was just made (the
/// label [`object_label`] gives), with its audit record; the object is
/// destroyed when that fails.
pub async fn record_version(
    hsm: &Hsm,
    store: &Store,
    audit_key: AuditKey<'_>,
    generated: GeneratedKey,
    new: NewVersion,
    event: AuditEvent,
) -> Result<KeyVersionRecord, KeyError> {
    failpoint::hit("key-object-created");
    let auditor = match audit_key {
        AuditKey::Existing(a) => Ok(a.clone()),
        AuditKey::TheNewKey => Auditor::start(store, hsm.clone(), generated.id).await,
    };
    let written = match auditor {
        Ok(auditor) => write_rows(&auditor, &generated, new, event).await,
        Err(e) => Err(e.into()),
    };
    match written {
        Ok(v) => Ok(v),
        Err(e) => {
            destroy_quietly(hsm, generated.id).await;
            Err(e)
        }
    }
}

async fn write_rows(
    auditor: &Auditor,
    generated: &GeneratedKey,
    new: NewVersion,
    event: AuditEvent,
) -> Result<KeyVersionRecord, KeyError> {
    let now = now_ms();
    let version = KeyVersionRecord {
        alias: new.alias.clone(),
        version: new.version,
        state: new.state,
        cka_id: generated.id,
        kcv: generated
            .fingerprint
            .map(hex::encode)
            .unwrap_or_else(|| hex::encode_upper(generated.kcv)),
        weak: new.weak,
        created_at: now,
        state_changed_at: now,
        destroy_after: None,
        destroyed_at: None,
        not_before: new.period.not_before,
        not_after: new.period.not_after,
        compromised_at: None,
    };
    let event = event.key(&new.alias, Some(new.version));
    let row = version.clone();
    auditor
        .commit(event, true, move |tx| {
            Box::pin(async move {
                if let Some(key) = &new.key {
                    rows::insert_key(tx, key).await?;
                    if let Some(hash) = new.oaep_hash {
                        rows::insert_rsa_key(tx, &key.alias, hash.as_str()).await?;
                    }
                }
                if let Some(to) = new.demote_active_to {
                    rows::demote_active(tx, &new.alias, to, now).await?;
                }
                rows::insert_version(tx, &row).await?;
                Ok::<(), KeyError>(())
            })
        })
        .await?;
    Ok(version)
}

async fn destroy_quietly(hsm: &Hsm, id: ObjectId) {
    if let Err(e) = hsm.run(move |s| s.destroy(&id)).await {
        tracing::error!(cka_id = %id, error = %e, "could not destroy the object of a key whose rows failed; `kms reconcile` will report it");
    }
}
