//! Audit rows and the chain head. The chain logic lives in `crate::audit`.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

/// One stored audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Time (Unix ms).
    pub at: i64,
    /// The caller's entity id (or `local:<command>` for host commands).
    pub caller: String,
    /// SHA-256 of the caller's certificate, hex.
    pub cert_fingerprint: Option<String>,
    /// The operation.
    pub operation: String,
    /// The key alias concerned.
    pub key_alias: Option<String>,
    /// The key version concerned.
    pub key_version: Option<u32>,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// Why (the rule that denied, or what failed).
    pub reason: Option<String>,
    /// Hash of the previous record, hex.
    pub prev_hash: String,
    /// Hash of this record, hex.
    pub hash: String,
    /// HMAC-SHA-256 of `hash` with the token's audit key, hex.
    pub mac: String,
}

/// Filters for listing records.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// From this time (Unix ms, inclusive).
    pub from: Option<i64>,
    /// Until this time (Unix ms, exclusive).
    pub until: Option<i64>,
    /// Only this caller.
    pub caller: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only records older than this sequence number (paging, newest first).
    pub before_seq: Option<u64>,
    /// At most this many records.
    pub limit: u32,
}

/// Takes the chain head for this transaction: the row lock (or SQLite's write
/// lock) serialises appends. Returns the new record's sequence number and the
/// previous record's hash.
pub async fn take_head(conn: &mut Conn) -> Result<(u64, String), StoreError> {
    head_from_row(
        &sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(conn)
            .await?,
    )
}

/// Records the hash of the newest record in the head.
pub async fn set_head_hash(conn: &mut Conn, hash: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// The head: the last sequence number and hash.
pub async fn head(conn: &mut Conn) -> Result<(u64, String), StoreError> {
    head_from_row(
        &sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(conn)
            .await?,
    )
}

fn head_from_row(row: &AnyRow) -> Result<(u64, String), StoreError> {
    let seq: i64 = row.try_get("seq")?;
    Ok((
        u64::try_from(seq).map_err(|e| corrupt("audit_head", e))?,
        row.try_get("hash")?,
    ))
}

/// Inserts a record.
pub async fn insert(conn: &mut Conn, r: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (seq, at, caller, cert_fingerprint, operation, key_alias, key_version, outcome, reason, prev_hash, hash, mac)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(seq_i64(r.seq)?)
    .bind(r.at)
    .bind(&r.caller)
    .bind(&r.cert_fingerprint)
    .bind(&r.operation)
    .bind(&r.key_alias)
    .bind(r.key_version.map(i64::from))
    .bind(&r.outcome)
    .bind(&r.reason)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .bind(&r.mac)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "seq, at, caller, cert_fingerprint, operation, key_alias, key_version, outcome, reason, prev_hash, hash, mac";

/// Records after `after_seq`, in chain order, at most `limit`.
pub async fn page(
    conn: &mut Conn,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
    ))
    .bind(seq_i64(after_seq)?)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// The records that match `f`, newest first, at most `f.limit`.
pub async fn list(conn: &mut Conn, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
    let before = f.before_seq.map(seq_i64).transpose()?;
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit
         WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2)
           AND ($3 IS NULL OR caller = $3) AND ($4 IS NULL OR operation = $4)
           AND ($5 IS NULL OR seq < $5)
         ORDER BY seq DESC LIMIT $6"
    ))
    .bind(f.from)
    .bind(f.until)
    .bind(&f.caller)
    .bind(&f.operation)
    .bind(before)
    .bind(i64::from(f.limit))
    .fetch_all(conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

fn seq_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|e| corrupt("audit", e))
}

fn from_row(r: &AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|e| corrupt("audit", e))?,
        at: r.try_get("at")?,
        caller: r.try_get("caller")?,
        cert_fingerprint: r.try_get("cert_fingerprint")?,
        operation: r.try_get("operation")?,
        key_alias: r.try_get("key_alias")?,
        key_version: r
            .try_get::<Option<i64>, _>("key_version")?
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("audit", e))?,
        outcome: r.try_get("outcome")?,
        reason: r.try_get("reason")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        mac: r.try_get("mac")?,
    })
}
