//! The Rust SDK: a connection with a client certificate (mTLS), typed calls, and
//! errors as an enum. Every brandkms client (kmsctl, participant commands, tests)
//! goes through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brandkms_proto::v1 as pb;
use brandkms_proto::v1::admin_client::AdminClient;
use brandkms_proto::v1::card_authentication_client::CardAuthenticationClient;
use brandkms_proto::v1::key_distribution_client::KeyDistributionClient;
use brandkms_proto::v1::proxy_loading_client::ProxyLoadingClient;
use brandkms_proto::v1::settlement_client::SettlementClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `https://HOST:PORT`.
    pub endpoint: String,
    /// The brand CA (PEM) that signed the server certificate.
    pub ca: PathBuf,
    /// This caller's certificate (PEM).
    pub cert: PathBuf,
    /// This caller's private key (PEM).
    pub key: PathBuf,
    /// The name the server certificate must carry (default: the endpoint's host).
    pub domain: Option<String>,
}

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection settings are unusable.
    #[error("{0}")]
    Config(String),
    /// The connection failed.
    #[error("cannot connect to {endpoint}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
        /// A policy refusal's rule code (`google.rpc.ErrorInfo` reason, e.g.
        /// `limit_exceeded`).
        reason: Option<String>,
        /// How long to wait before retrying (`google.rpc.RetryInfo`), when the
        /// server said (`ResourceExhausted` over a limit).
        retry_after: Option<Duration>,
    },
}

impl ClientError {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A policy refusal's rule code, when the server gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Status { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// How long the server asked the caller to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// An error of the caller's own making (no server answer behind it).
    pub fn local(code: tonic::Code, message: impl Into<String>) -> ClientError {
        ClientError::Status {
            code,
            message: message.into(),
            reason: None,
            retry_after: None,
        }
    }
}

