//! Dual control (rule 7): the configured sensitive Admin operations become a
//! proposal that a second, different officer approves before it runs. The
//! proposal keeps the request as sent; approving runs it as the approving officer,
//! and the operation's audit record closes the approval in the same transaction
//! (see `AuditEvent::closes_approval`). Nothing is written when a proposal
//! expires: it is pending past `expires_at`, reported as expired, and refused.

use brandkms_policy::{
    Approver, KeyClass, Proposal, SensitiveOperation, can_approve, needs_second_officer,
};

use crate::audit::Outcome;
use crate::ops::{AppState, Caller, OpsError};
use crate::store::approvals::{self as rows, ApprovalRecord, StoredState};
use crate::store::{Conn, settings};

/// What a sensitive operation did.
#[derive(Clone, Debug)]
pub enum Change<T> {
    /// It ran.
    Done(T),
    /// It awaits a second officer.
    Held(Box<ApprovalRecord>),
}

/// Where an approval stands, expiry included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    /// Awaiting a second officer.
    Pending,
    /// Approved; the operation ran.
    Approved,
    /// Rejected.
    Rejected,
    /// Pending past its expiry.
    Expired,
}

/// The state of `r` at `now`.
pub fn state_at(r: &ApprovalRecord, now: i64) -> ApprovalState {
    match r.state {
        StoredState::Approved => ApprovalState::Approved,
        StoredState::Rejected => ApprovalState::Rejected,
        StoredState::Pending if now >= r.expires_at => ApprovalState::Expired,
        StoredState::Pending => ApprovalState::Pending,
    }
}

/// Whether the deployment holds `op` (on a key of `class`, for the operations
/// that concern keys) for a second officer: the dual-control set in the
/// database, whatever this instance's configuration says. Never while `caller`
/// is carrying out an approval.
pub async fn holds(
    state: &AppState,
    caller: &Caller,
    op: SensitiveOperation,
    class: Option<KeyClass>,
) -> Result<bool, OpsError> {
    if caller.approving.is_some() || class.is_some_and(|c| !op.concerns(c)) {
        return Ok(false);
    }
    let mut conn = state.store.conn().await?;
    let set = caller.view.dual_control(&mut conn).await?;
    Ok(needs_second_officer(op, &set))
}

/// Records a proposal for `operation` (with the request, encoded, to run later) and
/// its audit record (outcome `held`), together.
pub async fn propose(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    rule: SensitiveOperation,
    summary: String,
    key: Option<(&str, Option<u32>)>,
    request: &impl prost::Message,
) -> Result<Box<ApprovalRecord>, OpsError> {
    let now = state.clock.now_ms();
    let ttl_ms =
        i64::try_from(state.settings.approval_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let id = format!("ap-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let record = ApprovalRecord {
        id: id.clone(),
        operation: operation.to_string(),
        rule: rule.as_str().to_string(),
        summary: summary.clone(),
        payload: hex::encode(request.encode_to_vec()),
        proposer: caller.entity.id.clone(),
        created_at: now,
        expires_at: now.saturating_add(ttl_ms),
        state: StoredState::Pending,
        decided_by: None,
        decided_at: None,
        reason: None,
    };
    let mut event = caller.event(operation).outcome(
        Outcome::Held,
        Some(format!(
            "held for a second officer as {id} (rule 7, dual control {rule}): {summary}"
        )),
    );
    if let Some((alias, version)) = key {
        event = event.key(alias, version);
    }
    let row = record.clone();
    state
        .write_serial(event, move |tx| {
            Box::pin(async move { Ok(rows::insert(tx, &row).await?) })
        })
        .await?;
    Ok(Box::new(record))
}

/// Approvals, newest first, optionally only those in one state.
pub async fn list(
    state: &AppState,
    only: Option<ApprovalState>,
) -> Result<Vec<ApprovalRecord>, OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    Ok(rows::list(&mut conn)
        .await?
        .into_iter()
        .filter(|r| only.is_none_or(|s| state_at(r, now) == s))
        .collect())
}

