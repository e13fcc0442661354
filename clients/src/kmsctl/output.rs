//! Tables for people, JSON for scripts.

use brandkms_proto::v1 as pb;
use serde_json::{Value, json};

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON instead of tables.
    pub json: bool,
}

/// `active` from `KEY_STATE_ACTIVE`.
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// RFC 3339 (seconds) from Unix ms; `-` for 0.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The short, lowercase name of a wire enum value (`auth_only` for
/// `KEY_STATE_AUTH_ONLY`), or the number when this build does not know it.
macro_rules! wire_names {
    ($($name:ident: $wire:ty, $prefix:literal;)+) => {
        $(
            fn $name(v: i32) -> String {
                <$wire>::try_from(v).map_or_else(|_| v.to_string(), |e| enum_name(e.as_str_name(), $prefix))
            }
        )+
    };
}

wire_names! {
    state: pb::KeyState, "KEY_STATE_";
    class: pb::KeyClass, "KEY_CLASS_";
    algorithm: pb::KeyAlgorithm, "KEY_ALGORITHM_";
    purpose: pb::Purpose, "PURPOSE_";
    kind: pb::EntityKind, "ENTITY_KIND_";
    entity_status: pb::EntityStatus, "ENTITY_STATUS_";
    mode: pb::TieUpMode, "TIE_UP_MODE_";
    tie_state: pb::TieUpState, "TIE_UP_STATE_";
    outcome: pb::AuditOutcome, "AUDIT_OUTCOME_";
    load_status: pb::ProxyLoadStatus, "PROXY_LOAD_STATUS_";
}

/// A key check value (3 bytes) in upper-case hex, as KCVs are written; a longer
/// value (an RSA key's SHA-256 fingerprint) in lower-case hex, as digests are.
fn kcv(bytes: &[u8]) -> String {
    if bytes.len() <= 4 {
        hex::encode_upper(bytes)
    } else {
        hex::encode(bytes)
    }
}

/// Prints rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn key_json(k: &pb::Key) -> Value {
    json!({
        "alias": k.alias,
        "class": class(k.key_class),
        "algorithm": algorithm(k.algorithm),
        "purpose": (k.purpose != 0).then(|| purpose(k.purpose)),
        "service_code": k.service_code,
        "exportable": k.exportable,
        "owner_entity": (!k.owner_entity.is_empty()).then_some(&k.owner_entity),
        "created_at": k.created_at,
        "versions": k.versions.iter().map(|v| json!({
            "version": v.version,
            "state": state(v.state),
            "kcv": kcv(&v.kcv),
            "weak": v.weak,
            "created_at": v.created_at,
            "state_changed_at": v.state_changed_at,
            "destroy_after": (v.destroy_after > 0).then_some(v.destroy_after),
            "destroyed_at": (v.destroyed_at > 0).then_some(v.destroyed_at),
            "not_before": (v.not_before > 0).then_some(v.not_before),
            "not_after": (v.not_after > 0).then_some(v.not_after),
            "compromised_at": (v.compromised_at > 0).then_some(v.compromised_at),
        })).collect::<Vec<_>>(),
    })
}

fn entity_json(e: &pb::Entity) -> Value {
    json!({
        "id": e.id, "kind": kind(e.kind), "name": e.name, "online": e.online,
        "tamper_resistant": e.tamper_resistant, "status": entity_status(e.status),
        "created_at": e.created_at, "updated_at": e.updated_at,
    })
}

fn tie_up_json(t: &pb::TieUp) -> Value {
    json!({
        "id": t.id, "entity_id": t.entity_id, "state": tie_state(t.state),
        "keys": t.keys.iter().map(|k| json!({"alias": k.alias, "mode": mode(k.mode)})).collect::<Vec<_>>(),
        "valid_from": t.valid_from, "valid_until": (t.valid_until > 0).then_some(t.valid_until),
        "sponsor_issuer": (!t.sponsor_issuer.is_empty()).then_some(&t.sponsor_issuer),
        "per_transaction_limit": t.per_transaction_limit,
        "created_at": t.created_at, "updated_at": t.updated_at,
    })
}

fn approval_state(v: i32) -> String {
    pb::ApprovalState::try_from(v)
        .map(|s| enum_name(s.as_str_name(), "APPROVAL_STATE_"))
        .unwrap_or_else(|_| v.to_string())
}

