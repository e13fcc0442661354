//! Named leases: background work that one instance at a time carries out (the
//! purger, the destruction scheduler). Taking and renewing are one statement, so
//! that two instances racing on either database end with exactly one holder.

use sqlx::Row;

use super::{Conn, StoreError};

/// Whether the caller holds a lease after trying to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenure {
    /// The caller holds it (taken, or renewed).
    Held,
    /// Another holder's lease has not expired.
    HeldElsewhere,
}

/// Takes the lease `name` for `holder` until `now + duration_ms`, or renews it
/// when `holder` already has it; another holder's lease is taken over only once
/// it has expired.
pub async fn acquire(
    conn: &mut Conn,
    name: &str,
    holder: &str,
    now: i64,
    duration_ms: i64,
) -> Result<Tenure, StoreError> {
    let done = sqlx::query(
        "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET
             holder = excluded.holder,
             acquired_at = CASE WHEN leases.holder = excluded.holder
                                THEN leases.acquired_at ELSE excluded.acquired_at END,
             expires_at = excluded.expires_at
         WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at",
    )
    .bind(name)
    .bind(holder)
    .bind(now)
    .bind(now.saturating_add(duration_ms))
    .execute(conn)
    .await?;
    Ok(if done.rows_affected() == 1 {
        Tenure::Held
    } else {
        Tenure::HeldElsewhere
    })
}

/// Gives the lease up, if `holder` has it, so that another instance need not wait
/// for it to expire.
pub async fn release(conn: &mut Conn, name: &str, holder: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(conn)
        .await?;
    Ok(())
}

/// A lease as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Its name.
    pub name: String,
    /// Who holds it (or last held it, when expired).
    pub holder: String,
    /// When the holder took it.
    pub acquired_at: i64,
    /// Until when.
    pub expires_at: i64,
}

/// The lease `name`, if anyone has taken it and not released it.
pub async fn lease(conn: &mut Conn, name: &str) -> Result<Option<LeaseRecord>, StoreError> {
    let Some(r) =
        sqlx::query("SELECT name, holder, acquired_at, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?
    else {
        return Ok(None);
    };
    Ok(Some(LeaseRecord {
        name: r.try_get("name")?,
        holder: r.try_get("holder")?,
        acquired_at: r.try_get("acquired_at")?,
        expires_at: r.try_get("expires_at")?,
    }))
}
