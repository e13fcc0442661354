//! The `Admin` service: officers manage keys, participants, tie-ups and read the
//! audit trail. Every call is audited; state changes commit with their record.

use brandkms_policy::EntityStatus;
use brandkms_proto::v1 as pb;
use brandkms_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::convert::{self, name, version};
use super::{AppState, Shared, audited, audited_read, invalid, officer};
use crate::ops::keys::{CreateKey, DEFAULT_WAITING_DAYS};
use crate::ops::{entities, keys, tieups};
use crate::store::audit::{self as audit_rows, AuditFilter};

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
        let result = match CreateKey::try_from(r) {
            Ok(input) => keys::create(self.state(), &caller, input).await,
            Err(e) => Err(e),
        };
        let view = audited(self.state(), &caller, OP, Some((&alias, None)), result).await?;
        Ok(Response::new(view.into()))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/RotateKey";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = match name("alias", &r.alias) {
            Ok(alias) => keys::rotate(self.state(), &caller, &alias).await,
            Err(e) => Err(e),
        };
        let view = audited(self.state(), &caller, OP, Some((&r.alias, None)), result).await?;
        Ok(Response::new(view.into()))
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
    ) -> Result<Response<pb::Key>, Status> {
        const OP: &str = "Admin/ScheduleKeyVersionDestruction";
        let caller = officer(self.state(), &request, OP).await?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version)?;
            let days = match r.waiting_days {
                None => DEFAULT_WAITING_DAYS,
                Some(0) => return Err(invalid("waiting period must be at least 1 day")),
                Some(d) if d > 3650 => {
                    return Err(invalid("waiting period must be at most 3650 days"));
                }
                Some(d) => d,
            };
            keys::schedule_destruction(self.state(), &caller, &alias, v, days).await
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
    ) -> Result<Response<pb::TieUp>, Status> {
        const OP: &str = "Admin/CreateTieUp";
        let caller = officer(self.state(), &request, OP).await?;
        let result = match request.into_inner().try_into() {
            Ok(input) => tieups::create(self.state(), &caller, input).await,
            Err(e) => Err(e),
        };
        let t = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(t.into()))
    }

    async fn update_tie_up(
        &self,
        request: Request<pb::UpdateTieUpRequest>,
    ) -> Result<Response<pb::TieUp>, Status> {
        const OP: &str = "Admin/UpdateTieUp";
        let caller = officer(self.state(), &request, OP).await?;
        let result = match request.into_inner().try_into() {
            Ok(input) => tieups::update(self.state(), &caller, input).await,
            Err(e) => Err(e),
        };
        let t = audited(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(t.into()))
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
