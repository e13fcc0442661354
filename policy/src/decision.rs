//! Decisions and the named reasons for denial. Every rule of DESIGN.md §3 has its
//! own reason, so that a denial always names the rule that denied it.

use std::fmt;

/// Why a request is denied: one variant per rule of DESIGN.md §3.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Rule 2: the entity is suspended.
    EntitySuspended,
    /// Rule 7: the operation needs the officer role.
    OfficerRoleRequired,
}

impl DenyReason {
    /// The number of the rule in DESIGN.md §3.
    pub fn rule(&self) -> u8 {
        match self {
            DenyReason::EntitySuspended => 2,
            DenyReason::OfficerRoleRequired => 7,
        }
    }

    /// A stable identifier for logs and the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::EntitySuspended => "entity_suspended",
            DenyReason::OfficerRoleRequired => "officer_role_required",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            DenyReason::EntitySuspended => "the calling entity is suspended",
            DenyReason::OfficerRoleRequired => {
                "only security officers (entity kind officer) may call the Admin service"
            }
        };
        write!(f, "rule {} ({}): {what}", self.rule(), self.code())
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
