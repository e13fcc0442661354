//! Wire types to domain types (`TryFrom`, rejecting malformed requests as
//! `InvalidArgument`) and domain records to wire types. Generated types go no
//! further than this module and the handlers.

use brandkms_policy::{
    Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, Purpose, TieUpMode, TieUpState,
};
use brandkms_proto::v1 as pb;

use crate::ops::approvals::{ApprovalState, state_at};
use crate::ops::entities::RegisterEntity;
use crate::ops::import::{BulkKey, ImportKey, ImportKeys, ImportTarget};
use crate::ops::keys::{CreateKey, KeyView};
use crate::ops::settlement::CreateSettlementKey;
use crate::ops::tieups::{CreateTieUp, UpdateTieUp};
use crate::ops::versions::Cryptoperiod;
use crate::ops::{OpsError, invalid, quote, valid_name};
use crate::store::approvals::ApprovalRecord;
use crate::store::audit::AuditRow;
use crate::store::distribution::DistributionRecord;
use crate::store::entities::EntityRecord;
use crate::store::tieups::TieUpRecord;

/// Maps a wire enum to a domain enum; `UNSPECIFIED` is `None`, unknown numbers fail.
macro_rules! enum_map {
    ($to_domain:ident, $to_wire:ident, $wire:ty, $domain:ty, $what:literal, { $($w:ident => $d:ident),+ $(,)? }) => {
        #[allow(dead_code)]
        pub(crate) fn $to_domain(v: i32) -> Result<Option<$domain>, OpsError> {
            match <$wire>::try_from(v) {
                Ok(<$wire>::Unspecified) => Ok(None),
                $(Ok(<$wire>::$w) => Ok(Some(<$domain>::$d)),)+
                Err(_) => Err(invalid(format!(concat!("unknown ", $what, " {}"), v))),
            }
        }

        #[allow(dead_code)]
        pub(crate) fn $to_wire(d: $domain) -> i32 {
            match d {
                $(<$domain>::$d => <$wire>::$w as i32,)+
            }
        }
    };
}

enum_map!(key_class, key_class_wire, pb::KeyClass, KeyClass, "key class", {
    CardAccess => CardAccess, Transport => Transport, Settlement => Settlement,
    Authenticator => Authenticator, Internal => Internal, ImportKek => ImportKek,
});
enum_map!(algorithm, algorithm_wire, pb::KeyAlgorithm, Algorithm, "algorithm", {
    Des => Des, Tdes2 => Tdes2, Tdes3 => Tdes3, Aes256 => Aes256, HmacSha256 => HmacSha256,
    Rsa2048 => Rsa2048, Rsa3072 => Rsa3072, Rsa4096 => Rsa4096,
});
enum_map!(key_state, key_state_wire, pb::KeyState, KeyState, "key state", {
    Active => Active, AuthOnly => AuthOnly, DecryptOnly => DecryptOnly, Retired => Retired,
    PendingDestruction => PendingDestruction, Destroyed => Destroyed,
});
enum_map!(purpose, purpose_wire, pb::Purpose, Purpose, "purpose", { Load => Load, Purchase => Purchase });
enum_map!(entity_kind, entity_kind_wire, pb::EntityKind, EntityKind, "entity kind", {
    Issuer => Issuer, PosCenter => PosCenter, MmkCenter => MmkCenter, BankCenter => BankCenter,
    MerchantTerminal => MerchantTerminal, Cybershop => Cybershop, LoadingPortal => LoadingPortal,
    ClearingHouse => ClearingHouse, Officer => Officer,
});
enum_map!(entity_status, entity_status_wire, pb::EntityStatus, EntityStatus, "entity status", {
    Active => Active, Suspended => Suspended,
});
enum_map!(tie_up_mode, tie_up_mode_wire, pb::TieUpMode, TieUpMode, "tie-up mode", {
    Supply => Supply, Hold => Hold, ProxyLoad => ProxyLoad,
});
enum_map!(approval_state, approval_state_wire, pb::ApprovalState, ApprovalState, "approval state", {
    Pending => Pending, Approved => Approved, Rejected => Rejected, Expired => Expired,
});
enum_map!(tie_up_state, tie_up_state_wire, pb::TieUpState, TieUpState, "tie-up state", {
    Active => Active, Suspended => Suspended, Terminated => Terminated,
});

