//! Keys and key versions. Every token object brandkms creates has one version row.

use brandkms_policy::{Algorithm, KeyClass, KeyState, Purpose};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt, flag};
use crate::hsm::ObjectId;

/// A key: an alias with numbered versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The alias (`[a-z0-9._-]`, at most 64).
    pub alias: String,
    /// The class.
    pub class: KeyClass,
    /// The algorithm of every version.
    pub algorithm: Algorithm,
    /// Card-access keys: load or purchase.
    pub purpose: Option<Purpose>,
    /// Card-access keys: the service code.
    pub service_code: Option<u16>,
    /// Whether versions may be delivered wrapped.
    pub exportable: bool,
    /// Entity-owned keys: the owner.
    pub owner_entity: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// One version of a key, and the token object behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionRecord {
    /// The key's alias.
    pub alias: String,
    /// The version number, from 1.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// The token object's `CKA_ID`.
    pub cka_id: ObjectId,
    /// Key check value (or public-key fingerprint), hex.
    pub kcv: String,
    /// True for single DES.
    pub weak: bool,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last state change (Unix ms).
    pub state_changed_at: i64,
    /// When a pending destruction falls due (Unix ms).
    pub destroy_after: Option<i64>,
    /// When the token object was destroyed (Unix ms).
    pub destroyed_at: Option<i64>,
    /// Cryptoperiod start (Unix ms, inclusive), if bounded.
    pub not_before: Option<i64>,
    /// Cryptoperiod end for new work (Unix ms, exclusive), if bounded.
    pub not_after: Option<i64>,
    /// When an officer marked it compromised.
    pub compromised_at: Option<i64>,
}

/// Inserts a key.
pub async fn insert_key(conn: &mut Conn, k: &KeyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO keys (alias, class, algorithm, purpose, service_code, exportable, owner_entity, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&k.alias)
    .bind(k.class.as_str())
    .bind(k.algorithm.as_str())
    .bind(k.purpose.map(|p| p.as_str()))
    .bind(k.service_code.map(i64::from))
    .bind(flag(k.exportable))
    .bind(&k.owner_entity)
    .bind(k.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a key version.
pub async fn insert_version(conn: &mut Conn, v: &KeyVersionRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO key_versions (alias, version, state, cka_id, kcv, weak, created_at, state_changed_at, destroy_after, destroyed_at, not_before, not_after, compromised_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&v.alias)
    .bind(i64::from(v.version))
    .bind(v.state.as_str())
    .bind(v.cka_id.to_hex())
    .bind(&v.kcv)
    .bind(flag(v.weak))
    .bind(v.created_at)
    .bind(v.state_changed_at)
    .bind(v.destroy_after)
    .bind(v.destroyed_at)
    .bind(v.not_before)
    .bind(v.not_after)
    .bind(v.compromised_at)
    .execute(conn)
    .await?;
    Ok(())
}

const KEY_COLUMNS: &str =
    "alias, class, algorithm, purpose, service_code, exportable, owner_entity, created_at";
const VERSION_COLUMNS: &str = "alias, version, state, cka_id, kcv, weak, created_at, state_changed_at, destroy_after, destroyed_at, not_before, not_after, compromised_at";

/// The key with this alias.
pub async fn key(conn: &mut Conn, alias: &str) -> Result<Option<KeyRecord>, StoreError> {
    sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE alias = $1"))
        .bind(alias)
        .fetch_optional(conn)
        .await?
        .map(|r| key_from_row(&r))
        .transpose()
}

/// Every key, by alias.
pub async fn list_keys(conn: &mut Conn) -> Result<Vec<KeyRecord>, StoreError> {
    sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY alias"))
        .fetch_all(conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

/// The versions of a key, oldest first.
pub async fn versions(conn: &mut Conn, alias: &str) -> Result<Vec<KeyVersionRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM key_versions WHERE alias = $1 ORDER BY version"
    ))
    .bind(alias)
    .fetch_all(conn)
    .await?
    .iter()
    .map(version_from_row)
    .collect()
}

/// One version of a key.
pub async fn version(
    conn: &mut Conn,
    alias: &str,
    version: u32,
) -> Result<Option<KeyVersionRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM key_versions WHERE alias = $1 AND version = $2"
    ))
    .bind(alias)
    .bind(i64::from(version))
    .fetch_optional(conn)
    .await?
    .map(|r| version_from_row(&r))
    .transpose()
}

/// Every version whose token object should exist (all but destroyed ones).
pub async fn live_versions(conn: &mut Conn) -> Result<Vec<KeyVersionRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM key_versions WHERE state <> $1 ORDER BY alias, version"
    ))
    .bind(KeyState::Destroyed.as_str())
    .fetch_all(conn)
    .await?
    .iter()
    .map(version_from_row)
    .collect()
}

