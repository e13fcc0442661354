//! `kms init`: migrations (run by `Store::connect`), the service's internal keys in
//! the token, and the first officers. Idempotent: a second run changes nothing.

use brandkms_policy::{
    Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, SensitiveOperation,
};

use crate::audit::{AuditEvent, Auditor};
use crate::hsm::{Exportability, Hsm, KeyRole, KeySpec, ObjectId, SecretAlgorithm};
use crate::ops::approvals::describe_dual_control;
use crate::ops::versions::{AuditKey, KeyError, NewVersion, create_version};
use crate::store::entities::{self, EntityRecord};
use crate::store::keys::{self as key_rows, KeyRecord};
use crate::store::settings;
use crate::store::{Store, StoreError, now_ms};

/// Alias of the audit trail's MAC key.
pub const AUDIT_KEY: &str = "brandkms.audit-mac";
/// Alias of the key that seals session state.
pub const SEAL_KEY: &str = "brandkms.session-seal";

/// The internal keys, in creation order (the audit key first: it MACs the rest).
const INTERNAL_KEYS: [(&str, SecretAlgorithm, KeyRole); 2] = [
    (AUDIT_KEY, SecretAlgorithm::HmacSha256, KeyRole::AuditMac),
    (SEAL_KEY, SecretAlgorithm::Aes256, KeyRole::SessionSeal),
];

/// What `kms init` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Internal keys created: alias and KCV.
    pub created: Vec<(String, String)>,
    /// Internal keys that were already there.
    pub present: Vec<String>,
    /// Officers registered.
    pub officers_added: Vec<String>,
    /// The dual-control set, when this run wrote it (the first run).
    pub dual_control: Option<Vec<SensitiveOperation>>,
}

impl InitReport {
    /// True when the run changed nothing.
    pub fn nothing_to_do(&self) -> bool {
        self.created.is_empty() && self.officers_added.is_empty() && self.dual_control.is_none()
    }
}

