//! Service settings kept in the database so that every instance applies the same
//! (today: the dual-control set, rule 7).

use brandkms_policy::SensitiveOperation;

use super::{Conn, StoreError, corrupt};

const DUAL_CONTROL: &str = "dual_control";

/// The sensitive operations held for a second officer; `None` until written
/// the first time.
pub async fn dual_control(conn: &mut Conn) -> Result<Option<Vec<SensitiveOperation>>, StoreError> {
    let value: Option<Option<String>> =
        sqlx::query_scalar("SELECT value FROM service_settings WHERE name = $1")
            .bind(DUAL_CONTROL)
            .fetch_optional(conn)
            .await?;
    value.flatten().map(|v| parse(&v)).transpose()
}

fn parse(value: &str) -> Result<Vec<SensitiveOperation>, StoreError> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SensitiveOperation>()
                .map_err(|e| corrupt("service_settings", e))
        })
        .collect()
}

/// The stored form: names, comma-separated, in the policy's order.
fn format(ops: &[SensitiveOperation]) -> String {
    SensitiveOperation::ALL
        .iter()
        .filter(|op| ops.contains(op))
        .map(|op| op.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// When the dual-control set last changed (Unix ms; 0 when never written).
pub async fn dual_control_updated_at(conn: &mut Conn) -> Result<i64, StoreError> {
    let at: Option<i64> =
        sqlx::query_scalar("SELECT updated_at FROM service_settings WHERE name = $1")
            .bind(DUAL_CONTROL)
            .fetch_optional(conn)
            .await?;
    Ok(at.unwrap_or(0))
}

/// Writes the set (replacing any).
pub async fn set_dual_control(
    conn: &mut Conn,
    ops: &[SensitiveOperation],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO service_settings (name, value, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(DUAL_CONTROL)
    .bind(format(ops))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the set only if it was never written; whether it wrote.
pub async fn init_dual_control(
    conn: &mut Conn,
    ops: &[SensitiveOperation],
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE service_settings SET value = $1, updated_at = $2 WHERE name = $3 AND value IS NULL",
    )
    .bind(format(ops))
    .bind(now)
    .bind(DUAL_CONTROL)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_round_trips() {
        for n in 0..=SensitiveOperation::ALL.len() {
            let ops = &SensitiveOperation::ALL[..n];
            assert_eq!(parse(&format(ops)).unwrap(), ops);
        }
        assert!(parse("rotate_key,nonsense").is_err());
    }
}
