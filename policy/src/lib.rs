//! The tie-up policy of brandkms: a pure function from (caller, action, key,
//! tie-ups, consents, time) to a decision. No I/O, no async, no logging, no clock.

mod decision;
mod names;

pub use decision::{Decision, DenyReason};
pub use names::{
    Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, ParseNameError, Purpose, TieUpMode,
    TieUpState,
};

/// Rule 7: whether an entity of this kind may call officer operations.
pub fn can_administer(kind: EntityKind) -> Decision {
    if kind == EntityKind::Officer {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::OfficerRoleRequired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_officers_administer() {
        for kind in EntityKind::ALL {
            let d = can_administer(*kind);
            assert_eq!(d.is_allowed(), *kind == EntityKind::Officer, "{kind}");
            if let Decision::Deny(r) = d {
                assert!(r.to_string().starts_with("rule 7"));
            }
        }
    }
}
