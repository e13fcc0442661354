//! The operations dual control may hold (docs/design.md §3, rule 7): each runs, or
//! is checked as far as it can be now and becomes a proposal for a second
//! officer; `carry_out` runs an approved proposal's request.

use brandkms_policy::{EntityKind, SensitiveOperation, TieUpMode, widens_supply};
use brandkms_proto::v1 as pb;
use prost::Message;

use super::AdminService;
use crate::ops::approvals::{self, Change, DualControl, describe_dual_control};
use crate::ops::authorize::policy_tie_up;
use crate::ops::entities::{self, RegisterEntity, StatusCall};
use crate::ops::import;
use crate::ops::keys::{self, DEFAULT_WAITING_DAYS, KeyView};
use crate::ops::tieups::{self, CreateTieUp, UpdateTieUp};
use crate::ops::{Caller, OpsError, invalid, quote};
use crate::service::convert::{self, name, version};
use crate::store::approvals::ApprovalRecord;
use crate::store::entities::EntityRecord;
use crate::store::tieups::TieUpRecord;

pub(super) const ROTATE: &str = "Admin/RotateKey";
pub(super) const DESTROY: &str = "Admin/ScheduleKeyVersionDestruction";
pub(super) const CREATE_TIE_UP: &str = "Admin/CreateTieUp";
pub(super) const UPDATE_TIE_UP: &str = "Admin/UpdateTieUp";
pub(super) const REGISTER_OFFICER: &str = "Admin/RegisterOfficer";
pub(super) const RESUME_OFFICER: &str = "Admin/ResumeOfficer";
pub(super) const SET_DUAL_CONTROL: &str = "Admin/SetDualControl";
pub(super) const IMPORT: &str = "Admin/ImportKey";
pub(super) const IMPORT_BATCH: &str = "Admin/ImportKeys";
pub(super) const COMPROMISED: &str = "Admin/MarkKeyVersionCompromised";
pub(super) const CRYPTOPERIOD: &str = "Admin/SetKeyVersionCryptoperiod";

pub(super) fn entity_change(change: Change<EntityRecord>) -> pb::EntityChange {
    pb::EntityChange {
        result: Some(match change {
            Change::Done(e) => pb::entity_change::Result::Entity(e.into()),
            Change::Held(a) => {
                pb::entity_change::Result::Pending(convert::approval(&a, a.created_at))
            }
        }),
    }
}

pub(super) fn dual_control_message(d: DualControl) -> pb::DualControl {
    pb::DualControl {
        operations: d
            .operations
            .iter()
            .map(|o| o.as_str().to_string())
            .collect(),
        updated_at: d.updated_at,
    }
}

pub(super) fn dual_control_change(change: Change<DualControl>) -> pb::DualControlChange {
    pb::DualControlChange {
        result: Some(match change {
            Change::Done(d) => {
                pb::dual_control_change::Result::DualControl(dual_control_message(d))
            }
            Change::Held(a) => {
                pb::dual_control_change::Result::Pending(convert::approval(&a, a.created_at))
            }
        }),
    }
}

