//! Decisions and the named reasons for denial. Every rule of DESIGN.md §3 (and the
//! key-state rule of §2) has its own reasons, so that a denial always names the
//! rule that denied it.

use std::fmt;

use crate::names::{EntityKind, KeyState, TieUpMode};

/// Why a request is denied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Rule 1: no tie-up covers the entity and the key.
    NoTieUp,
    /// Rule 2: the entity is suspended.
    EntitySuspended,
    /// Rule 2: the tie-up's window has not begun.
    TieUpNotYetValid,
    /// Rule 2: the tie-up's window has ended.
    TieUpExpired,
    /// Rule 2: the tie-up is suspended.
    TieUpSuspended,
    /// Rule 2: the tie-up is terminated.
    TieUpTerminated,
    /// Rule 3: a cybershop is never supplied a key.
    CybershopNeverSupplied,
    /// Rule 3: this kind of entity may not hold keys.
    KindMayNotHoldKeys(EntityKind),
    /// Rule 3: a merchant terminal that is not tamper-resistant holds no keys.
    TerminalNotTamperResistant,
    /// Rule 3: the entity has no transport key to receive keys under.
    NoTransportKey,
    /// Rule 3: the key is not exportable.
    KeyNotExportable,
    /// Rule 3: the tie-up covers the key in a mode that does not supply it.
    ModeDoesNotSupply(TieUpMode),
    /// Rule 4: the sponsoring issuer's consent for this key does not stand.
    ConsentMissing {
        /// The issuer whose consent is needed.
        issuer: String,
    },
    /// Rule 5: the tie-up's mode does not allow this use of the key.
    ModeDoesNotAllow(TieUpMode),
    /// Rule 5: the amount is above the tie-up's per-transaction limit.
    LimitExceeded {
        /// The limit, in minor units.
        limit: u64,
    },
    /// Rule 5: proxy loading is done through the loading portal only.
    NotLoadingPortal,
    /// Rule 6: settlement keys decrypt only for clearing houses.
    NotClearingHouse,
    /// Rule 6: an entity-owned key serves its owner only.
    NotKeyOwner,
    /// Rule 6: the key's class does not decrypt.
    ClassDoesNotDecrypt,
    /// Rule 7: the operation needs the officer role.
    OfficerRoleRequired,
    /// Rule 7: the operation needs a second, different officer's approval.
    SecondOfficerRequired,
    /// Rule 7: an officer cannot approve their own proposal.
    SelfApproval,
    /// Consent: only an issuer consents, and only for a key its own tie-up covers.
    NotIssuersKey,
    /// Key states (DESIGN.md §2): this version's state does not allow this use.
    KeyState(KeyState),
}

impl DenyReason {
    /// The rule in DESIGN.md §3 (1 to 7), or 0 for the key-state rule of §2 and
    /// the consent rule of §1.
    pub fn rule(&self) -> u8 {
        use DenyReason as R;
        match self {
            R::NoTieUp => 1,
            R::EntitySuspended
            | R::TieUpNotYetValid
            | R::TieUpExpired
            | R::TieUpSuspended
            | R::TieUpTerminated => 2,
            R::CybershopNeverSupplied
            | R::KindMayNotHoldKeys(_)
            | R::TerminalNotTamperResistant
            | R::NoTransportKey
            | R::KeyNotExportable
            | R::ModeDoesNotSupply(_) => 3,
            R::ConsentMissing { .. } => 4,
            R::ModeDoesNotAllow(_) | R::LimitExceeded { .. } | R::NotLoadingPortal => 5,
            R::NotClearingHouse | R::NotKeyOwner | R::ClassDoesNotDecrypt => 6,
            R::OfficerRoleRequired | R::SecondOfficerRequired | R::SelfApproval => 7,
            R::NotIssuersKey | R::KeyState(_) => 0,
        }
    }