/// `InvalidArgument` etc.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let reason = s.get_details_error_info().map(|info| info.reason);
        let retry_after = s.get_details_retry_info().and_then(|info| info.retry_delay);
        ClientError::Status {
            code: s.code(),
            message: s.message().to_string(),
            reason,
            retry_after,
        }
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A connection to brandkms.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects with the caller's certificate.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client, ClientError> {
        let ca = read("CA certificate", &opts.ca)?;
        let cert = read("client certificate", &opts.cert)?;
        let key = read("client key", &opts.key)?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        let domain = match &opts.domain {
            Some(d) => Some(d.clone()),
            None => opts
                .endpoint
                .split("://")
                .nth(1)
                .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h.to_string()))
                .filter(|h| h.parse::<std::net::IpAddr>().is_ok())
                .map(|_| "localhost".to_string()),
        };
        if let Some(d) = domain {
            tls = tls.domain_name(d);
        }
        let transport = |source| ClientError::Transport {
            endpoint: opts.endpoint.clone(),
            source,
        };
        let channel = Endpoint::from_shared(opts.endpoint.clone())
            .map_err(|e| ClientError::Config(format!("endpoint {:?}: {e}", opts.endpoint)))?
            .tls_config(tls)
            .map_err(transport)?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .map_err(transport)?;
        Ok(Client { channel })
    }

    /// The channel, for the generated clients of other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether the server reports itself serving.
    pub async fn healthy(&self) -> Result<bool, ClientError> {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(resp.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    /// The Admin service (officers).
    pub fn admin(&self) -> Admin {
        Admin {
            inner: AdminClient::new(self.channel.clone()),
        }
    }
}

impl Client {
    /// The KeyDistribution service (participants).
    pub fn distribution(&self) -> Distribution {
        Distribution {
            inner: KeyDistributionClient::new(self.channel.clone()),
        }
    }
}

impl Client {
    /// The CardAuthentication service (cybershops, terminals, the loading portal).
    pub fn cards(&self) -> Cards {
        Cards {
            inner: CardAuthenticationClient::new(self.channel.clone()),
        }
    }

    /// The ProxyLoading service (issuers, officers).
    pub fn proxy_loads(&self) -> ProxyLoads {
        ProxyLoads {
            inner: ProxyLoadingClient::new(self.channel.clone()),
        }
    }
}

impl Client {
    /// The Settlement service (public keys, decryption, signatures).
    pub fn settlement(&self) -> Settlement {
        Settlement {
            inner: SettlementClient::new(self.channel.clone()),
        }
    }
}

/// Typed calls of the Settlement service.
#[derive(Clone, Debug)]
pub struct Settlement {
    inner: SettlementClient<Channel>,
}

/// Typed calls of the CardAuthentication service.
#[derive(Clone, Debug)]
pub struct Cards {
    inner: CardAuthenticationClient<Channel>,
}

/// Typed calls of the ProxyLoading service.
#[derive(Clone, Debug)]
pub struct ProxyLoads {
    inner: ProxyLoadingClient<Channel>,
}

/// Typed calls of the KeyDistribution service.
#[derive(Clone, Debug)]
pub struct Distribution {
    inner: KeyDistributionClient<Channel>,
}

/// Typed calls of the Admin service.
#[derive(Clone, Debug)]
pub struct Admin {
    inner: AdminClient<Channel>,
}

macro_rules! calls {
    ($service:ident { $($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty;)+ }) => {
        impl $service {
            $(
                $(#[$doc])*
                pub async fn $name(&mut self, request: $req) -> Result<$resp, ClientError> {
                    Ok(self.inner.$name(request).await?.into_inner())
                }
            )+
        }
    };
}

calls! { Admin {
    /// Creates a card-access key (version 1, active).
    create_key(pb::CreateKeyRequest) -> pb::Key;
    /// Adds an active version; the previous one becomes auth_only. Under dual
    /// control the answer is a pending approval instead.
    rotate_key(pb::RotateKeyRequest) -> pb::KeyChange;
    /// Sets a version's state.
    set_key_version_state(pb::SetKeyVersionStateRequest) -> pb::Key;
    /// Schedules a retired version's destruction (or, under dual control, proposes it).
    schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest) -> pb::KeyChange;
    /// Cancels a pending destruction.
    cancel_key_version_destruction(pb::CancelKeyVersionDestructionRequest) -> pb::Key;
    /// One key with its versions.
    get_key(pb::GetKeyRequest) -> pb::Key;
    /// Every key.
    list_keys(pb::ListKeysRequest) -> pb::ListKeysResponse;
    /// Registers a participant.
    register_entity(pb::RegisterEntityRequest) -> pb::Entity;
    /// Suspends a participant.
    suspend_entity(pb::EntityRef) -> pb::Entity;
    /// Resumes a participant.
    resume_entity(pb::EntityRef) -> pb::Entity;
    /// Makes a new import key version (RSA-3072, unwrap only).
    create_import_key(pb::CreateImportKeyRequest) -> pb::Key;
    /// The active import key's public half, fingerprint, wrapping and expiry.
    get_import_parameters(pb::GetImportParametersRequest) -> pb::ImportParameters;
    /// Imports a card-access key wrapped under the import key (under dual
    /// control, proposes it).
    import_key(pb::ImportKeyRequest) -> pb::KeyChange;
    /// Imports card-access keys wrapped under an import KEK, each on its own
    /// (under dual control, proposes the batch).
    import_keys(pb::ImportKeysRequest) -> pb::ImportKeysChange;
    /// Sets a version's cryptoperiod (under dual control, proposes a widening).
    set_key_version_cryptoperiod(pb::SetKeyVersionCryptoperiodRequest) -> pb::KeyChange;
    /// Marks a version compromised, optionally rotating (under dual control,
    /// proposes it).
    mark_key_version_compromised(pb::MarkKeyVersionCompromisedRequest) -> pb::KeyChange;
    /// Every participant.
    list_entities(pb::ListEntitiesRequest) -> pb::ListEntitiesResponse;
    /// The key ceremony: a participant's RSA public key marked trusted by the
    /// token's security officer.
    trust_participant_key(pb::TrustParticipantKeyRequest) -> pb::Key;
    /// Registers an officer (under dual control, proposes it).
    register_officer(pb::RegisterEntityRequest) -> pb::EntityChange;
    /// Resumes a suspended officer (under dual control, proposes it).
    resume_officer(pb::EntityRef) -> pb::EntityChange;
    /// The operations held for a second officer.
    get_dual_control(pb::GetDualControlRequest) -> pb::DualControl;
    /// Changes the operations held for a second officer (under dual control,
    /// proposes it).
    set_dual_control(pb::SetDualControlRequest) -> pb::DualControlChange;
    /// Records a tie-up (one with supply keys, under dual control, is proposed).
    create_tie_up(pb::CreateTieUpRequest) -> pb::TieUpChange;
    /// Changes a tie-up (a widening of its supply, under dual control, is proposed).
    update_tie_up(pb::UpdateTieUpRequest) -> pb::TieUpChange;
    /// Ends a tie-up.
    terminate_tie_up(pb::TieUpRef) -> pb::TieUp;
    /// Every tie-up.
    list_tie_ups(pb::ListTieUpsRequest) -> pb::ListTieUpsResponse;
    /// Deliveries: which version went to whom and when.
    list_distributions(pb::ListDistributionsRequest) -> pb::ListDistributionsResponse;
    /// Proposals held for a second officer.
    list_approvals(pb::ListApprovalsRequest) -> pb::ListApprovalsResponse;
    /// Approves another officer's proposal; the operation runs.
    approve(pb::ApprovalRef) -> pb::ApproveResponse;
    /// Rejects (or, for the proposer, withdraws) a proposal.
    reject(pb::RejectRequest) -> pb::Approval;
    /// Audit records.
    list_audit(pb::ListAuditRequest) -> pb::ListAuditResponse;
    /// Verifies the whole audit chain.
    verify_audit(pb::VerifyAuditRequest) -> pb::VerifyAuditResponse;
} }

calls! { Distribution {
    /// Presents an RSA public key; receives a new transport key wrapped under it.
    establish_transport_key(pb::EstablishTransportKeyRequest) -> pb::TransportKey;
    /// A key version wrapped under the caller's transport key.
    request_key(pb::RequestKeyRequest) -> pb::WrappedKey;
    /// What the caller may receive or have used for it.
    list_entitled_keys(pb::ListEntitledKeysRequest) -> pb::ListEntitledKeysResponse;
    /// An issuer consents that a third party receive one of its keys.
    grant_consent(pb::ConsentRequest) -> pb::Consent;
    /// Withdraws a consent.
    revoke_consent(pb::ConsentRequest) -> pb::Consent;
    /// Consents concerning the caller.
    list_consents(pb::ListConsentsRequest) -> pb::ListConsentsResponse;
} }

calls! { Cards {
    /// Pass 1: a challenge RB for a card.
    begin_authentication(pb::BeginAuthenticationRequest) -> pb::Challenge;
    /// Passes 2 and 3: the card's C1; on success C2 and a session.
    complete_authentication(pb::CompleteAuthenticationRequest) -> pb::AuthenticationResult;
    /// A command sealed for the card.
    seal_command(pb::SealCommandRequest) -> pb::SealedCommand;
    /// Whether the card's receipt is genuine, and what it says.
    verify_receipt(pb::VerifyReceiptRequest) -> pb::ReceiptVerification;
} }

calls! { ProxyLoads {
    /// Proxy loads (an issuer's own; officers any).
    list_proxy_loads(pb::ListProxyLoadsRequest) -> pb::ListProxyLoadsResponse;
    /// Count and total per issuer, currency and status.
    summarize_proxy_loads(pb::SummarizeProxyLoadsRequest) -> pb::ProxyLoadSummary;
} }

/// For each `List*` call, a `*_all` call that follows `next_page_token` to the
/// last page and returns every item.
macro_rules! all_pages {
    ($service:ident { $($all:ident = $name:ident($req:ty) -> $field:ident: $item:ty;)+ }) => {
        impl $service {
            $(
                #[doc = concat!("Every item of `", stringify!($name), "`, page after page.")]
                pub async fn $all(&mut self, mut request: $req) -> Result<Vec<$item>, ClientError> {
                    let mut items = Vec::new();
                    loop {
                        let page = self.$name(request.clone()).await?;
                        items.extend(page.$field);
                        if page.next_page_token.is_empty() {
                            return Ok(items);
                        }
                        request.page_token = page.next_page_token;
                    }
                }
            )+
        }
    };
}

all_pages! { Admin {
    list_keys_all = list_keys(pb::ListKeysRequest) -> keys: pb::Key;
    list_entities_all = list_entities(pb::ListEntitiesRequest) -> entities: pb::Entity;
    list_tie_ups_all = list_tie_ups(pb::ListTieUpsRequest) -> tie_ups: pb::TieUp;
    list_distributions_all =
        list_distributions(pb::ListDistributionsRequest) -> distributions: pb::Distribution;
    list_approvals_all = list_approvals(pb::ListApprovalsRequest) -> approvals: pb::Approval;
    list_audit_all = list_audit(pb::ListAuditRequest) -> records: pb::AuditRecord;
} }

all_pages! { Distribution {
    list_entitled_keys_all =
        list_entitled_keys(pb::ListEntitledKeysRequest) -> keys: pb::EntitledKey;
    list_consents_all = list_consents(pb::ListConsentsRequest) -> consents: pb::Consent;
} }

all_pages! { ProxyLoads {
    list_proxy_loads_all = list_proxy_loads(pb::ListProxyLoadsRequest) -> loads: pb::ProxyLoad;
} }

calls! { Settlement {
    /// A settlement key version's public key and OAEP parameters.
    get_public_key(pb::GetPublicKeyRequest) -> pb::PublicKey;
    /// Decrypts a ciphertext made under the public key (clearing houses, owners).
    decrypt(pb::DecryptRequest) -> pb::DecryptResponse;
    /// Signs with the active version (clearing houses).
    sign(pb::SignRequest) -> pb::SignResponse;
    /// Verifies a signature (anyone).
    verify(pb::VerifyRequest) -> pb::VerifyResponse;
    /// MACs a settlement result (clearing houses).
    generate_mac(pb::GenerateMacRequest) -> pb::GenerateMacResponse;
    /// Checks a settlement result's MAC (an entity with a tie-up on the key).
    verify_mac(pb::VerifyMacRequest) -> pb::VerifyResponse;
} }

impl Settlement {
    /// Streams sealed blobs in and results out (one per blob, in order).
    pub async fn decrypt_stream(
        &mut self,
        items: impl tokio_stream::Stream<Item = pb::DecryptItem> + Send + 'static,
    ) -> Result<tonic::Streaming<pb::DecryptResult>, ClientError> {
        Ok(self.inner.decrypt_stream(items).await?.into_inner())
    }
}

/// Seals `plaintext` for the settlement key `public` (as GetPublicKey reported
/// it): RSA-OAEP with the key's hash, client side (RustCrypto `rsa`), in a
/// self-describing blob naming the alias and version.
pub fn seal(public: &pb::PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
    use rsa::pkcs8::DecodePublicKey;
    let key = rsa::RsaPublicKey::from_public_key_der(&public.spki_der)
        .map_err(|e| ClientError::Config(format!("settlement public key: {e}")))?;
    let (padding, code) = match pb::OaepHash::try_from(public.oaep_hash) {
        Ok(pb::OaepHash::Sha256) => (rsa::Oaep::new::<sha2::Sha256>(), 2),
        Ok(pb::OaepHash::Sha1) => (rsa::Oaep::new::<sha1::Sha1>(), 1),
        _ => {
            return Err(ClientError::Config(
                "settlement public key: unknown OAEP hash".into(),
            ));
        }
    };
    let ciphertext = key
        .encrypt(&mut rsa::rand_core::OsRng, padding, plaintext)
        .map_err(|e| ClientError::Config(format!("cannot seal: {e}")))?;
    brandkms_proto::blob::SealedBlob {
        alias: public.alias.clone(),
        version: public.version,
        oaep_hash: code,
        ciphertext,
    }
    .encode()
    .map_err(|e| ClientError::Config(e.to_string()))
}