fn imported_keys_json(r: &pb::ImportKeysResponse) -> Value {
    let items: Vec<Value> = r
        .results
        .iter()
        .map(|k| {
            json!({"alias": k.alias, "imported": k.imported, "version": k.version,
                   "kcv": kcv(&k.kcv), "code": k.code, "reason": k.reason})
        })
        .collect();
    json!({"imported": r.imported, "refused": r.refused, "results": items})
}

fn distribution_json(d: &pb::Distribution) -> Value {
    json!({
        "id": d.id, "alias": d.alias, "version": d.version, "entity_id": d.entity_id,
        "transport_alias": d.transport_alias, "transport_version": d.transport_version,
        "kcv": kcv(&d.kcv), "at": d.at,
    })
}

fn approval_json(a: &pb::Approval) -> Value {
    json!({
        "id": a.id, "operation": a.operation, "rule": a.rule, "summary": a.summary,
        "proposer": a.proposer, "created_at": a.created_at, "expires_at": a.expires_at,
        "state": approval_state(a.state),
        "decided_by": (!a.decided_by.is_empty()).then_some(&a.decided_by),
        "decided_at": (a.decided_at > 0).then_some(a.decided_at),
        "reason": (!a.reason.is_empty()).then_some(&a.reason),
    })
}

fn audit_json(r: &pb::AuditRecord) -> Value {
    json!({
        "seq": r.seq, "at": r.at, "caller": r.caller,
        "cert_fingerprint": (!r.cert_fingerprint.is_empty()).then(|| hex::encode(&r.cert_fingerprint)),
        "operation": r.operation,
        "key_alias": (!r.key_alias.is_empty()).then_some(&r.key_alias),
        "key_version": r.key_version, "outcome": outcome(r.outcome),
        "reason": (!r.reason.is_empty()).then_some(&r.reason), "hash": hex::encode(&r.hash),
        "request_id": (!r.request_id.is_empty()).then_some(&r.request_id),
    })
}

impl Output {
    /// How to print.
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// A list: a JSON array, or a table with `header` and a row per item.
    fn list<T>(
        &self,
        items: &[T],
        json: impl Fn(&T) -> Value,
        header: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) {
        if self.json {
            return self.print_json(&Value::Array(items.iter().map(json).collect()));
        }
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        table(header, &rows);
    }

