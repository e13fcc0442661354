//! The `Admin` service: officers manage keys, participants, tie-ups and read the
//! audit trail. Every call has the same shape, [`AdminService::officer_call`]:
//! the caller must be an officer (rule 7), the request is converted and run, and
//! the call is audited (a change with its own record in its transaction, a read
//! after it). The dual-control operations are in `sensitive`.

mod sensitive;

use brandkms_proto::v1 as pb;
use brandkms_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use self::sensitive::{
    COMPROMISED, CREATE_TIE_UP, CRYPTOPERIOD, DESTROY, IMPORT, IMPORT_BATCH, ROTATE, UPDATE_TIE_UP,
    key_change, tie_up_change,
};
use super::convert::{self, name, optional_name, version};
use super::paging::{PageRequest, numeric_key};
use super::{audited, audited_read, officer};
use crate::audit::ApprovalClosing;
use crate::ops::approvals;
use crate::ops::entities::StatusCall;
use crate::ops::keys::CreateKey;
use crate::ops::settlement::{self, CreateSettlementKey};
use crate::ops::{
    AppState, Caller, OpsError, Shared, distribution, entities, import, invalid, keys, tieups,
};
use crate::store::audit::{self as audit_rows, AuditCursor, AuditFilter};

/// The `Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Shared,
}

/// How an officer call is audited.
#[derive(Debug, Clone, Copy)]
enum Audit {
    /// A change: the operation records itself in its transaction; a failure is
    /// recorded on its own.
    Change,
    /// A read: recorded after it, allowed or failed.
    Read,
}

/// The key (alias, version) an audit record names.
type AuditKey = Option<(String, Option<u32>)>;

fn audit_key(alias: &str, version: Option<u32>) -> AuditKey {
    Some((alias.to_string(), version))
}

