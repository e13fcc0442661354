//! The `Admin` service: officers manage keys, participants, tie-ups and read the
//! audit trail. Every call is audited; state changes commit with their record.

use brandkms_policy::{EntityStatus, SensitiveOperation, TieUpMode, widens_supply};
use brandkms_proto::v1 as pb;
use brandkms_proto::v1::admin_server::Admin;
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::{self, name, version};
use super::{AppState, Caller, ServiceError, Shared, audited, audited_read, invalid, officer};
use crate::audit::ApprovalClosing;
use crate::ops::approvals::{self, Change};
use crate::ops::distribution::policy_tie_up;
use crate::ops::keys::{CreateKey, DEFAULT_WAITING_DAYS, KeyView};
use crate::ops::settlement::{self, CreateSettlementKey};
use crate::ops::tieups::{CreateTieUp, UpdateTieUp};
use crate::ops::{entities, keys, tieups};
use crate::store::approvals::ApprovalRecord;
use crate::store::audit::{self as audit_rows, AuditFilter};
use crate::store::tieups::TieUpRecord;

/// The `Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Shared,
}

impl AdminService {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        AdminService { state }
    }

    fn state(&self) -> &AppState {
        &self.state
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/CreateKey";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let alias = r.alias.clone();
        let result = if r.class == pb::KeyClass::Authenticator as i32 {
            match authenticator_request(r) {
                Ok(alias) => settlement::create_authenticator(self.state(), &caller, alias).await,
                Err(e) => Err(e),
            }
        } else if r.class == pb::KeyClass::Settlement as i32 {
            match CreateSettlementKey::try_from(r) {
                Ok(input) => settlement::create(self.state(), &caller, input).await,
                Err(e) => Err(e),
            }
        } else {
            match CreateKey::try_from(r) {
                Ok(input) => keys::create(self.state(), &caller, input).await,
                Err(e) => Err(e),
            }
        };
        let view = audited(self.state(), &caller, OP, Some((&alias, None)), result).await?;
        Ok(Response::new(view.into()))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let caller = officer(self.state(), &request, ROTATE).await?;
        let r = request.into_inner();
        let result = self.rotate(&caller, &r).await;
        let change = audited(
            self.state(),
            &caller,
            ROTATE,
            Some((&r.alias, None)),
            result,
        )
        .await?;
        Ok(Response::new(key_change(change)))
    }

    async fn set_key_version_state(
        &self,
        request: Request<pb::SetKeyVersionStateRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/SetKeyVersionState";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version)?;
            let to = convert::key_state(r.state)?.ok_or_else(|| invalid("state is required"))?;
            keys::set_state(self.state(), &caller, &alias, v, to).await
        }
        .await;
        let view = audited(
            self.state(),
            &caller,
            OP,
            Some((&r.alias, Some(r.version))),
            result,
        )
        .await?;
        Ok(Response::new(view.into()))
    }

    async fn schedule_key_version_destruction(
        &self,
        request: Request<pb::ScheduleKeyVersionDestructionRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let caller = officer(self.state(), &request, DESTROY).await?;
        let r = request.into_inner();
        let result = self.schedule_destruction(&caller, &r).await;
        let key = Some((r.alias.as_str(), Some(r.version)));
        let change = audited(self.state(), &caller, DESTROY, key, result).await?;
        Ok(Response::new(key_change(change)))
    }

    async fn cancel_key_version_destruction(
        &self,
        request: Request<pb::CancelKeyVersionDestructionRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/CancelKeyVersionDestruction";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version)?;
            keys::cancel_destruction(self.state(), &caller, &alias, v).await
        }
        .await;
        let view = audited(
            self.state(),
            &caller,
            OP,
            Some((&r.alias, Some(r.version))),
            result,
        )
        .await?;
        Ok(Response::new(view.into()))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/GetKey";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async { keys::get(self.state(), &name("alias", &r.alias)?).await }.await;
        let view = audited_read(self.state(), &caller, OP, Some((&r.alias, None)), result).await?;
        Ok(Response::new(view.into()))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        const OP: &str = "Admin/ListKeys";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async { keys::list(self.state(), convert::key_class(r.class)?).await }.await;
        let views = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: views.into_iter().map(Into::into).collect(),
        }))
    }

    async fn register_entity(
        &self,
        request: Request<pb::RegisterEntityRequest>,
    ) -> Result<Response<pb::Entity>, Status> {
        const OP: &str = "Admin/RegisterEntity";
        let caller = officer(self.state(), &request, OP).await?;
        let result = match request.into_inner().try_into() {
            Ok(input) => entities::register(self.state(), &caller, input).await,
            Err(e) => Err(e),
        };
        let entity = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(entity.into()))
    }

    async fn suspend_entity(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::Entity>, Status> {
        self.entity_status(request, "Admin/SuspendEntity", EntityStatus::Suspended)
            .await
    }

    async fn resume_entity(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::Entity>, Status> {
        self.entity_status(request, "Admin/ResumeEntity", EntityStatus::Active)
            .await
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Result<Response<pb::ListEntitiesResponse>, Status> {
        const OP: &str = "Admin/ListEntities";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result =
            async { entities::list(self.state(), convert::entity_kind(r.kind)?).await }.await;
        let list = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListEntitiesResponse {
            entities: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn create_tie_up(
        &self,
        request: Request<pb::CreateTieUpRequest>,
    ) -> Result<Response<pb::TieUpChange>, Status> {
        let caller = officer(self.state(), &request, CREATE_TIE_UP).await?;
        let result = self.create_tie_up_change(&caller, request.get_ref()).await;
        let change = audited(self.state(), &caller, CREATE_TIE_UP, None, result).await?;
        Ok(Response::new(tie_up_change(change)))
    }

    async fn update_tie_up(
        &self,
        request: Request<pb::UpdateTieUpRequest>,
    ) -> Result<Response<pb::TieUpChange>, Status> {
        let caller = officer(self.state(), &request, UPDATE_TIE_UP).await?;
        let result = self.update_tie_up_change(&caller, request.get_ref()).await;
        let change = audited(self.state(), &caller, UPDATE_TIE_UP, None, result).await?;
        Ok(Response::new(tie_up_change(change)))
    }

    async fn terminate_tie_up(
        &self,
        request: Request<pb::TieUpRef>,
    ) -> Result<Response<pb::TieUp>, Status> {
        const OP: &str = "Admin/TerminateTieUp";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result =
            async { tieups::terminate(self.state(), &caller, &name("tie-up id", &r.id)?).await }
                .await;
        let t = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(t.into()))
    }

    async fn list_tie_ups(
        &self,
        request: Request<pb::ListTieUpsRequest>,
    ) -> Result<Response<pb::ListTieUpsResponse>, Status> {
        const OP: &str = "Admin/ListTieUps";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let entity = if r.entity_id.is_empty() {
                None
            } else {
                Some(name("entity id", &r.entity_id)?)
            };
            tieups::list(self.state(), entity.as_deref()).await
        }
        .await;
        let list = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListTieUpsResponse {
            tie_ups: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_distributions(
        &self,
        request: Request<pb::ListDistributionsRequest>,
    ) -> Result<Response<pb::ListDistributionsResponse>, Status> {
        const OP: &str = "Admin/ListDistributions";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let optional = |what: &str, v: &str| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    name(what, v).map(Some)
                }
            };
            let alias = optional("alias", &r.alias)?;
            let entity = optional("entity id", &r.entity_id)?;
            let mut conn = self.state().store.conn().await?;
            Ok(crate::store::distribution::distributions(
                &mut conn,
                alias.as_deref(),
                entity.as_deref(),
            )
            .await?)
        }
        .await;
        let list = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListDistributionsResponse {
            distributions: list
                .into_iter()
                .map(|d| pb::Distribution {
                    id: d.id,
                    alias: d.alias,
                    version: d.version,
                    entity_id: d.entity_id,
                    transport_alias: d.transport_alias,
                    transport_version: d.transport_version,
                    kcv: d.kcv,
                    at: d.at,
                })
                .collect(),
        }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        const OP: &str = "Admin/ListApprovals";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result =
            async { approvals::list(self.state(), convert::approval_state(r.state)?).await }.await;
        let list = audited_read(self.state(), &caller, OP, None, result).await?;
        let now = self.state().clock.now_ms();
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: list.iter().map(|a| convert::approval(a, now)).collect(),
        }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApprovalRef>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        const OP: &str = "Admin/Approve";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let id = name("approval id", &r.id)?;
            let now = self.state().clock.now_ms();
            let record = {
                let mut conn = self.state().store.conn().await?;
                approvals::pending(&mut conn, &id, now).await?
            };
            approvals::check_approver(&caller, &record, now)?;
            let mut acting = caller.clone();
            acting.approving = Some(ApprovalClosing {
                id: record.id.clone(),
                proposer: record.proposer.clone(),
            });
            let result = self.carry_out(&acting, &record).await?;
            Ok((approvals::get(self.state(), &id).await?, result))
        }
        .await;
        let (record, result) = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ApproveResponse {
            approval: Some(convert::approval(&record, self.state().clock.now_ms())),
            result: Some(result),
        }))
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        const OP: &str = "Admin/Reject";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let id = name("approval id", &r.id)?;
            let reason = match r.reason.trim() {
                "" => None,
                t if t.chars().count() > 500 => {
                    return Err(invalid("reason is at most 500 characters"));
                }
                t if t.chars().any(char::is_control) => {
                    return Err(invalid("reason must not hold control characters"));
                }
                t => Some(t.to_string()),
            };
            approvals::reject(self.state(), &caller, &id, reason).await
        }
        .await;
        let record = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(convert::approval(
            &record,
            self.state().clock.now_ms(),
        )))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        const OP: &str = "Admin/ListAudit";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            if r.from < 0 || r.until < 0 {
                return Err(invalid("times are Unix milliseconds, not negative"));
            }
            if r.limit > 1000 {
                return Err(invalid("limit is at most 1000"));
            }
            let filter = AuditFilter {
                from: (r.from > 0).then_some(r.from),
                until: (r.until > 0).then_some(r.until),
                caller: (!r.caller.is_empty()).then(|| r.caller.clone()),
                operation: (!r.operation.is_empty()).then(|| r.operation.clone()),
                limit: Some(if r.limit == 0 { 100 } else { r.limit }),
            };
            let mut conn = self.state().store.conn().await?;
            Ok(audit_rows::list(&mut conn, &filter).await?)
        }
        .await;
        let rows = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListAuditResponse {
            records: rows.into_iter().map(Into::into).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        const OP: &str = "Admin/VerifyAudit";
        let caller = officer(self.state(), &request, OP).await?;
        // Verify before recording this request, so the report covers the trail as found.
        let result = self
            .state()
            .auditor
            .verify(&self.state().store)
            .await
            .map_err(super::ServiceError::from);
        let report = audited_read(self.state(), &caller, OP, None, result).await?;
        let broken = report.first_broken.clone();
        Ok(Response::new(pb::VerifyAuditResponse {
            intact: broken.is_none(),
            records: report.records,
            first_broken_seq: broken.as_ref().map_or(0, |b| b.seq),
            problem: broken.map(|b| b.problem).unwrap_or_default(),
        }))
    }
}

