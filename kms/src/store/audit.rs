//! Audit rows and chains. The chain logic lives in `crate::audit`.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

/// One stored audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The chain (one per instance run).
    pub chain: String,
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
    /// `allowed`, `denied`, `failed` or `held`.
    pub outcome: String,
    /// Why (the rule that denied, or what failed).
    pub reason: Option<String>,
    /// Hash of the previous record of the chain, hex.
    pub prev_hash: String,
    /// Hash of this record, hex.
    pub hash: String,
    /// HMAC-SHA-256 of `hash` with the token's audit key, hex: on the newest
    /// record of each batch (on every record of a format-1 chain).
    pub mac: Option<String>,
    /// The id of the gRPC request (its `x-request-id`), when a request led to
    /// it; covered by the hash from format 3.
    pub request_id: Option<String>,
}

/// A registered chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRow {
    /// Its id.
    pub id: String,
    /// 1 (legacy, hash v1), 2 (batched, hash v2) or 3 (v2 and the request id).
    pub format: u32,
    /// The process that started it.
    pub instance: String,
    /// When (Unix ms).
    pub started_at: i64,
}

/// Where a listing continues: strictly older than this record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCursor {
    /// The record's time.
    pub at: i64,
    /// Its chain.
    pub chain: String,
    /// Its sequence number.
    pub seq: u64,
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
    /// Only this request's records.
    pub request_id: Option<String>,
    /// Only records older than this one (paging, newest first).
    pub before: Option<AuditCursor>,
    /// At most this many records.
    pub limit: u32,
}

/// Registers a chain.
pub async fn insert_chain(conn: &mut Conn, c: &ChainRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_chains (id, format, instance, started_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&c.id)
    .bind(i64::from(c.format))
    .bind(&c.instance)
    .bind(c.started_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every chain, oldest first.
pub async fn chains(conn: &mut Conn) -> Result<Vec<ChainRow>, StoreError> {
    sqlx::query("SELECT id, format, instance, started_at FROM audit_chains ORDER BY started_at, id")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(ChainRow {
                id: r.try_get("id")?,
                format: u32::try_from(r.try_get::<i64, _>("format")?)
                    .map_err(|e| corrupt("audit_chains", e))?,
                instance: r.try_get("instance")?,
                started_at: r.try_get("started_at")?,
            })
        })
        .collect()
}

/// The newest record's (sequence, hash) of a chain, if it has any.
pub async fn tail(conn: &mut Conn, chain: &str) -> Result<Option<(u64, String)>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(conn)
    .await?;
    row.map(|r| Ok((seq_of(&r)?, r.try_get("hash")?)))
        .transpose()
}

/// The hash of record `seq` of `chain`, if it exists.
pub async fn hash_at(conn: &mut Conn, chain: &str, seq: u64) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT hash FROM audit_records WHERE chain = $1 AND seq = $2")
            .bind(chain)
            .bind(seq_i64(seq)?)
            .fetch_optional(conn)
            .await?,
    )
}

const COLUMNS: &str = "chain, seq, at, caller, cert_fingerprint, operation, key_alias, key_version, outcome, reason, prev_hash, hash, mac, request_id";
const PER_ROW: usize = 14;
/// Rows per INSERT statement (well under every database's parameter limit).
const ROWS_PER_INSERT: usize = 64;

/// Inserts records, several per statement.
pub async fn insert(conn: &mut Conn, records: &[AuditRow]) -> Result<(), StoreError> {
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let mut sql = format!("INSERT INTO audit_records ({COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..PER_ROW {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i * PER_ROW + c + 1));
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(&r.chain)
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
                .bind(&r.request_id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Records of `chain` after `after_seq`, in chain order, at most `limit`.
pub async fn page(
    conn: &mut Conn,
    chain: &str,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_records WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(chain)
    .bind(seq_i64(after_seq)?)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// The records that match `f`, newest first (by time, then chain and sequence),
/// at most `f.limit`.
pub async fn list(conn: &mut Conn, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
    let (b_at, b_chain, b_seq) = match &f.before {
        Some(c) => (Some(c.at), Some(c.chain.clone()), Some(seq_i64(c.seq)?)),
        None => (None, None, None),
    };
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_records
         WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2)
           AND ($3 IS NULL OR caller = $3) AND ($4 IS NULL OR operation = $4)
           AND ($5 IS NULL OR at < $5 OR (at = $5 AND (chain < $6 OR (chain = $6 AND seq < $7))))
           AND ($9 IS NULL OR request_id = $9)
         ORDER BY at DESC, chain DESC, seq DESC LIMIT $8"
    ))
    .bind(f.from)
    .bind(f.until)
    .bind(&f.caller)
    .bind(&f.operation)
    .bind(b_at)
    .bind(b_chain)
    .bind(b_seq)
    .bind(i64::from(f.limit))
    .bind(&f.request_id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Takes the row that serialises read-check-write changes across instances
/// (held until the transaction ends).
pub async fn lock_admin(conn: &mut Conn) -> Result<(), StoreError> {
    sqlx::query("UPDATE write_locks SET n = n + 1 WHERE name = 'admin'")
        .execute(conn)
        .await?;
    Ok(())
}

/// How many read-check-write changes have taken the `admin` row so far: every
/// change to entities, tie-ups, consents, keys and their versions does, so while
/// it is unchanged a decision made on those facts still holds.
pub async fn admin_generation(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT n FROM write_locks WHERE name = 'admin'")
            .fetch_one(conn)
            .await?,
    )
}

fn seq_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|e| corrupt("audit_records", e))
}

fn seq_of(r: &AnyRow) -> Result<u64, StoreError> {
    u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|e| corrupt("audit_records", e))
}

fn from_row(r: &AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        chain: r.try_get("chain")?,
        seq: seq_of(r)?,
        at: r.try_get("at")?,
        caller: r.try_get("caller")?,
        cert_fingerprint: r.try_get("cert_fingerprint")?,
        operation: r.try_get("operation")?,
        key_alias: r.try_get("key_alias")?,
        key_version: r
            .try_get::<Option<i64>, _>("key_version")?
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("audit_records", e))?,
        outcome: r.try_get("outcome")?,
        reason: r.try_get("reason")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        mac: r.try_get("mac")?,
        request_id: r.try_get("request_id")?,
    })
}
