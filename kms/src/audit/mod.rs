//! The audit trail: every request, allowed or denied, appends a record in the same
//! transaction as the state change it describes. Each process appends to a chain
//! of its own (registered at start), so instances never wait for one another;
//! a single writer task per process commits concurrent requests together (one
//! transaction, one fsync, one token MAC per batch) and answers them only after
//! the batch committed and the chain's anchor in the token moved on. Records are
//! hash-chained; the newest record of each batch carries an HMAC from the token
//! that covers the records before it through the links; the anchor (the newest
//! sequence number and hash, kept in a token data object a database
//! administrator cannot rewrite) reveals a cut-off or wiped chain. Records never
//! hold secrets.

mod anchor;
mod verify;
mod writer;

use sha2::{Digest, Sha256};

use crate::hsm::HsmError;
use crate::store::StoreError;
use crate::store::audit::AuditRow;

pub use anchor::{ANCHOR_APPLICATION, Anchor};
pub use verify::{AuditVerifier, BrokenLink, ChainReport, VerifyReport};
pub use writer::{Auditor, FORMAT, instance_name};

/// Hash of the (absent) record before the first.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Allowed,
    /// Refused by identity or policy.
    Denied,
    /// Refused as malformed, or failed.
    Failed,
    /// Held under dual control for a second officer.
    Held,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Held => "held",
        }
    }
}

/// What one request did, as the audit trail records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The caller's entity id, or `local:<command>`.
    pub caller: String,
    /// SHA-256 of the caller's certificate, hex.
    pub cert_fingerprint: Option<String>,
    /// The operation, e.g. `admin.create_key`.
    pub operation: String,
    /// The key concerned.
    pub key_alias: Option<String>,
    /// Its version.
    pub key_version: Option<u32>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why: the rule that denied, or what failed. Never a secret.
    pub reason: Option<String>,
    /// The dual-control approval this record closes: appending the record marks
    /// the approval approved in the same transaction (or fails when it is no
    /// longer pending), so the operation and its approval commit together.
    pub closes_approval: Option<ApprovalClosing>,
    /// The gRPC request that led to it (`x-request-id`).
    pub request_id: Option<String>,
}

/// An approval being carried out by the approving officer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalClosing {
    /// The approval.
    pub id: String,
    /// The officer who proposed it.
    pub proposer: String,
}

impl AuditEvent {
    /// An allowed operation by `caller`.
    pub fn allowed(caller: &str, operation: &str) -> AuditEvent {
        AuditEvent {
            caller: caller.to_string(),
            cert_fingerprint: None,
            operation: operation.to_string(),
            key_alias: None,
            key_version: None,
            outcome: Outcome::Allowed,
            reason: None,
            closes_approval: None,
            request_id: None,
        }
    }

    /// Names the key concerned.
    pub fn key(mut self, alias: &str, version: Option<u32>) -> AuditEvent {
        self.key_alias = Some(alias.to_string());
        self.key_version = version;
        self
    }

    /// Sets the outcome and reason.
    pub fn outcome(mut self, outcome: Outcome, reason: Option<String>) -> AuditEvent {
        self.outcome = outcome;
        self.reason = reason;
        self
    }
}

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token failed.
    #[error("audit MAC: {0}")]
    Hsm(#[from] HsmError),
    /// The approval being carried out was decided by someone else, or expired.
    #[error("approval {0} is no longer pending: another officer decided it, or it expired")]
    ApprovalNotPending(String),
    /// The batch holding this request's record did not commit (or its anchor did
    /// not move on); the detail is logged.
    #[error("audit batch failed: {0}")]
    Batch(String),
    /// The writer task is gone (the process is stopping).
    #[error("the audit writer has stopped")]
    WriterStopped,
}

/// SHA-256 over a length-prefixed encoding of every field but the hash and MAC.
/// Format 1 (the chain from before per-instance chains) leaves the chain out;
/// format 2 covers it, so a record cannot be moved to another chain; format 3
/// also covers the request id.
pub fn record_hash(r: &AuditRow, format: u32) -> [u8; 32] {
    fn field(h: &mut Sha256, v: Option<&[u8]>) {
        match v {
            Some(bytes) => {
                h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
                h.update(bytes);
            }
            None => h.update(u32::MAX.to_be_bytes()),
        }
    }
    let mut h = Sha256::new();
    if format >= 2 {
        h.update(b"brandkms-audit-v2");
        field(&mut h, Some(r.chain.as_bytes()));
    } else {
        h.update(b"brandkms-audit-v1");
    }
    h.update(r.seq.to_be_bytes());
    h.update(r.at.to_be_bytes());
    field(&mut h, Some(r.caller.as_bytes()));
    field(&mut h, r.cert_fingerprint.as_deref().map(str::as_bytes));
    field(&mut h, Some(r.operation.as_bytes()));
    field(&mut h, r.key_alias.as_deref().map(str::as_bytes));
    field(
        &mut h,
        r.key_version.map(u32::to_be_bytes).as_ref().map(|b| &b[..]),
    );
    field(&mut h, Some(r.outcome.as_bytes()));
    field(&mut h, r.reason.as_deref().map(str::as_bytes));
    field(&mut h, Some(r.prev_hash.as_bytes()));
    if format >= 3 {
        field(&mut h, r.request_id.as_deref().map(str::as_bytes));
    }
    h.finalize().into()
}
