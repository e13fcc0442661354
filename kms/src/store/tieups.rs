//! Tie-up agreements and the keys they cover.

use brandkms_policy::{TieUpMode, TieUpState};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

/// A tie-up agreement between the brand and one entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TieUpRecord {
    /// Its id.
    pub id: String,
    /// The entity.
    pub entity_id: String,
    /// Active, suspended or terminated.
    pub state: TieUpState,
    /// The keys it covers, each with its mode.
    pub keys: Vec<(String, TieUpMode)>,
    /// Start of validity (Unix ms).
    pub valid_from: i64,
    /// End of validity (Unix ms), if any.
    pub valid_until: Option<i64>,
    /// The issuer whose contract brought the entity in.
    pub sponsor_issuer: Option<String>,
    /// Per-transaction limit in minor units.
    pub per_transaction_limit: Option<u64>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

const COLUMNS: &str = "id, entity_id, state, valid_from, valid_until, sponsor_issuer, per_txn_limit, created_at, updated_at";

fn limit_i64(limit: Option<u64>) -> Result<Option<i64>, StoreError> {
    limit
        .map(i64::try_from)
        .transpose()
        .map_err(|e| corrupt("tie_ups", e))
}

/// Inserts a tie-up and its keys.
pub async fn insert(conn: &mut Conn, t: &TieUpRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO tie_ups ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&t.id)
    .bind(&t.entity_id)
    .bind(t.state.as_str())
    .bind(t.valid_from)
    .bind(t.valid_until)
    .bind(&t.sponsor_issuer)
    .bind(limit_i64(t.per_transaction_limit)?)
    .bind(t.created_at)
    .bind(t.updated_at)
    .execute(&mut *conn)
    .await?;
    insert_keys(conn, &t.id, &t.keys).await
}

async fn insert_keys(
    conn: &mut Conn,
    id: &str,
    keys: &[(String, TieUpMode)],
) -> Result<(), StoreError> {
    for (alias, mode) in keys {
        sqlx::query("INSERT INTO tie_up_keys (tie_up_id, alias, mode) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(alias)
            .bind(mode.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Rewrites a tie-up's fields and keys.
pub async fn update(conn: &mut Conn, t: &TieUpRecord) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tie_ups SET state = $1, valid_from = $2, valid_until = $3, per_txn_limit = $4, updated_at = $5 WHERE id = $6",
    )
    .bind(t.state.as_str())
    .bind(t.valid_from)
    .bind(t.valid_until)
    .bind(limit_i64(t.per_transaction_limit)?)
    .bind(t.updated_at)
    .bind(&t.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM tie_up_keys WHERE tie_up_id = $1")
        .bind(&t.id)
        .execute(&mut *conn)
        .await?;
    insert_keys(conn, &t.id, &t.keys).await
}

/// The tie-up with this id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<TieUpRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tie_ups WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(Some(with_keys(conn, &r).await?)),
        None => Ok(None),
    }
}

/// Every tie-up, or one entity's.
pub async fn list(
    conn: &mut Conn,
    entity_id: Option<&str>,
) -> Result<Vec<TieUpRecord>, StoreError> {
    // One query for the tie-ups and their keys (read on every authorisation).
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("t.{c}")).collect();
    let rows = sqlx::query(&format!(
        "SELECT {}, k.alias AS key_alias, k.mode AS key_mode
         FROM tie_ups t LEFT JOIN tie_up_keys k ON k.tie_up_id = t.id
         WHERE ($1 IS NULL OR t.entity_id = $1)
         ORDER BY t.entity_id, t.created_at, t.id, k.alias",
        columns.join(", ")
    ))
    .bind(entity_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<TieUpRecord> = Vec::new();
    for r in &rows {
        let id: String = r.try_get("id")?;
        if out.last().is_none_or(|t| t.id != id) {
            out.push(record(r, id, Vec::new())?);
        }
        if let (Some(alias), Some(mode), Some(t)) = (
            r.try_get::<Option<String>, _>("key_alias")?,
            r.try_get::<Option<String>, _>("key_mode")?,
            out.last_mut(),
        ) {
            t.keys
                .push((alias, mode.parse().map_err(|e| corrupt("tie_up_keys", e))?));
        }
    }
    Ok(out)
}

async fn with_keys(conn: &mut Conn, r: &AnyRow) -> Result<TieUpRecord, StoreError> {
    let id: String = r.try_get("id")?;
    let keys =
        sqlx::query("SELECT alias, mode FROM tie_up_keys WHERE tie_up_id = $1 ORDER BY alias")
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|k| -> Result<(String, TieUpMode), StoreError> {
                Ok((
                    k.try_get("alias")?,
                    k.try_get::<String, _>("mode")?
                        .parse()
                        .map_err(|e| corrupt("tie_up_keys", e))?,
                ))
            })
            .collect::<Result<_, _>>()?;
    record(r, id, keys)
}

fn record(
    r: &AnyRow,
    id: String,
    keys: Vec<(String, TieUpMode)>,
) -> Result<TieUpRecord, StoreError> {
    Ok(TieUpRecord {
        id,
        entity_id: r.try_get("entity_id")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e| corrupt("tie_ups", e))?,
        keys,
        valid_from: r.try_get("valid_from")?,
        valid_until: r.try_get("valid_until")?,
        sponsor_issuer: r.try_get("sponsor_issuer")?,
        per_transaction_limit: r
            .try_get::<Option<i64>, _>("per_txn_limit")?
            .map(u64::try_from)
            .transpose()
            .map_err(|e| corrupt("tie_ups", e))?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The issuers whose own `proxy_load` tie-up (not terminated) covers `alias`,
/// by id.
pub async fn proxy_load_issuers(conn: &mut Conn, alias: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query(
        "SELECT DISTINCT t.entity_id AS id
         FROM tie_ups t
         JOIN tie_up_keys k ON k.tie_up_id = t.id
         JOIN entities e ON e.id = t.entity_id
         WHERE k.alias = $1 AND k.mode = $2 AND t.state <> $3 AND e.kind = $4
         ORDER BY t.entity_id",
    )
    .bind(alias)
    .bind(TieUpMode::ProxyLoad.as_str())
    .bind(TieUpState::Terminated.as_str())
    .bind(brandkms_policy::EntityKind::Issuer.as_str())
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| Ok(r.try_get("id")?))
    .collect()
}
