//! Proxy card authentication, sealed commands, receipts and proxy loads
//! (docs/protocol.md §2–§3). Each call asks the policy before the token is used;
//! challenges and sessions live in the database so that any replica sharing the
//! database and token continues a session; RA || RB are kept sealed by the token.

use brandkms_policy::{Action, Algorithm, KeyClass, ProxyLoadScope};

use crate::audit::Outcome;
use crate::hsm::{CMAC_LEN, EcbDerive};
use crate::ops::authorize::{authorize, participant_key_version, policy_entity};
use crate::ops::card_protocol::{
    self as card, CardKey, FROM_CARD, Op, PAYLOAD_LEN, Receipt, TO_CARD,
};
use crate::ops::{AppState, Caller, OpsError};
use crate::store::cards::{
    self as rows, ChallengeRecord, CommandRecord, ProxyLoadRecord, SessionRecord,
};
use crate::store::keys::{KeyRecord, KeyVersionRecord};
use crate::store::{Conn, tieups};

/// The largest amount accepted (the store keeps signed 64-bit integers).
pub const MAX_AMOUNT: u64 = i64::MAX as u64;

/// A challenge handed out, with the key's service code.
#[derive(Clone, Debug)]
pub struct Begun {
    /// The challenge.
    pub challenge: ChallengeRecord,
    /// RB.
    pub rb: [u8; 8],
    /// The key's service code.
    pub service_code: u16,
}

/// What completing an authentication gave.
#[derive(Clone, Debug)]
pub enum Completed {
    /// The card proved itself: C2 and the session.
    Authenticated {
        /// `CBC_KC(RB || RA)`.
        c2: [u8; 16],
        /// The session.
        session: SessionRecord,
    },
    /// C1 did not verify; the challenge is used up and nothing else is returned.
    Rejected,
}

/// A sealed command.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// 29 bytes.
    pub payload: [u8; PAYLOAD_LEN],
    /// Its counter in the session.
    pub counter: u32,
    /// Chosen by the service.
    pub txn_id: [u8; 16],
    /// `CMAC_KS(01 || counter || payload)`.
    pub mac: [u8; CMAC_LEN],
    /// The offline issuer a proxy load is recorded for.
    pub proxy_load_issuer: Option<String>,
}

/// Whether a receipt is genuine, and what it says.
#[derive(Clone, Debug)]
pub enum Verified {
    /// Untampered, for a command of this session, first presentation.
    Genuine(Receipt),
    /// Anything else; the reason is audited, not returned.
    NotGenuine,
}

fn derivation(a: Algorithm) -> Result<EcbDerive, OpsError> {
    match a {
        Algorithm::Des => Ok(EcbDerive::Des),
        Algorithm::Tdes2 | Algorithm::Tdes3 => Ok(EcbDerive::Des3),
        other => Err(OpsError::FailedPrecondition(format!(
            "{other} keys do not authenticate cards"
        ))),
    }
}

fn cid_of(hex_id: &str) -> Result<[u8; 8], OpsError> {
    hex::decode(hex_id)
        .ok()
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .ok_or_else(|| OpsError::Internal(format!("stored card id {hex_id:?} is not 8 bytes")))
}

/// The key version for a card action by `caller`, after the policy allowed it.
async fn allowed_version(
    conn: &mut Conn,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    action: Action,
    now: i64,
) -> Result<(KeyRecord, KeyVersionRecord), OpsError> {
    let (key, v) = participant_key_version(conn, caller, alias, version).await?;
    if key.class != KeyClass::CardAccess {
        return Err(OpsError::FailedPrecondition(format!(
            "{alias:?} is a {} key, not a card-access key",
            key.class
        )));
    }
    // The policy decides the version's state too (the key-state rule).
    authorize(conn, caller, &key, &v, action, now).await?;
    Ok((key, v))
}

fn card_key(key: &KeyRecord, v: &KeyVersionRecord, cid: [u8; 8]) -> Result<CardKey, OpsError> {
    Ok(CardKey {
        master: v.cka_id,
        derive: derivation(key.algorithm)?,
        cid,
    })
}

/// RB: from the token (tests may fix it through `testing::fix_rb`).
async fn draw_rb(state: &AppState) -> Result<[u8; 8], OpsError> {
    #[cfg(any(test, feature = "testing"))]
    if let Some(rb) = crate::testing::fixed_rb() {
        return Ok(rb);
    }
    random::<8>(state).await
}

async fn random<const N: usize>(state: &AppState) -> Result<[u8; N], OpsError> {
    let bytes = state.hsm.run(|s| s.random(N)).await?;
    <[u8; N]>::try_from(bytes).map_err(|_| OpsError::Internal("token gave too few bytes".into()))
}