/// The approval, if it can still be decided at `now`: `NotFound` when there is
/// none, `FailedPrecondition` when it was decided or has expired.
pub async fn pending(conn: &mut Conn, id: &str, now: i64) -> Result<ApprovalRecord, OpsError> {
    let r = rows::get(conn, id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no approval {id:?}")))?;
    let by = r.decided_by.clone().unwrap_or_default();
    match state_at(&r, now) {
        ApprovalState::Pending => Ok(r),
        ApprovalState::Approved => Err(OpsError::FailedPrecondition(format!(
            "approval {id} was already approved by {by}"
        ))),
        ApprovalState::Rejected => Err(OpsError::FailedPrecondition(format!(
            "approval {id} was rejected by {by}"
        ))),
        ApprovalState::Expired => Err(OpsError::FailedPrecondition(format!(
            "approval {id} expired at {}; it can no longer be approved: propose the operation again",
            crate::clock::rfc3339(r.expires_at)
        ))),
    }
}

/// Rule 7: `caller` may approve `r` at `now` (an officer, not the proposer,
/// registered before the proposal).
pub fn check_approver(caller: &Caller, r: &ApprovalRecord, now: i64) -> Result<(), OpsError> {
    let proposal = Proposal {
        proposer: r.proposer.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
    };
    let approver = Approver {
        id: &caller.entity.id,
        kind: caller.entity.kind,
        registered_at: caller.entity.created_at,
    };
    can_approve(approver, &proposal, now)
        .into_result()
        .map_err(OpsError::Denied)
}

/// Rejects a pending approval (any officer, the proposer included, who thereby
/// withdraws it), with its audit record.
pub async fn reject(
    state: &AppState,
    caller: &Caller,
    id: &str,
    reason: Option<String>,
) -> Result<ApprovalRecord, OpsError> {
    let now = state.clock.now_ms();
    let event = caller.event("Admin/Reject").outcome(
        Outcome::Allowed,
        Some(format!(
            "rejects {id}{}",
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
    );
    let (id, who) = (id.to_string(), caller.entity.id.clone());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                pending(tx, &id, now).await?;
                if !rows::decide(tx, &id, StoredState::Rejected, &who, now, reason.as_deref())
                    .await?
                {
                    return Err(OpsError::FailedPrecondition(format!(
                        "approval {id} is no longer pending"
                    )));
                }
                rows::get(tx, &id)
                    .await?
                    .ok_or_else(|| OpsError::NotFound(format!("no approval {id:?}")))
            })
        })
        .await
}

/// The approval with this id.
pub async fn get(state: &AppState, id: &str) -> Result<ApprovalRecord, OpsError> {
    let mut conn = state.store.conn().await?;
    rows::get(&mut conn, id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no approval {id:?}")))
}

/// The dual-control set and when it last changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DualControl {
    /// The operations held for a second officer.
    pub operations: Vec<SensitiveOperation>,
    /// Unix ms of the last change.
    pub updated_at: i64,
}

/// The database's dual-control set (every operation while it was never written).
pub async fn dual_control(state: &AppState) -> Result<DualControl, OpsError> {
    let mut conn = state.store.conn().await?;
    let (operations, updated_at) = settings::dual_control_changed(&mut conn)
        .await?
        .unwrap_or_else(|| (SensitiveOperation::ALL.to_vec(), 0));
    Ok(DualControl {
        operations,
        updated_at,
    })
}

/// `rotate_key, destroy_key_version` or `none (dual control off)`.
pub fn describe_dual_control(ops: &[SensitiveOperation]) -> String {
    if ops.is_empty() {
        "none (dual control off)".to_string()
    } else {
        ops.iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Replaces the dual-control set, with its audit record (the caller decided
/// whether the change itself is held).
pub async fn set_dual_control(
    state: &AppState,
    caller: &Caller,
    operations: Vec<SensitiveOperation>,
) -> Result<DualControl, OpsError> {
    let now = state.clock.now_ms();
    let before = dual_control(state).await?;
    let event = caller.event("Admin/SetDualControl").outcome(
        Outcome::Allowed,
        Some(format!(
            "dual control: {} (was {})",
            describe_dual_control(&operations),
            describe_dual_control(&before.operations)
        )),
    );
    let ops = operations.clone();
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                settings::set_dual_control(tx, &ops, now).await?;
                Ok(())
            })
        })
        .await?;
    Ok(DualControl {
        operations,
        updated_at: now,
    })
}