fn key_from_row(r: &AnyRow) -> Result<KeyRecord, StoreError> {
    let text = |c: &str| -> Result<String, StoreError> { Ok(r.try_get::<String, _>(c)?) };
    Ok(KeyRecord {
        alias: text("alias")?,
        class: text("class")?.parse().map_err(|e| corrupt("keys", e))?,
        algorithm: text("algorithm")?.parse().map_err(|e| corrupt("keys", e))?,
        purpose: r
            .try_get::<Option<String>, _>("purpose")?
            .map(|p| p.parse())
            .transpose()
            .map_err(|e| corrupt("keys", e))?,
        service_code: r
            .try_get::<Option<i64>, _>("service_code")?
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("keys", e))?,
        exportable: r.try_get::<i64, _>("exportable")? != 0,
        owner_entity: r.try_get("owner_entity")?,
        created_at: r.try_get("created_at")?,
    })
}

fn version_from_row(r: &AnyRow) -> Result<KeyVersionRecord, StoreError> {
    let cka_id: String = r.try_get("cka_id")?;
    Ok(KeyVersionRecord {
        alias: r.try_get("alias")?,
        version: u32::try_from(r.try_get::<i64, _>("version")?)
            .map_err(|e| corrupt("key_versions", e))?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e| corrupt("key_versions", e))?,
        cka_id: ObjectId::from_hex(&cka_id)
            .ok_or_else(|| corrupt("key_versions", format!("bad cka_id {cka_id:?}")))?,
        kcv: r.try_get("kcv")?,
        weak: r.try_get::<i64, _>("weak")? != 0,
        created_at: r.try_get("created_at")?,
        state_changed_at: r.try_get("state_changed_at")?,
        destroy_after: r.try_get("destroy_after")?,
        destroyed_at: r.try_get("destroyed_at")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        compromised_at: r.try_get("compromised_at")?,
    })
}

/// Sets a version's cryptoperiod (`None`: unbounded on that side).
pub async fn set_cryptoperiod(
    conn: &mut Conn,
    alias: &str,
    version: u32,
    not_before: Option<i64>,
    not_after: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE key_versions SET not_before = $1, not_after = $2 WHERE alias = $3 AND version = $4",
    )
    .bind(not_before)
    .bind(not_after)
    .bind(alias)
    .bind(i64::from(version))
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a version compromised at `at` (kept if it already was).
pub async fn mark_compromised(
    conn: &mut Conn,
    alias: &str,
    version: u32,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE key_versions SET compromised_at = $1 WHERE alias = $2 AND version = $3 AND compromised_at IS NULL",
    )
    .bind(at)
    .bind(alias)
    .bind(i64::from(version))
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a version's state and its destruction times.
pub async fn set_state(
    conn: &mut Conn,
    alias: &str,
    version: u32,
    state: KeyState,
    at: i64,
    destroy_after: Option<i64>,
    destroyed_at: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE key_versions SET state = $1, state_changed_at = $2, destroy_after = $3, destroyed_at = $4
         WHERE alias = $5 AND version = $6",
    )
    .bind(state.as_str())
    .bind(at)
    .bind(destroy_after)
    .bind(destroyed_at)
    .bind(alias)
    .bind(i64::from(version))
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves every active version of a key to `to` (rotation).
pub async fn demote_active(
    conn: &mut Conn,
    alias: &str,
    to: KeyState,
    at: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE key_versions SET state = $1, state_changed_at = $2 WHERE alias = $3 AND state = $4",
    )
    .bind(to.as_str())
    .bind(at)
    .bind(alias)
    .bind(KeyState::Active.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Versions whose pending destruction is due at `now`.
pub async fn due_destructions(
    conn: &mut Conn,
    now: i64,
) -> Result<Vec<KeyVersionRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM key_versions WHERE state = $1 AND destroy_after <= $2 ORDER BY destroy_after"
    ))
    .bind(KeyState::PendingDestruction.as_str())
    .bind(now)
    .fetch_all(conn)
    .await?
    .iter()
    .map(version_from_row)
    .collect()
}

/// Records an RSA key's OAEP hash (with its first version).
pub async fn insert_rsa_key(
    conn: &mut Conn,
    alias: &str,
    oaep_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO rsa_keys (alias, oaep_hash) VALUES ($1, $2)")
        .bind(alias)
        .bind(oaep_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// An RSA key's OAEP hash.
pub async fn rsa_oaep_hash(conn: &mut Conn, alias: &str) -> Result<Option<String>, StoreError> {
    use sqlx::Row;
    Ok(
        sqlx::query("SELECT oaep_hash FROM rsa_keys WHERE alias = $1")
            .bind(alias)
            .fetch_optional(conn)
            .await?
            .map(|r| r.try_get::<String, _>("oaep_hash"))
            .transpose()?,
    )
}
