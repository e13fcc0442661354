//! Key import (issue 13): officers make an RSA-3072 import key pair in the
//! token; its public half, fingerprint and expiry are the import parameters an
//! exporting HSM needs; a key wrapped under it with RSA-OAEP is unwrapped
//! straight into a token object as a new card-access key or a new version of
//! one, kept only when the check value the token computes is the one stated.

use brandkms_policy::{Algorithm, KeyClass, KeyState};

use crate::audit::{AuditEvent, Outcome};
use crate::hsm::{
    Exportability, ImportError, ImportWrapping, KeyRole, KeySpec, ObjectId, SecretAlgorithm,
};
use crate::ops::authorize::policy_key;
use crate::ops::generate::{card_algorithm, rsa_key};
use crate::ops::keys::{self, KeyView};
use crate::ops::rsa_public;
use crate::ops::versions::{
    AuditKey, Cryptoperiod, NewVersion, create_version_with, key_version, next_version,
    object_label, record_version, versions_and_next,
};
use crate::ops::{AppState, Caller, OpsError, invalid};
use crate::store::keys::{self as rows, KeyRecord, KeyVersionRecord};

/// The import key's alias (a version per `CreateImportKey`).
pub const IMPORT_ALIAS: &str = "brandkms.import";
/// Aliases of the service's own keys start so; officers create and import no
/// key under them.
pub const RESERVED_PREFIX: &str = "brandkms.";
/// How long an import key version takes imports after it is made.
pub const IMPORT_KEY_VALIDITY_MS: i64 = 7 * 86_400_000;
/// The wrapping an exporting party must use.
pub const IMPORT_WRAPPING: &str = "RSA-OAEP-SHA1-MGF1-SHA1";

/// What an exporting party needs.
#[derive(Debug, Clone)]
pub struct ImportParameters {
    /// The import key version.
    pub version: u32,
    /// Its public half.
    pub public: rsa_public::PublicKeyInfo,
    /// When it stops taking imports (Unix ms).
    pub expires_at: i64,
}

/// Makes a new import key version; the previous one is retired (imports
/// under it are refused from then on).
pub async fn create_import_key(
    state: &AppState,
    caller: &Caller,
) -> Result<KeyVersionRecord, OpsError> {
    let mut conn = state.store.conn().await?;
    let (existing, next) = next_version(&mut conn, IMPORT_ALIAS).await?;
    drop(conn);
    if let Some(k) = &existing
        && (k.class != KeyClass::Internal || k.algorithm != Algorithm::Rsa3072)
    {
        return Err(OpsError::Internal(format!(
            "{IMPORT_ALIAS} is a {} {} key, not the import key",
            k.class, k.algorithm
        )));
    }
    let (version, ()) = create_version_with(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        |s, label| Ok((rsa_key(s, s.generate_import_key(label)?)?, ())),
        NewVersion {
            key: existing.is_none().then(|| KeyRecord {
                alias: IMPORT_ALIAS.to_string(),
                class: KeyClass::Internal,
                algorithm: Algorithm::Rsa3072,
                purpose: None,
                service_code: None,
                exportable: false,
                owner_entity: None,
                created_at: state.clock.now_ms(),
            }),
            alias: IMPORT_ALIAS.to_string(),
            version: next,
            state: KeyState::Active,
            weak: false,
            demote_active_to: Some(KeyState::Retired),
            oaep_hash: None,
            period: Default::default(),
        },
        caller.event("Admin/CreateImportKey"),
    )
    .await?;
    // A retired import key unwraps nothing any more, in the token either.
    crate::ops::distribution::retire_superseded(state, IMPORT_ALIAS, version.version).await;
    Ok(version)
}

