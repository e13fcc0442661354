//! The brand's own examples as decision tables.

use crate::decision::{Decision, DenyReason};
use crate::names::{EntityKind, EntityStatus, KeyClass, KeyState, TieUpMode, TieUpState};
use crate::rules::{Action, Consent, Entity, Key, Request, TieUp, decide};

const NOW: i64 = 1_800_000_000_000;

fn entity(id: &str, kind: EntityKind, tamper_resistant: bool) -> Entity {
    Entity {
        id: id.into(),
        kind,
        status: EntityStatus::Active,
        tamper_resistant,
    }
}

fn key(alias: &str) -> Key {
    Key {
        alias: alias.into(),
        class: KeyClass::CardAccess,
        owner: None,
        exportable: true,
        state: KeyState::Active,
        not_before: None,
        not_after: None,
        compromised: false,
    }
}

fn tie(entity: &str, keys: &[(&str, TieUpMode)], sponsor: Option<&str>) -> TieUp {
    TieUp {
        id: format!("tu-{entity}"),
        entity_id: entity.into(),
        state: TieUpState::Active,
        keys: keys.iter().map(|(a, m)| (a.to_string(), *m)).collect(),
        valid_from: NOW - 1_000,
        valid_until: None,
        sponsor_issuer: sponsor.map(str::to_string),
        per_transaction_limit: None,
    }
}

fn consent(issuer: &str, third_party: &str, alias: &str) -> Consent {
    Consent {
        issuer: issuer.into(),
        third_party: third_party.into(),
        alias: alias.into(),
    }
}

struct World {
    entities: Vec<Entity>,
    tie_ups: Vec<TieUp>,
}

impl World {
    fn seed() -> World {
        use EntityKind as K;
        use TieUpMode::{Hold, ProxyLoad, Supply};
        World {
            entities: vec![
                entity("issuer-2-1", K::Issuer, false),
                entity("issuer-2-2", K::Issuer, false),
                entity("issuer-2-3", K::Issuer, false),
                entity("issuer-2-4", K::Issuer, false),
                entity("bank-center", K::BankCenter, false),
                entity("mmk-center", K::MmkCenter, false),
                entity("pos-center", K::PosCenter, false),
                entity("terminal-fj", K::MerchantTerminal, true),
                entity("terminal-g", K::MerchantTerminal, true),
                entity("terminal-ghj", K::MerchantTerminal, true),
                entity("terminal-pos", K::MerchantTerminal, false),
                entity("cybershop-k", K::Cybershop, false),
                entity("cybershop-lm", K::Cybershop, false),
                entity("loading-portal", K::LoadingPortal, false),
            ],
            tie_ups: vec![
                tie("issuer-2-3", &[("A", Supply), ("B", Supply)], None),
                tie("issuer-2-4", &[("A", Supply), ("C", Supply)], None),
                tie(
                    "bank-center",
                    &[("A", Supply), ("B", Supply)],
                    Some("issuer-2-3"),
                ),
                tie(
                    "mmk-center",
                    &[("A", Supply), ("C", Supply)],
                    Some("issuer-2-4"),
                ),
                tie("issuer-2-2", &[("D", Supply)], None),
                tie("issuer-2-1", &[("E", ProxyLoad)], None),
                tie("loading-portal", &[("E", ProxyLoad)], None),
                tie("terminal-fj", &[("F", Supply), ("J", Supply)], None),
                tie("terminal-g", &[("G", Supply)], None),
                tie(
                    "terminal-ghj",
                    &[("G", Supply), ("H", Supply), ("J", Supply)],
                    None,
                ),
                tie("pos-center", &[("F", Supply), ("H", Supply)], None),
                // A terminal behind the POS centre: the centre authenticates for it.
                tie("terminal-pos", &[("F", Hold)], None),
                tie("cybershop-k", &[("K", Hold)], None),
                tie("cybershop-lm", &[("L", Hold), ("M", Hold)], None),
            ],
        }
    }

    fn decide(&self, who: &str, alias: &str, action: Action, consents: &[Consent]) -> Decision {
        let caller = self
            .entities
            .iter()
            .find(|e| e.id == who)
            .expect("entity in the seed");
        decide(&Request {
            caller,
            action,
            key: &key(alias),
            tie_ups: &self.tie_ups,
            consents,
            transport_key: true,
            now: NOW,
        })
    }
}

fn allowed(d: &Decision) -> bool {
    d.is_allowed()
}