    /// A stable identifier for logs and the audit trail.
    pub fn code(&self) -> &'static str {
        use DenyReason as R;
        match self {
            R::NoTieUp => "no_tie_up",
            R::EntitySuspended => "entity_suspended",
            R::TieUpNotYetValid => "tie_up_not_yet_valid",
            R::TieUpExpired => "tie_up_expired",
            R::TieUpSuspended => "tie_up_suspended",
            R::TieUpTerminated => "tie_up_terminated",
            R::CybershopNeverSupplied => "cybershop_never_supplied",
            R::KindMayNotHoldKeys(_) => "kind_may_not_hold_keys",
            R::TerminalNotTamperResistant => "terminal_not_tamper_resistant",
            R::NoTransportKey => "no_transport_key",
            R::KeyNotExportable => "key_not_exportable",
            R::ModeDoesNotSupply(_) => "mode_does_not_supply",
            R::ConsentMissing { .. } => "consent_missing",
            R::ModeDoesNotAllow(_) => "mode_does_not_allow",
            R::LimitExceeded { .. } => "limit_exceeded",
            R::NotLoadingPortal => "not_loading_portal",
            R::NotClearingHouse => "not_clearing_house",
            R::NotKeyOwner => "not_key_owner",
            R::ClassDoesNotDecrypt => "class_does_not_decrypt",
            R::OfficerRoleRequired => "officer_role_required",
            R::SecondOfficerRequired => "second_officer_required",
            R::SelfApproval => "self_approval",
            R::NotIssuersKey => "not_issuers_key",
            R::KeyState(_) => "key_state",
        }
    }

    fn explanation(&self) -> String {
        use DenyReason as R;
        match self {
            R::NoTieUp => "no tie-up covers this entity and this key".into(),
            R::EntitySuspended => "the calling entity is suspended".into(),
            R::TieUpNotYetValid => "the tie-up covering this key is not valid yet".into(),
            R::TieUpExpired => "the tie-up covering this key has expired".into(),
            R::TieUpSuspended => "the tie-up covering this key is suspended".into(),
            R::TieUpTerminated => "the tie-up covering this key is terminated".into(),
            R::CybershopNeverSupplied => {
                "a cybershop is never supplied a key (keys do not travel over the Internet)".into()
            }
            R::KindMayNotHoldKeys(k) => format!("an entity of kind {k} may not hold keys"),
            R::TerminalNotTamperResistant => {
                "a merchant terminal that is not tamper-resistant holds no keys".into()
            }
            R::NoTransportKey => {
                "no transport key is established: call EstablishTransportKey first".into()
            }
            R::KeyNotExportable => "the key is not exportable".into(),
            R::ModeDoesNotSupply(m) => {
                format!("the tie-up covers this key in mode {m}, which never supplies it")
            }
            R::ConsentMissing { issuer } => {
                format!(
                    "issuer {issuer}, whose contract brought this entity in, has not consented to supply this key"
                )
            }
            R::ModeDoesNotAllow(m) => {
                format!("the tie-up's mode {m} does not allow this use of the key")
            }
            R::LimitExceeded { limit } => {
                format!("the amount is above the tie-up's per-transaction limit of {limit}")
            }
            R::NotLoadingPortal => "proxy loading is done through the loading portal only".into(),
            R::NotClearingHouse => "settlement keys decrypt only for clearing houses".into(),
            R::NotKeyOwner => "an entity-owned key serves its owner only".into(),
            R::ClassDoesNotDecrypt => "keys of this class do not decrypt".into(),
            R::OfficerRoleRequired => {
                "only security officers (entity kind officer) may call the Admin service".into()
            }
            R::SecondOfficerRequired => {
                "this operation needs a second, different officer's approval".into()
            }
            R::SelfApproval => "an officer cannot approve their own proposal".into(),
            R::NotIssuersKey => {
                "only an issuer consents, and only for a key its own tie-up covers".into()
            }
            R::KeyState(s) => format!("key version is {s}, which does not allow this use"),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule() {
            0 => write!(f, "{}: {}", self.code(), self.explanation()),
            n => write!(f, "rule {n} ({}): {}", self.code(), self.explanation()),
        }
    }
}

/// The outcome of a policy question.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse, naming the rule.
    Deny(DenyReason),
}

impl Decision {
    /// True when allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// `Ok(())` or the reason.
    pub fn into_result(self) -> Result<(), DenyReason> {
        match self {
            Decision::Allow => Ok(()),
            Decision::Deny(r) => Err(r),
        }
    }
}
