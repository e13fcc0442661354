//! The `KeyDistribution` service: transport keys, wrapped deliveries,
//! entitlements and consents. Every call is audited; a denial names its rule.

use brandkms_proto::v1 as pb;
use brandkms_proto::v1::key_distribution_server::KeyDistribution;
use tonic::{Request, Response, Status};

use super::convert::{self, hex_bytes, name, version};
use super::paging::PageRequest;
use super::{audited, audited_read, caller};
use crate::ops::authorize::transport_alias;
use crate::ops::distribution as ops;
use crate::ops::{AppState, Shared};
use crate::store::distribution::ConsentRecord;

/// The `KeyDistribution` service.
#[derive(Debug, Clone)]
pub struct DistributionService {
    state: Shared,
}

impl DistributionService {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        DistributionService { state }
    }

    fn state(&self) -> &AppState {
        &self.state
    }

    async fn consent(
        &self,
        request: Request<pb::ConsentRequest>,
        grant: bool,
    ) -> Result<Response<pb::Consent>, Status> {
        let op = if grant {
            "KeyDistribution/GrantConsent"
        } else {
            "KeyDistribution/RevokeConsent"
        };
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let third_party = name("third party", &r.third_party)?;
            let alias = name("alias", &r.alias)?;
            ops::set_consent(
                self.state(),
                &caller,
                &r.issuer,
                &third_party,
                &alias,
                grant,
            )
            .await
        }
        .await;
        let c = audited(self.state(), &caller, op, Some((&r.alias, None)), result).await?;
        Ok(Response::new(consent(c)))
    }
}

fn consent(c: ConsentRecord) -> pb::Consent {
    pb::Consent {
        standing: c.standing(),
        issuer: c.issuer,
        third_party: c.third_party,
        alias: c.alias,
        granted_by: c.granted_by,
        granted_at: c.granted_at,
        revoked_by: c.revoked_by.unwrap_or_default(),
        revoked_at: c.revoked_at.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl KeyDistribution for DistributionService {
    async fn establish_transport_key(
        &self,
        request: Request<pb::EstablishTransportKeyRequest>,
    ) -> Result<Response<pb::TransportKey>, Status> {
        const OP: &str = "KeyDistribution/EstablishTransportKey";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result =
            ops::establish_transport_key(self.state(), &caller, &r.rsa_public_key_spki_der).await;
        let alias = transport_alias(&caller.entity.id);
        let e = audited(self.state(), &caller, OP, Some((&alias, None)), result).await?;
        Ok(Response::new(pb::TransportKey {
            alias: e.version.alias,
            version: e.version.version,
            kcv: hex_bytes(&e.version.kcv),
            wrapped_key: e.wrapped,
            wrapping: ops::WRAPPING_RSA_OAEP.to_string(),
        }))
    }

    async fn request_key(
        &self,
        request: Request<pb::RequestKeyRequest>,
    ) -> Result<Response<pb::WrappedKey>, Status> {
        const OP: &str = "KeyDistribution/RequestKey";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            ops::request_key(self.state(), &caller, &alias, version(r.version)).await
        }
        .await;
        let d = audited(
            self.state(),
            &caller,
            OP,
            Some((&r.alias, version(r.version))),
            result,
        )
        .await?;
        Ok(Response::new(pb::WrappedKey {
            alias: d.key.alias,
            version: d.version.version,
            algorithm: convert::algorithm_wire(d.key.algorithm),
            service_code: d.key.service_code.map(u32::from),
            purpose: d.key.purpose.map_or(0, convert::purpose_wire),
            kcv: hex_bytes(&d.version.kcv),
            wrapped_key: d.wrapped,
            wrapping: d.wrapping.to_string(),
            transport_alias: d.transport.alias,
            transport_version: d.transport.version,
            valid_until: d.valid_until.unwrap_or_default(),
        }))
    }

    async fn list_entitled_keys(
        &self,
        request: Request<pb::ListEntitledKeysRequest>,
    ) -> Result<Response<pb::ListEntitledKeysResponse>, Status> {
        const OP: &str = "KeyDistribution/ListEntitledKeys";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let page = PageRequest::new(
                "entitled-keys",
                &[&caller.entity.id],
                r.page_size,
                &r.page_token,
            )?;
            let list = ops::entitlements(self.state(), &caller).await?;
            Ok(page.page(list, |e| format!("{}|{}", e.key.alias, e.tie_up_id)))
        }
        .await;
        let page = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListEntitledKeysResponse {
            next_page_token: page.next_page_token,
            keys: page
                .items
                .into_iter()
                .map(|e| pb::EntitledKey {
                    alias: e.key.alias,
                    mode: convert::tie_up_mode_wire(e.mode),
                    current_version: e.current.as_ref().map_or(0, |v| v.version),
                    kcv: e.current.map(|v| hex_bytes(&v.kcv)).unwrap_or_default(),
                    algorithm: convert::algorithm_wire(e.key.algorithm),
                    service_code: e.key.service_code.map(u32::from),
                    purpose: e.key.purpose.map_or(0, convert::purpose_wire),
                    valid_until: e.valid_until.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn grant_consent(
        &self,
        request: Request<pb::ConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        self.consent(request, true).await
    }

    async fn revoke_consent(
        &self,
        request: Request<pb::ConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        self.consent(request, false).await
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        const OP: &str = "KeyDistribution/ListConsents";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let page =
                PageRequest::new("consents", &[&caller.entity.id], r.page_size, &r.page_token)?;
            let list = ops::list_consents(self.state(), &caller).await?;
            Ok(page.page(list, |c| {
                format!("{}|{}|{}", c.issuer, c.third_party, c.alias)
            }))
        }
        .await;
        let page = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents: page.items.into_iter().map(consent).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
