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
    let event = caller.event("Admin/RegisterEntity").outcome(
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

/// Suspends or resumes an entity.
pub async fn set_status(
    state: &AppState,
    caller: &Caller,
    id: &str,
    status: EntityStatus,
) -> Result<EntityRecord, OpsError> {
    let operation = match status {
        EntityStatus::Suspended => "Admin/SuspendEntity",
        EntityStatus::Active => "Admin/ResumeEntity",
    };
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
                if entity.status == status {
                    return Err(OpsError::FailedPrecondition(format!(
                        "entity {id:?} is already {status}"
                    )));
                }
                if entity.id == me && status == EntityStatus::Suspended {
                    return Err(OpsError::FailedPrecondition(
                        "an officer cannot suspend themself".to_string(),
                    ));
                }
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