    /// Prints a JSON value.
    pub fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// One key with its versions.
    pub fn key(&self, k: &pb::Key) {
        if self.json {
            return self.print_json(&key_json(k));
        }
        let code = k
            .service_code
            .map_or("-".to_string(), |c| format!("0x{c:04X}"));
        println!(
            "key {}  class {}  algorithm {}  purpose {}  service code {}  exportable {}",
            k.alias,
            class(k.key_class),
            algorithm(k.algorithm),
            if k.purpose == 0 {
                "-".to_string()
            } else {
                purpose(k.purpose)
            },
            code,
            if k.exportable { "yes" } else { "no" }
        );
        let rows: Vec<Vec<String>> = k
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    if v.compromised_at > 0 {
                        format!("{} COMPROMISED", state(v.state))
                    } else {
                        state(v.state)
                    },
                    kcv(&v.kcv),
                    if v.weak {
                        "WEAK".to_string()
                    } else {
                        String::new()
                    },
                    time(v.created_at),
                    time(v.not_before),
                    time(v.not_after),
                    time(v.destroy_after),
                    time(v.destroyed_at),
                ]
            })
            .collect();
        table(
            &[
                "VERSION",
                "STATE",
                "KCV",
                "WEAK",
                "CREATED",
                "NOT BEFORE",
                "NOT AFTER",
                "DESTROY AFTER",
                "DESTROYED",
            ],
            &rows,
        );
    }

    /// Keys, one line each.
    pub fn import_parameters(&self, p: &pb::ImportParameters) {
        let fingerprint = hex::encode(&p.fingerprint_sha256);
        if self.json {
            return self.print_json(&json!({
                "version": p.version,
                "fingerprint_sha256": fingerprint,
                "wrapping": p.wrapping,
                "expires_at": time(p.expires_at),
                "spki_pem": p.spki_pem,
            }));
        }
        println!("import key v{}", p.version);
        println!("fingerprint (SHA-256 of the SPKI): {fingerprint}");
        println!("wrapping: {}", p.wrapping);
        println!("expires: {}", time(p.expires_at));
        print!("{}", p.spki_pem);
    }

    pub fn keys(&self, keys: &[pb::Key]) {
        self.list(
            keys,
            key_json,
            &[
                "ALIAS",
                "CLASS",
                "ALGORITHM",
                "PURPOSE",
                "SERVICE",
                "ACTIVE (KCV)",
                "VERSIONS",
            ],
            |k| {
                let active = k
                    .versions
                    .iter()
                    .find(|v| v.state == pb::KeyState::Active as i32);
                vec![
                    k.alias.clone(),
                    class(k.key_class),
                    algorithm(k.algorithm),
                    if k.purpose == 0 {
                        "-".to_string()
                    } else {
                        purpose(k.purpose)
                    },
                    k.service_code
                        .map_or("-".to_string(), |c| format!("0x{c:04X}")),
                    active.map_or("-".to_string(), |v| {
                        format!("v{} {}", v.version, kcv(&v.kcv))
                    }),
                    k.versions
                        .iter()
                        .map(|v| format!("v{}:{}", v.version, state(v.state)))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            },
        );
    }

    /// Participants.
    pub fn entities(&self, list: &[pb::Entity]) {
        self.list(
            list,
            entity_json,
            &["ID", "KIND", "STATUS", "ONLINE", "TAMPER-RESISTANT", "NAME"],
            |e| {
                vec![
                    e.id.clone(),
                    kind(e.kind),
                    entity_status(e.status),
                    if e.online { "yes" } else { "no" }.to_string(),
                    if e.tamper_resistant { "yes" } else { "no" }.to_string(),
                    e.name.clone(),
                ]
            },
        );
    }

    /// Tie-ups.
    pub fn tie_ups(&self, list: &[pb::TieUp]) {
        self.list(
            list,
            tie_up_json,
            &[
                "ID", "ENTITY", "STATE", "KEYS", "SPONSOR", "LIMIT", "FROM", "UNTIL",
            ],
            |t| {
                vec![
                    t.id.clone(),
                    t.entity_id.clone(),
                    tie_state(t.state),
                    t.keys
                        .iter()
                        .map(|k| format!("{}:{}", k.alias, mode(k.mode)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    if t.sponsor_issuer.is_empty() {
                        "-".to_string()
                    } else {
                        t.sponsor_issuer.clone()
                    },
                    t.per_transaction_limit
                        .map_or("-".to_string(), |l| l.to_string()),
                    time(t.valid_from),
                    time(t.valid_until),
                ]
            },
        );
    }

    /// Deliveries.
    pub fn distributions(&self, list: &[pb::Distribution]) {
        self.list(
            list,
            distribution_json,
            &["TIME", "KEY", "KCV", "TO", "UNDER"],
            |d| {
                vec![
                    time(d.at),
                    format!("{} v{}", d.alias, d.version),
                    kcv(&d.kcv),
                    d.entity_id.clone(),
                    format!("{} v{}", d.transport_alias, d.transport_version),
                ]
            },
        );
    }

    /// A compromise's answer, and every participant that received the version
    /// (to be told).
    pub fn compromised(&self, c: pb::KeyChange, received: &[pb::Distribution]) {
        if self.json {
            let result = match &c.result {
                Some(pb::key_change::Result::Key(k)) => json!({ "key": key_json(k) }),
                Some(pb::key_change::Result::Pending(a)) => json!({ "pending": approval_json(a) }),
                None => Value::Null,
            };
            let received: Vec<Value> = received.iter().map(distribution_json).collect();
            return self.print_json(&json!({ "result": result, "received_by": received }));
        }
        self.key_change(c);
        println!();
        println!("received by ({}; tell them):", received.len());
        self.distributions(received);
    }

    /// A key operation's answer: the key, or the proposal awaiting approval.
    pub fn key_change(&self, c: pb::KeyChange) {
        match c.result {
            Some(pb::key_change::Result::Key(k)) => self.key(&k),
            Some(pb::key_change::Result::Pending(a)) => self.pending(&a),
            None => self.print_json(&Value::Null),
        }
    }

    /// Versions ending by a time: alias, version, state, not-after.
    pub fn expiring(&self, keys: &[pb::Key], by: i64) {
        let ending: Vec<(&pb::Key, &pb::KeyVersion)> = keys
            .iter()
            .flat_map(|k| k.versions.iter().map(move |v| (k, v)))
            .filter(|(_, v)| {
                v.not_after > 0 && v.not_after < by && v.state != pb::KeyState::Destroyed as i32
            })
            .collect();
        if self.json {
            let items: Vec<Value> = ending
                .iter()
                .map(|(k, v)| {
                    json!({"alias": k.alias, "version": v.version, "state": state(v.state), "not_after": v.not_after})
                })
                .collect();
            return self.print_json(&Value::Array(items));
        }
        let rows: Vec<Vec<String>> = ending
            .iter()
            .map(|(k, v)| {
                vec![
                    k.alias.clone(),
                    v.version.to_string(),
                    state(v.state),
                    time(v.not_after),
                ]
            })
            .collect();
        table(&["ALIAS", "VERSION", "STATE", "NOT AFTER"], &rows);
    }

    /// A bulk import's answer: each key imported or refused, or the proposal.
    pub fn import_keys_change(&self, c: pb::ImportKeysChange) {
        let r = match c.result {
            Some(pb::import_keys_change::Result::Done(r)) => r,
            Some(pb::import_keys_change::Result::Pending(a)) => return self.pending(&a),
            None => return self.print_json(&Value::Null),
        };
        self.imported_keys(&r);
    }

    /// What a bulk import did, key by key.
    pub fn imported_keys(&self, r: &pb::ImportKeysResponse) {
        if self.json {
            return self.print_json(&imported_keys_json(r));
        }
        let rows: Vec<Vec<String>> = r
            .results
            .iter()
            .map(|k| {
                if k.imported {
                    vec![
                        k.alias.clone(),
                        format!("imported v{}", k.version),
                        kcv(&k.kcv),
                    ]
                } else {
                    vec![k.alias.clone(), "REFUSED".into(), k.reason.clone()]
                }
            })
            .collect();
        table(&["ALIAS", "RESULT", "KCV / REASON"], &rows);
        println!("{} imported, {} refused", r.imported, r.refused);
    }

    /// A tie-up change's answer: the tie-up, or the proposal awaiting approval.
    pub fn tie_up_change(&self, c: pb::TieUpChange) {
        match c.result {
            Some(pb::tie_up_change::Result::TieUp(t)) => self.tie_ups(&[t]),
            Some(pb::tie_up_change::Result::Pending(a)) => self.pending(&a),
            None => self.print_json(&Value::Null),
        }
    }

    /// An officer change's answer: the entity, or the proposal awaiting approval.
    pub fn entity_change(&self, c: pb::EntityChange) {
        match c.result {
            Some(pb::entity_change::Result::Entity(e)) => self.entities(&[e]),
            Some(pb::entity_change::Result::Pending(a)) => self.pending(&a),
            None => self.print_json(&Value::Null),
        }
    }

    /// The operations held for a second officer.
    pub fn dual_control(&self, d: &pb::DualControl) {
        if self.json {
            return self.print_json(&json!({
                "operations": d.operations, "updated_at": d.updated_at,
            }));
        }
        if d.operations.is_empty() {
            println!("dual control is off: no operation is held for a second officer");
        } else {
            println!("held for a second officer: {}", d.operations.join(", "));
        }
    }

    /// A dual-control change's answer: the new set, or the proposal.
    pub fn dual_control_change(&self, c: pb::DualControlChange) {
        match c.result {
            Some(pb::dual_control_change::Result::DualControl(d)) => self.dual_control(&d),
            Some(pb::dual_control_change::Result::Pending(a)) => self.pending(&a),
            None => self.print_json(&Value::Null),
        }
    }

    fn pending(&self, a: &pb::Approval) {
        if self.json {
            return self.print_json(&json!({ "pending": approval_json(a) }));
        }
        println!(
            "held for a second officer as {} (dual control {}, expires {}):\n  {}\nanother officer runs it with: kmsctl approve {}",
            a.id,
            a.rule,
            time(a.expires_at),
            a.summary,
            a.id
        );
    }

    /// What approving did: the approval and the operation's result.
    pub fn approved(&self, r: pb::ApproveResponse) {
        if self.json {
            let result = match &r.result {
                Some(pb::approve_response::Result::Key(k)) => json!({ "key": key_json(k) }),
                Some(pb::approve_response::Result::TieUp(t)) => json!({ "tie_up": tie_up_json(t) }),
                Some(pb::approve_response::Result::Entity(e)) => {
                    json!({ "entity": entity_json(e) })
                }
                Some(pb::approve_response::Result::DualControl(d)) => {
                    json!({ "dual_control": { "operations": d.operations, "updated_at": d.updated_at } })
                }
                Some(pb::approve_response::Result::ImportedKeys(k)) => imported_keys_json(k),
                None => Value::Null,
            };
            return self.print_json(&json!({
                "approval": r.approval.as_ref().map(approval_json),
                "result": result,
            }));
        }
        if let Some(a) = &r.approval {
            println!("approved {}: {}", a.id, a.summary);
        }
        match r.result {
            Some(pb::approve_response::Result::Key(k)) => self.key(&k),
            Some(pb::approve_response::Result::TieUp(t)) => self.tie_ups(&[t]),
            Some(pb::approve_response::Result::Entity(e)) => self.entities(&[e]),
            Some(pb::approve_response::Result::DualControl(d)) => self.dual_control(&d),
            Some(pb::approve_response::Result::ImportedKeys(k)) => self.imported_keys(&k),
            None => {}
        }
    }

    /// Proxy loads.
    pub fn proxy_loads(&self, list: &[pb::ProxyLoad]) {
        self.list(
            list,
            |p| {
                json!({
                    "txn_id": hex::encode_upper(&p.txn_id), "issuer": p.issuer,
                    "requested_by": p.requested_by, "alias": p.alias,
                    "key_version": p.key_version, "card_id": hex::encode_upper(&p.card_id),
                    "amount": p.amount, "currency": p.currency,
                    "status": load_status(p.status),
                    "at": p.at, "confirmed_at": (p.confirmed_at > 0).then_some(p.confirmed_at),
                })
            },
            &[
                "TIME", "ISSUER", "BY", "KEY", "CARD", "AMOUNT", "STATUS", "TXN",
            ],
            |p| {
                vec![
                    time(p.at),
                    p.issuer.clone(),
                    p.requested_by.clone(),
                    format!("{} v{}", p.alias, p.key_version),
                    hex::encode_upper(&p.card_id),
                    format!("{} {}", p.amount, p.currency),
                    load_status(p.status),
                    hex::encode_upper(&p.txn_id),
                ]
            },
        );
    }

    /// Proxy-load totals.
    pub fn proxy_load_summary(&self, s: &pb::ProxyLoadSummary) {
        if self.json {
            let totals: Vec<Value> = s
                .totals
                .iter()
                .map(|t| {
                    json!({"issuer": t.issuer, "currency": t.currency,
                           "status": load_status(t.status),
                           "count": t.count, "total": t.total})
                })
                .collect();
            return self.print_json(&json!({
                "from": (s.start_time > 0).then_some(s.start_time),
                "until": (s.end_time > 0).then_some(s.end_time),
                "totals": totals,
            }));
        }
        let rows: Vec<Vec<String>> = s
            .totals
            .iter()
            .map(|t| {
                vec![
                    t.issuer.clone(),
                    t.currency.clone(),
                    load_status(t.status),
                    t.count.to_string(),
                    t.total.to_string(),
                ]
            })
            .collect();
        table(&["ISSUER", "CURRENCY", "STATUS", "COUNT", "TOTAL"], &rows);
    }

    /// Proposals.
    pub fn approvals(&self, list: &[pb::Approval]) {
        self.list(
            list,
            approval_json,
            &[
                "ID",
                "STATE",
                "PROPOSER",
                "PROPOSED",
                "EXPIRES",
                "DECIDED BY",
                "WHAT",
            ],
            |a| {
                vec![
                    a.id.clone(),
                    approval_state(a.state),
                    a.proposer.clone(),
                    time(a.created_at),
                    time(a.expires_at),
                    if a.decided_by.is_empty() {
                        "-".to_string()
                    } else {
                        a.decided_by.clone()
                    },
                    a.summary.clone(),
                ]
            },
        );
    }

    /// Audit records.
    pub fn audit(&self, list: &[pb::AuditRecord]) {
        self.list(
            list,
            audit_json,
            &[
                "SEQ",
                "TIME",
                "CALLER",
                "OPERATION",
                "KEY",
                "OUTCOME",
                "REASON",
            ],
            |r| {
                vec![
                    r.seq.to_string(),
                    time(r.at),
                    r.caller.clone(),
                    r.operation.clone(),
                    match r.key_version {
                        Some(v) if !r.key_alias.is_empty() => format!("{} v{v}", r.key_alias),
                        _ if !r.key_alias.is_empty() => r.key_alias.clone(),
                        _ => "-".to_string(),
                    },
                    outcome(r.outcome),
                    r.reason.clone(),
                ]
            },
        );
    }
}
