//! The one way an operation asks the policy: [`authorize`] gathers the facts a
//! decision needs from the store (the caller's tie-ups, the standing consents,
//! whether it has a transport key), hands them to the pure
//! `brandkms_policy::decide`, and turns a denial into [`OpsError::Denied`], which
//! names the rule.

use brandkms_policy::{Action, Decision, DenyReason, EntityKind, KeyState, Request, decide};

use crate::ops::{Caller, OpsError};
use crate::store::distribution::{self as consent_rows, ConsentRecord};
use crate::store::entities::EntityRecord;
use crate::store::keys::{self as key_rows, KeyRecord, KeyVersionRecord};
use crate::store::tieups::TieUpRecord;
use crate::store::{Conn, StoreError};

/// Transport keys are named `transport.<entity>`.
pub fn transport_alias(entity_id: &str) -> String {
    format!("transport.{entity_id}")
}

/// What a trusted participant key's alias starts with.
pub const TRUSTED_PREFIX: &str = "trusted.";

/// A participant's RSA public key, marked trusted in a ceremony, is named
/// `trusted.<entity>`.
pub fn trusted_alias(entity_id: &str) -> String {
    format!("{TRUSTED_PREFIX}{entity_id}")
}

/// What an allowed decision was based on, for an operation that needs it too
/// (a delivery wraps under the transport key and reports the tie-up's end), so
/// that nothing is read twice.
#[derive(Debug, Clone)]
pub struct Grounds {
    /// The caller's tie-ups.
    pub tie_ups: std::sync::Arc<[brandkms_policy::TieUp]>,
    /// For [`Action::Receive`]: the caller's active trusted key version, else
    /// its active transport key version.
    pub transport: Option<KeyVersionRecord>,
}

/// Asks the policy whether `caller` may do `action` with version `version` of
/// `key` at `now`. Allowed: the facts it was decided on; refused:
/// [`OpsError::Denied`] with the rule's reason. Every card, settlement and
/// distribution operation goes through here before it uses the token.
pub async fn authorize(
    conn: &mut Conn,
    caller: &Caller,
    key: &KeyRecord,
    version: &KeyVersionRecord,
    action: Action,
    now: i64,
) -> Result<Grounds, OpsError> {
    let tie_ups = caller.view.tie_ups(conn, &caller.entity.id).await?;
    let consents = if action == Action::Receive {
        standing_consents(conn, &caller.entity.id).await?
    } else {
        Vec::new()
    };
    // A delivery goes under the caller's trusted key when it has one, else
    // under its transport key.
    let transport = if action == Action::Receive {
        let mut found = None;
        for alias in [
            trusted_alias(&caller.entity.id),
            transport_alias(&caller.entity.id),
        ] {
            found = key_rows::versions(conn, &alias)
                .await?
                .into_iter()
                .find(|t| t.state == KeyState::Active);
            if found.is_some() {
                break;
            }
        }
        found
    } else {
        None
    };
    let decision = decide(&Request {
        caller: &policy_entity(&caller.entity),
        action,
        key: &policy_key(key, version),
        tie_ups: &tie_ups,
        consents: &consents,
        transport_key: transport.is_some(),
        now,
    });
    match decision {
        Decision::Allow => Ok(Grounds { tie_ups, transport }),
        Decision::Deny(reason) => Err(OpsError::Denied(reason)),
    }
}

/// The key and version a participant asks to use, read through its view. To a
/// participant (not an officer), a key that does not exist, a version it lacks
/// and a key with no active version answer like a key it has no tie-up on
/// (rule 1), unless one of its tie-ups names the alias: so a participant cannot
/// learn which aliases exist from the difference.
pub async fn participant_key_version(
    conn: &mut Conn,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
) -> Result<(KeyRecord, KeyVersionRecord), OpsError> {
    let found = caller.view.key_version(conn, alias, version).await;
    uniform_to_participant(conn, caller, alias, found).await
}

/// What a participant is told when looking up `alias` failed: a missing key or
/// version, or one unfit for the call (`NotFound`, `FailedPrecondition`), reads
/// as rule 1 (no tie-up) unless one of its tie-ups names the alias. Officers
/// and every other outcome pass through unchanged.
pub async fn uniform_to_participant<T>(
    conn: &mut Conn,
    caller: &Caller,
    alias: &str,
    found: Result<T, OpsError>,
) -> Result<T, OpsError> {
    match found {
        Err(e @ (OpsError::NotFound(_) | OpsError::FailedPrecondition(_)))
            if caller.entity.kind != EntityKind::Officer =>
        {
            let tie_ups = caller.view.tie_ups(conn, &caller.entity.id).await?;
            let named = tie_ups.iter().any(|t| t.mode_for(alias).is_some());
            Err(if named {
                e
            } else {
                OpsError::Denied(DenyReason::NoTieUp)
            })
        }
        other => other,
    }
}

/// The policy's view of a key version.
pub fn policy_key(key: &KeyRecord, version: &KeyVersionRecord) -> brandkms_policy::Key {
    brandkms_policy::Key {
        alias: key.alias.clone(),
        class: key.class,
        owner: key.owner_entity.clone(),
        exportable: key.exportable,
        state: version.state,
        not_before: version.not_before,
        not_after: version.not_after,
        compromised: version.compromised_at.is_some(),
    }
}

/// The policy's view of an entity record.
pub fn policy_entity(e: &EntityRecord) -> brandkms_policy::Entity {
    brandkms_policy::Entity {
        id: e.id.clone(),
        kind: e.kind,
        status: e.status,
        tamper_resistant: e.tamper_resistant,
    }
}

/// The policy's view of a tie-up record.
pub fn policy_tie_up(t: &TieUpRecord) -> brandkms_policy::TieUp {
    brandkms_policy::TieUp {
        id: t.id.clone(),
        entity_id: t.entity_id.clone(),
        state: t.state,
        keys: t.keys.clone(),
        valid_from: t.valid_from,
        valid_until: t.valid_until,
        sponsor_issuer: t.sponsor_issuer.clone(),
        per_transaction_limit: t.per_transaction_limit,
    }
}

/// The standing consents concerning `entity_id`, which only a delivery (rule 4)
/// needs.
async fn standing_consents(
    conn: &mut Conn,
    entity_id: &str,
) -> Result<Vec<brandkms_policy::Consent>, StoreError> {
    Ok(consent_rows::consents(conn, Some(entity_id))
        .await?
        .into_iter()
        .filter(ConsentRecord::standing)
        .map(|c| brandkms_policy::Consent {
            issuer: c.issuer,
            third_party: c.third_party,
            alias: c.alias,
        })
        .collect())
}
