//! Service settings kept in the database so that every instance applies the same
//! (today: the dual-control set, rule 7).

use brandkms_policy::SensitiveOperation;

use super::{Conn, StoreError, corrupt};

const DUAL_CONTROL: &str = "dual_control";

/// The sensitive operations held for a second officer; `None` until written
/// the first time.
pub async fn dual_control(conn: &mut Conn) -> Result<Option<Vec<SensitiveOperation>>, StoreError> {
    Ok(dual_control_changed(conn).await?.map(|(ops, _)| ops))
}

/// As [`dual_control`], with when the set last changed (Unix ms).
pub async fn dual_control_changed(
    conn: &mut Conn,
) -> Result<Option<(Vec<SensitiveOperation>, i64)>, StoreError> {
    let row: Option<(Option<String>, i64)> =
        sqlx::query_as("SELECT value, updated_at FROM service_settings WHERE name = $1")
            .bind(DUAL_CONTROL)
            .fetch_optional(conn)
            .await?;
    row.and_then(|(value, at)| value.map(|v| (v, at)))
        .map(|(v, at)| parse(&v).map(|ops| (ops, at)))
        .transpose()
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
