//! Key import (issue 13): officers make an RSA-3072 import key pair in the
//! token; its public half, fingerprint and expiry are the import parameters an
//! exporting HSM needs; a key wrapped under it with RSA-OAEP is unwrapped
//! straight into a token object as a new card-access key or a new version of
//! one, kept only when the check value the token computes is the one stated.

use brandkms_policy::{Algorithm, KeyClass, KeyState};

use crate::hsm::{Exportability, ImportError, KeyRole, KeySpec};
use crate::ops::generate::{card_algorithm, rsa_key};
use crate::ops::keys::{self, KeyView};
use crate::ops::rsa_public;
use crate::ops::versions::{
    AuditKey, NewVersion, create_version_with, next_version, object_label, record_version,
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

/// A card-access key to import.
#[derive(Debug, Clone)]
pub struct ImportKey {
    /// A new key, or a new version of an existing card-access key.
    pub alias: String,
    /// DES (legacy, allowed explicitly), TDES2 or TDES3.
    pub algorithm: Algorithm,
    /// For a new key: its service code.
    pub service_code: u16,
    /// For a new key: its purpose.
    pub purpose: Option<brandkms_policy::Purpose>,
    /// For a new key: whether supply tie-ups may export it.
    pub exportable: bool,
    /// RSA-OAEP under the import key.
    pub wrapped: Vec<u8>,
    /// The check value the exporting party computed.
    pub expected_kcv: [u8; 3],
    /// The import key version it was wrapped under.
    pub import_version: u32,
}

/// Imports a card-access key wrapped under the active import key: a new key
/// (its first version active) or a new active version of an existing one (the
/// previous active version becomes `auth_only`, as in a rotation).
pub async fn import_key(
    state: &AppState,
    caller: &Caller,
    request: ImportKey,
) -> Result<KeyView, OpsError> {
    let import = usable_import_key(state, Some(request.import_version)).await?;
    let mut conn = state.store.conn().await?;
    let (existing, next) = next_version(&mut conn, &request.alias).await?;
    drop(conn);
    let (key, exportable) = match &existing {
        Some(k) => {
            if k.class != KeyClass::CardAccess || k.algorithm != request.algorithm {
                return Err(OpsError::FailedPrecondition(format!(
                    "{:?} is a {} {} key: an imported version must be a card-access {} key",
                    k.alias, k.class, k.algorithm, request.algorithm
                )));
            }
            (None, k.exportable)
        }
        None => {
            let purpose = request
                .purpose
                .ok_or_else(|| invalid("purpose is required for a new key: load or purchase"))?;
            (
                Some(KeyRecord {
                    alias: request.alias.clone(),
                    class: KeyClass::CardAccess,
                    algorithm: request.algorithm,
                    purpose: Some(purpose),
                    service_code: Some(request.service_code),
                    exportable: request.exportable,
                    owner_entity: None,
                    created_at: state.clock.now_ms(),
                }),
                request.exportable,
            )
        }
    };
    let spec = KeySpec {
        algorithm: card_algorithm(request.algorithm)?,
        role: KeyRole::CardMaster,
        export: if exportable {
            Exportability::WrappedOnly
        } else {
            Exportability::Never
        },
    };
    let (import_id, label, wrapped, expected) = (
        import.cka_id,
        object_label(&request.alias, next),
        request.wrapped,
        request.expected_kcv,
    );
    let generated = state
        .hsm
        .run_long(move |s| Ok(s.import_wrapped(&import_id, &wrapped, &spec, &label, expected)))
        .await?
        .map_err(|e| match e {
            ImportError::Hsm(h) => OpsError::from(h),
            refused => invalid(refused.to_string()),
        })?;
    let kcv = hex::encode_upper(generated.kcv);
    record_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generated,
        NewVersion {
            key,
            alias: request.alias.clone(),
            version: next,
            state: KeyState::Active,
            weak: request.algorithm == Algorithm::Des,
            demote_active_to: Some(KeyState::AuthOnly),
            oaep_hash: None,
        },
        caller.event_about(
            "Admin/ImportKey",
            format!(
                "imported under import key v{} ({IMPORT_WRAPPING}), KCV {kcv} as stated",
                import.version
            ),
        ),
    )
    .await?;
    keys::get(state, &request.alias).await
}
