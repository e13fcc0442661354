//! Key life cycle: create, rotate, change a version's state, schedule and cancel
//! destruction, and the scheduler that destroys due versions.

use brandkms_policy::{Algorithm, KeyClass, KeyState, Purpose};

use crate::audit::AuditEvent;
use crate::hsm::{EcbDerive, Exportability, KeyRole, KeySpec, SecretAlgorithm};
use crate::keys::{AuditKey, NewVersion, create_version};
use crate::service::{AppState, Caller, ServiceError};
use crate::store::keys::{self as rows, KeyRecord, KeyVersionRecord};
use crate::store::{Conn, StoreError};

/// Default waiting period before a scheduled destruction, in days.
pub const DEFAULT_WAITING_DAYS: u32 = 7;
const DAY_MS: i64 = 86_400_000;

/// A request to create a card-access key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateKey {
    /// Alias (validated).
    pub alias: String,
    /// Service code.
    pub service_code: u16,
    /// Load or purchase.
    pub purpose: Purpose,
    /// DES (legacy, explicitly allowed), TDES2 or TDES3.
    pub algorithm: Algorithm,
    /// Whether a supply tie-up may deliver it, wrapped.
    pub exportable: bool,
}

/// A key and its versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    /// The key.
    pub key: KeyRecord,
    /// Its versions, oldest first.
    pub versions: Vec<KeyVersionRecord>,
}

fn secret_algorithm(a: Algorithm) -> Result<SecretAlgorithm, ServiceError> {
    match a {
        Algorithm::Des => Ok(SecretAlgorithm::Des),
        Algorithm::Tdes2 => Ok(SecretAlgorithm::Tdes2),
        Algorithm::Tdes3 => Ok(SecretAlgorithm::Tdes3),
        other => Err(ServiceError::InvalidArgument(format!(
            "algorithm {other} is not a card-access algorithm (des, tdes2, tdes3)"
        ))),
    }
}

fn card_access_spec(key: &KeyRecord) -> Result<KeySpec, ServiceError> {
    Ok(KeySpec {
        algorithm: secret_algorithm(key.algorithm)?,
        role: KeyRole::CardMaster,
        export: if key.exportable {
            Exportability::WrappedOnly
        } else {
            Exportability::Never
        },
    })
}

/// Generates the version's object; for single DES, first shows that the token
/// can derive with it (SoftHSM2 needs OpenSSL's legacy provider), so that no
/// unusable legacy key is ever recorded.
fn generator(
    spec: KeySpec,
) -> impl FnOnce(
    &crate::hsm::HsmSession<'_>,
    &str,
) -> Result<crate::hsm::GeneratedKey, crate::hsm::HsmError>
+ Send
+ 'static {
    move |s, label| {
        let key = s.generate(&spec, label)?;
        if spec.algorithm == SecretAlgorithm::Des
            && let Err(e) = s.derive_card_key(&key.id, EcbDerive::Des, &[0u8; 16])
        {
            s.destroy(&key.id)?;
            return Err(e);
        }
        Ok(key)
    }
}

/// Creates a card-access key with version 1, active.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    input: CreateKey,
) -> Result<KeyView, ServiceError> {
    let mut conn = state.store.conn().await?;
    if rows::key(&mut conn, &input.alias).await?.is_some() {
        return Err(ServiceError::AlreadyExists(format!(
            "key {:?} exists",
            input.alias
        )));
    }
    drop(conn);
    let record = KeyRecord {
        alias: input.alias.clone(),
        class: KeyClass::CardAccess,
        algorithm: input.algorithm,
        purpose: Some(input.purpose),
        service_code: Some(input.service_code),
        exportable: input.exportable,
        owner_entity: None,
        created_at: state.clock.now_ms(),
    };
    let spec = card_access_spec(&record)?;
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generator(spec),
        NewVersion {
            key: Some(record),
            alias: input.alias.clone(),
            version: 1,
            state: KeyState::Active,
            weak: input.algorithm == Algorithm::Des,
            demote_active_to: None,
            oaep_hash: None,
        },
        caller.event("Admin/CreateKey"),
    )
    .await
    .map_err(|e| match ServiceError::from(e) {
        ServiceError::Aborted(_) => {
            ServiceError::AlreadyExists(format!("key {:?} exists", input.alias))
        }
        other => other,
    })?;
    get(state, &input.alias).await
}

/// The state a rotated-out version takes.
fn previous_state(class: KeyClass) -> Result<KeyState, ServiceError> {
    match class {
        KeyClass::CardAccess => Ok(KeyState::AuthOnly),
        KeyClass::Settlement => Ok(KeyState::DecryptOnly),
        KeyClass::Authenticator => Ok(KeyState::AuthOnly),
        other => Err(ServiceError::FailedPrecondition(format!(
            "{other} keys are not rotated through the Admin service"
        ))),
    }
}

