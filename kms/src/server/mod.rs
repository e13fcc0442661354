//! The first stage of the request path and the composition root: everything
//! `kms serve` runs, built once from validated settings. The listener accepts
//! TLS here (`tls`: rustls, client certificate required), `identity` reads the
//! caller from its certificate, and the `auth` layer wraps every service so that
//! handlers (`crate::service`) only see identified callers. A background task
//! carries out due key destructions.

pub mod auth;
pub mod identity;
pub mod refusals;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brandkms_proto::v1::admin_server::AdminServer;
use brandkms_proto::v1::card_authentication_server::CardAuthenticationServer;
use brandkms_proto::v1::key_distribution_server::KeyDistributionServer;
use brandkms_proto::v1::proxy_loading_server::ProxyLoadingServer;
use brandkms_proto::v1::settlement_server::SettlementServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use self::auth::AuthLayer;
use self::tls::ServerTls;
use crate::clock::Clock;
use crate::commands::init;
use crate::config::Settings;
use crate::hsm::Hsm;
use crate::ops::keys::run_due_destructions;
use crate::ops::{AppState, Shared};
use crate::service::admin::AdminService;
use crate::service::card::CardService;
use crate::service::distribution::DistributionService;
use crate::service::settlement::SettlementService;
use crate::store::Store;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has no `[tls]` section.
    #[error("config field tls: kms serve needs [tls] ca, cert and key")]
    NoTls,
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The token cannot be opened.
    #[error("hsm: {0}")]
    Hsm(#[from] crate::hsm::HsmError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// `kms init` has not run.
    #[error("not initialised: {0}")]
    NotInitialised(String),
    /// Serving failed.
    #[error("serve: {0}")]
    Serve(String),
}

/// A built server, ready to serve on a listener.
#[derive(Debug, Clone)]
pub struct Server {
    state: Shared,
    tls: ServerTls,
}

impl Server {
    /// Opens the token, the store and the TLS files; the service must have been
    /// initialised (`kms init`).
    pub async fn build(settings: &Settings, clock: Clock) -> Result<Server, StartError> {
        let params = settings.hsm.clone();
        let hsm = tokio::task::spawn_blocking(move || Hsm::open(&params))
            .await
            .map_err(|e| StartError::Serve(e.to_string()))??;
        Self::build_with_hsm(settings, hsm, clock).await
    }

    /// As [`Server::build`], with a token connection the process already has.
    pub async fn build_with_hsm(
        settings: &Settings,
        hsm: Hsm,
        clock: Clock,
    ) -> Result<Server, StartError> {
        let tls = tls::load(settings.tls.as_ref().ok_or(StartError::NoTls)?)?;
        let store = Store::connect(&settings.database).await?;
        let auditor = init::auditor(&hsm, &store)
            .await
            .map_err(|e| StartError::NotInitialised(e.to_string()))?;
        let seal_key = init::internal_key(&store, init::SEAL_KEY)
            .await
            .map_err(|e| StartError::NotInitialised(e.to_string()))?
            .ok_or_else(|| {
                StartError::NotInitialised(format!(
                    "internal key {} is missing: run `kms init`",
                    init::SEAL_KEY
                ))
            })?;
        let oaep_hash = if hsm
            .run(|s| s.probe_oaep_sha256())
            .await
            .map_err(|e| StartError::Serve(format!("token probe: {e}")))?
        {
            crate::hsm::OaepHash::Sha256
        } else {
            crate::hsm::OaepHash::Sha1
        };
        tracing::info!(
            oaep = oaep_hash.as_str(),
            "RSA-OAEP hash for new settlement keys"
        );
        Ok(Server {
            state: Arc::new(AppState {
                hsm,
                store,
                auditor,
                seal_key,
                oaep_hash,
                clock,
                settings: settings.service.clone(),
            }),
            tls,
        })
    }

    /// The shared state (tests reach the clock and the store through it).
    pub fn state(&self) -> &Shared {
        &self.state
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(destruction_scheduler(
            Arc::clone(&self.state),
            stop_rx.clone(),
        ));
        let summaries = tokio::spawn(refusal_summaries(
            Arc::clone(&self.state),
            Arc::clone(&self.tls.refusals),
            stop_rx.clone(),
        ));
        let incoming = accept_tls(
            listener,
            TlsAcceptor::from(Arc::clone(&self.tls.config)),
            stop_rx,
        );

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AdminServer<AdminService>>()
            .await;
        // Reflection in both versions: grpcurl speaks v1, Python's grpcio
        // reflection client only v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(brandkms_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Serve(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(brandkms_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartError::Serve(e.to_string()))?;

        let result = tonic::transport::Server::builder()
            .layer(AuthLayer::new(Arc::clone(&self.state)))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(AdminServer::new(AdminService::new(Arc::clone(&self.state))))
            .add_service(KeyDistributionServer::new(DistributionService::new(
                Arc::clone(&self.state),
            )))
            .add_service(CardAuthenticationServer::new(CardService::new(Arc::clone(
                &self.state,
            ))))
            .add_service(ProxyLoadingServer::new(CardService::new(Arc::clone(
                &self.state,
            ))))
            .add_service(SettlementServer::new(SettlementService::new(Arc::clone(
                &self.state,
            ))))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = scheduler.await;
        let _ = summaries.await;
        self.state.store.close().await;
        result.map_err(|e| StartError::Serve(e.to_string()))
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop; a
/// failed or slow handshake only costs its own task.
fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    // Refused certificates are counted and logged at a bounded
                    // rate by `refusals`; other failures only at debug level.
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Once per `service.refused_handshake_summary_secs`, and at shutdown: one audit
/// record with the count and fingerprints of the handshakes refused since the
/// last one (none when there were none).
async fn refusal_summaries(
    state: Shared,
    refusals: Arc<refusals::HandshakeRefusals>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = Duration::from_secs(state.settings.refused_handshake_summary_secs);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = stop.changed() => true,
        };
        if let Some(summary) = refusals.take()
            && let Err(e) = state.auditor.record(&summary.event()).await
        {
            tracing::error!(error = %e, "could not audit the refused handshakes' summary");
        }
        if stopping {
            return;
        }
    }
}

async fn destruction_scheduler(state: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = Duration::from_secs(state.settings.destruction_check_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = run_due_destructions(&state).await {
            tracing::error!(error = %e, "scheduled key destruction failed; will retry");
        }
    }
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Serve(format!("cannot listen on {addr}: {e}")))
}
