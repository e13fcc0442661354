//! Registered participants.

use brandkms_policy::{EntityKind, EntityStatus};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt, flag};

/// A registered participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRecord {
    /// Its id, as in its certificate's `urn:brandkms:entity:<id>` SAN.
    pub id: String,
    /// Its kind.
    pub kind: EntityKind,
    /// A readable name.
    pub name: String,
    /// Issuers: whether it is online (offline issuers load by proxy).
    pub online: bool,
    /// Terminals: whether it is tamper-resistant.
    pub tamper_resistant: bool,
    /// Active or suspended.
    pub status: EntityStatus,
    /// Registration time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

const COLUMNS: &str = "id, kind, name, online, tamper_resistant, status, created_at, updated_at";

/// Inserts an entity.
pub async fn insert(conn: &mut Conn, e: &EntityRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO entities ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&e.id)
    .bind(e.kind.as_str())
    .bind(&e.name)
    .bind(flag(e.online))
    .bind(flag(e.tamper_resistant))
    .bind(e.status.as_str())
    .bind(e.created_at)
    .bind(e.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The entity with this id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<EntityRecord>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM entities WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// Every entity, by id.
pub async fn list(conn: &mut Conn) -> Result<Vec<EntityRecord>, StoreError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM entities ORDER BY id"))
        .fetch_all(conn)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Sets an entity's status. Returns false when no such entity exists.
pub async fn set_status(
    conn: &mut Conn,
    id: &str,
    status: EntityStatus,
    at: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE entities SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(at)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

fn from_row(r: &AnyRow) -> Result<EntityRecord, StoreError> {
    Ok(EntityRecord {
        id: r.try_get("id")?,
        kind: r
            .try_get::<String, _>("kind")?
            .parse()
            .map_err(|e| corrupt("entities", e))?,
        name: r.try_get("name")?,
        online: r.try_get::<i64, _>("online")? != 0,
        tamper_resistant: r.try_get::<i64, _>("tamper_resistant")? != 0,
        status: r
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e| corrupt("entities", e))?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}