impl AdminService {
    async fn entity_status(
        &self,
        request: Request<pb::EntityRef>,
        operation: &str,
        status: EntityStatus,
    ) -> Result<Response<pb::Entity>, Status> {
        let caller = officer(self.state(), &request, operation).await?;
        let r = request.into_inner();
        let result = async {
            entities::set_status(self.state(), &caller, &name("entity id", &r.id)?, status).await
        }
        .await;
        let entity = audited(self.state(), &caller, operation, None, result).await?;
        Ok(Response::new(entity.into()))
    }
}

const ROTATE: &str = "Admin/RotateKey";
const DESTROY: &str = "Admin/ScheduleKeyVersionDestruction";
const CREATE_TIE_UP: &str = "Admin/CreateTieUp";
const UPDATE_TIE_UP: &str = "Admin/UpdateTieUp";

fn key_change(change: Change<KeyView>) -> pb::KeyChange {
    pb::KeyChange {
        result: Some(match change {
            Change::Done(view) => pb::key_change::Result::Key(view.into()),
            Change::Held(a) => pb::key_change::Result::Pending(convert::approval(&a, a.created_at)),
        }),
    }
}

fn tie_up_change(change: Change<TieUpRecord>) -> pb::TieUpChange {
    pb::TieUpChange {
        result: Some(match change {
            Change::Done(t) => pb::tie_up_change::Result::TieUp(t.into()),
            Change::Held(a) => {
                pb::tie_up_change::Result::Pending(convert::approval(&a, a.created_at))
            }
        }),
    }
}

