//! The rules of docs/design.md §3 as one pure function, [`decide`]. Its inputs are
//! plain data the caller gathers (entity, key, tie-ups, standing consents, the
//! time); it reads nothing else.

use crate::decision::{Decision, DenyReason};
use crate::names::{EntityKind, EntityStatus, KeyClass, KeyState, TieUpMode, TieUpState};

/// A participant, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entity {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: EntityKind,
    /// Active or suspended.
    pub status: EntityStatus,
    /// Terminals: tamper-resistant.
    pub tamper_resistant: bool,
}

/// A key version, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// The alias.
    pub alias: String,
    /// The class.
    pub class: KeyClass,
    /// Entity-owned keys: the owner.
    pub owner: Option<String>,
    /// Whether it may be delivered, wrapped.
    pub exportable: bool,
    /// The state of the version concerned.
    pub state: KeyState,
    /// The version's cryptoperiod: not used before this (Unix ms, inclusive).
    pub not_before: Option<i64>,
    /// The version's cryptoperiod: no new work from this on (Unix ms, exclusive).
    pub not_after: Option<i64>,
    /// An officer marked the version compromised: refused for everything.
    pub compromised: bool,
}

impl Key {
    /// Why the version's lifecycle refuses `action` at `now`, if it does: a
    /// compromised version serves nothing; before its not-before nothing;
    /// from its not-after on no new work (NIST SP 800-57's originator-usage
    /// period ends), while data protected before may still be processed
    /// ([`Action::processes_existing`]), as far as the state allows.
    pub fn lifecycle_refuses(&self, action: Action, now: i64) -> Option<DenyReason> {
        self.lifecycle(!action.processes_existing(), now)
    }

    /// As [`Key::lifecycle_refuses`], for uses outside the tie-up rules:
    /// `new_work` (publishing a public key to encrypt under, unwrapping an
    /// import) or not (checking a signature made before).
    pub fn lifecycle(&self, new_work: bool, now: i64) -> Option<DenyReason> {
        if self.compromised {
            Some(DenyReason::KeyCompromised)
        } else if self.not_before.is_some_and(|t| now < t) {
            Some(DenyReason::KeyNotYetValid)
        } else if new_work && self.not_after.is_some_and(|t| now >= t) {
            Some(DenyReason::KeyExpired)
        } else {
            None
        }
    }
}

/// A tie-up agreement. Ordered by id first (then every field), so that choosing
/// among several never depends on the order they were given in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TieUp {
    /// Its id.
    pub id: String,
    /// The entity.
    pub entity_id: String,
    /// Active, suspended or terminated.
    pub state: TieUpState,
    /// Keys covered and their modes.
    pub keys: Vec<(String, TieUpMode)>,
    /// Start (Unix ms, inclusive).
    pub valid_from: i64,
    /// End (Unix ms, exclusive), if any.
    pub valid_until: Option<i64>,
    /// The issuer whose contract brought the entity in.
    pub sponsor_issuer: Option<String>,
    /// Per-transaction limit in minor units.
    pub per_transaction_limit: Option<u64>,
}

impl TieUp {
    /// The mode in which this tie-up covers `alias`.
    pub fn mode_for(&self, alias: &str) -> Option<TieUpMode> {
        self.keys.iter().find(|(a, _)| a == alias).map(|(_, m)| *m)
    }

    /// Whether the tie-up is in force at `now`: active, and `now` inside its
    /// window (start inclusive, end exclusive).
    pub fn is_in_force(&self, now: i64) -> bool {
        self.not_in_force(now).is_none()
    }

    /// Why the tie-up is not in force at `now`, if it is not.
    pub fn not_in_force(&self, now: i64) -> Option<DenyReason> {
        match self.state {
            TieUpState::Terminated => Some(DenyReason::TieUpTerminated),
            TieUpState::Suspended => Some(DenyReason::TieUpSuspended),
            TieUpState::Active if now < self.valid_from => Some(DenyReason::TieUpNotYetValid),
            TieUpState::Active if self.valid_until.is_some_and(|u| now >= u) => {
                Some(DenyReason::TieUpExpired)
            }
            TieUpState::Active => None,
        }
    }
}

/// A standing consent: `issuer` consents that `third_party` receives `alias`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Consent {
    /// The issuer that consents.
    pub issuer: String,
    /// The entity that may receive the key.
    pub third_party: String,
    /// The key.
    pub alias: String,
}

/// What the caller wants to do with the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Receive the key, wrapped under its transport key.
    Receive,
    /// Have the service authenticate a card with the key.
    Authenticate,
    /// Have the service seal a DEBIT with a session of the key.
    Seal {
        /// The amount, in minor units.
        amount: u64,
    },
    /// Have the service seal a READ_BALANCE (no amount) with a session of the key.
    ReadBalance,
    /// Have the service check a card's receipt for a command sealed before.
    VerifyReceipt,
    /// Have the service seal a LOAD for an offline issuer (proxy loading).
    ProxyLoad {
        /// The amount, in minor units.
        amount: u64,
    },
    /// Have the service decrypt under the key.
    Decrypt,
    /// Have the service sign a settlement result with the key (RSA-PSS).
    Sign,
    /// Have the service MAC a settlement result with an authenticator key.
    GenerateMac,
    /// Have the service check a settlement result's MAC.
    VerifyMac,
}

