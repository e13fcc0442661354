//! The `Settlement` service: public keys for anyone, decryption and signatures
//! for clearing houses (or an entity-owned key's owner), verification for anyone.

use brandkms_proto::v1 as pb;
use brandkms_proto::v1::settlement_server::Settlement;
use tonic::{Request, Response, Status};

use super::convert::{self, name, version};
use super::{audited, audited_read, caller, to_status};
use crate::hsm::OaepHash;
use crate::ops::settlement as ops;
use crate::ops::{AppState, OpsError, Shared, invalid};

/// Largest input to sign or verify.
const MAX_DATA: usize = 1 << 20;

/// The `Settlement` service.
#[derive(Debug, Clone)]
pub struct SettlementService {
    state: Shared,
}

impl SettlementService {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        SettlementService { state }
    }

    fn state(&self) -> &AppState {
        &self.state
    }
}

fn oaep_wire(h: OaepHash) -> i32 {
    match h {
        OaepHash::Sha1 => pb::OaepHash::Sha1 as i32,
        OaepHash::Sha256 => pb::OaepHash::Sha256 as i32,
    }
}

#[tonic::async_trait]
impl Settlement for SettlementService {
    type DecryptStreamStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::DecryptResult, Status>> + Send + 'static>,
    >;

    async fn decrypt_stream(
        &self,
        request: Request<tonic::Streaming<pb::DecryptItem>>,
    ) -> Result<Response<Self::DecryptStreamStream>, Status> {
        use futures_util::StreamExt;
        const OP: &str = "Settlement/DecryptStream";
        let caller = caller(&request)?;
        let input = request.into_inner();
        let state = std::sync::Arc::clone(&self.state);
        let decryptor = std::sync::Arc::new(ops::StreamDecryptor::new(
            std::sync::Arc::clone(&state),
            caller.clone(),
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CONCURRENCY * 2);
        tokio::spawn(async move {
            let results = input
                .map(move |item| {
                    let d = std::sync::Arc::clone(&decryptor);
                    async move {
                        let item = item?;
                        let result = match d.decrypt_blob(&item.blob).await {
                            Ok(plain) => pb::decrypt_result::Result::Plaintext(plain.to_vec()),
                            Err(e) => pb::decrypt_result::Result::Error(item_error(&e)),
                        };
                        Ok::<_, Status>(pb::DecryptResult {
                            index: item.index,
                            result: Some(result),
                        })
                    }
                })
                .buffered(STREAM_CONCURRENCY);
            futures_util::pin_mut!(results);
            let (mut decrypted, mut failed, mut first_error) = (0u64, 0u64, None::<String>);
            // Why the stream stopped early (an item over its bound, not valid
            // protobuf, or the transport), in the caller's own words never.
            let mut stopped = None::<String>;
            while let Some(r) = results.next().await {
                match &r {
                    Ok(pb::DecryptResult {
                        result: Some(pb::decrypt_result::Result::Plaintext(_)),
                        ..
                    }) => decrypted += 1,
                    Ok(pb::DecryptResult {
                        result: Some(pb::decrypt_result::Result::Error(e)),
                        ..
                    }) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.message.clone());
                    }
                    _ => {}
                }
                if let Err(status) = &r {
                    stopped = Some(format!("{:?}: {}", status.code(), status.message()));
                }
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    break;
                }
            }
            let reason = format!(
                "{decrypted} decrypted, {failed} failed{}{}",
                first_error
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                stopped
                    .map(|e| format!("; stopped: {e}"))
                    .unwrap_or_default()
            );
            let event = caller.event_about(OP, reason);
            if let Err(e) = state.auditor.record(&event).await {
                tracing::error!(error = %e, "could not audit a DecryptStream");
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::PublicKey>, Status> {
        const OP: &str = "Settlement/GetPublicKey";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            ops::public_key(self.state(), &alias, version(r.version)).await
        }
        .await;
        let used = result.as_ref().map(|p| p.version.version).ok();
        let key = Some((r.alias.as_str(), used.or(version(r.version))));
        let p = audited_read(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::PublicKey {
            alias: p.key.alias,
            version: p.version.version,
            spki_der: p.info.der,
            pem: p.info.pem,
            fingerprint: p.info.fingerprint.to_vec(),
            bits: u32::try_from(p.info.bits).unwrap_or(0),
            oaep_hash: oaep_wire(p.oaep_hash),
            state: convert::key_state_wire(p.version.state),
            owner_entity: p.key.owner_entity.unwrap_or_default(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        const OP: &str = "Settlement/Decrypt";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let key = (r.alias.clone(), r.version);
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version);
            ops::decrypt(self.state(), &caller, &alias, v, r.ciphertext).await
        }
        .await;
        let key = Some((key.0.as_str(), used(&result, version(key.1))));
        let (_, plain) = audited_read(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::DecryptResponse {
            plaintext: plain.to_vec(),
        }))
    }

    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        const OP: &str = "Settlement/Sign";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let alias_text = r.alias.clone();
        let result = async {
            let alias = name("alias", &r.alias)?;
            if r.data.is_empty() || r.data.len() > MAX_DATA {
                return Err(invalid("data must be 1 byte to 1 MiB"));
            }
            ops::sign(self.state(), &caller, &alias, r.data).await
        }
        .await;
        let (v, signature) =
            audited(self.state(), &caller, OP, Some((&alias_text, None)), result).await?;
        let event = caller.event(OP).key(&alias_text, Some(v));
        self.state()
            .auditor
            .record(&event)
            .await
            .map_err(|e| to_status(&OpsError::from(e)))?;
        Ok(Response::new(pb::SignResponse {
            version: v,
            signature,
        }))
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        const OP: &str = "Settlement/GenerateMac";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let alias_text = r.alias.clone();
        let result = async {
            let alias = name("alias", &r.alias)?;
            if r.data.is_empty() || r.data.len() > MAX_DATA {
                return Err(invalid("data must be 1 byte to 1 MiB"));
            }
            ops::generate_mac(self.state(), &caller, &alias, r.data).await
        }
        .await;
        let key = Some((alias_text.as_str(), used(&result, None)));
        let (version, mac) = audited_read(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::GenerateMacResponse { version, mac }))
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        const OP: &str = "Settlement/VerifyMac";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let key = (r.alias.clone(), r.version);
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version);
            if r.data.len() > MAX_DATA || r.mac.len() > 64 {
                return Err(invalid("data is at most 1 MiB, a MAC at most 64 bytes"));
            }
            ops::verify_mac(self.state(), &caller, &alias, v, r.data, r.mac).await
        }
        .await;
        let key = Some((key.0.as_str(), used(&result, version(key.1))));
        let (_, valid) = audited_read(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::VerifyResponse { valid }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        const OP: &str = "Settlement/Verify";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let key = (r.alias.clone(), r.version);
        let result = async {
            let alias = name("alias", &r.alias)?;
            let v = version(r.version);
            if r.data.len() > MAX_DATA || r.signature.len() > 1024 {
                return Err(invalid(
                    "data is at most 1 MiB, a signature at most 1024 bytes",
                ));
            }
            ops::verify(self.state(), &alias, v, r.data, r.signature).await
        }
        .await;
        let key = Some((key.0.as_str(), used(&result, version(key.1))));
        let (_, valid) = audited_read(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::VerifyResponse { valid }))
    }
}

/// The version an audit record names: the one the operation used, else the one
/// the caller asked for (none: the active one, which was not reached).
fn used<T>(result: &Result<(u32, T), OpsError>, asked: Option<u32>) -> Option<u32> {
    result.as_ref().map(|(v, _)| *v).ok().or(asked)
}

/// One item's failure, with the code and message the unary call would give.
fn item_error(e: &OpsError) -> pb::ItemError {
    let status = to_status(e);
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
        reason: match e {
            OpsError::Denied(r) => r.code().to_string(),
            _ => String::new(),
        },
    }
}

/// How many blobs of one stream are decrypted at a time.
const STREAM_CONCURRENCY: usize = 8;
