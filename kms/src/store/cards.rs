//! Card challenges, sessions, sealed commands and proxy loads.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conn, StoreError, corrupt};

fn u32_of(r: &AnyRow, column: &str, table: &'static str) -> Result<u32, StoreError> {
    u32::try_from(r.try_get::<i64, _>(column)?).map_err(|e| corrupt(table, e))
}

fn u64_of(r: &AnyRow, column: &str, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(r.try_get::<i64, _>(column)?).map_err(|e| corrupt(table, e))
}

/// A challenge handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// `ch-` and 32 hex digits.
    pub id: String,
    /// Who asked.
    pub caller: String,
    /// The card-access key.
    pub alias: String,
    /// Its version.
    pub version: u32,
    /// CID, hex.
    pub card_id: String,
    /// RB, hex.
    pub rb: String,
    /// When handed out.
    pub created_at: i64,
    /// When it stops being accepted.
    pub expires_at: i64,
}

/// Records a challenge.
pub async fn insert_challenge(conn: &mut Conn, c: &ChallengeRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO card_challenges (id, caller, alias, version, card_id, rb, created_at, expires_at, used_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
    )
    .bind(&c.id)
    .bind(&c.caller)
    .bind(&c.alias)
    .bind(i64::from(c.version))
    .bind(&c.card_id)
    .bind(&c.rb)
    .bind(c.created_at)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a challenge used, once; false when it was used meanwhile or expired.
pub async fn take_challenge(
    conn: &mut Conn,
    id: &str,
    caller: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "UPDATE card_challenges SET used_at = $1
         WHERE id = $2 AND caller = $3 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(id)
    .bind(caller)
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// An authenticated session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// `cs-` and 32 hex digits.
    pub id: String,
    /// Who authenticated the card.
    pub caller: String,
    /// The card-access key.
    pub alias: String,
    /// Its version.
    pub version: u32,
    /// CID, hex.
    pub card_id: String,
    /// RA || RB sealed in the token, hex.
    pub sealed_nonces: String,
    /// When authenticated.
    pub created_at: i64,
    /// When it ends.
    pub expires_at: i64,
    /// The counter of the next command.
    pub next_counter: u32,
}

/// Records a session.
pub async fn insert_session(conn: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO card_sessions (id, caller, alias, version, card_id, sealed_nonces, created_at, expires_at, next_counter)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&s.id)
    .bind(&s.caller)
    .bind(&s.alias)
    .bind(i64::from(s.version))
    .bind(&s.card_id)
    .bind(&s.sealed_nonces)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(i64::from(s.next_counter))
    .execute(conn)
    .await?;
    Ok(())
}

/// The session with this id.
pub async fn session(conn: &mut Conn, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let Some(r) = sqlx::query(
        "SELECT id, caller, alias, version, card_id, sealed_nonces, created_at, expires_at, next_counter
         FROM card_sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(SessionRecord {
        id: r.try_get("id")?,
        caller: r.try_get("caller")?,
        alias: r.try_get("alias")?,
        version: u32_of(&r, "version", "card_sessions")?,
        card_id: r.try_get("card_id")?,
        sealed_nonces: r.try_get("sealed_nonces")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        next_counter: u32_of(&r, "next_counter", "card_sessions")?,
    }))
}

/// Moves a session's counter from `counter` to `counter + 1`; false when another
/// request took `counter` first.
pub async fn advance_counter(conn: &mut Conn, id: &str, counter: u32) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE card_sessions SET next_counter = $1 WHERE id = $2 AND next_counter = $3",
    )
    .bind(i64::from(counter) + 1)
    .bind(id)
    .bind(i64::from(counter))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A sealed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// The session.
    pub session_id: String,
    /// Its counter in the session.
    pub counter: u32,
    /// load, debit, read_balance.
    pub op: String,
    /// Minor units.
    pub amount: u64,
    /// ISO 4217.
    pub currency: String,
    /// Hex.
    pub txn_id: String,
    /// When sealed.
    pub sealed_at: i64,
    /// When its receipt verified.
    pub receipt_at: Option<i64>,
}