/// Adds an active version; the previous active version becomes `auth_only`
/// (card-access) or `decrypt_only` (settlement).
pub async fn rotate(
    state: &AppState,
    caller: &Caller,
    alias: &str,
) -> Result<KeyView, ServiceError> {
    let view = get(state, alias).await?;
    let demote = previous_state(view.key.class)?;
    let next = view.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    if view.key.class == KeyClass::Settlement {
        let bits = crate::ops::settlement::rsa_bits(view.key.algorithm)?;
        create_version(
            &state.hsm,
            &state.store,
            AuditKey::Existing(&state.auditor),
            crate::ops::settlement::rsa_generator(bits),
            NewVersion {
                key: None,
                alias: alias.to_string(),
                version: next,
                state: KeyState::Active,
                weak: false,
                demote_active_to: Some(demote),
                oaep_hash: None,
            },
            caller.event("Admin/RotateKey"),
        )
        .await?;
        return get(state, alias).await;
    }
    let spec = if view.key.class == KeyClass::Authenticator {
        crate::ops::settlement::authenticator_spec()
    } else {
        card_access_spec(&view.key)?
    };
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generator(spec),
        NewVersion {
            key: None,
            alias: alias.to_string(),
            version: next,
            state: KeyState::Active,
            weak: view.key.algorithm == Algorithm::Des,
            demote_active_to: Some(demote),
            oaep_hash: None,
        },
        caller.event("Admin/RotateKey"),
    )
    .await?;
    get(state, alias).await
}

/// The key and its versions.
pub async fn get(state: &AppState, alias: &str) -> Result<KeyView, ServiceError> {
    let mut conn = state.store.conn().await?;
    let key = rows::key(&mut conn, alias)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no key {alias:?}")))?;
    let versions = rows::versions(&mut conn, alias).await?;
    Ok(KeyView { key, versions })
}

/// Every key (optionally of one class) with its versions.
pub async fn list(state: &AppState, class: Option<KeyClass>) -> Result<Vec<KeyView>, ServiceError> {
    let mut conn = state.store.conn().await?;
    let mut out = Vec::new();
    for key in rows::list_keys(&mut conn).await? {
        if class.is_some_and(|c| c != key.class) {
            continue;
        }
        let versions = rows::versions(&mut conn, &key.alias).await?;
        out.push(KeyView { key, versions });
    }
    Ok(out)
}

async fn version_in_tx(
    conn: &mut Conn,
    alias: &str,
    version: u32,
) -> Result<(KeyRecord, KeyVersionRecord), ServiceError> {
    let key = rows::key(conn, alias)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no key {alias:?}")))?;
    let v = rows::version(conn, alias, version)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("key {alias:?} has no version {version}")))?;
    Ok((key, v))
}

/// Checks a state change an officer asks for with `SetKeyVersionState`.
pub fn check_transition(
    class: KeyClass,
    from: KeyState,
    to: KeyState,
    other_active: bool,
) -> Result<(), ServiceError> {
    use KeyState as S;
    if class == KeyClass::Internal || class == KeyClass::Transport {
        return Err(ServiceError::FailedPrecondition(format!(
            "{class} key versions are managed by the service itself"
        )));
    }
    match to {
        S::Active | S::Retired => {}
        S::AuthOnly if matches!(class, KeyClass::CardAccess | KeyClass::Authenticator) => {}
        S::DecryptOnly if class == KeyClass::Settlement => {}
        S::AuthOnly | S::DecryptOnly => {
            return Err(ServiceError::InvalidArgument(format!(
                "{to} does not apply to {class} keys"
            )));
        }
        S::PendingDestruction | S::Destroyed => {
            return Err(ServiceError::InvalidArgument(format!(
                "{to} is reached with ScheduleKeyVersionDestruction, not SetKeyVersionState"
            )));
        }
    }
    match from {
        S::PendingDestruction => Err(ServiceError::FailedPrecondition(
            "the version is pending destruction: cancel the destruction first".to_string(),
        )),
        S::Destroyed => Err(ServiceError::FailedPrecondition(
            "the version is destroyed".to_string(),
        )),
        f if f == to => Err(ServiceError::FailedPrecondition(format!(
            "the version is already {to}"
        ))),
        _ if to == S::Active && other_active => Err(ServiceError::FailedPrecondition(
            "another version is active: rotate the key instead, or retire the active version first"
                .to_string(),
        )),
        _ => Ok(()),
    }
}

