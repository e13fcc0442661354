//! Invariants of the policy, for any data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms_policy::{
    Action, Approver, Consent, Decision, DenyReason, Entity, EntityKind, EntityStatus, Key,
    KeyClass, KeyState, Proposal, ProxyLoadScope, Request, TieUp, TieUpMode, TieUpState,
    can_approve, decide, proxy_load_scope, widens_cryptoperiod, widens_supply,
};
use proptest::prelude::*;

const ALIASES: &[&str] = &["a", "b", "c"];
const IDS: &[&str] = &["e1", "e2", "i1", "i2"];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn entity_kind() -> impl Strategy<Value = EntityKind> {
    pick(EntityKind::ALL)
}

fn entity() -> impl Strategy<Value = Entity> {
    (
        pick(IDS),
        entity_kind(),
        pick(EntityStatus::ALL),
        any::<bool>(),
    )
        .prop_map(|(id, kind, status, tr)| Entity {
            id: id.to_string(),
            kind,
            status,
            tamper_resistant: tr,
        })
}

fn key() -> impl Strategy<Value = Key> {
    (
        pick(ALIASES),
        pick(KeyClass::ALL),
        proptest::option::of(pick(IDS)),
        any::<bool>(),
        pick(KeyState::ALL),
        proptest::option::of(-6i64..6),
        proptest::option::of(-6i64..6),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(alias, class, owner, exportable, state, not_before, not_after, compromised)| Key {
                alias: alias.to_string(),
                class,
                owner: owner.map(str::to_string),
                exportable,
                state,
                not_before,
                not_after,
                compromised,
            },
        )
}

fn tie_up() -> impl Strategy<Value = TieUp> {
    (
        0u8..4,
        pick(IDS),
        pick(TieUpState::ALL),
        proptest::collection::vec((pick(ALIASES), pick(TieUpMode::ALL)), 0..3),
        -5i64..5,
        proptest::option::of(-5i64..5),
        proptest::option::of(pick(IDS)),
        proptest::option::of(0u64..10_000),
    )
        .prop_map(
            |(n, entity, state, keys, from, until, sponsor, limit)| TieUp {
                id: format!("t{n}"),
                entity_id: entity.to_string(),
                state,
                keys: keys.into_iter().map(|(a, m)| (a.to_string(), m)).collect(),
                valid_from: from,
                valid_until: until,
                sponsor_issuer: sponsor.map(str::to_string),
                per_transaction_limit: limit,
            },
        )
}

fn consent() -> impl Strategy<Value = Consent> {
    (pick(IDS), pick(IDS), pick(ALIASES)).prop_map(|(i, t, a)| Consent {
        issuer: i.to_string(),
        third_party: t.to_string(),
        alias: a.to_string(),
    })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Receive),
        Just(Action::Authenticate),
        (0u64..20_000).prop_map(|amount| Action::Seal { amount }),
        Just(Action::ReadBalance),
        Just(Action::VerifyReceipt),
        (0u64..20_000).prop_map(|amount| Action::ProxyLoad { amount }),
        Just(Action::Decrypt),
        Just(Action::Sign),
        Just(Action::GenerateMac),
        Just(Action::VerifyMac),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    caller: Entity,
    action: Action,
    key: Key,
    tie_ups: Vec<TieUp>,
    consents: Vec<Consent>,
    transport_key: bool,
    now: i64,
}

impl Case {
    fn decide(&self) -> Decision {
        decide(&Request {
            caller: &self.caller,
            action: self.action,
            key: &self.key,
            tie_ups: &self.tie_ups,
            consents: &self.consents,
            transport_key: self.transport_key,
            now: self.now,
        })
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        entity(),
        action(),
        key(),
        proptest::collection::vec(tie_up(), 0..5),
        proptest::collection::vec(consent(), 0..5),
        any::<bool>(),
        -6i64..6,
    )
        .prop_map(
            |(caller, action, key, tie_ups, consents, transport_key, now)| Case {
                caller,
                action,
                key,
                tie_ups,
                consents,
                transport_key,
                now,
            },
        )
}