/// Records a sealed command.
pub async fn insert_command(conn: &mut Conn, c: &CommandRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO card_commands (session_id, counter, op, amount, currency, txn_id, sealed_at, receipt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(&c.session_id)
    .bind(i64::from(c.counter))
    .bind(&c.op)
    .bind(i64::try_from(c.amount).map_err(|e| corrupt("card_commands", e))?)
    .bind(&c.currency)
    .bind(&c.txn_id)
    .bind(c.sealed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The command sealed with `counter` in the session.
pub async fn command(
    conn: &mut Conn,
    session_id: &str,
    counter: u32,
) -> Result<Option<CommandRecord>, StoreError> {
    let Some(r) = sqlx::query(
        "SELECT session_id, counter, op, amount, currency, txn_id, sealed_at, receipt_at
         FROM card_commands WHERE session_id = $1 AND counter = $2",
    )
    .bind(session_id)
    .bind(i64::from(counter))
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(CommandRecord {
        session_id: r.try_get("session_id")?,
        counter: u32_of(&r, "counter", "card_commands")?,
        op: r.try_get("op")?,
        amount: u64_of(&r, "amount", "card_commands")?,
        currency: r.try_get("currency")?,
        txn_id: r.try_get("txn_id")?,
        sealed_at: r.try_get("sealed_at")?,
        receipt_at: r.try_get("receipt_at")?,
    }))
}

/// Marks a command's receipt verified, once; false when it already was.
pub async fn mark_receipt(
    conn: &mut Conn,
    session_id: &str,
    counter: u32,
    at: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE card_commands SET receipt_at = $1
         WHERE session_id = $2 AND counter = $3 AND receipt_at IS NULL",
    )
    .bind(at)
    .bind(session_id)
    .bind(i64::from(counter))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A proxy load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyLoadRecord {
    /// Hex.
    pub txn_id: String,
    /// The offline issuer it is recorded for.
    pub issuer: String,
    /// Who asked (the loading portal).
    pub requested_by: String,
    /// The key.
    pub alias: String,
    /// Its version.
    pub version: u32,
    /// CID, hex.
    pub card_id: String,
    /// Minor units.
    pub amount: u64,
    /// ISO 4217.
    pub currency: String,
    /// pending or confirmed.
    pub status: String,
    /// When sealed.
    pub at: i64,
    /// When its receipt verified with status OK.
    pub confirmed_at: Option<i64>,
}

/// Records a pending proxy load.
pub async fn insert_proxy_load(conn: &mut Conn, p: &ProxyLoadRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO proxy_loads (txn_id, issuer, requested_by, alias, version, card_id, amount, currency, status, at, confirmed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
    )
    .bind(&p.txn_id)
    .bind(&p.issuer)
    .bind(&p.requested_by)
    .bind(&p.alias)
    .bind(i64::from(p.version))
    .bind(&p.card_id)
    .bind(i64::try_from(p.amount).map_err(|e| corrupt("proxy_loads", e))?)
    .bind(&p.currency)
    .bind(&p.status)
    .bind(p.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Confirms a pending proxy load; false when there is none for `txn_id`.
pub async fn confirm_proxy_load(
    conn: &mut Conn,
    txn_id: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE proxy_loads SET status = 'confirmed', confirmed_at = $1
         WHERE txn_id = $2 AND status = 'pending'",
    )
    .bind(at)
    .bind(txn_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Proxy loads in `[from, until)`, optionally one issuer's, oldest first.
pub async fn proxy_loads(
    conn: &mut Conn,
    issuer: Option<&str>,
    from: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<ProxyLoadRecord>, StoreError> {
    sqlx::query(
        "SELECT txn_id, issuer, requested_by, alias, version, card_id, amount, currency, status, at, confirmed_at
         FROM proxy_loads
         WHERE ($1 IS NULL OR issuer = $1) AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR at < $3)
         ORDER BY at, txn_id",
    )
    .bind(issuer)
    .bind(from)
    .bind(until)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(ProxyLoadRecord {
            txn_id: r.try_get("txn_id")?,
            issuer: r.try_get("issuer")?,
            requested_by: r.try_get("requested_by")?,
            alias: r.try_get("alias")?,
            version: u32_of(r, "version", "proxy_loads")?,
            card_id: r.try_get("card_id")?,
            amount: u64_of(r, "amount", "proxy_loads")?,
            currency: r.try_get("currency")?,
            status: r.try_get("status")?,
            at: r.try_get("at")?,
            confirmed_at: r.try_get("confirmed_at")?,
        })
    })
    .collect()
}

/// The challenge with this id, if `caller`'s, unused and unexpired at `now`.
pub async fn open_challenge(
    conn: &mut Conn,
    id: &str,
    caller: &str,
) -> Result<Option<ChallengeRecord>, StoreError> {
    let Some(r) = sqlx::query(
        "SELECT id, caller, alias, version, card_id, rb, created_at, expires_at
         FROM card_challenges WHERE id = $1 AND caller = $2 AND used_at IS NULL",
    )
    .bind(id)
    .bind(caller)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(ChallengeRecord {
        id: r.try_get("id")?,
        caller: r.try_get("caller")?,
        alias: r.try_get("alias")?,
        version: u32_of(&r, "version", "card_challenges")?,
        card_id: r.try_get("card_id")?,
        rb: r.try_get("rb")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    }))
}

/// What one purge deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Challenges, used or not.
    pub challenges: u64,
    /// Sessions.
    pub sessions: u64,
    /// Their sealed commands, answered or not.
    pub commands: u64,
}

impl Purged {
    /// True when nothing was deleted.
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }

    /// True when a table gave a whole chunk of `batch` rows (more may be left).
    pub fn is_full(&self, batch: u32) -> bool {
        let batch = u64::from(batch);
        self.challenges >= batch || self.sessions >= batch || self.commands >= batch
    }
}