/// Sets a version's state (active, auth_only / decrypt_only, retired).
pub async fn set_state(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: u32,
    to: KeyState,
) -> Result<KeyView, ServiceError> {
    let mut tx = state
        .begin_audited(
            &caller
                .event("Admin/SetKeyVersionState")
                .key(alias, Some(version))
                .outcome(crate::audit::Outcome::Allowed, Some(format!("to {to}"))),
        )
        .await?;
    let (key, v) = version_in_tx(&mut tx, alias, version).await?;
    let other_active = rows::versions(&mut tx, alias)
        .await?
        .iter()
        .any(|o| o.version != version && o.state == KeyState::Active);
    check_transition(key.class, v.state, to, other_active)?;
    rows::set_state(
        &mut tx,
        alias,
        version,
        to,
        state.clock.now_ms(),
        None,
        None,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    get(state, alias).await
}

/// Whether a version may be scheduled for destruction: retired, and not internal.
pub fn check_schedulable(key: &KeyRecord, v: &KeyVersionRecord) -> Result<(), ServiceError> {
    if key.class == KeyClass::Internal {
        return Err(ServiceError::FailedPrecondition(
            "internal keys are never destroyed through the Admin service".to_string(),
        ));
    }
    if v.state != KeyState::Retired {
        return Err(ServiceError::FailedPrecondition(format!(
            "only a retired version can be scheduled for destruction; version {} is {}",
            v.version, v.state
        )));
    }
    Ok(())
}

/// Schedules a retired version's destruction after `waiting_days` (at least 1).
pub async fn schedule_destruction(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: u32,
    waiting_days: u32,
) -> Result<KeyView, ServiceError> {
    let mut tx = state
        .begin_audited(
            &caller
                .event("Admin/ScheduleKeyVersionDestruction")
                .key(alias, Some(version))
                .outcome(
                    crate::audit::Outcome::Allowed,
                    Some(format!("after {waiting_days} days")),
                ),
        )
        .await?;
    let (key, v) = version_in_tx(&mut tx, alias, version).await?;
    check_schedulable(&key, &v)?;
    let now = state.clock.now_ms();
    let due = now.saturating_add(i64::from(waiting_days).saturating_mul(DAY_MS));
    rows::set_state(
        &mut tx,
        alias,
        version,
        KeyState::PendingDestruction,
        now,
        Some(due),
        None,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    get(state, alias).await
}

/// Cancels a pending destruction: the version is retired again.
pub async fn cancel_destruction(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: u32,
) -> Result<KeyView, ServiceError> {
    let mut tx = state
        .begin_audited(
            &caller
                .event("Admin/CancelKeyVersionDestruction")
                .key(alias, Some(version)),
        )
        .await?;
    let (_, v) = version_in_tx(&mut tx, alias, version).await?;
    if v.state != KeyState::PendingDestruction {
        return Err(ServiceError::FailedPrecondition(format!(
            "version {version} is {}, not pending destruction",
            v.state
        )));
    }
    rows::set_state(
        &mut tx,
        alias,
        version,
        KeyState::Retired,
        state.clock.now_ms(),
        None,
        None,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    get(state, alias).await
}

/// Destroys the token objects of versions whose waiting period is over and marks
/// them destroyed, each in a transaction that holds the chain head, so that a
/// cancellation cannot interleave. Returns the versions destroyed.
pub async fn run_due_destructions(state: &AppState) -> Result<Vec<(String, u32)>, ServiceError> {
    let now = state.clock.now_ms();
    let due = {
        let mut conn = state.store.conn().await?;
        rows::due_destructions(&mut conn, now).await?
    };
    let mut done = Vec::new();
    for v in due {
        let event = AuditEvent::allowed("local:scheduler", "scheduler.destroy_key_version")
            .key(&v.alias, Some(v.version));
        let mut tx = state.begin_audited(&event).await?;
        let Some(current) = rows::version(&mut tx, &v.alias, v.version).await? else {
            continue;
        };
        if current.state != KeyState::PendingDestruction
            || current.destroy_after.is_none_or(|d| d > now)
        {
            continue; // cancelled meanwhile: the transaction rolls back
        }
        let id = current.cka_id;
        state
            .hsm
            .run(move |s| match s.destroy(&id) {
                Ok(()) | Err(crate::hsm::HsmError::ObjectNotFound(_)) => Ok(()),
                Err(e) => Err(e),
            })
            .await?;
        rows::set_state(
            &mut tx,
            &v.alias,
            v.version,
            KeyState::Destroyed,
            now,
            current.destroy_after,
            Some(now),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(alias = %v.alias, version = v.version, "destroyed key version");
        done.push((v.alias, v.version));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use KeyClass::CardAccess as C;
        use KeyState as S;
        assert!(check_transition(C, S::Active, S::AuthOnly, false).is_ok());
        assert!(check_transition(C, S::AuthOnly, S::Retired, true).is_ok());
        assert!(check_transition(C, S::Retired, S::Active, true).is_err());
        assert!(check_transition(C, S::Retired, S::Active, false).is_ok());
        assert!(check_transition(C, S::Active, S::DecryptOnly, false).is_err());
        assert!(check_transition(C, S::PendingDestruction, S::Retired, false).is_err());
        assert!(check_transition(C, S::Active, S::Destroyed, false).is_err());
        assert!(check_transition(KeyClass::Internal, S::Active, S::Retired, false).is_err());
    }
}