/// The operations named in a SetDualControl request.
fn sensitive_operations(names: &[String]) -> Result<Vec<SensitiveOperation>, OpsError> {
    let mut ops = Vec::new();
    for n in names {
        let op = n.parse::<SensitiveOperation>().map_err(|_| {
            invalid(format!(
                "operations: {} is not a sensitive operation (one of {})",
                quote(n),
                SensitiveOperation::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    Ok(ops)
}

pub(super) fn key_change(change: Change<KeyView>) -> pb::KeyChange {
    pb::KeyChange {
        result: Some(match change {
            Change::Done(view) => pb::key_change::Result::Key(view.into()),
            Change::Held(a) => pb::key_change::Result::Pending(convert::approval(&a, a.created_at)),
        }),
    }
}

pub(super) fn tie_up_change(change: Change<TieUpRecord>) -> pb::TieUpChange {
    pb::TieUpChange {
        result: Some(match change {
            Change::Done(t) => pb::tie_up_change::Result::TieUp(t.into()),
            Change::Held(a) => {
                pb::tie_up_change::Result::Pending(convert::approval(&a, a.created_at))
            }
        }),
    }
}

fn waiting_days(days: Option<u32>) -> Result<u32, OpsError> {
    match days {
        None => Ok(DEFAULT_WAITING_DAYS),
        Some(0) => Err(invalid("waiting period must be at least 1 day")),
        Some(d) if d > 3650 => Err(invalid("waiting period must be at most 3650 days")),
        Some(d) => Ok(d),
    }
}

/// What an approved operation ran, for the caller.
fn done<T>(change: Change<T>) -> Result<T, OpsError> {
    match change {
        Change::Done(v) => Ok(v),
        Change::Held(a) => Err(OpsError::Internal(format!(
            "carrying out an approval was held again as {}",
            a.id
        ))),
    }
}

/// The four sensitive operations: each runs, or under dual control is checked
/// as far as it can be now and becomes a proposal.
impl AdminService {
    pub(super) async fn rotate(
        &self,
        caller: &Caller,
        r: &pb::RotateKeyRequest,
    ) -> Result<Change<KeyView>, OpsError> {
        let alias = name("alias", &r.alias)?;
        let view = keys::get(self.state(), &alias).await?;
        let rule = SensitiveOperation::RotateKey;
        if approvals::holds(self.state(), caller, rule, Some(view.key.class)).await? {
            let next = view.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let summary = format!(
                "rotate {} key {alias}: version {next} becomes active",
                view.key.class
            );
            let key = Some((alias.as_str(), None));
            let held = approvals::propose(self.state(), caller, ROTATE, rule, summary, key, r);
            return held.await.map(Change::Held);
        }
        keys::rotate(self.state(), caller, &alias)
            .await
            .map(Change::Done)
    }

    pub(super) async fn schedule_destruction(
        &self,
        caller: &Caller,
        r: &pb::ScheduleKeyVersionDestructionRequest,
    ) -> Result<Change<KeyView>, OpsError> {
        let alias = name("alias", &r.alias)?;
        let days = waiting_days(r.waiting_days)?;
        let view = keys::get(self.state(), &alias).await?;
        let record = match version(r.version) {
            Some(v) => view
                .versions
                .iter()
                .find(|x| x.version == v)
                .ok_or_else(|| OpsError::NotFound(format!("key {alias:?} has no version {v}")))?,
            None => view
                .versions
                .iter()
                .find(|x| x.state == brandkms_policy::KeyState::Active)
                .ok_or_else(|| {
                    OpsError::FailedPrecondition(format!("key {alias:?} has no active version"))
                })?,
        };
        let v = record.version;
        let rule = SensitiveOperation::DestroyKeyVersion;
        if approvals::holds(self.state(), caller, rule, Some(view.key.class)).await? {
            keys::check_schedulable(&view.key, record)?;
            let summary = format!(
                "destroy version {v} of {} key {alias} after a waiting period of {days} days",
                view.key.class
            );
            let held = approvals::propose(
                self.state(),
                caller,
                DESTROY,
                rule,
                summary,
                Some((alias.as_str(), Some(v))),
                r,
            );
            return held.await.map(Change::Held);
        }
        keys::schedule_destruction(self.state(), caller, &alias, v, days)
            .await
            .map(Change::Done)
    }

    pub(super) async fn create_tie_up_change(
        &self,
        caller: &Caller,
        r: &pb::CreateTieUpRequest,
    ) -> Result<Change<TieUpRecord>, OpsError> {
        let input = CreateTieUp::try_from(r.clone())?;
        let rule = SensitiveOperation::CreateSupplyTieUp;
        let supplies = input.keys.iter().any(|(_, m)| *m == TieUpMode::Supply);
        if supplies && approvals::holds(self.state(), caller, rule, None).await? {
            let now = self.state().clock.now_ms();
            let mut conn = self.state().store.conn().await?;
            tieups::check_create(&mut conn, &input, now).await?;
            drop(conn);
            let sponsor = input
                .sponsor_issuer
                .as_deref()
                .map(|s| format!(", brought in by {s}"))
                .unwrap_or_default();
            let summary = format!(
                "create a tie-up for {} covering {}{sponsor}",
                input.entity_id,
                covered(&input.keys)
            );
            let held =
                approvals::propose(self.state(), caller, CREATE_TIE_UP, rule, summary, None, r);
            return held.await.map(Change::Held);
        }
        tieups::create(self.state(), caller, input)
            .await
            .map(Change::Done)
    }

    pub(super) async fn update_tie_up_change(
        &self,
        caller: &Caller,
        r: &pb::UpdateTieUpRequest,
    ) -> Result<Change<TieUpRecord>, OpsError> {
        let input = UpdateTieUp::try_from(r.clone())?;
        let rule = SensitiveOperation::WidenSupplyTieUp;
        if approvals::holds(self.state(), caller, rule, None).await? {
            let now = self.state().clock.now_ms();
            let mut conn = self.state().store.conn().await?;
            let (before, after) = tieups::updated(&mut conn, &input, now).await?;
            drop(conn);
            if widens_supply(&policy_tie_up(&before), &policy_tie_up(&after)) {
                let until = after
                    .valid_until
                    .map_or_else(|| "open-ended".to_string(), crate::clock::rfc3339);
                let summary = format!(
                    "widen tie-up {} of {}: {} covering {}, from {} until {until}",
                    after.id,
                    after.entity_id,
                    after.state,
                    covered(&after.keys),
                    crate::clock::rfc3339(after.valid_from),
                );
                let held =
                    approvals::propose(self.state(), caller, UPDATE_TIE_UP, rule, summary, None, r);
                return held.await.map(Change::Held);
            }
        }
        tieups::update(self.state(), caller, input)
            .await
            .map(Change::Done)
    }

    pub(super) async fn register_officer_change(
        &self,
        caller: &Caller,
        r: &pb::RegisterEntityRequest,
    ) -> Result<Change<EntityRecord>, OpsError> {
        let mut input = RegisterEntity::try_from(r.clone())?;
        input.kind = EntityKind::Officer;
        let rule = SensitiveOperation::RegisterOfficer;
        if approvals::holds(self.state(), caller, rule, None).await? {
            if entities::get(self.state(), &input.id).await.is_ok() {
                return Err(OpsError::AlreadyExists(format!(
                    "entity {:?} is registered",
                    input.id
                )));
            }
            let summary = format!("register officer {} ({})", input.id, input.name);
            let held = approvals::propose(
                self.state(),
                caller,
                REGISTER_OFFICER,
                rule,
                summary,
                None,
                r,
            );
            return held.await.map(Change::Held);
        }
        entities::register(self.state(), caller, input)
            .await
            .map(Change::Done)
    }

    pub(super) async fn resume_officer_change(
        &self,
        caller: &Caller,
        r: &pb::EntityRef,
    ) -> Result<Change<EntityRecord>, OpsError> {
        let id = name("entity id", &r.id)?;
        let call = StatusCall::ResumeOfficer;
        let rule = SensitiveOperation::ResumeOfficer;
        if approvals::holds(self.state(), caller, rule, None).await? {
            let entity = entities::get(self.state(), &id).await?;
            entities::check_status_change(&entity, call, &caller.entity.id)?;
            let summary = format!("resume suspended officer {id}");
            let held =
                approvals::propose(self.state(), caller, RESUME_OFFICER, rule, summary, None, r);
            return held.await.map(Change::Held);
        }
        entities::set_status(self.state(), caller, &id, call)
            .await
            .map(Change::Done)
    }

    pub(super) async fn set_dual_control_change(
        &self,
        caller: &Caller,
        r: &pb::SetDualControlRequest,
    ) -> Result<Change<DualControl>, OpsError> {
        let operations = sensitive_operations(&r.operations)?;
        let rule = SensitiveOperation::SetDualControl;
        if approvals::holds(self.state(), caller, rule, None).await? {
            let before = approvals::dual_control(self.state()).await?;
            let summary = format!(
                "dual control: {} (now {})",
                describe_dual_control(&operations),
                describe_dual_control(&before.operations)
            );
            let held = approvals::propose(
                self.state(),
                caller,
                SET_DUAL_CONTROL,
                rule,
                summary,
                None,
                r,
            );
            return held.await.map(Change::Held);
        }
        approvals::set_dual_control(self.state(), caller, operations)
            .await
            .map(Change::Done)
    }

    /// Imports a key, or under dual control proposes it (the request checked
    /// first; the token's checks run when it is carried out).
    pub(super) async fn import_change(
        &self,
        caller: &Caller,
        r: &pb::ImportKeyRequest,
    ) -> Result<Change<KeyView>, OpsError> {
        let request = import::ImportKey::try_from(r)?;
        // The import key version it was wrapped under must take imports now,
        // and again when a held import is carried out.
        let under = import::usable_import_key(self.state(), Some(request.import_version)).await?;
        let rule = SensitiveOperation::ImportKey;
        let target = &request.target;
        if approvals::holds(self.state(), caller, rule, Some(target.class)).await? {
            let summary = format!(
                "import {} {} key {} with KCV {}, wrapped under import key v{} (SHA-256 {})",
                target.algorithm,
                target.class,
                target.alias,
                hex::encode_upper(request.expected_kcv),
                under.version,
                under.kcv
            );
            let key = Some((target.alias.as_str(), None));
            let held = approvals::propose(self.state(), caller, IMPORT, rule, summary, key, r);
            return held.await.map(Change::Held);
        }
        // Run to its end even if the caller goes away: the token object and
        // its record (or its destruction) belong together.
        let (state, caller) = (std::sync::Arc::clone(&self.state), caller.clone());
        tokio::spawn(async move { import::import_key(&state, &caller, request).await })
            .await
            .map_err(|e| OpsError::Internal(format!("the import's task failed: {e}")))?
            .map(Change::Done)
    }

    /// Imports a batch under an import KEK, or under dual control proposes it
    /// (the request and the KEK checked first; each key's checks run when it
    /// is carried out).
    pub(super) async fn import_batch_change(
        &self,
        caller: &Caller,
        r: &pb::ImportKeysRequest,
    ) -> Result<Change<Vec<import::BulkOutcome>>, OpsError> {
        let batch = import::ImportKeys::try_from(r)?;
        let kek = import::usable_kek(self.state(), &batch.kek_alias, batch.kek_version).await?;
        let rule = SensitiveOperation::ImportKey;
        let class = Some(brandkms_policy::KeyClass::CardAccess);
        if approvals::holds(self.state(), caller, rule, class).await? {
            let aliases: Vec<&str> = batch.keys.iter().map(|k| k.target.alias.as_str()).collect();
            let shown = aliases
                .iter()
                .take(20)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            let more = aliases.len().saturating_sub(20);
            let summary = format!(
                "import {} card-access keys wrapped under import KEK {} v{} (KCV {}): {shown}{}",
                aliases.len(),
                batch.kek_alias,
                kek.version,
                kek.kcv,
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            let key = Some((batch.kek_alias.as_str(), Some(kek.version)));
            // The KEK version the summary names is the one carried out.
            let pinned = pb::ImportKeysRequest {
                kek_version: kek.version,
                ..r.clone()
            };
            let held = approvals::propose(
                self.state(),
                caller,
                IMPORT_BATCH,
                rule,
                summary,
                key,
                &pinned,
            );
            return held.await.map(Change::Held);
        }
        let (state, caller) = (std::sync::Arc::clone(&self.state), caller.clone());
        tokio::spawn(async move { import::import_batch(&state, &caller, batch).await })
            .await
            .map_err(|e| OpsError::Internal(format!("the import's task failed: {e}")))?
            .map(Change::Done)
    }

    /// Sets a version's cryptoperiod, or, when that lets it serve longer and
    /// dual control holds widening, proposes it.
    pub(super) async fn cryptoperiod_change(
        &self,
        caller: &Caller,
        r: &pb::SetKeyVersionCryptoperiodRequest,
    ) -> Result<Change<KeyView>, OpsError> {
        let alias = name("alias", &r.alias)?;
        let period = convert::cryptoperiod(r.not_before, r.not_after)?;
        let view = keys::get(self.state(), &alias).await?;
        let record = match version(r.version) {
            Some(v) => view.versions.iter().find(|x| x.version == v),
            None => view
                .versions
                .iter()
                .find(|x| x.state == brandkms_policy::KeyState::Active),
        }
        .ok_or_else(|| {
            OpsError::NotFound(format!(
                "key {alias:?} has no such version (or no active one)"
            ))
        })?;
        keys::lifecycle_applies(&view.key, record)?;
        let before = (record.not_before, record.not_after);
        let after = (period.not_before, period.not_after);
        let rule = SensitiveOperation::WidenCryptoperiod;
        if brandkms_policy::widens_cryptoperiod(before, after)
            && approvals::holds(self.state(), caller, rule, Some(view.key.class)).await?
        {
            let bound =
                |t: Option<i64>| t.map_or_else(|| "unbounded".to_string(), crate::clock::rfc3339);
            let summary = format!(
                "let version {} of {} key {alias} serve longer: not before {}, not after {} (now {} and {})",
                record.version,
                view.key.class,
                bound(after.0),
                bound(after.1),
                bound(before.0),
                bound(before.1)
            );
            let key = Some((alias.as_str(), Some(record.version)));
            // The version the summary names is the one carried out.
            let pinned = pb::SetKeyVersionCryptoperiodRequest {
                version: record.version,
                ..r.clone()
            };
            let held = approvals::propose(
                self.state(),
                caller,
                CRYPTOPERIOD,
                rule,
                summary,
                key,
                &pinned,
            );
            return held.await.map(Change::Held);
        }
        keys::set_cryptoperiod(self.state(), caller, &alias, version(r.version), period)
            .await
            .map(Change::Done)
    }

    /// Marks a version compromised (and rotates the key when asked), or under
    /// dual control proposes it.
    pub(super) async fn compromise_change(
        &self,
        caller: &Caller,
        r: &pb::MarkKeyVersionCompromisedRequest,
    ) -> Result<Change<KeyView>, OpsError> {
        let alias = name("alias", &r.alias)?;
        let v = version(r.version)
            .ok_or_else(|| invalid("version is required: name the compromised version"))?;
        let reason = convert::reason(&r.reason)?.ok_or_else(|| {
            invalid("reason is required: what happened, for the approver and the audit trail")
        })?;
        let view = keys::get(self.state(), &alias).await?;
        let record = view
            .versions
            .iter()
            .find(|x| x.version == v)
            .ok_or_else(|| OpsError::NotFound(format!("key {alias:?} has no version {v}")))?;
        keys::check_compromisable(&view.key, record)?;
        if r.rotate {
            let _rotatable = crate::ops::generate::generator(&view.key)?;
        }
        // Held when the set holds marking, or rotating this key's class and
        // the command rotates too.
        let class = Some(view.key.class);
        let mut rule = None;
        if approvals::holds(
            self.state(),
            caller,
            SensitiveOperation::MarkCompromised,
            class,
        )
        .await?
        {
            rule = Some(SensitiveOperation::MarkCompromised);
        } else if r.rotate
            && approvals::holds(self.state(), caller, SensitiveOperation::RotateKey, class).await?
        {
            rule = Some(SensitiveOperation::RotateKey);
        }
        if let Some(rule) = rule {
            let summary = format!(
                "mark version {v} of {} key {alias} compromised{} ({reason})",
                view.key.class,
                if r.rotate { " and rotate the key" } else { "" }
            );
            let key = Some((alias.as_str(), Some(v)));
            let held = approvals::propose(self.state(), caller, COMPROMISED, rule, summary, key, r);
            return held.await.map(Change::Held);
        }
        let marked = keys::mark_compromised(self.state(), caller, &alias, v, &reason).await?;
        if !r.rotate {
            return Ok(Change::Done(marked));
        }
        // The mark's record closed the approval; the rotation is part of what
        // was approved, not a second proposal. The mark stands whatever
        // becomes of the rotation, and the answer says so.
        let mut rotating = caller.clone();
        rotating.approving = None;
        keys::rotate(self.state(), &rotating, &alias)
            .await
            .map(Change::Done)
            .map_err(|e| {
                OpsError::FailedPrecondition(format!(
                    "version {v} of {alias} is marked compromised, but the rotation failed ({}): rotate it with kmsctl key rotate {alias}",
                    e.audit_reason()
                ))
            })
    }

    /// Runs an approved proposal's request as `acting` (the approving officer).
    pub(super) async fn carry_out(
        &self,
        acting: &Caller,
        record: &ApprovalRecord,
    ) -> Result<pb::approve_response::Result, OpsError> {
        use pb::approve_response::Result as Produced;
        let payload = hex::decode(&record.payload)
            .map_err(|e| OpsError::Internal(format!("approval {}: {e}", record.id)))?;
        let bad = |e: prost::DecodeError| {
            OpsError::Internal(format!("approval {} payload: {e}", record.id))
        };
        match record.operation.as_str() {
            ROTATE => {
                let r = pb::RotateKeyRequest::decode(payload.as_slice()).map_err(bad)?;
                Ok(Produced::Key(done(self.rotate(acting, &r).await?)?.into()))
            }
            DESTROY => {
                let r = pb::ScheduleKeyVersionDestructionRequest::decode(payload.as_slice())
                    .map_err(bad)?;
                let view = done(self.schedule_destruction(acting, &r).await?)?;
                Ok(Produced::Key(view.into()))
            }
            CREATE_TIE_UP => {
                let r = pb::CreateTieUpRequest::decode(payload.as_slice()).map_err(bad)?;
                let t = done(self.create_tie_up_change(acting, &r).await?)?;
                Ok(Produced::TieUp(t.into()))
            }
            UPDATE_TIE_UP => {
                let r = pb::UpdateTieUpRequest::decode(payload.as_slice()).map_err(bad)?;
                let t = done(self.update_tie_up_change(acting, &r).await?)?;
                Ok(Produced::TieUp(t.into()))
            }
            REGISTER_OFFICER => {
                let r = pb::RegisterEntityRequest::decode(payload.as_slice()).map_err(bad)?;
                let e = done(self.register_officer_change(acting, &r).await?)?;
                Ok(Produced::Entity(e.into()))
            }
            RESUME_OFFICER => {
                let r = pb::EntityRef::decode(payload.as_slice()).map_err(bad)?;
                let e = done(self.resume_officer_change(acting, &r).await?)?;
                Ok(Produced::Entity(e.into()))
            }
            SET_DUAL_CONTROL => {
                let r = pb::SetDualControlRequest::decode(payload.as_slice()).map_err(bad)?;
                let d = done(self.set_dual_control_change(acting, &r).await?)?;
                Ok(Produced::DualControl(dual_control_message(d)))
            }
            IMPORT => {
                let r = pb::ImportKeyRequest::decode(payload.as_slice()).map_err(bad)?;
                Ok(Produced::Key(
                    done(self.import_change(acting, &r).await?)?.into(),
                ))
            }
            IMPORT_BATCH => {
                let r = pb::ImportKeysRequest::decode(payload.as_slice()).map_err(bad)?;
                let outcomes = done(self.import_batch_change(acting, &r).await?)?;
                Ok(Produced::ImportedKeys(convert::bulk_outcomes(outcomes)))
            }
            CRYPTOPERIOD => {
                let r = pb::SetKeyVersionCryptoperiodRequest::decode(payload.as_slice())
                    .map_err(bad)?;
                Ok(Produced::Key(
                    done(self.cryptoperiod_change(acting, &r).await?)?.into(),
                ))
            }
            COMPROMISED => {
                let r = pb::MarkKeyVersionCompromisedRequest::decode(payload.as_slice())
                    .map_err(bad)?;
                Ok(Produced::Key(
                    done(self.compromise_change(acting, &r).await?)?.into(),
                ))
            }
            other => Err(OpsError::Internal(format!(
                "approval {} holds an unknown operation {other:?}",
                record.id
            ))),
        }
    }
}

fn covered(keys: &[(String, TieUpMode)]) -> String {
    keys.iter()
        .map(|(a, m)| format!("{a}:{m}"))
        .collect::<Vec<_>>()
        .join(", ")
}