fn ttl_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Pass 1: a fresh, single-use challenge for this card, key and version (the
/// active one when `None`).
pub async fn begin(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    cid: [u8; 8],
) -> Result<Begun, OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let (key, v) =
        allowed_version(&mut conn, caller, alias, version, Action::Authenticate, now).await?;
    let version = v.version;
    drop(conn);
    let service_code = key.service_code.ok_or_else(|| {
        OpsError::Internal(format!("card-access key {alias} has no service code"))
    })?;
    let rb = draw_rb(state).await?;
    let challenge = ChallengeRecord {
        id: format!("ch-{}", uuid::Uuid::new_v4().simple()),
        caller: caller.entity.id.clone(),
        alias: alias.to_string(),
        version,
        card_id: hex::encode_upper(cid),
        rb: hex::encode_upper(rb),
        created_at: now,
        expires_at: now.saturating_add(ttl_ms(state.settings.challenge_ttl_secs)),
    };
    let event = caller
        .event_about(
            "CardAuthentication/BeginAuthentication",
            format!("card {} challenge {}", challenge.card_id, challenge.id),
        )
        .key(alias, Some(version));
    let record = challenge.clone();
    state
        .write(event, move |tx| {
            Box::pin(async move { Ok(rows::insert_challenge(tx, &record).await?) })
        })
        .await?;
    Ok(Begun {
        challenge,
        rb,
        service_code,
    })
}

/// Passes 2 and 3: checks C1 in the token; on success answers C2 and opens a
/// session. Either way the challenge is used up, with its audit record.
pub async fn complete(
    state: &AppState,
    caller: &Caller,
    challenge_id: &str,
    c1: [u8; 16],
    seen: &mut Option<(String, u32)>,
) -> Result<Completed, OpsError> {
    let now = state.clock.now_ms();
    let not_open = || {
        OpsError::NotFound(format!(
            "no open challenge {challenge_id:?} of yours (unknown, already used, or another caller's): begin again"
        ))
    };
    let mut conn = state.store.conn().await?;
    let ch = rows::open_challenge(&mut conn, challenge_id, &caller.entity.id)
        .await?
        .ok_or_else(not_open)?;
    *seen = Some((ch.alias.clone(), ch.version));
    if now >= ch.expires_at {
        return Err(OpsError::FailedPrecondition(format!(
            "challenge {challenge_id} expired at {}: begin again",
            crate::clock::rfc3339(ch.expires_at)
        )));
    }
    let (key, v) = allowed_version(
        &mut conn,
        caller,
        &ch.alias,
        Some(ch.version),
        Action::Authenticate,
        now,
    )
    .await?;
    drop(conn);
    let cid = cid_of(&ch.card_id)?;
    let rb: [u8; 8] = hex::decode(&ch.rb)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| OpsError::Internal("stored RB is not 8 bytes".into()))?;
    let ck = card_key(&key, &v, cid)?;
    let session_id = format!("cs-{}", uuid::Uuid::new_v4().simple());
    let (seal_key, id) = (state.seal_key, session_id.clone());
    let checked = state
        .hsm
        .run(move |s| card::complete(s, &ck, &rb, &c1, &seal_key, &id))
        .await?;
    let (outcome, session) = match checked {
        Some(card::Completion { c2, sealed }) => {
            let session = SessionRecord {
                id: session_id.clone(),
                caller: caller.entity.id.clone(),
                alias: ch.alias.clone(),
                version: ch.version,
                card_id: ch.card_id.clone(),
                sealed_nonces: hex::encode(sealed),
                created_at: now,
                expires_at: now.saturating_add(ttl_ms(state.settings.session_ttl_secs)),
                next_counter: 0,
            };
            (Some(c2), Some(session))
        }
        None => (None, None),
    };
    let event = match &session {
        Some(s) => caller.event_about(
            "CardAuthentication/CompleteAuthentication",
            format!("card {} authenticated: session {}", ch.card_id, s.id),
        ),
        None => caller
            .event("CardAuthentication/CompleteAuthentication")
            .outcome(
                Outcome::Failed,
                Some(format!(
                    "card {} not authenticated: C1 does not verify; challenge {} used up",
                    ch.card_id, ch.id
                )),
            ),
    }
    .key(&ch.alias, Some(ch.version));
    let (ch_id, who, new_session, gone) = (
        ch.id.clone(),
        caller.entity.id.clone(),
        session.clone(),
        not_open(),
    );
    state
        .write(event, move |tx| {
            Box::pin(async move {
                if !rows::take_challenge(tx, &ch_id, &who, now).await? {
                    return Err(gone);
                }
                if let Some(s) = &new_session {
                    rows::insert_session(tx, s).await?;
                }
                Ok(())
            })
        })
        .await?;
    Ok(match (outcome, session) {
        (Some(c2), Some(session)) => Completed::Authenticated { c2, session },
        _ => Completed::Rejected,
    })
}