/// Deletes challenges and sessions that expired before `before`, and the
/// sessions' sealed commands (answered or not: an expired session verifies no
/// receipt); proxy loads stay. At most `batch` rows of each table per statement;
/// the chunks go on until one deletes fewer than `batch` of every table.
pub async fn purge_expired(conn: &mut Conn, before: i64, batch: u32) -> Result<Purged, StoreError> {
    let mut total = Purged::default();
    loop {
        let chunk = purge_chunk(conn, before, batch).await?;
        total.challenges += chunk.challenges;
        total.sessions += chunk.sessions;
        total.commands += chunk.commands;
        if !chunk.is_full(batch) {
            return Ok(total);
        }
    }
}

/// One chunk of [`purge_expired`]: at most `batch` rows of each table.
pub async fn purge_chunk(conn: &mut Conn, before: i64, batch: u32) -> Result<Purged, StoreError> {
    let delete = async |conn: &mut Conn, sql: &str| -> Result<u64, StoreError> {
        Ok(sqlx::query(sql)
            .bind(before)
            .bind(i64::from(batch))
            .execute(conn)
            .await?
            .rows_affected())
    };
    let challenges = delete(
        conn,
        "DELETE FROM card_challenges WHERE id IN
         (SELECT id FROM card_challenges WHERE expires_at < $1 LIMIT $2)",
    )
    .await?;
    let commands = delete(
        conn,
        "DELETE FROM card_commands WHERE txn_id IN
         (SELECT c.txn_id FROM card_commands c JOIN card_sessions s ON s.id = c.session_id
          WHERE s.expires_at < $1 LIMIT $2)",
    )
    .await?;
    let sessions = delete(
        conn,
        "DELETE FROM card_sessions WHERE id IN
         (SELECT id FROM card_sessions s WHERE expires_at < $1
          AND NOT EXISTS (SELECT 1 FROM card_commands c WHERE c.session_id = s.id)
          LIMIT $2)",
    )
    .await?;
    Ok(Purged {
        challenges,
        sessions,
        commands,
    })
}
