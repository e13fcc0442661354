//! Consents and deliveries.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

fn version(r: &AnyRow, column: &str) -> Result<u32, StoreError> {
    u32::try_from(r.try_get::<i64, _>(column)?).map_err(|e| corrupt("distribution", e))
}

/// A consent, standing or revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The issuer.
    pub issuer: String,
    /// The third party.
    pub third_party: String,
    /// The key.
    pub alias: String,
    /// Who recorded the grant (the issuer, or an officer).
    pub granted_by: String,
    /// When.
    pub granted_at: i64,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When.
    pub revoked_at: Option<i64>,
}

impl ConsentRecord {
    /// True while not revoked.
    pub fn standing(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// Grants (or grants again) a consent.
pub async fn grant(conn: &mut Conn, c: &ConsentRecord) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM consents WHERE issuer = $1 AND third_party = $2 AND alias = $3")
        .bind(&c.issuer)
        .bind(&c.third_party)
        .bind(&c.alias)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO consents (issuer, third_party, alias, granted_by, granted_at, revoked_by, revoked_at)
         VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
    )
    .bind(&c.issuer)
    .bind(&c.third_party)
    .bind(&c.alias)
    .bind(&c.granted_by)
    .bind(c.granted_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Revokes a standing consent; false when none stood.
pub async fn revoke(
    conn: &mut Conn,
    issuer: &str,
    third_party: &str,
    alias: &str,
    by: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE consents SET revoked_by = $1, revoked_at = $2
         WHERE issuer = $3 AND third_party = $4 AND alias = $5 AND revoked_at IS NULL",
    )
    .bind(by)
    .bind(at)
    .bind(issuer)
    .bind(third_party)
    .bind(alias)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Consents concerning `entity` (as issuer or third party), or all.
pub async fn consents(
    conn: &mut Conn,
    entity: Option<&str>,
) -> Result<Vec<ConsentRecord>, StoreError> {
    sqlx::query(
        "SELECT issuer, third_party, alias, granted_by, granted_at, revoked_by, revoked_at FROM consents
         WHERE ($1 IS NULL OR issuer = $1 OR third_party = $1) ORDER BY issuer, third_party, alias",
    )
    .bind(entity)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(ConsentRecord {
            issuer: r.try_get("issuer")?,
            third_party: r.try_get("third_party")?,
            alias: r.try_get("alias")?,
            granted_by: r.try_get("granted_by")?,
            granted_at: r.try_get("granted_at")?,
            revoked_by: r.try_get("revoked_by")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    })
    .collect()
}

/// One delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributionRecord {
    /// Its id.
    pub id: String,
    /// The key.
    pub alias: String,
    /// The version delivered.
    pub version: u32,
    /// To whom.
    pub entity_id: String,
    /// Under which transport key.
    pub transport_alias: String,
    /// Its version.
    pub transport_version: u32,
    /// The delivered version's KCV.
    pub kcv: String,
    /// When.
    pub at: i64,
}

/// Records a delivery.
pub async fn record_distribution(
    conn: &mut Conn,
    d: &DistributionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO distributions (id, alias, version, entity_id, transport_alias, transport_version, kcv, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&d.id)
    .bind(&d.alias)
    .bind(i64::from(d.version))
    .bind(&d.entity_id)
    .bind(&d.transport_alias)
    .bind(i64::from(d.transport_version))
    .bind(&d.kcv)
    .bind(d.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deliveries, optionally of one key or to one entity, oldest first.
pub async fn distributions(
    conn: &mut Conn,
    alias: Option<&str>,
    entity: Option<&str>,
) -> Result<Vec<DistributionRecord>, StoreError> {
    sqlx::query(
        "SELECT id, alias, version, entity_id, transport_alias, transport_version, kcv, at FROM distributions
         WHERE ($1 IS NULL OR alias = $1) AND ($2 IS NULL OR entity_id = $2) ORDER BY at, id",
    )
    .bind(alias)
    .bind(entity)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(DistributionRecord {
            id: r.try_get("id")?,
            alias: r.try_get("alias")?,
            version: version(r, "version")?,
            entity_id: r.try_get("entity_id")?,
            transport_alias: r.try_get("transport_alias")?,
            transport_version: version(r, "transport_version")?,
            kcv: r.try_get("kcv")?,
            at: r.try_get("at")?,
        })
    })
    .collect()
}
