//! Key life cycle: create, rotate, change a version's state, schedule and cancel
//! destruction, and the scheduler that destroys due versions.

use brandkms_policy::{Algorithm, KeyClass, KeyState, Purpose};

use crate::audit::AuditEvent;
use crate::ops::generate::generator;
use crate::ops::versions::{AuditKey, Cryptoperiod, NewVersion, create_version, key_version};
use crate::ops::{AppState, Caller, OpsError};
use crate::store::keys::{self as rows, KeyRecord, KeyVersionRecord};

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

/// Creates a card-access key with version 1, active.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    input: CreateKey,
) -> Result<KeyView, OpsError> {
    let mut conn = state.store.conn().await?;
    if rows::key(&mut conn, &input.alias).await?.is_some() {
        return Err(OpsError::AlreadyExists(format!(
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
    let generate = generator(&record)?;
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generate,
        NewVersion {
            key: Some(record),
            alias: input.alias.clone(),
            version: 1,
            state: KeyState::Active,
            weak: input.algorithm == Algorithm::Des,
            demote_active_to: None,
            oaep_hash: None,
            period: Default::default(),
        },
        caller.event("Admin/CreateKey"),
    )
    .await
    .map_err(|e| match OpsError::from(e) {
        OpsError::Aborted(_) => OpsError::AlreadyExists(format!("key {:?} exists", input.alias)),
        other => other,
    })?;
    get(state, &input.alias).await
}

/// The state a rotated-out version takes.
fn previous_state(class: KeyClass) -> Result<KeyState, OpsError> {
    match class {
        KeyClass::CardAccess => Ok(KeyState::AuthOnly),
        KeyClass::Settlement => Ok(KeyState::DecryptOnly),
        KeyClass::Authenticator => Ok(KeyState::AuthOnly),
        other => Err(OpsError::FailedPrecondition(format!(
            "{other} keys are not rotated through the Admin service"
        ))),
    }
}

/// Adds an active version; the previous active version becomes `auth_only`
/// (card-access) or `decrypt_only` (settlement).
pub async fn rotate(state: &AppState, caller: &Caller, alias: &str) -> Result<KeyView, OpsError> {
    let view = get(state, alias).await?;
    let demote = previous_state(view.key.class)?;
    let next = view.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    let generate = generator(&view.key)?;
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generate,
        NewVersion {
            key: None,
            alias: alias.to_string(),
            version: next,
            state: KeyState::Active,
            weak: view.key.algorithm == Algorithm::Des,
            demote_active_to: Some(demote),
            oaep_hash: None,
            period: Default::default(),
        },
        caller.event("Admin/RotateKey"),
    )
    .await?;
    get(state, alias).await
}

/// The key and its versions.
pub async fn get(state: &AppState, alias: &str) -> Result<KeyView, OpsError> {
    let mut conn = state.store.conn().await?;
    let key = rows::key(&mut conn, alias)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no key {alias:?}")))?;
    let versions = rows::versions(&mut conn, alias).await?;
    Ok(KeyView { key, versions })
}

/// Every key (optionally of one class) with its versions.
pub async fn list(state: &AppState, class: Option<KeyClass>) -> Result<Vec<KeyView>, OpsError> {
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

/// Checks a state change an officer asks for with `SetKeyVersionState`.
pub fn check_transition(
    class: KeyClass,
    from: KeyState,
    to: KeyState,
    other_active: bool,
) -> Result<(), OpsError> {
    use KeyState as S;
    if class == KeyClass::Internal || class == KeyClass::Transport {
        return Err(OpsError::FailedPrecondition(format!(
            "{class} key versions are managed by the service itself"
        )));
    }
    match to {
        S::Active | S::Retired => {}
        S::AuthOnly if matches!(class, KeyClass::CardAccess | KeyClass::Authenticator) => {}
        S::DecryptOnly if class == KeyClass::Settlement => {}
        S::AuthOnly | S::DecryptOnly => {
            return Err(OpsError::InvalidArgument(format!(
                "{to} does not apply to {class} keys"
            )));
        }
        S::PendingDestruction | S::Destroyed => {
            return Err(OpsError::InvalidArgument(format!(
                "{to} is reached with ScheduleKeyVersionDestruction, not SetKeyVersionState"
            )));
        }
    }
    match from {
        S::PendingDestruction => Err(OpsError::FailedPrecondition(
            "the version is pending destruction: cancel the destruction first".to_string(),
        )),
        S::Destroyed => Err(OpsError::FailedPrecondition(
            "the version is destroyed".to_string(),
        )),
        f if f == to => Err(OpsError::FailedPrecondition(format!(
            "the version is already {to}"
        ))),
        _ if to == S::Active && other_active => Err(OpsError::FailedPrecondition(
            "another version is active: rotate the key instead, or retire the active version first"
                .to_string(),
        )),
        _ => Ok(()),
    }
}

/// The version number asked for, or the active version's when `None`; read
/// before the change's transaction begins (its audit record names the version),
/// so the transaction checks it with [`still_named`].
async fn resolve(state: &AppState, alias: &str, version: Option<u32>) -> Result<u32, OpsError> {
    match version {
        Some(v) => Ok(v),
        None => {
            let mut conn = state.store.conn().await?;
            Ok(key_version(&mut conn, alias, None).await?.1.version)
        }
    }
}

/// Inside the transaction: when the caller named the active version (`asked`
/// is `None`), the version resolved before must still be the active one.
fn still_named(asked: Option<u32>, v: &KeyVersionRecord) -> Result<(), OpsError> {
    if asked.is_none() && v.state != KeyState::Active {
        return Err(OpsError::Aborted(format!(
            "the active version of {:?} changed while the request ran; retry",
            v.alias
        )));
    }
    Ok(())
}

/// Sets a version's state (active, auth_only / decrypt_only, retired); `None`
/// names the active version.
pub async fn set_state(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    to: KeyState,
) -> Result<KeyView, OpsError> {
    let asked = version;
    let version = resolve(state, alias, asked).await?;
    let event = caller
        .event("Admin/SetKeyVersionState")
        .key(alias, Some(version))
        .outcome(crate::audit::Outcome::Allowed, Some(format!("to {to}")));
    let (name, now) = (alias.to_string(), state.clock.now_ms());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (key, v) = key_version(tx, &name, Some(version)).await?;
                still_named(asked, &v)?;
                let other_active = rows::versions(tx, &name)
                    .await?
                    .iter()
                    .any(|o| o.version != version && o.state == KeyState::Active);
                check_transition(key.class, v.state, to, other_active)?;
                Ok(rows::set_state(tx, &name, version, to, now, None, None).await?)
            })
        })
        .await?;
    get(state, alias).await
}