#[test]
fn bank_and_mmk_centres_are_supplied_only_with_their_sponsors_consent() {
    let w = World::seed();
    for (centre, issuer, keys) in [
        ("bank-center", "issuer-2-3", ["A", "B"]),
        ("mmk-center", "issuer-2-4", ["A", "C"]),
    ] {
        for alias in keys {
            let without = w.decide(centre, alias, Action::Receive, &[]);
            assert_eq!(
                without,
                Decision::Deny(DenyReason::ConsentMissing {
                    issuer: issuer.into()
                }),
                "{centre} {alias}"
            );
            assert!(
                without
                    .clone()
                    .into_result()
                    .unwrap_err()
                    .to_string()
                    .starts_with("rule 4")
            );
            let with = [consent(issuer, centre, alias)];
            assert!(
                allowed(&w.decide(centre, alias, Action::Receive, &with)),
                "{centre} {alias}"
            );
            // Consent by the other issuer, or for another key, or to another centre, does not count.
            let other_issuer = if issuer == "issuer-2-3" {
                "issuer-2-4"
            } else {
                "issuer-2-3"
            };
            let wrong = [
                consent(other_issuer, centre, alias),
                consent(issuer, centre, "Z"),
                consent(issuer, "pos-center", alias),
            ];
            assert!(
                !allowed(&w.decide(centre, alias, Action::Receive, &wrong)),
                "{centre} {alias}"
            );
        }
    }
    // Neither centre is covered for the other's third key.
    assert_eq!(
        w.decide("bank-center", "C", Action::Receive, &[]),
        Decision::Deny(DenyReason::NoTieUp)
    );
    assert_eq!(
        w.decide("mmk-center", "B", Action::Receive, &[]),
        Decision::Deny(DenyReason::NoTieUp)
    );
}

#[test]
fn online_issuers_are_supplied_offline_issuers_load_by_proxy() {
    let w = World::seed();
    assert!(allowed(&w.decide("issuer-2-2", "D", Action::Receive, &[])));
    assert_eq!(
        w.decide("issuer-2-1", "E", Action::Receive, &[]),
        Decision::Deny(DenyReason::ModeDoesNotSupply(TieUpMode::ProxyLoad))
    );
    // The loading portal authenticates and loads with E; the issuer itself cannot.
    assert!(allowed(&w.decide(
        "loading-portal",
        "E",
        Action::Authenticate,
        &[]
    )));
    assert!(allowed(&w.decide(
        "loading-portal",
        "E",
        Action::ProxyLoad { amount: 5000 },
        &[]
    )));
    assert!(!allowed(&w.decide(
        "loading-portal",
        "E",
        Action::Receive,
        &[]
    )));
    assert_eq!(
        w.decide("issuer-2-1", "E", Action::ProxyLoad { amount: 1 }, &[]),
        Decision::Deny(DenyReason::NotLoadingPortal)
    );
}

#[test]
fn terminals_and_pos_centres() {
    let w = World::seed();
    for (terminal, keys) in [
        ("terminal-fj", &["F", "J"][..]),
        ("terminal-g", &["G"]),
        ("terminal-ghj", &["G", "H", "J"]),
    ] {
        for alias in keys {
            assert!(
                allowed(&w.decide(terminal, alias, Action::Receive, &[])),
                "{terminal} {alias}"
            );
        }
    }
    for alias in ["F", "H"] {
        assert!(
            allowed(&w.decide("pos-center", alias, Action::Receive, &[])),
            "pos {alias}"
        );
    }
    // A terminal behind the POS centre holds nothing; it is not tamper-resistant.
    for alias in ["F", "H"] {
        assert!(
            !allowed(&w.decide("terminal-pos", alias, Action::Receive, &[])),
            "{alias}"
        );
    }
    // Even a supply tie-up cannot put a key into a terminal that is not tamper-resistant.
    let mut w2 = World::seed();
    w2.tie_ups
        .push(tie("terminal-pos", &[("G", TieUpMode::Supply)], None));
    w2.tie_ups.last_mut().expect("pushed").id = "tu-terminal-pos-2".into();
    assert_eq!(
        w2.decide("terminal-pos", "G", Action::Receive, &[]),
        Decision::Deny(DenyReason::TerminalNotTamperResistant)
    );
}

#[test]
fn cybershops_hold_but_are_never_supplied() {
    let w = World::seed();
    for (shop, keys) in [("cybershop-k", &["K"][..]), ("cybershop-lm", &["L", "M"])] {
        for alias in keys {
            assert_eq!(
                w.decide(shop, alias, Action::Receive, &[]),
                Decision::Deny(DenyReason::CybershopNeverSupplied),
                "{shop} {alias}"
            );
            assert!(
                allowed(&w.decide(shop, alias, Action::Authenticate, &[])),
                "{shop} {alias}"
            );
            assert!(
                allowed(&w.decide(shop, alias, Action::Seal { amount: 2000 }, &[])),
                "{shop} {alias}"
            );
            assert!(
                !allowed(&w.decide(shop, alias, Action::ProxyLoad { amount: 2000 }, &[])),
                "{shop} {alias}"
            );
        }
    }
}

#[test]
fn every_denial_names_its_rule() {
    let w = World::seed();
    let d = w.decide("cybershop-k", "K", Action::Receive, &[]);
    assert_eq!(
        d.into_result().unwrap_err().to_string(),
        "rule 3 (cybershop_never_supplied): a cybershop is never supplied a key (keys do not travel over the Internet)"
    );
}