/// Checks an alias or entity id.
pub fn name(what: &str, s: &str) -> Result<String, OpsError> {
    if s.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if !valid_name(s) {
        return Err(invalid(format!(
            "{what} {} must be 1 to 64 characters of [a-z0-9._-]",
            quote(s)
        )));
    }
    Ok(s.to_string())
}

/// An optional alias or entity id: empty is `None`.
pub fn optional_name(what: &str, s: &str) -> Result<Option<String>, OpsError> {
    if s.is_empty() {
        Ok(None)
    } else {
        name(what, s).map(Some)
    }
}

/// A key version field: 0 means the active version (`None`), everywhere.
pub fn version(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

/// An alias for a key officers create: valid, and not one of the service's
/// own (`brandkms.*`).
fn own_alias(s: &str) -> Result<String, OpsError> {
    let alias = name("alias", s)?;
    if alias.starts_with(crate::ops::import::RESERVED_PREFIX) {
        return Err(invalid(format!(
            "aliases starting {:?} are the service's own",
            crate::ops::import::RESERVED_PREFIX
        )));
    }
    Ok(alias)
}

/// A card-access key's service code (16 bits).
fn service_code(code: u32) -> Result<u16, OpsError> {
    u16::try_from(code)
        .map_err(|_| invalid(format!("service code {code} is out of range (0 to 65535)")))
}

/// A card-access algorithm: TDES2 or TDES3, single DES only when the request
/// allows legacy DES (`verb`: what the request does with the key).
fn card_access_algorithm(
    algorithm: Algorithm,
    allow_legacy_des: bool,
    verb: &str,
) -> Result<Algorithm, OpsError> {
    match algorithm {
        Algorithm::Tdes2 | Algorithm::Tdes3 => Ok(algorithm),
        Algorithm::Des if allow_legacy_des => Ok(algorithm),
        Algorithm::Des => Err(invalid(format!(
            "single DES is legacy: set allow_legacy_des to {verb} it (it is always reported weak)"
        ))),
        other => Err(invalid(format!(
            "algorithm {other} is not a card-access algorithm"
        ))),
    }
}

/// An officer's free-text reason (kept in approvals and the audit trail):
/// trimmed, at most 500 characters, no control characters; `None` when empty.
pub fn reason(text: &str) -> Result<Option<String>, OpsError> {
    match text.trim() {
        "" => Ok(None),
        t if t.chars().count() > 500 => Err(invalid("reason is at most 500 characters")),
        t if t.chars().any(char::is_control) => {
            Err(invalid("reason must not hold control characters"))
        }
        t => Ok(Some(t.to_string())),
    }
}

/// A time field in Unix milliseconds: 0 is `None`, negative is refused.
pub fn optional_time(what: &str, t: i64) -> Result<Option<i64>, OpsError> {
    match t {
        0 => Ok(None),
        t if t < 0 => Err(invalid(format!(
            "{what} is Unix milliseconds, not negative"
        ))),
        t => Ok(Some(t)),
    }
}

impl TryFrom<pb::CreateKeyRequest> for CreateSettlementKey {
    type Error = OpsError;

    fn try_from(r: pb::CreateKeyRequest) -> Result<Self, Self::Error> {
        let alias = own_alias(&r.alias)?;
        if r.service_code != 0 || r.purpose != 0 || r.exportable || r.allow_legacy_des {
            return Err(invalid(
                "settlement keys take no service code, purpose, exportable or allow_legacy_des",
            ));
        }
        let algorithm = algorithm(r.algorithm)?.unwrap_or(Algorithm::Rsa3072);
        crate::ops::generate::rsa_bits(algorithm)?;
        let owner = if r.owner_entity.is_empty() {
            None
        } else {
            Some(name("owner entity", &r.owner_entity)?)
        };
        Ok(CreateSettlementKey {
            alias,
            algorithm,
            owner,
        })
    }
}

impl TryFrom<pb::CreateKeyRequest> for CreateKey {
    type Error = OpsError;

    fn try_from(r: pb::CreateKeyRequest) -> Result<Self, Self::Error> {
        let alias = own_alias(&r.alias)?;
        if !r.owner_entity.is_empty() {
            return Err(invalid("only settlement keys have an owner entity"));
        }
        match key_class(r.key_class)? {
            None | Some(KeyClass::CardAccess) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "CreateKey makes card-access keys; {other} keys are not created this way"
                )));
            }
        }
        let service_code = service_code(r.service_code)?;
        let purpose =
            purpose(r.purpose)?.ok_or_else(|| invalid("purpose is required: load or purchase"))?;
        let algorithm = card_access_algorithm(
            algorithm(r.algorithm)?.unwrap_or(Algorithm::Tdes2),
            r.allow_legacy_des,
            "create",
        )?;
        Ok(CreateKey {
            alias,
            service_code,
            purpose,
            algorithm,
            exportable: r.exportable,
        })
    }
}