impl Action {
    /// Whether the action only processes what was protected before (decrypting
    /// a ciphertext from the field, checking a MAC made earlier), rather than
    /// protecting or establishing anything new.
    pub fn processes_existing(self) -> bool {
        matches!(
            self,
            Action::Decrypt | Action::VerifyMac | Action::VerifyReceipt
        )
    }
}

/// Everything one decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The caller.
    pub caller: &'a Entity,
    /// What it wants.
    pub action: Action,
    /// The key version concerned.
    pub key: &'a Key,
    /// The caller's tie-ups (others are ignored).
    pub tie_ups: &'a [TieUp],
    /// Standing consents.
    pub consents: &'a [Consent],
    /// Whether the caller has an established transport key.
    pub transport_key: bool,
    /// Now (Unix ms), from the caller's clock.
    pub now: i64,
}

/// Entity kinds that may hold keys (rule 3); terminals also need tamper resistance.
pub fn may_hold_keys(entity: &Entity) -> Result<(), DenyReason> {
    match entity.kind {
        EntityKind::Issuer
        | EntityKind::PosCenter
        | EntityKind::MmkCenter
        | EntityKind::BankCenter => Ok(()),
        EntityKind::MerchantTerminal if entity.tamper_resistant => Ok(()),
        EntityKind::MerchantTerminal => Err(DenyReason::TerminalNotTamperResistant),
        EntityKind::Cybershop => Err(DenyReason::CybershopNeverSupplied),
        other => Err(DenyReason::KindMayNotHoldKeys(other)),
    }
}

/// Key states (docs/design.md §2): which versions serve which action.
fn state_allows(state: KeyState, action: Action) -> bool {
    use KeyState as S;
    match action {
        Action::Receive => state == S::Active,
        Action::Authenticate
        | Action::Seal { .. }
        | Action::ReadBalance
        | Action::VerifyReceipt
        | Action::ProxyLoad { .. } => matches!(state, S::Active | S::AuthOnly),
        Action::Decrypt => matches!(state, S::Active | S::DecryptOnly),
        Action::Sign => state == S::Active,
        Action::GenerateMac => state == S::Active,
        Action::VerifyMac => matches!(state, S::Active | S::AuthOnly),
    }
}

/// Decides a request. Pure: the same inputs always give the same decision.
pub fn decide(r: &Request<'_>) -> Decision {
    match check(r) {
        Ok(()) => Decision::Allow,
        Err(reason) => Decision::Deny(reason),
    }
}

fn check(r: &Request<'_>) -> Result<(), DenyReason> {
    // Rule 2: a suspended entity gets nothing.
    if r.caller.status == EntityStatus::Suspended {
        return Err(DenyReason::EntitySuspended);
    }
    // Rule 3: a cybershop is never supplied a key, whatever the data says.
    if r.action == Action::Receive && r.caller.kind == EntityKind::Cybershop {
        return Err(DenyReason::CybershopNeverSupplied);
    }
    // Rule 6: an entity-owned key serves its owner only, and only to decrypt.
    if let Some(owner) = &r.key.owner {
        if owner != &r.caller.id {
            return Err(DenyReason::NotKeyOwner);
        }
        if r.action != Action::Decrypt {
            return Err(DenyReason::ModeDoesNotAllow(TieUpMode::Hold));
        }
        return key_state(r);
    }
    // Rules 1 and 2: a tie-up in force covering the key. When several cover it,
    // any one that allows the request suffices; otherwise the first refusal (in
    // tie-up id order, so that the answer never depends on the input's order).
    let mut covering: Vec<&TieUp> = r
        .tie_ups
        .iter()
        .filter(|t| t.entity_id == r.caller.id && t.mode_for(&r.key.alias).is_some())
        .collect();
    if covering.is_empty() {
        return Err(DenyReason::NoTieUp);
    }
    covering.sort();
    let mut first_refusal = None;
    for t in covering {
        match check_tie_up(r, t) {
            Ok(()) => return Ok(()),
            Err(reason) => {
                first_refusal.get_or_insert(reason);
            }
        }
    }
    Err(first_refusal.unwrap_or(DenyReason::NoTieUp))
}

/// The key-lifecycle rules (docs/design.md §2): compromise, the version's state and
/// its cryptoperiod. Every allowed decision passes through here.
fn key_state(r: &Request<'_>) -> Result<(), DenyReason> {
    if let Some(reason) = r.key.lifecycle_refuses(r.action, r.now) {
        return Err(reason);
    }
    if state_allows(r.key.state, r.action) {
        Ok(())
    } else {
        Err(DenyReason::KeyState(r.key.state))
    }
}