/// Sets a version's cryptoperiod; `None` names the active version. The
/// service's own keys and participants' transport keys have none.
pub async fn set_cryptoperiod(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    period: Cryptoperiod,
) -> Result<KeyView, OpsError> {
    let asked = version;
    let version = resolve(state, alias, asked).await?;
    let bound = |t: Option<i64>| t.map_or_else(|| "unbounded".to_string(), crate::clock::rfc3339);
    let event = caller
        .event("Admin/SetKeyVersionCryptoperiod")
        .key(alias, Some(version))
        .outcome(
            crate::audit::Outcome::Allowed,
            Some(format!(
                "not before {}, not after {}",
                bound(period.not_before),
                bound(period.not_after)
            )),
        );
    let name = alias.to_string();
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (key, v) = key_version(tx, &name, Some(version)).await?;
                still_named(asked, &v)?;
                lifecycle_applies(&key, &v)?;
                Ok(
                    rows::set_cryptoperiod(tx, &name, version, period.not_before, period.not_after)
                        .await?,
                )
            })
        })
        .await?;
    get(state, alias).await
}

/// Whether a version takes lifecycle marks (a cryptoperiod, a compromise):
/// keys the policy decides on, not yet destroyed.
pub fn lifecycle_applies(key: &KeyRecord, v: &KeyVersionRecord) -> Result<(), OpsError> {
    if matches!(key.class, KeyClass::Internal | KeyClass::Transport) {
        return Err(OpsError::FailedPrecondition(format!(
            "{} keys are the service's or a participant's own: rotate them instead",
            key.class
        )));
    }
    if v.state == KeyState::Destroyed {
        return Err(OpsError::FailedPrecondition(format!(
            "version {} of {:?} is destroyed",
            v.version, key.alias
        )));
    }
    Ok(())
}

/// Checks that `v` may be marked compromised: lifecycle marks apply and it
/// is not marked already.
pub fn check_compromisable(key: &KeyRecord, v: &KeyVersionRecord) -> Result<(), OpsError> {
    lifecycle_applies(key, v)?;
    match v.compromised_at {
        Some(at) => Err(OpsError::FailedPrecondition(format!(
            "version {} of {:?} was marked compromised at {}",
            v.version,
            key.alias,
            crate::clock::rfc3339(at)
        ))),
        None => Ok(()),
    }
}

/// Marks a version compromised: from the commit on the policy refuses it for
/// everything, on every instance (the change moves the admin generation, so
/// no instance answers from facts cached before it).
pub async fn mark_compromised(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: u32,
    reason: &str,
) -> Result<KeyView, OpsError> {
    let event = caller
        .event("Admin/MarkKeyVersionCompromised")
        .key(alias, Some(version))
        .outcome(
            crate::audit::Outcome::Allowed,
            Some(format!("marked compromised: {reason}")),
        );
    let (name, now) = (alias.to_string(), state.clock.now_ms());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (key, v) = key_version(tx, &name, Some(version)).await?;
                check_compromisable(&key, &v)?;
                Ok(rows::mark_compromised(tx, &name, version, now).await?)
            })
        })
        .await?;
    get(state, alias).await
}