impl AdminService {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        AdminService { state }
    }

    fn state(&self) -> &AppState {
        &self.state
    }

    /// The one shape of an officer call: the caller must be an officer (a refusal
    /// is audited), `run` converts and carries out the request, and the outcome
    /// is audited as `audit` says, naming `key`.
    async fn officer_call<Req, T>(
        &self,
        request: Request<Req>,
        operation: &str,
        audit: Audit,
        key: AuditKey,
        run: impl AsyncFnOnce(&Caller, Req) -> Result<T, OpsError>,
    ) -> Result<Response<T>, Status> {
        let caller = officer(self.state(), &request, operation).await?;
        let result = run(&caller, request.into_inner()).await;
        let key = key.as_ref().map(|(a, v)| (a.as_str(), *v));
        let value = match audit {
            Audit::Change => audited(self.state(), &caller, operation, key, result).await?,
            Audit::Read => audited_read(self.state(), &caller, operation, key, result).await?,
        };
        Ok(Response::new(value))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let key = audit_key(&request.get_ref().alias, None);
        self.officer_call(
            request,
            "Admin/CreateKey",
            Audit::Change,
            key,
            async |caller, r| {
                let state = self.state();
                let view = match convert::key_class(r.key_class)? {
                    Some(brandkms_policy::KeyClass::Authenticator) => {
                        let alias = convert::authenticator_request(r)?;
                        settlement::create_authenticator(state, caller, alias).await?
                    }
                    Some(brandkms_policy::KeyClass::Settlement) => {
                        settlement::create(state, caller, CreateSettlementKey::try_from(r)?).await?
                    }
                    Some(brandkms_policy::KeyClass::CardAccess) | None => {
                        keys::create(state, caller, CreateKey::try_from(r)?).await?
                    }
                    Some(other) => {
                        return Err(invalid(format!(
                            "{other} keys are created by the service itself, not through CreateKey"
                        )));
                    }
                };
                Ok(view.into())
            },
        )
        .await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let key = audit_key(&request.get_ref().alias, None);
        self.officer_call(request, ROTATE, Audit::Change, key, async |caller, r| {
            Ok(key_change(self.rotate(caller, &r).await?))
        })
        .await
    }

    async fn set_key_version_state(
        &self,
        request: Request<pb::SetKeyVersionStateRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.alias, version(r.version));
        let op = "Admin/SetKeyVersionState";
        self.officer_call(request, op, Audit::Change, key, async |caller, r| {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version);
            let to = convert::key_state(r.state)?.ok_or_else(|| invalid("state is required"))?;
            Ok(keys::set_state(self.state(), caller, &alias, v, to)
                .await?
                .into())
        })
        .await
    }

    async fn schedule_key_version_destruction(
        &self,
        request: Request<pb::ScheduleKeyVersionDestructionRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.alias, version(r.version));
        self.officer_call(request, DESTROY, Audit::Change, key, async |caller, r| {
            Ok(key_change(self.schedule_destruction(caller, &r).await?))
        })
        .await
    }

    async fn cancel_key_version_destruction(
        &self,
        request: Request<pb::CancelKeyVersionDestructionRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.alias, version(r.version));
        let op = "Admin/CancelKeyVersionDestruction";
        self.officer_call(request, op, Audit::Change, key, async |caller, r| {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version);
            Ok(keys::cancel_destruction(self.state(), caller, &alias, v)
                .await?
                .into())
        })
        .await
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let key = audit_key(&request.get_ref().alias, None);
        self.officer_call(request, "Admin/GetKey", Audit::Read, key, async |_, r| {
            Ok(keys::get(self.state(), &name("alias", &r.alias)?)
                .await?
                .into())
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.officer_call(
            request,
            "Admin/ListKeys",
            Audit::Read,
            None,
            async |_, r| {
                let (class, within) = (r.key_class.to_string(), r.expiring_within_secs.to_string());
                let page =
                    PageRequest::new("keys", &[&class, &within], r.page_size, &r.page_token)?;
                let mut views = keys::list(self.state(), convert::key_class(r.key_class)?).await?;
                if r.expiring_within_secs > 0 {
                    let within = i64::try_from(r.expiring_within_secs.saturating_mul(1000))
                        .unwrap_or(i64::MAX);
                    let by = self.state().clock.now_ms().saturating_add(within);
                    views.retain(|v| v.versions.iter().any(|x| keys::ends_before(x, by)));
                }
                let page = page.page(views, |v| v.key.alias.clone());
                Ok(pb::ListKeysResponse {
                    keys: page.items.into_iter().map(Into::into).collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    async fn register_entity(
        &self,
        request: Request<pb::RegisterEntityRequest>,
    ) -> Result<Response<pb::Entity>, Status> {
        let op = "Admin/RegisterEntity";
        self.officer_call(request, op, Audit::Change, None, async |caller, r| {
            let input: entities::RegisterEntity = r.try_into()?;
            if input.kind == brandkms_policy::EntityKind::Officer {
                return Err(OpsError::FailedPrecondition(
                    "officers are registered with Admin/RegisterOfficer (kmsctl entity register ID --kind officer), which dual control may hold".to_string(),
                ));
            }
            Ok(entities::register(self.state(), caller, input)
                .await?
                .into())
        })
        .await
    }

    async fn suspend_entity(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::Entity>, Status> {
        self.entity_status(request, StatusCall::Suspend).await
    }

    async fn resume_entity(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::Entity>, Status> {
        self.entity_status(request, StatusCall::ResumeEntity).await
    }

    async fn set_key_version_cryptoperiod(
        &self,
        request: Request<pb::SetKeyVersionCryptoperiodRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.alias, version(r.version));
        self.officer_call(
            request,
            CRYPTOPERIOD,
            Audit::Change,
            key,
            async |caller, r| Ok(key_change(self.cryptoperiod_change(caller, &r).await?)),
        )
        .await
    }

    async fn mark_key_version_compromised(
        &self,
        request: Request<pb::MarkKeyVersionCompromisedRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.alias, version(r.version));
        self.officer_call(
            request,
            COMPROMISED,
            Audit::Change,
            key,
            async |caller, r| Ok(key_change(self.compromise_change(caller, &r).await?)),
        )
        .await
    }

    async fn import_keys(
        &self,
        request: Request<pb::ImportKeysRequest>,
    ) -> Result<Response<pb::ImportKeysChange>, Status> {
        let r = request.get_ref();
        let key = audit_key(&r.kek_alias, version(r.kek_version));
        self.officer_call(
            request,
            IMPORT_BATCH,
            Audit::Change,
            key,
            async |caller, r| {
                use pb::import_keys_change::Result as Produced;
                let result = match self.import_batch_change(caller, &r).await? {
                    approvals::Change::Done(outcomes) => {
                        Produced::Done(convert::bulk_outcomes(outcomes))
                    }
                    approvals::Change::Held(a) => {
                        Produced::Pending(convert::approval(&a, a.created_at))
                    }
                };
                Ok(pb::ImportKeysChange {
                    result: Some(result),
                })
            },
        )
        .await
    }

    async fn create_import_key(
        &self,
        request: Request<pb::CreateImportKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let key = audit_key(import::IMPORT_ALIAS, None);
        let op = "Admin/CreateImportKey";
        self.officer_call(request, op, Audit::Change, key, async |caller, _| {
            import::create_import_key(self.state(), caller).await?;
            Ok(keys::get(self.state(), import::IMPORT_ALIAS).await?.into())
        })
        .await
    }

    async fn get_import_parameters(
        &self,
        request: Request<pb::GetImportParametersRequest>,
    ) -> Result<Response<pb::ImportParameters>, Status> {
        let key = audit_key(import::IMPORT_ALIAS, None);
        let op = "Admin/GetImportParameters";
        self.officer_call(request, op, Audit::Read, key, async |_, _| {
            let p = import::import_parameters(self.state()).await?;
            Ok(pb::ImportParameters {
                version: p.version,
                spki_der: p.public.der,
                spki_pem: p.public.pem,
                fingerprint_sha256: p.public.fingerprint.to_vec(),
                wrapping: import::IMPORT_WRAPPING.to_string(),
                expires_at: p.expires_at,
            })
        })
        .await
    }

    async fn import_key(
        &self,
        request: Request<pb::ImportKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let key = audit_key(&request.get_ref().alias, None);
        self.officer_call(request, IMPORT, Audit::Change, key, async |caller, r| {
            Ok(key_change(self.import_change(caller, &r).await?))
        })
        .await
    }

    async fn trust_participant_key(
        &self,
        request: Request<pb::TrustParticipantKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let entity = name("entity id", &request.get_ref().entity_id).ok();
        let key = entity.as_deref().map(crate::ops::authorize::trusted_alias);
        let key = key.and_then(|alias| audit_key(&alias, None));
        let op = "Admin/TrustParticipantKey";
        self.officer_call(request, op, Audit::Change, key, async |caller, r| {
            let so_pin = zeroize::Zeroizing::new(r.so_pin);
            let trust = distribution::TrustKey {
                entity_id: name("entity id", &r.entity_id)?,
                spki_der: r.spki_der,
                fingerprint: r.fingerprint_sha256,
                so_pin,
            };
            if trust.so_pin.is_empty() {
                return Err(invalid(
                    "so_pin is required: the token's security-officer PIN",
                ));
            }
            // Run to its end even if the caller goes away: the token step and
            // its record belong together.
            let (state, caller) = (std::sync::Arc::clone(&self.state), caller.clone());
            let v = tokio::spawn(async move {
                distribution::trust_participant_key(&state, &caller, trust).await
            })
            .await
            .map_err(|e| OpsError::Internal(format!("the ceremony's task failed: {e}")))??;
            Ok(keys::get(self.state(), &v.alias).await?.into())
        })
        .await
    }

    async fn register_officer(
        &self,
        request: Request<pb::RegisterEntityRequest>,
    ) -> Result<Response<pb::EntityChange>, Status> {
        let op = sensitive::REGISTER_OFFICER;
        self.officer_call(request, op, Audit::Change, None, async |caller, r| {
            Ok(sensitive::entity_change(
                self.register_officer_change(caller, &r).await?,
            ))
        })
        .await
    }

    async fn resume_officer(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::EntityChange>, Status> {
        let op = sensitive::RESUME_OFFICER;
        self.officer_call(request, op, Audit::Change, None, async |caller, r| {
            Ok(sensitive::entity_change(
                self.resume_officer_change(caller, &r).await?,
            ))
        })
        .await
    }

    async fn get_dual_control(
        &self,
        request: Request<pb::GetDualControlRequest>,
    ) -> Result<Response<pb::DualControl>, Status> {
        let op = "Admin/GetDualControl";
        self.officer_call(request, op, Audit::Read, None, async |_, _| {
            Ok(sensitive::dual_control_message(
                approvals::dual_control(self.state()).await?,
            ))
        })
        .await
    }

    async fn set_dual_control(
        &self,
        request: Request<pb::SetDualControlRequest>,
    ) -> Result<Response<pb::DualControlChange>, Status> {
        let op = sensitive::SET_DUAL_CONTROL;
        self.officer_call(request, op, Audit::Change, None, async |caller, r| {
            Ok(sensitive::dual_control_change(
                self.set_dual_control_change(caller, &r).await?,
            ))
        })
        .await
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Result<Response<pb::ListEntitiesResponse>, Status> {
        self.officer_call(
            request,
            "Admin/ListEntities",
            Audit::Read,
            None,
            async |_, r| {
                let kind = r.kind.to_string();
                let page = PageRequest::new("entities", &[&kind], r.page_size, &r.page_token)?;
                let list = entities::list(self.state(), convert::entity_kind(r.kind)?).await?;
                let page = page.page(list, |e| e.id.clone());
                Ok(pb::ListEntitiesResponse {
                    entities: page.items.into_iter().map(Into::into).collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    async fn create_tie_up(
        &self,
        request: Request<pb::CreateTieUpRequest>,
    ) -> Result<Response<pb::TieUpChange>, Status> {
        self.officer_call(
            request,
            CREATE_TIE_UP,
            Audit::Change,
            None,
            async |caller, r| Ok(tie_up_change(self.create_tie_up_change(caller, &r).await?)),
        )
        .await
    }

    async fn update_tie_up(
        &self,
        request: Request<pb::UpdateTieUpRequest>,
    ) -> Result<Response<pb::TieUpChange>, Status> {
        self.officer_call(
            request,
            UPDATE_TIE_UP,
            Audit::Change,
            None,
            async |caller, r| Ok(tie_up_change(self.update_tie_up_change(caller, &r).await?)),
        )
        .await
    }

    async fn terminate_tie_up(
        &self,
        request: Request<pb::TieUpRef>,
    ) -> Result<Response<pb::TieUp>, Status> {
        let op = "Admin/TerminateTieUp";
        self.officer_call(request, op, Audit::Change, None, async |caller, r| {
            let id = name("tie-up id", &r.id)?;
            Ok(tieups::terminate(self.state(), caller, &id).await?.into())
        })
        .await
    }

    async fn list_tie_ups(
        &self,
        request: Request<pb::ListTieUpsRequest>,
    ) -> Result<Response<pb::ListTieUpsResponse>, Status> {
        self.officer_call(
            request,
            "Admin/ListTieUps",
            Audit::Read,
            None,
            async |_, r| {
                let entity = optional_name("entity id", &r.entity_id)?;
                let page =
                    PageRequest::new("tie-ups", &[&r.entity_id], r.page_size, &r.page_token)?;
                let list = tieups::list(self.state(), entity.as_deref()).await?;
                let page = page.page(list, |t| {
                    format!("{}|{}|{}", t.entity_id, numeric_key(t.created_at), t.id)
                });
                Ok(pb::ListTieUpsResponse {
                    tie_ups: page.items.into_iter().map(Into::into).collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    async fn list_distributions(
        &self,
        request: Request<pb::ListDistributionsRequest>,
    ) -> Result<Response<pb::ListDistributionsResponse>, Status> {
        let op = "Admin/ListDistributions";
        self.officer_call(request, op, Audit::Read, None, async |_, r| {
            let alias = optional_name("alias", &r.alias)?;
            let entity = optional_name("entity id", &r.entity_id)?;
            let wanted = version(r.version);
            if wanted.is_some() && alias.is_none() {
                return Err(invalid("version needs alias: the version of which key"));
            }
            let number = r.version.to_string();
            let filters = [r.alias.as_str(), r.entity_id.as_str(), number.as_str()];
            let page = PageRequest::new("distributions", &filters, r.page_size, &r.page_token)?;
            let mut conn = self.state().store.conn().await?;
            let mut list = crate::store::distribution::distributions(
                &mut conn,
                alias.as_deref(),
                entity.as_deref(),
            )
            .await?;
            drop(conn);
            if let Some(v) = wanted {
                list.retain(|d| d.version == v);
            }
            let page = page.page(list, |d| format!("{}|{}", numeric_key(d.at), d.id));
            Ok(pb::ListDistributionsResponse {
                distributions: page.items.into_iter().map(convert::distribution).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        self.officer_call(
            request,
            "Admin/ListApprovals",
            Audit::Read,
            None,
            async |_, r| {
                let asked = r.state.to_string();
                let page = PageRequest::new("approvals", &[&asked], r.page_size, &r.page_token)?;
                let list = approvals::list(self.state(), convert::approval_state(r.state)?).await?;
                // Newest first, as the store gives them.
                let page = page.page(list, |a| format!("{}|{}", numeric_key(-a.created_at), a.id));
                let now = self.state().clock.now_ms();
                Ok(pb::ListApprovalsResponse {
                    approvals: page
                        .items
                        .iter()
                        .map(|a| convert::approval(a, now))
                        .collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    async fn approve(
        &self,
        request: Request<pb::ApprovalRef>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        self.officer_call(
            request,
            "Admin/Approve",
            Audit::Change,
            None,
            async |caller, r| {
                let id = name("approval id", &r.id)?;
                let now = self.state().clock.now_ms();
                let record = {
                    let mut conn = self.state().store.conn().await?;
                    approvals::pending(&mut conn, &id, now).await?
                };
                approvals::check_approver(caller, &record, now)?;
                let mut acting = caller.clone();
                acting.approving = Some(ApprovalClosing {
                    id: record.id.clone(),
                    proposer: record.proposer.clone(),
                });
                let result = self.carry_out(&acting, &record).await?;
                let record = approvals::get(self.state(), &id).await?;
                Ok(pb::ApproveResponse {
                    approval: Some(convert::approval(&record, self.state().clock.now_ms())),
                    result: Some(result),
                })
            },
        )
        .await
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        self.officer_call(
            request,
            "Admin/Reject",
            Audit::Change,
            None,
            async |caller, r| {
                let id = name("approval id", &r.id)?;
                let reason = convert::reason(&r.reason)?;
                let record = approvals::reject(self.state(), caller, &id, reason).await?;
                Ok(convert::approval(&record, self.state().clock.now_ms()))
            },
        )
        .await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.officer_call(
            request,
            "Admin/ListAudit",
            Audit::Read,
            None,
            async |_, r| {
                let start = convert::optional_time("start_time", r.start_time)?;
                let end = convert::optional_time("end_time", r.end_time)?;
                let filters = [
                    &r.start_time.to_string(),
                    &r.end_time.to_string(),
                    r.caller.as_str(),
                    r.operation.as_str(),
                    r.request_id.as_str(),
                ];
                let page = PageRequest::new("audit", &filters, r.page_size, &r.page_token)?;
                let before = match &page.after {
                    None => None,
                    Some(cursor) => Some(
                        audit_cursor(cursor)
                            .ok_or_else(|| invalid("page_token does not name an audit record"))?,
                    ),
                };
                let filter = AuditFilter {
                    from: start,
                    until: end,
                    caller: (!r.caller.is_empty()).then(|| r.caller.clone()),
                    operation: (!r.operation.is_empty()).then(|| r.operation.clone()),
                    request_id: (!r.request_id.is_empty()).then(|| r.request_id.clone()),
                    before,
                    limit: u32::try_from(page.size + 1).unwrap_or(u32::MAX),
                };
                let mut conn = self.state().store.conn().await?;
                let mut rows = audit_rows::list(&mut conn, &filter).await?;
                drop(conn);
                let page = page.cut(&mut rows, |row| {
                    format!("{} {} {}", row.at, row.chain, row.seq)
                });
                Ok(pb::ListAuditResponse {
                    records: page.items.into_iter().map(Into::into).collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        // Verified before this request is recorded, so the report covers the
        // trail as found.
        self.officer_call(
            request,
            "Admin/VerifyAudit",
            Audit::Read,
            None,
            async |_, _| {
                let state = self.state();
                let report = state.auditor.verify(&state.store).await?;
                let broken = report.first_broken();
                Ok(pb::VerifyAuditResponse {
                    intact: broken.is_none(),
                    records: report.records(),
                    first_broken_seq: broken.map_or(0, |(_, b)| b.seq),
                    problem: broken.map(|(_, b)| b.problem.clone()).unwrap_or_default(),
                    first_broken_chain: broken.map(|(c, _)| c.chain.clone()).unwrap_or_default(),
                    chains: report.chains.iter().map(convert::chain_report).collect(),
                })
            },
        )
        .await
    }
}

/// A ListAudit cursor: `<at> <chain> <seq>`.
fn audit_cursor(text: &str) -> Option<AuditCursor> {
    let mut parts = text.split(' ');
    let cursor = AuditCursor {
        at: parts.next()?.parse().ok()?,
        chain: parts.next()?.to_string(),
        seq: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(cursor)
}

impl AdminService {
    async fn entity_status(
        &self,
        request: Request<pb::EntityRef>,
        call: StatusCall,
    ) -> Result<Response<pb::Entity>, Status> {
        self.officer_call(
            request,
            call.operation(),
            Audit::Change,
            None,
            async |caller, r| {
                let id = name("entity id", &r.id)?;
                Ok(entities::set_status(self.state(), caller, &id, call)
                    .await?
                    .into())
            },
        )
        .await
    }
}