impl TryFrom<pb::RegisterEntityRequest> for RegisterEntity {
    type Error = OpsError;

    fn try_from(r: pb::RegisterEntityRequest) -> Result<Self, Self::Error> {
        let kind = entity_kind(r.kind)?.ok_or_else(|| invalid("entity kind is required"))?;
        let name_text = r.name.trim().to_string();
        if name_text.is_empty() || name_text.len() > 200 {
            return Err(invalid("name must be 1 to 200 characters"));
        }
        Ok(RegisterEntity {
            id: name("entity id", &r.id)?,
            kind,
            name: name_text,
            online: r.online,
            tamper_resistant: r.tamper_resistant,
        })
    }
}

fn tie_keys(keys: Vec<pb::TieUpKey>) -> Result<Vec<(String, TieUpMode)>, OpsError> {
    keys.into_iter()
        .map(|k| {
            let alias = name("key alias", &k.alias)?;
            let mode = tie_up_mode(k.mode)?.ok_or_else(|| {
                invalid(format!(
                    "mode for key {alias:?} is required: supply, hold or proxy_load"
                ))
            })?;
            Ok((alias, mode))
        })
        .collect()
}

impl TryFrom<pb::CreateTieUpRequest> for CreateTieUp {
    type Error = OpsError;

    fn try_from(r: pb::CreateTieUpRequest) -> Result<Self, Self::Error> {
        Ok(CreateTieUp {
            entity_id: name("entity id", &r.entity_id)?,
            keys: tie_keys(r.keys)?,
            valid_from: optional_time("valid_from", r.valid_from)?,
            valid_until: optional_time("valid_until", r.valid_until)?,
            sponsor_issuer: if r.sponsor_issuer.is_empty() {
                None
            } else {
                Some(name("sponsoring issuer", &r.sponsor_issuer)?)
            },
            per_transaction_limit: limit(r.per_transaction_limit)?,
        })
    }
}

fn limit(l: Option<u64>) -> Result<Option<u64>, OpsError> {
    match l {
        Some(v) if i64::try_from(v).is_err() => Err(invalid("per-transaction limit is too large")),
        other => Ok(other),
    }
}

impl TryFrom<pb::UpdateTieUpRequest> for UpdateTieUp {
    type Error = OpsError;

    fn try_from(r: pb::UpdateTieUpRequest) -> Result<Self, Self::Error> {
        Ok(UpdateTieUp {
            id: name("tie-up id", &r.id)?,
            keys: if r.keys.is_empty() {
                None
            } else {
                Some(tie_keys(r.keys)?)
            },
            valid_from: r
                .valid_from
                .map(|t| optional_time("valid_from", t))
                .transpose()?
                .flatten(),
            valid_until: r
                .valid_until
                .map(|t| optional_time("valid_until", t))
                .transpose()?,
            per_transaction_limit: limit(r.per_transaction_limit)?,
            state: tie_up_state(r.state)?,
        })
    }
}