/// An officer to register at initialisation.
#[derive(Debug, Clone)]
pub struct OfficerSeed {
    /// Entity id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// Creates what is missing: internal keys, then officers.
pub async fn run(
    hsm: &Hsm,
    store: &Store,
    actor: &str,
    officers: &[OfficerSeed],
    dual_control: &[SensitiveOperation],
) -> Result<InitReport, KeyError> {
    let mut report = InitReport::default();
    // Started the first time something is recorded, so that a run with nothing
    // to do opens no chain.
    let mut auditor: Option<Auditor> = None;
    for (alias, algorithm, role) in INTERNAL_KEYS {
        let mut conn = store.conn().await?;
        if key_rows::key(&mut conn, alias).await?.is_some() {
            report.present.push(alias.to_string());
            continue;
        }
        drop(conn);
        if role != KeyRole::AuditMac && auditor.is_none() {
            auditor = Some(self::auditor(hsm, store).await?);
        }
        let spec = KeySpec {
            algorithm,
            role,
            export: Exportability::Never,
        };
        let now = now_ms();
        let created = create_version(
            hsm,
            store,
            match role {
                KeyRole::AuditMac => AuditKey::TheNewKey,
                _ => auditor
                    .as_ref()
                    .map_or(AuditKey::TheNewKey, AuditKey::Existing),
            },
            move |s, label| s.generate(&spec, label),
            NewVersion {
                key: Some(KeyRecord {
                    alias: alias.to_string(),
                    class: KeyClass::Internal,
                    algorithm: match algorithm {
                        SecretAlgorithm::HmacSha256 => Algorithm::HmacSha256,
                        _ => Algorithm::Aes256,
                    },
                    purpose: None,
                    service_code: None,
                    exportable: false,
                    owner_entity: None,
                    created_at: now,
                }),
                alias: alias.to_string(),
                version: 1,
                state: KeyState::Active,
                weak: false,
                demote_active_to: None,
                oaep_hash: None,
                period: Default::default(),
            },
            AuditEvent::allowed(actor, "init.create_internal_key"),
        )
        .await?;
        report.created.push((alias.to_string(), created.kcv));
    }
    for officer in officers {
        let mut conn = store.conn().await?;
        if entities::get(&mut conn, &officer.id).await?.is_some() {
            continue;
        }
        drop(conn);
        if auditor.is_none() {
            auditor = Some(self::auditor(hsm, store).await?);
        }
        let Some(auditor) = &auditor else {
            continue;
        };
        let now = now_ms();
        let record = EntityRecord {
            id: officer.id.clone(),
            kind: EntityKind::Officer,
            name: officer.name.clone(),
            online: true,
            tamper_resistant: false,
            status: EntityStatus::Active,
            created_at: now,
            updated_at: now,
        };
        auditor
            .commit(
                AuditEvent::allowed(actor, "init.register_officer"),
                true,
                move |tx| {
                    Box::pin(async move {
                        entities::insert(tx, &record).await?;
                        Ok::<(), KeyError>(())
                    })
                },
            )
            .await?;
        report.officers_added.push(officer.id.clone());
    }
    let mut conn = store.conn().await?;
    let unset = settings::dual_control(&mut conn).await?.is_none();
    drop(conn);
    if unset {
        let auditor = match auditor {
            Some(a) => a,
            None => self::auditor(hsm, store).await?,
        };
        if initialise_dual_control(&auditor, actor, dual_control).await? {
            report.dual_control = Some(dual_control.to_vec());
        }
    }
    Ok(report)
}

/// Writes the dual-control set from the configuration, with its audit record,
/// for a database that has none yet (the first `kms init`, or the first `kms
/// serve` of a deployment initialised before the set moved into the database:
/// the caller read that it has none, so that a start with the set in place
/// writes nothing). Whether it wrote; afterwards only `Admin/SetDualControl`
/// changes the set.
pub async fn initialise_dual_control(
    auditor: &Auditor,
    actor: &str,
    ops: &[SensitiveOperation],
) -> Result<bool, KeyError> {
    let ops = ops.to_vec();
    let event = AuditEvent::allowed(actor, "init.set_dual_control").outcome(
        crate::audit::Outcome::Allowed,
        Some(format!(
            "operations held for a second officer, from the configuration: {}",
            describe_dual_control(&ops)
        )),
    );
    // Another instance starting at the same time may write it first: then this
    // change is rolled back and records nothing.
    let written = auditor
        .commit(event, true, move |tx| {
            Box::pin(async move {
                let now = now_ms();
                match settings::init_dual_control(tx, &ops, now).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(SetOnce::AlreadySet),
                    Err(e) => Err(SetOnce::Failed(e.into())),
                }
            })
        })
        .await;
    match written {
        Ok(()) => Ok(true),
        Err(SetOnce::AlreadySet) => Ok(false),
        Err(SetOnce::Failed(e)) => Err(e),
    }
}

/// Writing the dual-control set once: written by another process first, or failed.
enum SetOnce {
    AlreadySet,
    Failed(KeyError),
}

impl From<crate::audit::AuditError> for SetOnce {
    fn from(e: crate::audit::AuditError) -> Self {
        SetOnce::Failed(e.into())
    }
}

/// The `CKA_ID` of an internal key's active version.
pub async fn internal_key(store: &Store, alias: &str) -> Result<Option<ObjectId>, StoreError> {
    let mut conn = store.conn().await?;
    Ok(key_rows::versions(&mut conn, alias)
        .await?
        .into_iter()
        .find(|v| v.state == KeyState::Active)
        .map(|v| v.cka_id))
}

/// This process's auditor (a new audit chain), with the audit key recorded by
/// `kms init`.
pub async fn auditor(hsm: &Hsm, store: &Store) -> Result<Auditor, KeyError> {
    let id = internal_key(store, AUDIT_KEY)
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            table: "keys",
            reason: format!("internal key {AUDIT_KEY} is missing: run `kms init`"),
        })?;
    Ok(Auditor::start(store, hsm.clone(), id).await?)
}
