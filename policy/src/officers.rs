//! Rule 7: officer operations need the officer role; the configured sensitive ones
//! need a second, different officer's approval before they run.

use crate::decision::{Decision, DenyReason};
use crate::names::{EntityKind, KeyClass, SensitiveOperation, TieUpMode, TieUpState};
use crate::rules::TieUp;

/// Whether an entity of this kind may call officer operations.
pub fn can_administer(kind: EntityKind) -> Decision {
    if kind == EntityKind::Officer {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::OfficerRoleRequired)
    }
}

impl SensitiveOperation {
    /// The default dual-control set: all of them.
    pub const DEFAULT: &'static [SensitiveOperation] = &[
        SensitiveOperation::RotateKey,
        SensitiveOperation::DestroyKeyVersion,
        SensitiveOperation::CreateSupplyTieUp,
        SensitiveOperation::WidenSupplyTieUp,
        SensitiveOperation::RegisterOfficer,
        SensitiveOperation::ResumeOfficer,
        SensitiveOperation::SetDualControl,
        SensitiveOperation::ImportKey,
        SensitiveOperation::MarkCompromised,
        SensitiveOperation::WidenCryptoperiod,
    ];
}

impl SensitiveOperation {
    /// Whether the operation on a key of `class` is the sensitive kind: rotating
    /// and destroying concern card-access and settlement keys only.
    pub fn concerns(self, class: KeyClass) -> bool {
        match self {
            SensitiveOperation::RotateKey | SensitiveOperation::DestroyKeyVersion => {
                matches!(class, KeyClass::CardAccess | KeyClass::Settlement)
            }
            SensitiveOperation::CreateSupplyTieUp
            | SensitiveOperation::WidenSupplyTieUp
            | SensitiveOperation::RegisterOfficer
            | SensitiveOperation::ResumeOfficer
            | SensitiveOperation::SetDualControl
            | SensitiveOperation::ImportKey => true,
            SensitiveOperation::MarkCompromised | SensitiveOperation::WidenCryptoperiod => {
                !matches!(class, KeyClass::Internal | KeyClass::Transport)
            }
        }
    }
}

/// Whether changing a tie-up from `before` to `after` widens what it supplies: a
/// key supplied that was not, a suspended tie-up with `supply` keys made active,
/// or the window of a tie-up with `supply` keys made longer at either end.
pub fn widens_supply(before: &TieUp, after: &TieUp) -> bool {
    let supplied = |t: &TieUp| -> Vec<String> {
        t.keys
            .iter()
            .filter(|(_, m)| *m == TieUpMode::Supply)
            .map(|(a, _)| a.clone())
            .collect()
    };
    let after_supplied = supplied(after);
    if after_supplied.is_empty() || after.state != TieUpState::Active {
        return false;
    }
    let before_supplied = supplied(before);
    let new_key = after_supplied.iter().any(|a| !before_supplied.contains(a));
    let reactivated = before.state != TieUpState::Active;
    let earlier_start = after.valid_from < before.valid_from;
    let later_end = match (before.valid_until, after.valid_until) {
        (Some(_), None) => true,
        (Some(b), Some(a)) => a > b,
        (None, _) => false,
    };
    new_key || reactivated || earlier_start || later_end
}

/// Whether moving a key version's cryptoperiod from `before` to `after`
/// (each `(not_before, not_after)` in Unix ms, `None` unbounded) lets it
/// serve at a time it did not: an earlier (or removed) start, a later (or
/// removed) end.
pub fn widens_cryptoperiod(
    before: (Option<i64>, Option<i64>),
    after: (Option<i64>, Option<i64>),
) -> bool {
    let earlier_start = match (before.0, after.0) {
        (Some(_), None) => true,
        (Some(b), Some(a)) => a < b,
        (None, _) => false,
    };
    let later_end = match (before.1, after.1) {
        (Some(_), None) => true,
        (Some(b), Some(a)) => a > b,
        (None, _) => false,
    };
    earlier_start || later_end
}

/// Whether `op` needs a second officer under the configured set.
pub fn needs_second_officer(op: SensitiveOperation, configured: &[SensitiveOperation]) -> bool {
    configured.contains(&op)
}

/// A pending proposal, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The officer who proposed it.
    pub proposer: String,
    /// When it was proposed (Unix ms).
    pub created_at: i64,
    /// When it expires (Unix ms).
    pub expires_at: i64,
}

/// Who approves, as the policy sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approver<'a> {
    /// Its entity id.
    pub id: &'a str,
    /// Its kind.
    pub kind: EntityKind,
    /// When it was registered (Unix ms).
    pub registered_at: i64,
}

