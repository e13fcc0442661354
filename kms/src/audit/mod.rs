//! The audit trail: every request, allowed or denied, appends a record in the same
//! transaction as the state change it describes. Records are chained (each carries
//! the hash of the previous) and MACed in the token with the audit key, so that
//! neither an edited nor a lost row goes unnoticed. Records never hold secrets.

use sha2::{Digest, Sha256};

use crate::hsm::{Hsm, HsmError, ObjectId};
use crate::store::approvals;
use crate::store::audit::{self as rows, AuditRow};
use crate::store::{Conn, Store, StoreError, now_ms};

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
}

/// The first problem `verify` finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The sequence number of the first record that does not verify (or is missing).
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of verifying the whole trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The first broken or missing link, if any.
    pub first_broken: Option<BrokenLink>,
}

/// Appends and verifies records with the token's audit key.
#[derive(Clone, Debug)]
pub struct Auditor {
    hsm: Hsm,
    key: ObjectId,
}

impl Auditor {
    /// An auditor that MACs with the token object `key`.
    pub fn new(hsm: Hsm, key: ObjectId) -> Auditor {
        Auditor { hsm, key }
    }

    /// Appends a record inside the caller's transaction and returns its sequence
    /// number. The record commits or rolls back with the state change.
    pub async fn append(&self, tx: &mut Conn, event: &AuditEvent) -> Result<u64, AuditError> {
        let (seq, prev_hash) = rows::take_head(tx).await?;
        let at = now_ms();
        let mut reason = event.reason.clone();
        if let Some(closing) = &event.closes_approval {
            let closed = approvals::decide(
                tx,
                &closing.id,
                approvals::StoredState::Approved,
                &event.caller,
                at,
                None,
            )
            .await?;
            if !closed {
                return Err(AuditError::ApprovalNotPending(closing.id.clone()));
            }
            let note = format!("approves {} proposed by {}", closing.id, closing.proposer);
            reason = Some(match reason {
                Some(r) => format!("{r}; {note}"),
                None => note,
            });
        }
        let mut row = AuditRow {
            seq,
            at,
            caller: event.caller.clone(),
            cert_fingerprint: event.cert_fingerprint.clone(),
            operation: event.operation.clone(),
            key_alias: event.key_alias.clone(),
            key_version: event.key_version,
            outcome: event.outcome.as_str().to_string(),
            reason,
            prev_hash,
            hash: String::new(),
            mac: String::new(),
        };
        let hash = record_hash(&row);
        let key = self.key;
        let mac = self.hsm.run(move |s| s.hmac_sha256(&key, &hash)).await?;
        row.hash = hex::encode(hash);
        row.mac = hex::encode(mac);
        rows::insert(tx, &row).await?;
        rows::set_head_hash(tx, &row.hash).await?;
        Ok(seq)
    }

    /// Appends a record in a transaction of its own (for requests that change
    /// nothing else, such as reads and refusals).
    pub async fn record(&self, store: &Store, event: &AuditEvent) -> Result<u64, AuditError> {
        let mut tx = store.begin().await?;
        let seq = self.append(&mut tx, event).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(seq)
    }

    /// Walks the whole chain: sequence numbers contiguous from 1, each record's
    /// hash recomputed and linked to the previous, each MAC verified in the token,
    /// and the head matching the last record (so a deleted tail is found too).
    pub async fn verify(&self, store: &Store) -> Result<VerifyReport, AuditError> {
        const PAGE: u32 = 500;
        // The head and every row from one snapshot, so appends committed during
        // the verification (which may take a while) are neither half-seen nor
        // reported as a mismatch between the head and the last record.
        let mut conn = store.begin_snapshot().await?;
        let (head_seq, head_hash) = rows::head(&mut conn).await?;
        let mut expected_seq = 1u64;
        let mut prev_hash = GENESIS_HASH.to_string();
        let broken = |seq, problem: &str| {
            Ok(VerifyReport {
                records: seq - 1,
                first_broken: Some(BrokenLink {
                    seq,
                    problem: problem.to_string(),
                }),
            })
        };
        loop {
            let page = rows::page(&mut conn, expected_seq - 1, PAGE).await?;
            if page.is_empty() {
                break;
            }
            let mut hashes = Vec::with_capacity(page.len());
            for row in &page {
                if row.seq != expected_seq {
                    return broken(expected_seq, "record missing");
                }
                if row.prev_hash != prev_hash {
                    return broken(row.seq, "does not link to the previous record");
                }
                let hash = record_hash(row);
                if hex::encode(hash) != row.hash {
                    return broken(row.seq, "record altered: hash does not match its content");
                }
                let Ok(mac) = hex::decode(&row.mac) else {
                    return broken(row.seq, "MAC is not hex");
                };
                hashes.push((row.seq, hash, mac));
                prev_hash = row.hash.clone();
                expected_seq += 1;
            }
            let key = self.key;
            let bad = self
                .hsm
                .run(move |s| {
                    for (seq, hash, mac) in &hashes {
                        if !s.hmac_sha256_verify(&key, hash, mac)? {
                            return Ok(Some(*seq));
                        }
                    }
                    Ok(None)
                })
                .await?;
            if let Some(seq) = bad {
                return broken(seq, "MAC does not verify with the token's audit key");
            }
        }
        let records = expected_seq - 1;
        if head_seq > records {
            return broken(records + 1, "record missing (the chain head is further on)");
        }
        if head_seq < records || head_hash != prev_hash {
            return broken(head_seq.max(1), "chain head does not match the last record");
        }
        Ok(VerifyReport {
            records,
            first_broken: None,
        })
    }
}

/// SHA-256 over a length-prefixed encoding of every field but the hash and MAC.
pub fn record_hash(r: &AuditRow) -> [u8; 32] {
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
    h.update(b"brandkms-audit-v1");
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
    h.finalize().into()
}