/// The import key version `wanted` (default: the active one), refused unless
/// it is active and unexpired.
pub async fn usable_import_key(
    state: &AppState,
    wanted: Option<u32>,
) -> Result<KeyVersionRecord, OpsError> {
    let mut conn = state.store.conn().await?;
    let versions = rows::versions(&mut conn, IMPORT_ALIAS).await?;
    drop(conn);
    let found = match wanted {
        None => versions.into_iter().find(|v| v.state == KeyState::Active),
        Some(n) => versions.into_iter().find(|v| v.version == n),
    };
    let v = found.ok_or_else(|| {
        OpsError::FailedPrecondition(match wanted {
            None => {
                "no import key: an officer makes one first (kmsctl key create-import-key)".into()
            }
            Some(n) => format!("there is no import key version {n}"),
        })
    })?;
    if v.state != KeyState::Active {
        return Err(OpsError::FailedPrecondition(format!(
            "import key version {} is {}: only the active version takes imports; wrap again under the current one (GetImportParameters)",
            v.version, v.state
        )));
    }
    let expires_at = v.created_at.saturating_add(IMPORT_KEY_VALIDITY_MS);
    if state.clock.now_ms() >= expires_at {
        return Err(OpsError::FailedPrecondition(format!(
            "import key version {} expired at {expires_at} (Unix ms): make a new one (kmsctl key create-import-key)",
            v.version
        )));
    }
    Ok(v)
}

/// The active import key's public half, fingerprint and expiry.
pub async fn import_parameters(state: &AppState) -> Result<ImportParameters, OpsError> {
    let v = usable_import_key(state, None).await?;
    let id = v.cka_id;
    let (modulus, exponent) = state.hsm.run(move |s| s.rsa_public(&id)).await?;
    let public = rsa_public::encode(&modulus, &exponent)
        .map_err(|e| OpsError::Internal(format!("import key public half: {e}")))?;
    if hex::encode(public.fingerprint) != v.kcv {
        return Err(OpsError::Internal(format!(
            "import key v{} does not match its recorded fingerprint",
            v.version
        )));
    }
    Ok(ImportParameters {
        version: v.version,
        public,
        expires_at: v.created_at.saturating_add(IMPORT_KEY_VALIDITY_MS),
    })
}

/// What an imported key becomes: a new key, or a new version of an existing
/// one of the same class and algorithm.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// The alias.
    pub alias: String,
    /// Card-access, or an import KEK.
    pub class: KeyClass,
    /// Card-access: DES (legacy, allowed explicitly), TDES2 or TDES3; import
    /// KEK: AES-256.
    pub algorithm: Algorithm,
    /// For a new card-access key: its service code.
    pub service_code: u16,
    /// For a new card-access key: its purpose.
    pub purpose: Option<brandkms_policy::Purpose>,
    /// For a new card-access key: whether supply tie-ups may export it.
    pub exportable: bool,
    /// The version's cryptoperiod.
    pub period: Cryptoperiod,
}

/// A key wrapped under the import key pair.
#[derive(Debug, Clone)]
pub struct ImportKey {
    /// What it becomes.
    pub target: ImportTarget,
    /// RSA-OAEP under the import key.
    pub wrapped: Vec<u8>,
    /// The check value the exporting party computed.
    pub expected_kcv: [u8; 3],
    /// The import key version it was wrapped under.
    pub import_version: u32,
}

/// Imports a key wrapped under the active import key: a new key (its first
/// version active) or a new active version of an existing one (the previous
/// active version becomes `auth_only` for card-access keys, as in a rotation;
/// `retired` for import KEKs).
pub async fn import_key(
    state: &AppState,
    caller: &Caller,
    request: ImportKey,
) -> Result<KeyView, OpsError> {
    let import = usable_import_key(state, Some(request.import_version)).await?;
    let note = format!(
        "imported under import key v{} ({IMPORT_WRAPPING})",
        import.version
    );
    let under = (import.cka_id, ImportWrapping::RsaOaepSha1);
    let event = caller.event("Admin/ImportKey");
    let alias = request.target.alias.clone();
    import_under(
        state,
        &request.target,
        under,
        request.wrapped,
        request.expected_kcv,
        event,
        note,
    )
    .await?;
    keys::get(state, &alias).await
}