/// Whether a version that is not destroyed ends (its not-after) before `by`.
pub fn ends_before(v: &KeyVersionRecord, by: i64) -> bool {
    v.state != KeyState::Destroyed && v.not_after.is_some_and(|t| t < by)
}

/// Whether a version may be scheduled for destruction: retired, and not internal.
pub fn check_schedulable(key: &KeyRecord, v: &KeyVersionRecord) -> Result<(), OpsError> {
    if key.class == KeyClass::Internal {
        return Err(OpsError::FailedPrecondition(
            "internal keys are never destroyed through the Admin service".to_string(),
        ));
    }
    if v.state != KeyState::Retired {
        return Err(OpsError::FailedPrecondition(format!(
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
) -> Result<KeyView, OpsError> {
    let event = caller
        .event("Admin/ScheduleKeyVersionDestruction")
        .key(alias, Some(version))
        .outcome(
            crate::audit::Outcome::Allowed,
            Some(format!("after {waiting_days} days")),
        );
    let (name, now) = (alias.to_string(), state.clock.now_ms());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (key, v) = key_version(tx, &name, Some(version)).await?;
                check_schedulable(&key, &v)?;
                let due = now.saturating_add(i64::from(waiting_days).saturating_mul(DAY_MS));
                Ok(rows::set_state(
                    tx,
                    &name,
                    version,
                    KeyState::PendingDestruction,
                    now,
                    Some(due),
                    None,
                )
                .await?)
            })
        })
        .await?;
    get(state, alias).await
}

/// Cancels a pending destruction: the version is retired again. `None` names
/// the active version (which is refused: it is not pending destruction).
pub async fn cancel_destruction(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
) -> Result<KeyView, OpsError> {
    let version = resolve(state, alias, version).await?;
    let event = caller
        .event("Admin/CancelKeyVersionDestruction")
        .key(alias, Some(version));
    let (name, now) = (alias.to_string(), state.clock.now_ms());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (_, v) = key_version(tx, &name, Some(version)).await?;
                if v.state != KeyState::PendingDestruction {
                    return Err(OpsError::FailedPrecondition(format!(
                        "version {version} is {}, not pending destruction",
                        v.state
                    )));
                }
                Ok(rows::set_state(tx, &name, version, KeyState::Retired, now, None, None).await?)
            })
        })
        .await?;
    get(state, alias).await
}

/// Destroys the token object of version `version` of `alias` and marks it
/// destroyed, with `event`, in one transaction that holds the `admin` row —
/// if, read in that transaction, the version still satisfies `still`. Whether
/// it did (a version that vanished or no longer satisfies `still` is left
/// alone and nothing is recorded).
pub async fn destroy_version(
    state: &AppState,
    event: AuditEvent,
    alias: &str,
    version: u32,
    still: impl FnOnce(&KeyVersionRecord) -> bool + Send + 'static,
) -> Result<bool, OpsError> {
    let now = state.clock.now_ms();
    let (hsm, alias) = (state.hsm.clone(), alias.to_string());
    let destroyed = state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let Some(current) = rows::version(tx, &alias, version).await? else {
                    return Err(OpsError::NotFound("version vanished".into()));
                };
                if !still(&current) {
                    return Err(OpsError::Aborted("changed meanwhile".into()));
                }
                let id = current.cka_id;
                hsm.run(move |s| match s.destroy(&id) {
                    Ok(()) | Err(crate::hsm::HsmError::ObjectNotFound(_)) => Ok(()),
                    Err(e) => Err(e),
                })
                .await?;
                rows::set_state(
                    tx,
                    &alias,
                    version,
                    KeyState::Destroyed,
                    now,
                    current.destroy_after,
                    Some(now),
                )
                .await?;
                Ok(())
            })
        })
        .await;
    match destroyed {
        Ok(()) => Ok(true),
        Err(OpsError::NotFound(_) | OpsError::Aborted(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Destroys the token objects of versions whose waiting period is over and marks
/// them destroyed, each in a transaction that holds the chain head, so that a
/// cancellation cannot interleave. Returns the versions destroyed.
pub async fn run_due_destructions(state: &AppState) -> Result<Vec<(String, u32)>, OpsError> {
    let now = state.clock.now_ms();
    let due = {
        let mut conn = state.store.conn().await?;
        rows::due_destructions(&mut conn, now).await?
    };
    let mut done = Vec::new();
    for v in due {
        let event = AuditEvent::allowed("local:scheduler", "scheduler.destroy_key_version")
            .key(&v.alias, Some(v.version));
        // Cancelled meanwhile: rolled back, nothing recorded.
        let still_due = move |current: &KeyVersionRecord| {
            current.state == KeyState::PendingDestruction
                && current.destroy_after.is_some_and(|d| d <= now)
        };
        if destroy_version(state, event, &v.alias, v.version, still_due).await? {
            tracing::info!(alias = %v.alias, version = v.version, "destroyed key version");
            done.push((v.alias, v.version));
        }
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