/// The caller's session, while it lasts (the database only; its nonces are
/// opened in the token by the call that uses them).
async fn open_session(
    conn: &mut Conn,
    caller: &Caller,
    session_id: &str,
    now: i64,
    seen: &mut Option<(String, u32)>,
) -> Result<(SessionRecord, Vec<u8>), OpsError> {
    let session = rows::session(conn, session_id)
        .await?
        .filter(|s| s.caller == caller.entity.id)
        .ok_or_else(|| {
            OpsError::NotFound(format!(
                "no session {session_id:?} of yours (unknown, or another caller's): authenticate the card again"
            ))
        })?;
    *seen = Some((session.alias.clone(), session.version));
    if now >= session.expires_at {
        return Err(OpsError::FailedPrecondition(format!(
            "session {session_id} expired at {}: authenticate the card again",
            crate::clock::rfc3339(session.expires_at)
        )));
    }
    let sealed = hex::decode(&session.sealed_nonces)
        .map_err(|e| OpsError::Internal(format!("session {session_id}: {e}")))?;
    Ok((session, sealed))
}

/// The offline issuer that a LOAD under `alias` is recorded for: the issuer whose
/// own `proxy_load` tie-up (not terminated) covers the key.
async fn proxy_load_issuer(conn: &mut Conn, alias: &str) -> Result<String, OpsError> {
    let issuers = tieups::proxy_load_issuers(conn, alias).await?;
    match issuers.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(OpsError::FailedPrecondition(format!(
            "no issuer's proxy_load tie-up covers key {alias:?}: a proxy load cannot be recorded"
        ))),
        many => Err(OpsError::FailedPrecondition(format!(
            "several issuers' proxy_load tie-ups cover key {alias:?} ({}): the owner is ambiguous",
            many.join(", ")
        ))),
    }
}

/// Seals a command with the session's next counter. A LOAD needs `proxy_load`
/// (it is recorded for the offline issuer); a DEBIT needs `hold`; READ_BALANCE
/// either. The tie-up's per-transaction limit applies.
pub async fn seal(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    op: Op,
    amount: u64,
    currency: [u8; 3],
    seen: &mut Option<(String, u32)>,
) -> Result<Sealed, OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let (session, sealed) = open_session(&mut conn, caller, session_id, now, seen).await?;
    let action = match op {
        Op::Load => Action::ProxyLoad { amount },
        Op::Debit => Action::Seal { amount },
        Op::ReadBalance => Action::ReadBalance,
    };
    let (key, v) = allowed_version(
        &mut conn,
        caller,
        &session.alias,
        Some(session.version),
        action,
        now,
    )
    .await?;
    let issuer = match op {
        Op::Load => Some(proxy_load_issuer(&mut conn, &session.alias).await?),
        Op::Debit | Op::ReadBalance => None,
    };
    drop(conn);
    let counter = session.next_counter;
    let ck = card_key(&key, &v, cid_of(&session.card_id)?)?;
    let (seal_key, id) = (state.seal_key, session_id.to_string());
    let (txn_id, payload, mac) = state
        .hsm
        .run(move |s| {
            let (ra, rb) = card::unseal_nonces(s, &seal_key, &id, &sealed)?;
            let txn_id: [u8; 16] = s
                .random(16)?
                .try_into()
                .map_err(|_| crate::hsm::HsmError::InvalidInput("token gave too few bytes"))?;
            let payload = card::command_payload(op, amount, &currency, &txn_id);
            let data = card::mac_input(TO_CARD, counter, &payload);
            let mac = card::mac(s, &ck, &ra, &rb, &data)?;
            Ok((txn_id, payload, mac))
        })
        .await?;
    let currency_text = String::from_utf8_lossy(&currency).into_owned();
    let event = caller
        .event_about(
            "CardAuthentication/SealCommand",
            format!(
                "{} {amount} {currency_text} session {session_id} counter {counter} txn {}{}",
                op.as_str(),
                hex::encode_upper(txn_id),
                issuer
                    .as_deref()
                    .map(|i| format!(": proxy load for {i}"))
                    .unwrap_or_default()
            ),
        )
        .key(&session.alias, Some(session.version));
    let command = CommandRecord {
        session_id: session_id.to_string(),
        counter,
        op: op.as_str().to_string(),
        amount,
        currency: currency_text.clone(),
        txn_id: hex::encode_upper(txn_id),
        sealed_at: now,
        receipt_at: None,
    };
    let proxy_load = issuer.as_ref().map(|issuer| ProxyLoadRecord {
        txn_id: hex::encode_upper(txn_id),
        issuer: issuer.clone(),
        requested_by: caller.entity.id.clone(),
        alias: session.alias.clone(),
        version: session.version,
        card_id: session.card_id.clone(),
        amount,
        currency: currency_text,
        status: "pending".into(),
        at: now,
        confirmed_at: None,
    });
    state
        .write(event, move |tx| {
            Box::pin(async move {
                if !rows::advance_counter(tx, &command.session_id, counter).await? {
                    return Err(OpsError::Aborted(format!(
                        "a concurrent command took counter {counter} of session {}; retry",
                        command.session_id
                    )));
                }
                rows::insert_command(tx, &command).await?;
                if let Some(load) = &proxy_load {
                    rows::insert_proxy_load(tx, load).await?;
                }
                Ok(())
            })
        })
        .await?;
    Ok(Sealed {
        payload,
        counter,
        txn_id,
        mac,
        proxy_load_issuer: issuer,
    })
}

