//! Participants: register, suspend, resume, list.

use brandkms_policy::{EntityKind, EntityStatus};

use crate::ops::{AppState, Caller, OpsError};
use crate::store::entities::{self as rows, EntityRecord};

/// A participant to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterEntity {
    /// Id (validated).
    pub id: String,
    /// Kind.
    pub kind: EntityKind,
    /// Readable name (non-empty).
    pub name: String,
    /// Issuers: online.
    pub online: bool,
    /// Terminals: tamper-resistant.
    pub tamper_resistant: bool,
}

/// Registers an entity, active.
pub async fn register(
    state: &AppState,
    caller: &Caller,
    input: RegisterEntity,
) -> Result<EntityRecord, OpsError> {
    let operation = if input.kind == EntityKind::Officer {
        "Admin/RegisterOfficer"
    } else {
        "Admin/RegisterEntity"
    };
    let event = caller.event(operation).outcome(
        crate::audit::Outcome::Allowed,
        Some(format!("entity {} ({})", input.id, input.kind)),
    );
    let now = state.clock.now_ms();
    let record = EntityRecord {
        id: input.id,
        kind: input.kind,
        name: input.name,
        online: input.online,
        tamper_resistant: input.tamper_resistant,
        status: EntityStatus::Active,
        created_at: now,
        updated_at: now,
    };
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                if rows::get(tx, &record.id).await?.is_some() {
                    return Err(OpsError::AlreadyExists(format!(
                        "entity {:?} is registered",
                        record.id
                    )));
                }
                rows::insert(tx, &record).await?;
                Ok(record)
            })
        })
        .await
}

/// Which call changes an entity's status: resuming an officer is a call of its
/// own (sensitive, under dual control), and `ResumeEntity` refuses officers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCall {
    /// `Admin/SuspendEntity` (any entity but the caller).
    Suspend,
    /// `Admin/ResumeEntity` (any entity but an officer).
    ResumeEntity,
    /// `Admin/ResumeOfficer` (officers only).
    ResumeOfficer,
}

impl StatusCall {
    /// The Admin operation.
    pub fn operation(self) -> &'static str {
        match self {
            StatusCall::Suspend => "Admin/SuspendEntity",
            StatusCall::ResumeEntity => "Admin/ResumeEntity",
            StatusCall::ResumeOfficer => "Admin/ResumeOfficer",
        }
    }

    fn status(self) -> EntityStatus {
        match self {
            StatusCall::Suspend => EntityStatus::Suspended,
            StatusCall::ResumeEntity | StatusCall::ResumeOfficer => EntityStatus::Active,
        }
    }
}

/// Whether `call` may change `entity` (read in the same transaction or just
/// before a proposal): the status changes, officers are resumed only by
/// `ResumeOfficer` and nothing else by it, and no officer suspends themself.
pub fn check_status_change(
    entity: &EntityRecord,
    call: StatusCall,
    caller_id: &str,
) -> Result<(), OpsError> {
    let (id, status) = (&entity.id, call.status());
    if entity.status == status {
        return Err(OpsError::FailedPrecondition(format!(
            "entity {id:?} is already {status}"
        )));
    }
    let officer = entity.kind == EntityKind::Officer;
    if call == StatusCall::ResumeEntity && officer {
        return Err(OpsError::FailedPrecondition(format!(
            "{id:?} is an officer: resume it with Admin/ResumeOfficer (kmsctl entity resume ID), which dual control may hold"
        )));
    }
    if call == StatusCall::ResumeOfficer && !officer {
        return Err(OpsError::FailedPrecondition(format!(
            "{id:?} is not an officer: resume it with Admin/ResumeEntity"
        )));
    }
    if entity.id == caller_id && status == EntityStatus::Suspended {
        return Err(OpsError::FailedPrecondition(
            "an officer cannot suspend themself".to_string(),
        ));
    }
    Ok(())
}

/// The entity `id`: `NotFound` when there is none.
pub async fn get(state: &AppState, id: &str) -> Result<EntityRecord, OpsError> {
    let mut conn = state.store.conn().await?;
    rows::get(&mut conn, id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no entity {id:?}")))
}

/// Suspends or resumes an entity.
pub async fn set_status(
    state: &AppState,
    caller: &Caller,
    id: &str,
    call: StatusCall,
) -> Result<EntityRecord, OpsError> {
    let (operation, status) = (call.operation(), call.status());
    let event = caller
        .event(operation)
        .outcome(crate::audit::Outcome::Allowed, Some(format!("entity {id}")));
    let (id, me, now) = (
        id.to_string(),
        caller.entity.id.clone(),
        state.clock.now_ms(),
    );
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let entity = rows::get(tx, &id)
                    .await?
                    .ok_or_else(|| OpsError::NotFound(format!("no entity {id:?}")))?;
                check_status_change(&entity, call, &me)?;
                rows::set_status(tx, &id, status, now).await?;
                rows::get(tx, &id)
                    .await?
                    .ok_or_else(|| OpsError::NotFound(format!("no entity {id:?}")))
            })
        })
        .await
}

/// Every entity, optionally of one kind.
pub async fn list(
    state: &AppState,
    kind: Option<EntityKind>,
) -> Result<Vec<EntityRecord>, OpsError> {
    let mut conn = state.store.conn().await?;
    Ok(rows::list(&mut conn)
        .await?
        .into_iter()
        .filter(|e| kind.is_none_or(|k| k == e.kind))
        .collect())
}