fn waiting_days(days: Option<u32>) -> Result<u32, ServiceError> {
    match days {
        None => Ok(DEFAULT_WAITING_DAYS),
        Some(0) => Err(invalid("waiting period must be at least 1 day")),
        Some(d) if d > 3650 => Err(invalid("waiting period must be at most 3650 days")),
        Some(d) => Ok(d),
    }
}

/// What an approved operation ran, for the caller.
fn done<T>(change: Change<T>) -> Result<T, ServiceError> {
    match change {
        Change::Done(v) => Ok(v),
        Change::Held(a) => Err(ServiceError::Internal(format!(
            "carrying out an approval was held again as {}",
            a.id
        ))),
    }
}

/// The four sensitive operations: each runs, or under dual control is checked
/// as far as it can be now and becomes a proposal.
impl AdminService {
    async fn rotate(
        &self,
        caller: &Caller,
        r: &pb::RotateKeyRequest,
    ) -> Result<Change<KeyView>, ServiceError> {
        let alias = name("alias", &r.alias)?;
        let view = keys::get(self.state(), &alias).await?;
        let rule = SensitiveOperation::RotateKey;
        if approvals::holds(self.state(), caller, rule, Some(view.key.class)) {
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

    async fn schedule_destruction(
        &self,
        caller: &Caller,
        r: &pb::ScheduleKeyVersionDestructionRequest,
    ) -> Result<Change<KeyView>, ServiceError> {
        let alias = name("alias", &r.alias)?;
        let v = version(r.version)?;
        let days = waiting_days(r.waiting_days)?;
        let view = keys::get(self.state(), &alias).await?;
        let rule = SensitiveOperation::DestroyKeyVersion;
        if approvals::holds(self.state(), caller, rule, Some(view.key.class)) {
            let record = view
                .versions
                .iter()
                .find(|x| x.version == v)
                .ok_or_else(|| {
                    ServiceError::NotFound(format!("key {alias:?} has no version {v}"))
                })?;
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

    async fn create_tie_up_change(
        &self,
        caller: &Caller,
        r: &pb::CreateTieUpRequest,
    ) -> Result<Change<TieUpRecord>, ServiceError> {
        let input = CreateTieUp::try_from(r.clone())?;
        let rule = SensitiveOperation::CreateSupplyTieUp;
        let supplies = input.keys.iter().any(|(_, m)| *m == TieUpMode::Supply);
        if supplies && approvals::holds(self.state(), caller, rule, None) {
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

    async fn update_tie_up_change(
        &self,
        caller: &Caller,
        r: &pb::UpdateTieUpRequest,
    ) -> Result<Change<TieUpRecord>, ServiceError> {
        let input = UpdateTieUp::try_from(r.clone())?;
        let rule = SensitiveOperation::WidenSupplyTieUp;
        if approvals::holds(self.state(), caller, rule, None) {
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

    /// Runs an approved proposal's request as `acting` (the approving officer).
    async fn carry_out(
        &self,
        acting: &Caller,
        record: &ApprovalRecord,
    ) -> Result<pb::approve_response::Result, ServiceError> {
        use pb::approve_response::Result as Produced;
        let payload = hex::decode(&record.payload)
            .map_err(|e| ServiceError::Internal(format!("approval {}: {e}", record.id)))?;
        let bad = |e: prost::DecodeError| {
            ServiceError::Internal(format!("approval {} payload: {e}", record.id))
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
            other => Err(ServiceError::Internal(format!(
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

/// An authenticator key request: an alias, HMAC-SHA-256, nothing else.
fn authenticator_request(r: pb::CreateKeyRequest) -> Result<String, ServiceError> {
    let alias = name("alias", &r.alias)?;
    let algorithm = convert::algorithm(r.algorithm)?;
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
