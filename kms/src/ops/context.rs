//! What every domain operation works with: the shared state, the authenticated
//! caller, and the domain error. No gRPC types here; `service` maps [`OpsError`]
//! to a status.

use std::sync::Arc;

use brandkms_policy::DenyReason;

use crate::audit::{ApprovalClosing, AuditError, AuditEvent, Auditor, Outcome};
use crate::clock::Clock;
use crate::config::ServiceSettings;
use crate::hsm::{Hsm, HsmError, OaepHash, ObjectId};
use crate::ops::facts::{FactCache, FactView};
use crate::ops::versions::KeyError;
use crate::store::entities::EntityRecord;
use crate::store::{Conn, Store, StoreError};
use futures_util::future::BoxFuture;

/// What every operation shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The token.
    pub hsm: Hsm,
    /// The metadata store.
    pub store: Store,
    /// The audit trail.
    pub auditor: Auditor,
    /// The token key that seals card sessions' nonces (`brandkms.session-seal`).
    pub seal_key: ObjectId,
    /// The OAEP hash new settlement keys use: SHA-256 when the token decrypts
    /// with it (probed at start), else SHA-1.
    pub oaep_hash: OaepHash,
    /// The clock.
    pub clock: Clock,
    /// Timings.
    pub settings: ServiceSettings,
    /// Entities, tie-ups and key versions, per admin generation.
    pub facts: Arc<FactCache>,
    /// `EstablishTransportKey` calls per entity (each generates a token key).
    pub transport_keys: Arc<crate::ops::limits::PerEntity>,
}

impl AppState {
    /// Makes the change `work` and appends `event` in one transaction (the audit
    /// writer's batch): both commit, or neither. Returns once durable. For
    /// changes whose rows belong to one caller (card sessions, deliveries), made
    /// with conditional writes.
    pub async fn write<T, F>(&self, event: AuditEvent, work: F) -> Result<T, OpsError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, OpsError>> + Send + 'static,
    {
        self.auditor.commit(event, false, work).await
    }

    /// As [`AppState::write`], for changes that read, check and then write
    /// shared state (keys, tie-ups, entities, approvals, consents): they first
    /// take the row that serialises such changes across instances.
    pub async fn write_serial<T, F>(&self, event: AuditEvent, work: F) -> Result<T, OpsError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, OpsError>> + Send + 'static,
    {
        self.auditor.commit(event, true, work).await
    }
}

/// The state operations share, behind an `Arc`.
pub type Shared = Arc<AppState>;

/// The authenticated caller, put in the request's extensions by the server's
/// identity layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The registered, active entity.
    pub entity: EntityRecord,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
    /// Set while this officer carries out an approved proposal: the operation's
    /// audit record closes the approval.
    pub approving: Option<ApprovalClosing>,
    /// The facts this request's decisions read: the admin generation read when
    /// the caller was identified, and the cache of facts under it.
    pub view: FactView,
    /// The request's id (`x-request-id`, the log span's `id`), put in its
    /// audit records.
    pub request_id: Option<String>,
}

impl Caller {
    /// The start of an audit record for an operation by this caller.
    pub fn event(&self, operation: &str) -> AuditEvent {
        let mut e = AuditEvent::allowed(&self.entity.id, operation);
        e.cert_fingerprint = Some(self.fingerprint.clone());
        e.closes_approval = self.approving.clone();
        e.request_id = self.request_id.clone();
        e
    }

    /// An allowed operation by this caller, with a note on what it concerned.
    pub fn event_about(&self, operation: &str, about: String) -> AuditEvent {
        self.event(operation).outcome(Outcome::Allowed, Some(about))
    }
}

/// Why an operation did not succeed. `service` maps each variant to one gRPC
/// status; internal details go to the log, never to the caller.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
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
    /// Too many calls of this kind by this caller; retry after the delay.
    #[error("{message}")]
    ResourceExhausted {
        /// What was limited, and how.
        message: String,
        /// How long to wait before the next call is accepted.
        retry_after_ms: i64,
    },
    /// Policy refused it, naming the rule.
    #[error("{0}")]
    Denied(DenyReason),
    /// The token lost its session or login; the service has recovered and
    /// the call may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside; the detail is logged.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for malformed input.
pub fn invalid(msg: impl Into<String>) -> OpsError {
    OpsError::InvalidArgument(msg.into())
}

impl OpsError {
    /// How the audit trail records it.
    pub fn outcome(&self) -> Outcome {
        match self {
            OpsError::Denied(_) => Outcome::Denied,
            _ => Outcome::Failed,
        }
    }

    /// The reason the audit trail records (no internal detail).
    pub fn audit_reason(&self) -> String {
        match self {
            OpsError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        OpsError::Internal(format!("store: {e}"))
    }
}

impl From<HsmError> for OpsError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::MechanismUnavailable { .. } => OpsError::FailedPrecondition(e.to_string()),
            lost if lost.is_session_lost() => {
                tracing::warn!(error = %lost, "token call failed: session or login lost");
                OpsError::Unavailable(
                    "the HSM session or login was lost; the service is restoring it: retry".into(),
                )
            }
            other => OpsError::Internal(format!("hsm: {other}")),
        }
    }
}

impl From<AuditError> for OpsError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::ApprovalNotPending(_) => OpsError::FailedPrecondition(e.to_string()),
            AuditError::Hsm(h) if h.is_session_lost() => h.into(),
            other => OpsError::Internal(format!("audit: {other}")),
        }
    }
}

impl From<KeyError> for OpsError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Hsm(h) => h.into(),
            KeyError::Store(s) if s.is_unique_violation() => {
                OpsError::Aborted("a concurrent change to this key won; retry".to_string())
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

/// Characters of caller input an error message or audit reason quotes, at most.
pub const QUOTE_CHARS: usize = 64;

/// Caller input as an error message or audit reason may show it: escaped as
/// `{:?}` does, at most [`QUOTE_CHARS`] characters of it, and for longer input
/// an ellipsis and the input's full length, so that a message never grows with
/// what a caller sends.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => {
            let head = s.get(..cut).unwrap_or_default();
            format!("{head:?}\u{2026} ({} bytes)", s.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_escaped() {
        assert_eq!(quote("key-a"), "\"key-a\"");
        assert_eq!(quote("a\nb\u{0}"), "\"a\\nb\\0\"");
        let long = "\u{e9}".repeat(3 << 20);
        assert_eq!(
            quote(&long),
            format!("{:?}\u{2026} (6291456 bytes)", "\u{e9}".repeat(64))
        );
        assert_eq!(quote(&"x".repeat(64)), format!("{:?}", "x".repeat(64)));
    }

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