impl From<KeyView> for pb::Key {
    fn from(v: KeyView) -> Self {
        pb::Key {
            alias: v.key.alias,
            key_class: key_class_wire(v.key.class),
            algorithm: algorithm_wire(v.key.algorithm),
            purpose: v.key.purpose.map_or(0, purpose_wire),
            service_code: v.key.service_code.map(u32::from),
            exportable: v.key.exportable,
            owner_entity: v.key.owner_entity.unwrap_or_default(),
            created_at: v.key.created_at,
            versions: v
                .versions
                .into_iter()
                .map(|x| pb::KeyVersion {
                    version: x.version,
                    state: key_state_wire(x.state),
                    kcv: hex_bytes(&x.kcv),
                    weak: x.weak,
                    created_at: x.created_at,
                    state_changed_at: x.state_changed_at,
                    destroy_after: x.destroy_after.unwrap_or_default(),
                    destroyed_at: x.destroyed_at.unwrap_or_default(),
                    not_before: x.not_before.unwrap_or_default(),
                    not_after: x.not_after.unwrap_or_default(),
                    compromised_at: x.compromised_at.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl From<EntityRecord> for pb::Entity {
    fn from(e: EntityRecord) -> Self {
        pb::Entity {
            id: e.id,
            kind: entity_kind_wire(e.kind),
            name: e.name,
            online: e.online,
            tamper_resistant: e.tamper_resistant,
            status: entity_status_wire(e.status),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

impl From<TieUpRecord> for pb::TieUp {
    fn from(t: TieUpRecord) -> Self {
        pb::TieUp {
            id: t.id,
            entity_id: t.entity_id,
            state: tie_up_state_wire(t.state),
            keys: t
                .keys
                .into_iter()
                .map(|(alias, mode)| pb::TieUpKey {
                    alias,
                    mode: tie_up_mode_wire(mode),
                })
                .collect(),
            valid_from: t.valid_from,
            valid_until: t.valid_until.unwrap_or_default(),
            sponsor_issuer: t.sponsor_issuer.unwrap_or_default(),
            per_transaction_limit: t.per_transaction_limit,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// One chain's verification.
pub fn chain_report(c: &crate::audit::ChainReport) -> pb::AuditChainReport {
    pb::AuditChainReport {
        chain: c.chain.clone(),
        instance: c.instance.clone(),
        records: c.records,
        anchored_seq: c.anchored,
        intact: c.first_broken.is_none(),
        first_broken_seq: c.first_broken.as_ref().map_or(0, |b| b.seq),
        problem: c
            .first_broken
            .as_ref()
            .map(|b| b.problem.clone())
            .unwrap_or_default(),
    }
}

impl From<AuditRow> for pb::AuditRecord {
    fn from(r: AuditRow) -> Self {
        pb::AuditRecord {
            chain: r.chain,
            seq: r.seq,
            at: r.at,
            caller: r.caller,
            cert_fingerprint: r
                .cert_fingerprint
                .as_deref()
                .map(hex_bytes)
                .unwrap_or_default(),
            operation: r.operation,
            key_alias: r.key_alias.unwrap_or_default(),
            key_version: r.key_version,
            outcome: audit_outcome_wire(&r.outcome),
            reason: r.reason.unwrap_or_default(),
            hash: hex_bytes(&r.hash),
            request_id: r.request_id.unwrap_or_default(),
        }
    }
}

/// Bytes the store keeps as hex (KCVs, fingerprints, hashes, card and
/// transaction ids): the wire carries them as bytes. Stored values are always
/// hex; an unreadable one is shown empty rather than failing a whole listing.
pub fn hex_bytes(stored: &str) -> Vec<u8> {
    hex::decode(stored).unwrap_or_default()
}

fn audit_outcome_wire(stored: &str) -> i32 {
    use crate::audit::Outcome;
    let outcome = match stored {
        s if s == Outcome::Allowed.as_str() => pb::AuditOutcome::Allowed,
        s if s == Outcome::Denied.as_str() => pb::AuditOutcome::Denied,
        s if s == Outcome::Failed.as_str() => pb::AuditOutcome::Failed,
        s if s == Outcome::Held.as_str() => pb::AuditOutcome::Held,
        _ => pb::AuditOutcome::Unspecified,
    };
    outcome as i32
}

/// A delivery record on the wire.
pub fn distribution(d: DistributionRecord) -> pb::Distribution {
    pb::Distribution {
        id: d.id,
        alias: d.alias,
        version: d.version,
        entity_id: d.entity_id,
        transport_alias: d.transport_alias,
        transport_version: d.transport_version,
        kcv: hex_bytes(&d.kcv),
        at: d.at,
    }
}

/// An approval as the wire shows it at `now` (expiry computed).
pub fn approval(a: &ApprovalRecord, now: i64) -> pb::Approval {
    pb::Approval {
        id: a.id.clone(),
        operation: a.operation.clone(),
        rule: a.rule.clone(),
        summary: a.summary.clone(),
        proposer: a.proposer.clone(),
        created_at: a.created_at,
        expires_at: a.expires_at,
        state: approval_state_wire(state_at(a, now)),
        decided_by: a.decided_by.clone().unwrap_or_default(),
        decided_at: a.decided_at.unwrap_or(0),
        reason: a.reason.clone().unwrap_or_default(),
    }
}

/// An authenticator key request: an alias, HMAC-SHA-256, nothing else.
pub fn authenticator_request(r: pb::CreateKeyRequest) -> Result<String, OpsError> {
    let alias = own_alias(&r.alias)?;
    let algorithm = algorithm(r.algorithm)?;
    if !matches!(
        algorithm,
        None | Some(brandkms_policy::Algorithm::HmacSha256)
    ) || r.service_code != 0
        || r.purpose != 0
        || r.exportable
        || r.allow_legacy_des
        || !r.owner_entity.is_empty()
    {
        return Err(invalid(
            "authenticator keys are HMAC-SHA-256 and take no service code, purpose, owner or export",
        ));
    }
    Ok(alias)
}

/// What became of each key of a bulk import, for the wire.
pub fn bulk_outcomes(outcomes: Vec<crate::ops::import::BulkOutcome>) -> pb::ImportKeysResponse {
    let mut response = pb::ImportKeysResponse::default();
    for o in outcomes {
        let result = match o.result {
            Ok(v) => {
                response.imported += 1;
                pb::BulkKeyResult {
                    alias: o.alias,
                    imported: true,
                    version: v.version,
                    kcv: hex_bytes(&v.kcv),
                    ..Default::default()
                }
            }
            Err(e) => {
                response.refused += 1;
                let status = crate::service::to_status(&e);
                pb::BulkKeyResult {
                    alias: o.alias,
                    code: status.code() as i32,
                    reason: status.message().to_string(),
                    ..Default::default()
                }
            }
        };
        response.results.push(result);
    }
    response
}

/// A cryptoperiod from the wire (0: unbounded), checked not empty.
pub fn cryptoperiod(not_before: i64, not_after: i64) -> Result<Cryptoperiod, OpsError> {
    Cryptoperiod {
        not_before: optional_time("not_before", not_before)?,
        not_after: optional_time("not_after", not_after)?,
    }
    .checked()
}

/// A stated key check value: 3 bytes.
fn expected_kcv(kcv: &[u8]) -> Result<[u8; 3], OpsError> {
    kcv.try_into()
        .map_err(|_| invalid(format!("expected_kcv is 3 bytes, not {}", kcv.len())))
}

/// A card-access key to import (one of ImportKey's or of a bulk import).
#[allow(clippy::too_many_arguments)]
fn card_access_target(
    alias: &str,
    algorithm_wire: i32,
    allow_legacy_des: bool,
    code: u32,
    purpose_wire: i32,
    exportable: bool,
    period: Cryptoperiod,
) -> Result<ImportTarget, OpsError> {
    let algorithm = algorithm(algorithm_wire)?.ok_or_else(|| {
        invalid("algorithm is required: tdes2, tdes3 (or des with allow_legacy_des)")
    })?;
    Ok(ImportTarget {
        alias: own_alias(alias)?,
        class: KeyClass::CardAccess,
        algorithm: card_access_algorithm(algorithm, allow_legacy_des, "import")?,
        service_code: service_code(code)?,
        purpose: purpose(purpose_wire)?,
        exportable,
        period,
    })
}

impl TryFrom<&pb::ImportKeyRequest> for ImportKey {
    type Error = OpsError;

    fn try_from(r: &pb::ImportKeyRequest) -> Result<Self, Self::Error> {
        let period = cryptoperiod(r.not_before, r.not_after)?;
        let target = match key_class(r.key_class)? {
            None | Some(KeyClass::CardAccess) => card_access_target(
                &r.alias,
                r.algorithm,
                r.allow_legacy_des,
                r.service_code,
                r.purpose,
                r.exportable,
                period,
            )?,
            Some(KeyClass::ImportKek) => {
                if !matches!(algorithm(r.algorithm)?, None | Some(Algorithm::Aes256)) {
                    return Err(invalid(
                        "an import KEK is an AES-256 key (algorithm aes256)",
                    ));
                }
                if r.exportable || r.service_code != 0 || r.purpose != 0 {
                    return Err(invalid(
                        "an import KEK has no service code or purpose and is never exportable",
                    ));
                }
                ImportTarget {
                    alias: own_alias(&r.alias)?,
                    class: KeyClass::ImportKek,
                    algorithm: Algorithm::Aes256,
                    service_code: 0,
                    purpose: None,
                    exportable: false,
                    period,
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "ImportKey brings in card-access keys and import KEKs; {other} keys are not imported"
                )));
            }
        };
        if r.wrapped_key.is_empty() {
            return Err(invalid("wrapped_key is required"));
        }
        let import_version = version(r.import_key_version).ok_or_else(|| {
            invalid("import_key_version is required: the version GetImportParameters gave")
        })?;
        Ok(ImportKey {
            target,
            wrapped: r.wrapped_key.clone(),
            expected_kcv: expected_kcv(&r.expected_kcv)?,
            import_version,
        })
    }
}

impl TryFrom<&pb::ImportKeysRequest> for ImportKeys {
    type Error = OpsError;

    fn try_from(r: &pb::ImportKeysRequest) -> Result<Self, Self::Error> {
        if r.keys.is_empty() {
            return Err(invalid("keys: a bulk import needs at least one key"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut keys = Vec::with_capacity(r.keys.len());
        for (i, k) in r.keys.iter().enumerate() {
            let at = |e: OpsError| invalid(format!("keys[{i}]: {e}"));
            let target = card_access_target(
                &k.alias,
                k.algorithm,
                k.allow_legacy_des,
                k.service_code,
                k.purpose,
                k.exportable,
                cryptoperiod(k.not_before, k.not_after).map_err(at)?,
            )
            .map_err(at)?;
            if !seen.insert(target.alias.clone()) {
                return Err(invalid(format!(
                    "keys[{i}]: alias {} appears twice in the batch",
                    target.alias
                )));
            }
            if k.wrapped_key.is_empty() {
                return Err(invalid(format!("keys[{i}]: wrapped_key is required")));
            }
            keys.push(BulkKey {
                target,
                wrapped: k.wrapped_key.clone(),
                expected_kcv: expected_kcv(&k.expected_kcv).map_err(at)?,
            });
        }
        Ok(ImportKeys {
            kek_alias: name("kek_alias", &r.kek_alias)?,
            kek_version: version(r.kek_version),
            keys,
        })
    }
}
