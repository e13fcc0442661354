//! gRPC handlers. The request path: the `auth` layer identifies the caller before
//! any handler runs; handlers convert wire types to domain types (`convert`),
//! ask the policy, and call the domain operations in `crate::ops`. Every request,
//! allowed or refused, is in the audit trail.

pub mod admin;
pub mod auth;
pub mod card;
pub mod convert;
pub mod distribution;
pub mod settlement;

use std::sync::Arc;

use brandkms_policy::DenyReason;
use tonic::Status;

use crate::audit::{ApprovalClosing, AuditError, AuditEvent, Auditor, Outcome};
use crate::clock::Clock;
use crate::config::ServiceSettings;
use crate::hsm::{Hsm, HsmError};
use crate::keys::KeyError;
use crate::store::entities::EntityRecord;
use crate::store::{Store, StoreError};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The token.
    pub hsm: Hsm,
    /// The metadata store.
    pub store: Store,
    /// The audit trail.
    pub auditor: Auditor,
    /// The token key that seals card sessions' nonces (`brandkms.session-seal`).
    pub seal_key: crate::hsm::ObjectId,
    /// The OAEP hash new settlement keys use: SHA-256 when the token decrypts
    /// with it (probed at start), else SHA-1.
    pub oaep_hash: crate::hsm::OaepHash,
    /// The clock.
    pub clock: Clock,
    /// Timings.
    pub settings: ServiceSettings,
}

impl AppState {
    /// Begins a write transaction whose first act is to append `event` (taking the
    /// audit chain's head, which serialises writers). The record commits with the
    /// state change, or not at all.
    pub async fn begin_audited(
        &self,
        event: &AuditEvent,
    ) -> Result<crate::store::Tx, ServiceError> {
        let mut tx = self.store.begin().await?;
        self.auditor.append(&mut tx, event).await?;
        Ok(tx)
    }
}

/// The authenticated caller, put in the request's extensions by the `auth` layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The registered, active entity.
    pub entity: EntityRecord,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
    /// Set while this officer carries out an approved proposal: the operation's
    /// audit record closes the approval.
    pub approving: Option<ApprovalClosing>,
}

impl Caller {
    /// The start of an audit record for an operation by this caller.
    pub fn event(&self, operation: &str) -> AuditEvent {
        let mut e = AuditEvent::allowed(&self.entity.id, operation);
        e.cert_fingerprint = Some(self.fingerprint.clone());
        e.closes_approval = self.approving.clone();
        e
    }

    /// An allowed operation by this caller, with a note on what it concerned.
    pub fn event_about(&self, operation: &str, about: String) -> AuditEvent {
        self.event(operation).outcome(Outcome::Allowed, Some(about))
    }
}

/// Why a request did not succeed. One exhaustive mapping to gRPC statuses; internal
/// details go to the log, never to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Malformed input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retry.
    #[error("{0}")]
    Aborted(String),
    /// Policy refused it, naming the rule.
    #[error("{0}")]
    Denied(DenyReason),
    /// The caller is not who it must be.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not act.
    #[error("{0}")]
    PermissionDenied(String),
    /// Something failed inside; the detail is logged.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for malformed input.
pub fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(msg.into())
}

impl ServiceError {
    /// The gRPC status for the caller.
    pub fn to_status(&self) -> Status {
        match self {
            ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::Denied(r) => Status::permission_denied(r.to_string()),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; the server log has the details")
            }
        }
    }

    /// How the audit trail records it.
    pub fn outcome(&self) -> Outcome {
        match self {
            ServiceError::Denied(_)
            | ServiceError::Unauthenticated(_)
            | ServiceError::PermissionDenied(_) => Outcome::Denied,
            _ => Outcome::Failed,
        }
    }

    /// The reason the audit trail records (no internal detail).
    pub fn audit_reason(&self) -> String {
        match self {
            ServiceError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Internal(format!("store: {e}"))
    }
}

impl From<HsmError> for ServiceError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::MechanismUnavailable { .. } => {
                ServiceError::FailedPrecondition(e.to_string())
            }
            other => ServiceError::Internal(format!("hsm: {other}")),
        }
    }
}

impl From<AuditError> for ServiceError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::ApprovalNotPending(_) => ServiceError::FailedPrecondition(e.to_string()),
            other => ServiceError::Internal(format!("audit: {other}")),
        }
    }
}

impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Hsm(h) => h.into(),
            KeyError::Store(s) if s.is_unique_violation() => {
                ServiceError::Aborted("a concurrent change to this key won; retry".to_string())
            }
            KeyError::Store(s) => s.into(),
            KeyError::Audit(a) => a.into(),
        }
    }
}

/// Names (aliases, entity ids): `[a-z0-9._-]`, 1 to 64 characters.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Runs an operation for `caller`; when it fails, records the failure (with its
/// reason) in a transaction of its own, since nothing else changed, and returns
/// the status. Successful operations record themselves, in their own transaction.
pub async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    key: Option<(&str, Option<u32>)>,
    result: Result<T, ServiceError>,
) -> Result<T, Status> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut event = caller
                .event(operation)
                .outcome(e.outcome(), Some(e.audit_reason()));
            // A failure closes nothing: the approval stays pending.
            if let Some(closing) = event.closes_approval.take() {
                event.reason = Some(format!(
                    "{}; while carrying out approval {}",
                    e.audit_reason(),
                    closing.id
                ));
            }
            if let Some((alias, version)) = key {
                event = event.key(alias, version);
            }
            if let Err(audit_error) = state.auditor.record(&state.store, &event).await {
                return Err(ServiceError::from(audit_error).to_status());
            }
            Err(e.to_status())
        }
    }
}

/// For reads: records the request (allowed, or failed with its reason) in a
/// transaction of its own and returns the result or the status.
pub async fn audited_read<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    key: Option<(&str, Option<u32>)>,
    result: Result<T, ServiceError>,
) -> Result<T, Status> {
    let value = audited(state, caller, operation, key, result).await?;
    let mut event = caller.event(operation);
    if let Some((alias, version)) = key {
        event = event.key(alias, version);
    }
    state
        .auditor
        .record(&state.store, &event)
        .await
        .map_err(|e| ServiceError::from(e).to_status())?;
    Ok(value)
}

/// The caller the identity layer put in the request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The caller the identity layer put in the request, if it is an officer (rule 7);
/// a refusal is audited.
pub async fn officer<T>(
    state: &AppState,
    request: &tonic::Request<T>,
    operation: &str,
) -> Result<Caller, Status> {
    let caller = caller(request)?;
    let decision = brandkms_policy::can_administer(caller.entity.kind).into_result();
    audited(
        state,
        &caller,
        operation,
        None,
        decision.map_err(ServiceError::Denied),
    )
    .await?;
    Ok(caller)
}

/// The state handlers share, behind an `Arc`.
pub type Shared = Arc<AppState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_and_bounded() {
        assert!(valid_name("key-a.v2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name("Key"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }
}