/// Unwraps `wrapped` under `under` into a new version of `target`, checks its
/// KCV in the token and records it with `event` (its reason `note` and the KCV).
async fn import_under(
    state: &AppState,
    target: &ImportTarget,
    under: (ObjectId, ImportWrapping),
    wrapped: Vec<u8>,
    expected: [u8; 3],
    event: AuditEvent,
    note: String,
) -> Result<KeyVersionRecord, OpsError> {
    if let Some(t) = target.period.not_before
        && t > state.clock.now_ms()
    {
        return Err(invalid(format!(
            "not_before {} is in the future: an imported version is active at once, and would serve nothing until then",
            crate::clock::rfc3339(t)
        )));
    }
    let mut conn = state.store.conn().await?;
    let (existing, versions, next) = versions_and_next(&mut conn, &target.alias).await?;
    drop(conn);
    let stated = hex::encode_upper(expected);
    let earlier = versions
        .into_iter()
        .find(|v| v.state != KeyState::Destroyed && v.kcv.eq_ignore_ascii_case(&stated));
    if let Some(v) = earlier {
        return Err(OpsError::AlreadyExists(format!(
            "{} version {} already has KCV {stated}: this key was imported before",
            target.alias, v.version
        )));
    }
    let (key, exportable) = match &existing {
        Some(k) => {
            if k.class != target.class || k.algorithm != target.algorithm {
                return Err(OpsError::FailedPrecondition(format!(
                    "{:?} is a {} {} key: an imported version must be a {} {} key",
                    k.alias, k.class, k.algorithm, target.class, target.algorithm
                )));
            }
            (None, k.exportable)
        }
        None => {
            let card = target.class == KeyClass::CardAccess;
            let purpose = match target.purpose {
                None if card => {
                    return Err(invalid(
                        "purpose is required for a new key: load or purchase",
                    ));
                }
                p => p,
            };
            (
                Some(KeyRecord {
                    alias: target.alias.clone(),
                    class: target.class,
                    algorithm: target.algorithm,
                    purpose,
                    service_code: card.then_some(target.service_code),
                    exportable: target.exportable,
                    owner_entity: None,
                    created_at: state.clock.now_ms(),
                }),
                target.exportable,
            )
        }
    };
    let (spec, demote_to) = match target.class {
        KeyClass::CardAccess => (
            KeySpec {
                algorithm: card_algorithm(target.algorithm)?,
                role: KeyRole::CardMaster,
                export: if exportable {
                    Exportability::WrappedOnly
                } else {
                    Exportability::Never
                },
            },
            KeyState::AuthOnly,
        ),
        KeyClass::ImportKek => (
            KeySpec {
                algorithm: SecretAlgorithm::Aes256,
                role: KeyRole::ImportKek,
                export: Exportability::Never,
            },
            KeyState::Retired,
        ),
        other => return Err(invalid(format!("{other} keys are not imported"))),
    };
    let label = object_label(&target.alias, next);
    let (under_id, wrapping) = under;
    let generated = state
        .hsm
        .run_long(move |s| {
            Ok(s.import_wrapped(&under_id, wrapping, &wrapped, &spec, &label, expected))
        })
        .await?
        .map_err(|e| match e {
            ImportError::Hsm(h) => OpsError::from(h),
            refused => invalid(refused.to_string()),
        })?;
    let kcv = hex::encode_upper(generated.kcv);
    let event = event.key(&target.alias, Some(next)).outcome(
        Outcome::Allowed,
        Some(format!("{note}, KCV {kcv} as stated")),
    );
    Ok(record_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generated,
        NewVersion {
            key,
            alias: target.alias.clone(),
            version: next,
            state: KeyState::Active,
            weak: target.algorithm == Algorithm::Des,
            demote_active_to: Some(demote_to),
            oaep_hash: None,
            period: target.period,
        },
        event,
    )
    .await?)
}

/// A card-access key of a bulk import, wrapped under an import KEK.
#[derive(Debug, Clone)]
pub struct BulkKey {
    /// What it becomes.
    pub target: ImportTarget,
    /// AES key wrap with padding under the KEK.
    pub wrapped: Vec<u8>,
    /// The check value the exporting party computed.
    pub expected_kcv: [u8; 3],
}