fn check_tie_up(r: &Request<'_>, t: &TieUp) -> Result<(), DenyReason> {
    if let Some(reason) = t.not_in_force(r.now) {
        return Err(reason);
    }
    let mode = t.mode_for(&r.key.alias).ok_or(DenyReason::NoTieUp)?;
    match r.action {
        Action::Receive => {
            // Rules 3 and 5: only `supply` exports; `hold` and `proxy_load` never do.
            if mode != TieUpMode::Supply {
                return Err(DenyReason::ModeDoesNotSupply(mode));
            }
            may_hold_keys(r.caller)?;
            if !r.key.exportable {
                return Err(DenyReason::KeyNotExportable);
            }
            if !r.transport_key {
                return Err(DenyReason::NoTransportKey);
            }
            key_state(r)?;
            // Rule 4: a sponsored entity needs the sponsor's standing consent.
            if let Some(issuer) = &t.sponsor_issuer {
                let consented = r.consents.iter().any(|c| {
                    &c.issuer == issuer && c.third_party == r.caller.id && c.alias == r.key.alias
                });
                if !consented {
                    return Err(DenyReason::ConsentMissing {
                        issuer: issuer.clone(),
                    });
                }
            }
            Ok(())
        }
        Action::Authenticate
        | Action::Seal { .. }
        | Action::ReadBalance
        | Action::VerifyReceipt
        | Action::ProxyLoad { .. } => {
            // Rule 5: the brand uses the key on the entity's behalf under `hold`
            // (authentication, DEBIT and READ_BALANCE) or `proxy_load` (the
            // loading portal: authentication, LOAD and READ_BALANCE, never a
            // DEBIT).
            if r.key.class != KeyClass::CardAccess {
                return Err(DenyReason::ModeDoesNotAllow(mode));
            }
            match (mode, r.action) {
                (TieUpMode::Supply, _) => return Err(DenyReason::ModeDoesNotAllow(mode)),
                (TieUpMode::Hold, Action::ProxyLoad { .. })
                | (TieUpMode::ProxyLoad, Action::Seal { .. }) => {
                    return Err(DenyReason::ModeDoesNotAllow(mode));
                }
                (TieUpMode::ProxyLoad, _) if r.caller.kind != EntityKind::LoadingPortal => {
                    return Err(DenyReason::NotLoadingPortal);
                }
                _ => {}
            }
            if let Action::Seal { amount } | Action::ProxyLoad { amount } = r.action
                && let Some(limit) = t.per_transaction_limit
                && amount > limit
            {
                return Err(DenyReason::LimitExceeded { limit });
            }
            key_state(r)
        }
        Action::Decrypt | Action::Sign => {
            // Rule 6: settlement keys decrypt and sign only for clearing houses
            // with a tie-up.
            if r.key.class != KeyClass::Settlement {
                return Err(if r.action == Action::Sign {
                    DenyReason::ClassDoesNotSign
                } else {
                    DenyReason::ClassDoesNotDecrypt
                });
            }
            if r.caller.kind != EntityKind::ClearingHouse {
                return Err(DenyReason::NotClearingHouse);
            }
            key_state(r)
        }
        Action::GenerateMac | Action::VerifyMac => {
            // Rule 6: authenticator keys, shared by the clearing house (which
            // generates) and a store (which verifies) under their tie-ups.
            if r.key.class != KeyClass::Authenticator {
                return Err(DenyReason::NotAuthenticatorKey);
            }
            if r.action == Action::GenerateMac && r.caller.kind != EntityKind::ClearingHouse {
                return Err(DenyReason::MacByClearingHouseOnly);
            }
            key_state(r)
        }
    }
}

/// Whether `issuer` may grant or revoke consent for `alias`: it must be an issuer
/// whose own tie-up (active or suspended, not terminated) covers the key.
pub fn can_consent(issuer: &Entity, alias: &str, tie_ups: &[TieUp]) -> Decision {
    if issuer.status == EntityStatus::Suspended {
        return Decision::Deny(DenyReason::EntitySuspended);
    }
    let own = issuer.kind == EntityKind::Issuer
        && tie_ups.iter().any(|t| {
            t.entity_id == issuer.id
                && t.state != TieUpState::Terminated
                && t.mode_for(alias).is_some()
        });
    if own {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotIssuersKey)
    }
}

/// Whose proxy loads a caller may list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyLoadScope {
    /// Every issuer's (an officer who named none).
    All,
    /// One issuer's.
    Issuer(String),
}

/// Who may list proxy loads, and whose: an issuer its own (naming none, or
/// itself), an officer any issuer's or all; nobody else.
pub fn proxy_load_scope(
    caller: &Entity,
    asked: Option<&str>,
) -> Result<ProxyLoadScope, DenyReason> {
    if caller.status == EntityStatus::Suspended {
        return Err(DenyReason::EntitySuspended);
    }
    match caller.kind {
        EntityKind::Officer => Ok(asked.map_or(ProxyLoadScope::All, |i| {
            ProxyLoadScope::Issuer(i.to_string())
        })),
        EntityKind::Issuer => match asked {
            Some(other) if other != caller.id => Err(DenyReason::OthersProxyLoads),
            _ => Ok(ProxyLoadScope::Issuer(caller.id.clone())),
        },
        other => Err(DenyReason::ProxyLoadsNotListed(other)),
    }
}
