//! Tie-up agreements: create, update, terminate, list.

use std::collections::HashSet;

use brandkms_policy::{EntityKind, KeyClass, TieUpMode, TieUpState};

use crate::ops::{AppState, Caller, OpsError, invalid};
use crate::store::tieups::{self as rows, TieUpRecord};
use crate::store::{Conn, entities, keys};

/// A tie-up to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTieUp {
    /// The entity.
    pub entity_id: String,
    /// Keys and modes (at least one, no alias twice).
    pub keys: Vec<(String, TieUpMode)>,
    /// Start (None: now).
    pub valid_from: Option<i64>,
    /// End (None: open-ended).
    pub valid_until: Option<i64>,
    /// Sponsoring issuer.
    pub sponsor_issuer: Option<String>,
    /// Per-transaction limit.
    pub per_transaction_limit: Option<u64>,
}

/// Changes to a tie-up; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateTieUp {
    /// The tie-up.
    pub id: String,
    /// Replacement keys.
    pub keys: Option<Vec<(String, TieUpMode)>>,
    /// New start.
    pub valid_from: Option<i64>,
    /// New end (`Some(None)`: open-ended).
    pub valid_until: Option<Option<i64>>,
    /// New limit.
    pub per_transaction_limit: Option<u64>,
    /// Active or suspended.
    pub state: Option<TieUpState>,
}

fn check_window(from: i64, until: Option<i64>) -> Result<(), OpsError> {
    match until {
        Some(u) if u <= from => Err(invalid(format!(
            "validity window ends ({u}) before or when it starts ({from})"
        ))),
        _ => Ok(()),
    }
}

async fn check_keys(conn: &mut Conn, tie_keys: &[(String, TieUpMode)]) -> Result<(), OpsError> {
    if tie_keys.is_empty() {
        return Err(invalid("a tie-up covers at least one key"));
    }
    let mut seen = HashSet::new();
    for (alias, _) in tie_keys {
        if !seen.insert(alias) {
            return Err(invalid(format!("key {alias:?} is named twice")));
        }
        let key = keys::key(conn, alias)
            .await?
            .ok_or_else(|| invalid(format!("unknown key {alias:?}")))?;
        if matches!(key.class, KeyClass::Internal | KeyClass::Transport) {
            return Err(invalid(format!(
                "{} key {alias:?} cannot be covered by a tie-up",
                key.class
            )));
        }
    }
    Ok(())
}

/// Checks a tie-up to record against the store: the entity, the sponsor and the
/// keys exist and fit, and the window is ordered.
pub async fn check_create(conn: &mut Conn, input: &CreateTieUp, now: i64) -> Result<(), OpsError> {
    entities::get(conn, &input.entity_id)
        .await?
        .ok_or_else(|| invalid(format!("unknown entity {:?}", input.entity_id)))?;
    if let Some(sponsor) = &input.sponsor_issuer {
        let s = entities::get(conn, sponsor)
            .await?
            .ok_or_else(|| invalid(format!("unknown sponsoring issuer {sponsor:?}")))?;
        if s.kind != EntityKind::Issuer {
            return Err(invalid(format!(
                "sponsor {sponsor:?} is a {}, not an issuer",
                s.kind
            )));
        }
    }
    check_keys(conn, &input.keys).await?;
    check_window(input.valid_from.unwrap_or(now), input.valid_until)
}

/// Records a tie-up, active.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    input: CreateTieUp,
) -> Result<TieUpRecord, OpsError> {
    let now = state.clock.now_ms();
    let id = format!("tu-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let event = caller.event("Admin/CreateTieUp").outcome(
        crate::audit::Outcome::Allowed,
        Some(format!("tie-up {id} for {}", input.entity_id)),
    );
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                check_create(tx, &input, now).await?;
                let record = TieUpRecord {
                    id,
                    entity_id: input.entity_id,
                    state: TieUpState::Active,
                    keys: input.keys,
                    valid_from: input.valid_from.unwrap_or(now),
                    valid_until: input.valid_until,
                    sponsor_issuer: input.sponsor_issuer,
                    per_transaction_limit: input.per_transaction_limit,
                    created_at: now,
                    updated_at: now,
                };
                rows::insert(tx, &record).await?;
                Ok(record)
            })
        })
        .await
}

/// The tie-up as `input` would leave it, checked against the store (the tie-up
/// exists and is not terminated; keys and window fit).
pub async fn updated(
    conn: &mut Conn,
    input: &UpdateTieUp,
    now: i64,
) -> Result<(TieUpRecord, TieUpRecord), OpsError> {
    let before = rows::get(conn, &input.id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no tie-up {:?}", input.id)))?;
    if before.state == TieUpState::Terminated {
        return Err(OpsError::FailedPrecondition(format!(
            "tie-up {:?} is terminated",
            input.id
        )));
    }
    let mut t = before.clone();
    if let Some(k) = &input.keys {
        check_keys(conn, k).await?;
        t.keys = k.clone();
    }
    if let Some(from) = input.valid_from {
        t.valid_from = from;
    }
    if let Some(until) = input.valid_until {
        t.valid_until = until;
    }
    check_window(t.valid_from, t.valid_until)?;
    if let Some(limit) = input.per_transaction_limit {
        t.per_transaction_limit = Some(limit);
    }
    if let Some(s) = input.state {
        if s == TieUpState::Terminated {
            return Err(invalid("terminate a tie-up with TerminateTieUp"));
        }
        t.state = s;
    }
    t.updated_at = now;
    Ok((before, t))
}

/// Changes a tie-up that is not terminated.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    input: UpdateTieUp,
) -> Result<TieUpRecord, OpsError> {
    let event = caller.event("Admin/UpdateTieUp").outcome(
        crate::audit::Outcome::Allowed,
        Some(format!("tie-up {}", input.id)),
    );
    let now = state.clock.now_ms();
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let (_, t) = updated(tx, &input, now).await?;
                rows::update(tx, &t).await?;
                Ok(t)
            })
        })
        .await
}

/// Ends a tie-up for good.
pub async fn terminate(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<TieUpRecord, OpsError> {
    let event = caller
        .event("Admin/TerminateTieUp")
        .outcome(crate::audit::Outcome::Allowed, Some(format!("tie-up {id}")));
    let (id, now) = (id.to_string(), state.clock.now_ms());
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                let mut t = rows::get(tx, &id)
                    .await?
                    .ok_or_else(|| OpsError::NotFound(format!("no tie-up {id:?}")))?;
                if t.state == TieUpState::Terminated {
                    return Err(OpsError::FailedPrecondition(format!(
                        "tie-up {id:?} is already terminated"
                    )));
                }
                t.state = TieUpState::Terminated;
                t.updated_at = now;
                rows::update(tx, &t).await?;
                Ok(t)
            })
        })
        .await
}

/// Every tie-up, or one entity's.
pub async fn list(state: &AppState, entity_id: Option<&str>) -> Result<Vec<TieUpRecord>, OpsError> {
    let mut conn = state.store.conn().await?;
    Ok(rows::list(&mut conn, entity_id).await?)
}