fn in_force(t: &TieUp, now: i64) -> bool {
    t.state == TieUpState::Active && t.valid_from <= now && t.valid_until.is_none_or(|u| now < u)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn a_cybershop_is_never_supplied(mut c in case()) {
        c.caller.kind = EntityKind::Cybershop;
        c.action = Action::Receive;
        prop_assert!(!c.decide().is_allowed());
    }

    #[test]
    fn nothing_is_allowed_without_a_tie_up_in_force_covering_the_key(mut c in case()) {
        // Entity-owned keys serve their owner without a tie-up (rule 6).
        c.key.owner = None;
        let covered = c.tie_ups.iter().any(|t| {
            t.entity_id == c.caller.id && in_force(t, c.now) && t.keys.iter().any(|(a, _)| *a == c.key.alias)
        });
        if !covered {
            prop_assert!(!c.decide().is_allowed());
        }
    }

    #[test]
    fn a_suspended_entity_is_always_denied(mut c in case()) {
        c.caller.status = EntityStatus::Suspended;
        prop_assert_eq!(c.decide(), Decision::Deny(DenyReason::EntitySuspended));
    }

    #[test]
    fn revoking_a_consent_denies_the_supply_it_covered(mut c in case(), sponsor in pick(IDS)) {
        // A sponsored supply tie-up that is the only one covering the key.
        c.action = Action::Receive;
        c.key.owner = None;
        c.tie_ups.retain(|t| t.entity_id != c.caller.id);
        c.tie_ups.push(TieUp {
            id: "sponsored".into(),
            entity_id: c.caller.id.clone(),
            state: TieUpState::Active,
            keys: vec![(c.key.alias.clone(), TieUpMode::Supply)],
            valid_from: c.now,
            valid_until: None,
            sponsor_issuer: Some(sponsor.to_string()),
            per_transaction_limit: None,
        });
        c.consents.push(Consent {
            issuer: sponsor.to_string(),
            third_party: c.caller.id.clone(),
            alias: c.key.alias.clone(),
        });
        let before = c.decide();
        c.consents.retain(|k| !(k.issuer == sponsor && k.third_party == c.caller.id && k.alias == c.key.alias));
        let after = c.decide();
        prop_assert!(!after.is_allowed());
        if before.is_allowed() {
            prop_assert_eq!(after, Decision::Deny(DenyReason::ConsentMissing { issuer: sponsor.to_string() }));
        }
    }

    #[test]
    fn hold_never_exports(mut c in case()) {
        c.action = Action::Receive;
        for t in &mut c.tie_ups {
            for (_, m) in &mut t.keys {
                if *m == TieUpMode::Supply {
                    *m = TieUpMode::Hold;
                }
            }
        }
        prop_assert!(!c.decide().is_allowed());
    }

    #[test]
    fn a_compromised_version_serves_nothing(mut c in case()) {
        c.key.compromised = true;
        prop_assert!(!c.decide().is_allowed());
        // Whoever asks and whatever for: a caller the other rules would
        // allow is told it is compromised.
        c.key.compromised = false;
        if c.decide().is_allowed() {
            c.key.compromised = true;
            prop_assert_eq!(c.decide(), Decision::Deny(DenyReason::KeyCompromised));
        }
    }

    #[test]
    fn nothing_is_allowed_before_the_cryptoperiod(mut c in case(), start in 1i64..6) {
        c.key.not_before = Some(c.now + start);
        prop_assert!(!c.decide().is_allowed());
    }

    #[test]
    fn past_the_cryptoperiod_only_earlier_data_is_processed(mut c in case(), ago in 0i64..6) {
        let unbounded = Key { not_after: None, ..c.key.clone() };
        c.key.not_after = Some(c.now - ago);
        let decision = c.decide();
        if c.action.processes_existing() {
            // Decrypting and checking MACs made before: as if it had no end.
            let mut without = c.clone();
            without.key = unbounded;
            prop_assert_eq!(decision, without.decide());
        } else {
            prop_assert!(!decision.is_allowed());
        }
    }

    #[test]
    fn a_cryptoperiod_only_ever_narrows(c in case()) {
        // Inside its window, or without one, a version is decided as if it
        // had none; a window never allows what the rest of the rules deny.
        let mut without = c.clone();
        without.key.not_before = None;
        without.key.not_after = None;
        let unbounded = without.decide();
        if c.decide().is_allowed() {
            prop_assert!(unbounded.is_allowed());
        }
        let inside = c.key.not_before.is_none_or(|t| t <= c.now)
            && (c.action.processes_existing() || c.key.not_after.is_none_or(|t| c.now < t));
        if inside {
            prop_assert_eq!(c.decide(), unbounded);
        }
    }

    #[test]
    fn a_cryptoperiod_change_that_does_not_widen_allows_nothing_new(
        c in case(),
        before in (proptest::option::of(-6i64..6), proptest::option::of(-6i64..6)),
        later_start in (proptest::option::of(-6i64..6), 0i64..4),
        earlier_end in (proptest::option::of(-6i64..6), 0i64..4),
    ) {
        // A narrowed period (the start no earlier, the end no later): not a
        // widening, and nothing it allows was refused under the old one,
        // whatever the request and the time.
        let after = (
            before.0.map_or(later_start.0, |b| Some(b + later_start.1)),
            before.1.map_or(earlier_end.0, |b| Some(b - earlier_end.1)),
        );
        prop_assert!(!widens_cryptoperiod(before, after));
        let mut old = c.clone();
        (old.key.not_before, old.key.not_after) = before;
        let mut new = c;
        (new.key.not_before, new.key.not_after) = after;
        if new.decide().is_allowed() {
            prop_assert!(old.decide().is_allowed());
        }
    }

    #[test]
    fn an_earlier_start_or_a_later_end_widens(
        before in (proptest::option::of(-6i64..6), proptest::option::of(-6i64..6)),
        by in 1i64..4,
    ) {
        if let Some(b) = before.0 {
            prop_assert!(widens_cryptoperiod(before, (Some(b - by), before.1)));
            prop_assert!(widens_cryptoperiod(before, (None, before.1)));
        }
        if let Some(a) = before.1 {
            prop_assert!(widens_cryptoperiod(before, (before.0, Some(a + by))));
            prop_assert!(widens_cryptoperiod(before, (before.0, None)));
        }
        prop_assert!(!widens_cryptoperiod(before, before));
    }

    #[test]
    fn the_decision_depends_only_on_its_inputs(c in case()) {
        let first = c.decide();
        prop_assert_eq!(&first, &c.clone().decide());
        // Nor on the order in which tie-ups and consents are given.
        let mut shuffled = c.clone();
        shuffled.tie_ups.reverse();
        shuffled.consents.reverse();
        prop_assert_eq!(first, shuffled.decide());
    }

    #[test]
    fn only_active_versions_are_distributed(mut c in case(), state in pick(KeyState::ALL)) {
        c.action = Action::Receive;
        prop_assume!(state != KeyState::Active);
        c.key.state = state;
        prop_assert!(!c.decide().is_allowed());
    }

    #[test]
    fn sealing_never_exceeds_the_limit(c in case()) {
        if let Action::Seal { amount } | Action::ProxyLoad { amount } = c.action
            && c.decide().is_allowed()
            && c.key.owner.is_none()
        {
            let allowing = c.tie_ups.iter().any(|t| {
                t.entity_id == c.caller.id
                    && in_force(t, c.now)
                    && t.keys.iter().any(|(a, _)| *a == c.key.alias)
                    && t.per_transaction_limit.is_none_or(|l| amount <= l)
            });
            prop_assert!(allowing);
        }
    }

    #[test]
    fn a_debit_is_sealed_only_under_hold_and_a_load_only_under_proxy_load(
        mut c in case(),
        debit in any::<bool>(),
        amount in 0u64..20_000,
    ) {
        c.key.owner = None;
        c.action = if debit { Action::Seal { amount } } else { Action::ProxyLoad { amount } };
        let mode = if debit { TieUpMode::Hold } else { TieUpMode::ProxyLoad };
        if c.decide().is_allowed() {
            let allowing = c.tie_ups.iter().any(|t| {
                t.entity_id == c.caller.id
                    && in_force(t, c.now)
                    && t.keys.iter().any(|(a, m)| *a == c.key.alias && *m == mode)
            });
            prop_assert!(allowing, "{:?} allowed without a {mode} tie-up", c.action);
        }
    }

    #[test]
    fn no_officer_approves_their_own_an_expired_or_an_older_proposal(
        approver in pick(IDS),
        proposer in pick(IDS),
        kind in entity_kind(),
        registered_at in -5i64..5,
        created_at in -5i64..5,
        expires_at in -5i64..5,
        now in -5i64..5,
    ) {
        let p = Proposal { proposer: proposer.to_string(), created_at, expires_at };
        let who = Approver { id: approver, kind, registered_at };
        let allowed = can_approve(who, &p, now).is_allowed();
        prop_assert_eq!(
            allowed,
            kind == EntityKind::Officer
                && approver != proposer
                && registered_at < created_at
                && now < expires_at
        );
    }

    #[test]
    fn adding_a_supply_key_to_an_active_tie_up_always_widens(
        before in tie_up(),
        alias in "[d-f]",
    ) {
        let mut after = before.clone();
        after.state = TieUpState::Active;
        after.keys.push((alias, TieUpMode::Supply));
        prop_assert!(widens_supply(&before, &after));
        // And no change at all never does.
        prop_assert!(!widens_supply(&before, &before));
    }

    #[test]
    fn only_clearing_houses_generate_macs_and_only_with_authenticator_keys(mut c in case()) {
        c.action = Action::GenerateMac;
        if c.decide().is_allowed() {
            prop_assert_eq!(c.caller.kind, EntityKind::ClearingHouse);
            prop_assert_eq!(c.key.class, KeyClass::Authenticator);
        }
    }

    #[test]
    fn only_clearing_houses_sign_and_only_with_active_brand_settlement_keys(mut c in case()) {
        c.action = Action::Sign;
        if c.decide().is_allowed() {
            prop_assert_eq!(c.key.state, KeyState::Active);
            prop_assert_eq!(c.key.owner, None);
            prop_assert_eq!(c.caller.kind, EntityKind::ClearingHouse);
            prop_assert_eq!(c.key.class, KeyClass::Settlement);
        }
    }

    #[test]
    fn in_force_is_what_the_policy_checks(t in tie_up(), now in -8i64..8) {
        prop_assert_eq!(t.is_in_force(now), in_force(&t, now));
        prop_assert_eq!(t.is_in_force(now), t.not_in_force(now).is_none());
    }

    #[test]
    fn an_issuer_lists_its_own_proxy_loads_only_and_only_officers_list_all(
        caller in entity(),
        asked in proptest::option::of(pick(IDS)),
    ) {
        match proxy_load_scope(&caller, asked) {
            Ok(ProxyLoadScope::All) => {
                prop_assert_eq!(caller.kind, EntityKind::Officer);
                prop_assert!(asked.is_none());
            }
            Ok(ProxyLoadScope::Issuer(i)) => {
                prop_assert_eq!(caller.status, EntityStatus::Active);
                prop_assert!(matches!(caller.kind, EntityKind::Officer | EntityKind::Issuer));
                if caller.kind == EntityKind::Issuer {
                    prop_assert_eq!(&i, &caller.id);
                }
            }
            Err(reason) => {
                prop_assert!(
                    caller.status == EntityStatus::Suspended
                        || !matches!(caller.kind, EntityKind::Officer | EntityKind::Issuer)
                        || asked.is_some_and(|a| a != caller.id),
                    "unexpected refusal {reason}"
                );
            }
        }
    }
}
