//! Rule 7: officer operations need the officer role; the configured sensitive ones
//! need a second, different officer's approval before they run.

use crate::decision::{Decision, DenyReason};
use crate::names::EntityKind;

/// Whether an entity of this kind may call officer operations.
pub fn can_administer(kind: EntityKind) -> Decision {
    if kind == EntityKind::Officer {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::OfficerRoleRequired)
    }
}

/// Admin operations that may be placed under dual control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SensitiveOperation {
    /// Rotating a card-access or settlement key.
    RotateKey,
    /// Scheduling the destruction of a card-access or settlement key version.
    DestroyKeyVersion,
    /// Creating a tie-up with a `supply` key.
    CreateSupplyTieUp,
    /// Updating a tie-up so that it supplies a key it did not.
    WidenSupplyTieUp,
}

impl SensitiveOperation {
    /// The default dual-control set: all of them.
    pub const DEFAULT: &'static [SensitiveOperation] = &[
        SensitiveOperation::RotateKey,
        SensitiveOperation::DestroyKeyVersion,
        SensitiveOperation::CreateSupplyTieUp,
        SensitiveOperation::WidenSupplyTieUp,
    ];
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
    /// When it expires (Unix ms).
    pub expires_at: i64,
}

/// Whether `approver` may approve `proposal` at `now`: an officer, not the
/// proposer, before expiry (an expired proposal is refused as a precondition by
/// the caller; here it is rule 7's second officer that is missing).
pub fn can_approve(
    approver_id: &str,
    approver_kind: EntityKind,
    proposal: &Proposal,
    now: i64,
) -> Decision {
    if let Decision::Deny(r) = can_administer(approver_kind) {
        return Decision::Deny(r);
    }
    if approver_id == proposal.proposer {
        return Decision::Deny(DenyReason::SelfApproval);
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
            expires_at: 1_000,
        };
        assert_eq!(
            can_approve("officer-1", EntityKind::Officer, &p, 10),
            Decision::Deny(DenyReason::SelfApproval)
        );
        assert!(can_approve("officer-2", EntityKind::Officer, &p, 10).is_allowed());
        assert!(!can_approve("officer-2", EntityKind::Officer, &p, 1_000).is_allowed());
        assert_eq!(
            can_approve("issuer-2-3", EntityKind::Issuer, &p, 10),
            Decision::Deny(DenyReason::OfficerRoleRequired)
        );
        assert!(needs_second_officer(
            SensitiveOperation::RotateKey,
            SensitiveOperation::DEFAULT
        ));
        assert!(!needs_second_officer(SensitiveOperation::RotateKey, &[]));
    }
}