/// A bulk import.
#[derive(Debug, Clone)]
pub struct ImportKeys {
    /// The import KEK.
    pub kek_alias: String,
    /// Its version; `None`: the active one.
    pub kek_version: Option<u32>,
    /// The keys, aliases distinct.
    pub keys: Vec<BulkKey>,
}

/// What became of one key of a bulk import.
#[derive(Debug)]
pub struct BulkOutcome {
    /// Its alias.
    pub alias: String,
    /// The new version, or why it was refused.
    pub result: Result<KeyVersionRecord, OpsError>,
}

/// The import KEK version `version` of `alias` (`None`: the active one), if
/// it may unwrap now: of class import KEK, active, not compromised, inside its
/// cryptoperiod.
pub async fn usable_kek(
    state: &AppState,
    alias: &str,
    version: Option<u32>,
) -> Result<KeyVersionRecord, OpsError> {
    let mut conn = state.store.conn().await?;
    let (key, v) = key_version(&mut conn, alias, version).await?;
    drop(conn);
    if key.class != KeyClass::ImportKek {
        return Err(OpsError::FailedPrecondition(format!(
            "{alias:?} is a {} key, not an import KEK (import one with ImportKey, class import_kek)",
            key.class
        )));
    }
    if v.state != KeyState::Active {
        return Err(OpsError::FailedPrecondition(format!(
            "import KEK {alias} v{} is {}: only the active version unwraps",
            v.version, v.state
        )));
    }
    // Unwrapping a new import is new work.
    if let Some(reason) = policy_key(&key, &v).lifecycle(true, state.clock.now_ms()) {
        return Err(OpsError::FailedPrecondition(format!(
            "import KEK {alias} v{} unwraps nothing: {reason}",
            v.version
        )));
    }
    Ok(v)
}

/// Imports every key of `batch` under its KEK, each on its own: a refused key
/// (wrong KCV, does not unwrap, alias of another class) leaves nothing and
/// does not stop the others. Audited: one record as the batch begins (the
/// one that closes its approval, so a batch never runs twice), one per key,
/// and one at the end counting and naming the refused.
pub async fn import_batch(
    state: &AppState,
    caller: &Caller,
    batch: ImportKeys,
) -> Result<Vec<BulkOutcome>, OpsError> {
    const OP: &str = "Admin/ImportKeys";
    let kek = usable_kek(state, &batch.kek_alias, batch.kek_version).await?;
    let about = format!(
        "bulk import of {} keys under import KEK {} v{} (AES key wrap with padding, RFC 5649)",
        batch.keys.len(),
        batch.kek_alias,
        kek.version
    );
    let begins = caller
        .event_about(OP, format!("{about} begins"))
        .key(&batch.kek_alias, Some(kek.version));
    state
        .write_serial(begins, |_| Box::pin(async { Ok(()) }))
        .await?;
    let mut outcomes = Vec::with_capacity(batch.keys.len());
    for item in batch.keys {
        let mut event = caller.event(OP);
        event.closes_approval = None;
        let note = format!(
            "imported under import KEK {} v{}",
            batch.kek_alias, kek.version
        );
        let result = import_under(
            state,
            &item.target,
            (kek.cka_id, ImportWrapping::AesKeyWrapPad),
            item.wrapped,
            item.expected_kcv,
            event.clone(),
            note,
        )
        .await;
        if let Err(e) = &result {
            let refused = event
                .key(&item.target.alias, None)
                .outcome(e.outcome(), Some(e.audit_reason()));
            state.auditor.record(&refused).await?;
        }
        outcomes.push(BulkOutcome {
            alias: item.target.alias,
            result,
        });
    }
    let refused: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.alias.as_str())
        .collect();
    let mut ends = caller.event_about(
        OP,
        format!(
            "{about} ends: {} imported, {} refused{}{}",
            outcomes.len() - refused.len(),
            refused.len(),
            if refused.is_empty() { "" } else { ": " },
            refused.join(", ")
        ),
    );
    ends.closes_approval = None;
    state
        .auditor
        .record(&ends.key(&batch.kek_alias, Some(kek.version)))
        .await?;
    Ok(outcomes)
}