/// Checks a card's receipt for the command sealed with `counter`: the MAC in the
/// token, then that it answers that command and was not presented before. A
/// genuine OK receipt of a proxy load confirms it.
pub async fn verify_receipt(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    counter: u32,
    payload: [u8; PAYLOAD_LEN],
    mac: [u8; CMAC_LEN],
    seen: &mut Option<(String, u32)>,
) -> Result<Verified, OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let (session, sealed) = open_session(&mut conn, caller, session_id, now, seen).await?;
    let (key, v) = allowed_version(
        &mut conn,
        caller,
        &session.alias,
        Some(session.version),
        Action::VerifyReceipt,
        now,
    )
    .await?;
    let command = rows::command(&mut conn, session_id, counter).await?;
    drop(conn);
    let receipt = card::parse_receipt(&payload);
    let ck = card_key(&key, &v, cid_of(&session.card_id)?)?;
    let data = card::mac_input(FROM_CARD, counter, &payload);
    let (seal_key, id) = (state.seal_key, session_id.to_string());
    let mac_ok = state
        .hsm
        .run(move |s| {
            let (ra, rb) = card::unseal_nonces(s, &seal_key, &id, &sealed)?;
            card::verify_mac(s, &ck, &ra, &rb, &data, &mac)
        })
        .await?;
    let problem = match (&command, &receipt) {
        _ if !mac_ok => Some("receipt MAC does not verify".to_string()),
        (None, _) => Some(format!("no command was sealed with counter {counter}")),
        (_, None) => Some("payload is not a receipt".to_string()),
        (Some(c), Some(r)) if c.txn_id != hex::encode_upper(r.txn_id) => {
            Some("receipt answers another transaction".to_string())
        }
        (Some(c), _) if c.receipt_at.is_some() => {
            Some("receipt already presented (replay)".to_string())
        }
        _ => None,
    };
    let about = format!("session {session_id} counter {counter}");
    let event = match &problem {
        None => caller.event_about("CardAuthentication/VerifyReceipt", about),
        Some(p) => caller
            .event("CardAuthentication/VerifyReceipt")
            .outcome(Outcome::Failed, Some(format!("{about}: not genuine: {p}"))),
    }
    .key(&session.alias, Some(session.version));
    let session_id = session_id.to_string();
    state
        .write(event, move |tx| {
            Box::pin(async move {
                Ok(match (problem, command, receipt) {
                    (None, Some(c), Some(r)) => {
                        if !rows::mark_receipt(tx, &session_id, counter, now).await? {
                            // Presented twice at once: the other presentation won.
                            return Err(OpsError::Aborted(
                                "receipt presented concurrently; it was verified once".into(),
                            ));
                        }
                        if c.op == Op::Load.as_str() && r.status == 0 {
                            rows::confirm_proxy_load(tx, &c.txn_id, now).await?;
                        }
                        Verified::Genuine(r)
                    }
                    _ => Verified::NotGenuine,
                })
            })
        })
        .await
}

/// Whose proxy loads `caller` may list (the policy decides: an issuer its own,
/// an officer any issuer's or all): `None` for all.
pub fn proxy_load_scope(caller: &Caller, asked: Option<&str>) -> Result<Option<String>, OpsError> {
    match brandkms_policy::proxy_load_scope(&policy_entity(&caller.entity), asked) {
        Ok(ProxyLoadScope::All) => Ok(None),
        Ok(ProxyLoadScope::Issuer(issuer)) => Ok(Some(issuer)),
        Err(reason) => Err(OpsError::Denied(reason)),
    }
}

/// Proxy loads in a period.
pub async fn proxy_loads(
    state: &AppState,
    issuer: Option<&str>,
    from: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<ProxyLoadRecord>, OpsError> {
    let mut conn = state.store.conn().await?;
    Ok(rows::proxy_loads(&mut conn, issuer, from, until).await?)
}
