//! The tie-up policy of brandkms: a pure function from (caller, action, key,
//! tie-ups, consents, time) to a decision. No I/O, no async, no logging, no clock:
//! the caller gathers the facts and passes the time.

mod decision;
mod names;
mod officers;
mod rules;

pub use decision::{Decision, DenyReason};
pub use names::{
    Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, ParseNameError, Purpose,
    SensitiveOperation, TieUpMode, TieUpState,
};
pub use officers::{
    Approver, Proposal, can_administer, can_approve, needs_second_officer, widens_cryptoperiod,
    widens_supply,
};
pub use rules::{
    Action, Consent, Entity, Key, ProxyLoadScope, Request, TieUp, can_consent, decide,
    may_hold_keys, proxy_load_scope,
};

#[cfg(test)]
mod seed_scenarios;