/// Whether `approver` may approve `proposal` at `now`: an officer, not the
/// proposer, registered before the proposal was made (so that an officer
/// registered while the proposal waited — by its proposer, say — cannot be
/// the second officer), before expiry (an expired proposal is refused as a
/// precondition by the caller; here it is rule 7's second officer that is
/// missing).
pub fn can_approve(approver: Approver<'_>, proposal: &Proposal, now: i64) -> Decision {
    if let Decision::Deny(r) = can_administer(approver.kind) {
        return Decision::Deny(r);
    }
    if approver.id == proposal.proposer {
        return Decision::Deny(DenyReason::SelfApproval);
    }
    if approver.registered_at >= proposal.created_at {
        return Decision::Deny(DenyReason::ApproverNewerThanProposal);
    }
    if now >= proposal.expires_at {
        return Decision::Deny(DenyReason::SecondOfficerRequired);
    }
    Decision::Allow
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

    #[test]
    fn approval_needs_a_different_officer_before_expiry() {
        let p = Proposal {
            proposer: "officer-1".into(),
            created_at: 5,
            expires_at: 1_000,
        };
        let officer = |id| Approver {
            id,
            kind: EntityKind::Officer,
            registered_at: 0,
        };
        assert_eq!(
            can_approve(officer("officer-1"), &p, 10),
            Decision::Deny(DenyReason::SelfApproval)
        );
        assert!(can_approve(officer("officer-2"), &p, 10).is_allowed());
        assert!(!can_approve(officer("officer-2"), &p, 1_000).is_allowed());
        let newer = Approver {
            registered_at: 5,
            ..officer("officer-9")
        };
        assert_eq!(
            can_approve(newer, &p, 10),
            Decision::Deny(DenyReason::ApproverNewerThanProposal)
        );
        let issuer = Approver {
            kind: EntityKind::Issuer,
            ..officer("issuer-2-3")
        };
        assert_eq!(
            can_approve(issuer, &p, 10),
            Decision::Deny(DenyReason::OfficerRoleRequired)
        );
        assert!(needs_second_officer(
            SensitiveOperation::RotateKey,
            SensitiveOperation::DEFAULT
        ));
        assert!(!needs_second_officer(SensitiveOperation::RotateKey, &[]));
    }

    #[test]
    fn names_round_trip() {
        for op in SensitiveOperation::ALL {
            assert_eq!(op.as_str().parse::<SensitiveOperation>(), Ok(*op));
        }
        assert!("rotate".parse::<SensitiveOperation>().is_err());
        assert!(SensitiveOperation::RotateKey.concerns(KeyClass::CardAccess));
        assert!(SensitiveOperation::DestroyKeyVersion.concerns(KeyClass::Settlement));
        assert!(!SensitiveOperation::RotateKey.concerns(KeyClass::Authenticator));
    }

    fn tie_up(keys: &[(&str, TieUpMode)], state: TieUpState, window: (i64, Option<i64>)) -> TieUp {
        TieUp {
            id: "tu-1".into(),
            entity_id: "bank-center-b".into(),
            state,
            keys: keys.iter().map(|(a, m)| (a.to_string(), *m)).collect(),
            valid_from: window.0,
            valid_until: window.1,
            sponsor_issuer: None,
            per_transaction_limit: None,
        }
    }

    #[test]
    fn widening_supply() {
        use TieUpMode::{Hold, Supply};
        use TieUpState::{Active, Suspended};
        let base = tie_up(&[("a", Supply), ("b", Hold)], Active, (100, Some(200)));
        let same = base.clone();
        assert!(!widens_supply(&base, &same));
        // A key moved from hold to supply, or a new supply key.
        assert!(widens_supply(
            &base,
            &tie_up(&[("a", Supply), ("b", Supply)], Active, (100, Some(200)))
        ));
        assert!(widens_supply(
            &base,
            &tie_up(&[("a", Supply), ("c", Supply)], Active, (100, Some(200)))
        ));
        // Narrowing or holding only does not.
        assert!(!widens_supply(
            &base,
            &tie_up(&[("b", Hold)], Active, (100, Some(200)))
        ));
        assert!(!widens_supply(
            &base,
            &tie_up(&[("a", Hold), ("c", Hold)], Active, (100, Some(200)))
        ));
        assert!(!widens_supply(
            &base,
            &tie_up(&[("a", Supply)], Active, (150, Some(180)))
        ));
        // Longer windows and reactivation do.
        assert!(widens_supply(
            &base,
            &tie_up(&[("a", Supply)], Active, (50, Some(200)))
        ));
        assert!(widens_supply(
            &base,
            &tie_up(&[("a", Supply)], Active, (100, Some(300)))
        ));
        assert!(widens_supply(
            &base,
            &tie_up(&[("a", Supply)], Active, (100, None))
        ));
        let suspended = tie_up(&[("a", Supply)], Suspended, (100, Some(200)));
        assert!(widens_supply(
            &suspended,
            &tie_up(&[("a", Supply)], Active, (100, Some(200)))
        ));
        assert!(!widens_supply(&base, &suspended));
    }
}
