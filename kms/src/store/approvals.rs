//! Dual-control approvals.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

/// Where an approval stands in the table (expiry is computed, never written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredState {
    /// Awaiting a second officer (or expired, when past `expires_at`).
    Pending,
    /// Approved; the operation ran in the same transaction.
    Approved,
    /// Rejected.
    Rejected,
}

impl StoredState {
    fn as_str(self) -> &'static str {
        match self {
            StoredState::Pending => "pending",
            StoredState::Approved => "approved",
            StoredState::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<StoredState, StoreError> {
        match s {
            "pending" => Ok(StoredState::Pending),
            "approved" => Ok(StoredState::Approved),
            "rejected" => Ok(StoredState::Rejected),
            other => Err(corrupt("approvals", format!("state {other:?}"))),
        }
    }
}

/// A proposal held for a second officer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// `ap-` and 12 hex digits.
    pub id: String,
    /// The Admin operation, e.g. `Admin/RotateKey`.
    pub operation: String,
    /// The dual-control rule that held it, e.g. `rotate_key`.
    pub rule: String,
    /// What it will do, in words.
    pub summary: String,
    /// The request as proposed (protobuf, hex).
    pub payload: String,
    /// The proposing officer.
    pub proposer: String,
    /// When proposed (Unix ms).
    pub created_at: i64,
    /// When it can no longer be approved.
    pub expires_at: i64,
    /// Pending, approved or rejected.
    pub state: StoredState,
    /// The officer who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<i64>,
    /// A rejection's reason.
    pub reason: Option<String>,
}

const COLUMNS: &str = "id, operation, rule, summary, payload, proposer, created_at, expires_at, state, decided_by, decided_at, reason";

fn from_row(r: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    Ok(ApprovalRecord {
        id: r.try_get("id")?,
        operation: r.try_get("operation")?,
        rule: r.try_get("rule")?,
        summary: r.try_get("summary")?,
        payload: r.try_get("payload")?,
        proposer: r.try_get("proposer")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        state: StoredState::parse(&r.try_get::<String, _>("state")?)?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        reason: r.try_get("reason")?,
    })
}

/// Records a new, pending proposal.
pub async fn insert(conn: &mut Conn, a: &ApprovalRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO approvals ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&a.id)
    .bind(&a.operation)
    .bind(&a.rule)
    .bind(&a.summary)
    .bind(&a.payload)
    .bind(&a.proposer)
    .bind(a.created_at)
    .bind(a.expires_at)
    .bind(a.state.as_str())
    .bind(&a.decided_by)
    .bind(a.decided_at)
    .bind(&a.reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// The approval with this id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Every approval, newest first.
pub async fn list(conn: &mut Conn) -> Result<Vec<ApprovalRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals ORDER BY created_at DESC, id"
    ))
    .fetch_all(conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Closes a pending, unexpired approval as approved or rejected; false when it
/// was not pending any more (another officer decided first) or has expired.
pub async fn decide(
    conn: &mut Conn,
    id: &str,
    to: StoredState,
    by: &str,
    at: i64,
    reason: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE approvals SET state = $1, decided_by = $2, decided_at = $3, reason = $4
         WHERE id = $5 AND state = 'pending' AND expires_at > $3",
    )
    .bind(to.as_str())
    .bind(by)
    .bind(at)
    .bind(reason)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
