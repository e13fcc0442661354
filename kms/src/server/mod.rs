//! The first stage of the request path and the composition root: everything
//! `kms serve` runs, built once from validated settings. The listener accepts
//! TLS here (`tls`: rustls, client certificate required), `identity` reads the
//! caller from its certificate, and the `auth` layer wraps every service so that
//! handlers (`crate::service`) only see identified callers. Background tasks
//! carry out due key destructions and purge expired card challenges and sessions,
//! each under a database lease, so that one instance at a time does it.

pub mod auth;
pub mod connections;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod refusals;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brandkms_proto::limits as input;
use brandkms_proto::v1::admin_server::AdminServer;
use brandkms_proto::v1::card_authentication_server::CardAuthenticationServer;
use brandkms_proto::v1::key_distribution_server::KeyDistributionServer;
use brandkms_proto::v1::proxy_loading_server::ProxyLoadingServer;
use brandkms_proto::v1::settlement_server::SettlementServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use self::auth::AuthLayer;
use self::connections::Connection;
use self::limits::Limits;
use self::tls::ServerTls;
use crate::audit::AuditEvent;
use crate::clock::Clock;
use crate::commands::init;
use crate::config::Settings;
use crate::hsm::Hsm;
use crate::ops::approvals::describe_dual_control;
use crate::ops::keys::run_due_destructions;
use crate::ops::{AppState, Shared};
use crate::service::admin::AdminService;
use crate::service::card::CardService;
use crate::service::distribution::DistributionService;
use crate::service::settlement::SettlementService;
use crate::store::leases::{self, Tenure};
use crate::store::{Store, cards};

/// The lease the destruction scheduler runs under.
pub const DESTRUCTION_LEASE: &str = "destruction";
/// The lease the purger runs under.
pub const PURGER_LEASE: &str = "purger";
/// The operation name of the purger's summary records.
pub const PURGE_OPERATION: &str = "Retention/Purge";
/// A lease lasts this many of its task's periods: a holder that stops renewing it
/// (stopped, killed, cut off) is replaced within about that time.
const LEASE_PERIODS: u32 = 3;
/// Challenges and sessions are purged this long after they expired, so that an
/// instance whose clock runs a little behind never misses a row it still deems
/// valid.
pub const PURGE_GRACE: Duration = Duration::from_secs(300);
/// At most this many rows per delete statement.
const PURGE_BATCH: u32 = 1000;

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
    /// The Prometheus endpoint's listener, when configured.
    metrics: Option<Arc<TcpListener>>,
    /// This instance's name as a lease holder.
    instance: Arc<str>,
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
        let configured = &settings.service.dual_control;
        let stored = {
            let mut conn = store.conn().await?;
            crate::store::settings::dual_control(&mut conn).await?
        };
        match stored {
            None => {
                let written = init::initialise_dual_control(&auditor, "local:serve", configured)
                    .await
                    .map_err(|e| StartError::Serve(format!("dual control: {e}")))?;
                if written {
                    tracing::warn!(
                        dual_control = %describe_dual_control(configured),
                        "dual control was not in the database yet (initialised before it moved there): written from this configuration, once"
                    );
                }
            }
            Some(stored) if stored != *configured => {
                tracing::warn!(
                    database = %describe_dual_control(&stored),
                    configuration = %describe_dual_control(configured),
                    "service.dual_control in the configuration is not what the database holds; the database's set applies (change it with `kmsctl dual-control set`)"
                );
            }
            Some(_) => {}
        }
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
        let metrics = match settings.metrics_listen {
            Some(addr) => Some(Arc::new(TcpListener::bind(addr).await.map_err(|e| {
                StartError::Serve(format!("cannot listen for metrics on {addr}: {e}"))
            })?)),
            None => None,
        };
        Ok(Server {
            metrics,
            state: Arc::new(AppState {
                hsm,
                store,
                auditor: auditor.clone(),
                seal_key,
                oaep_hash,
                clock,
                settings: settings.service.clone(),
                facts: Default::default(),
                transport_keys: Arc::new(crate::ops::limits::PerEntity::new(
                    settings.service.transport_keys_per_hour,
                    3_600_000,
                )),
            }),
            tls,
            // The process and its audit chain: the chain id tells apart two
            // runs that reuse a pid.
            instance: format!(
                "{} chain {}",
                crate::audit::instance_name(),
                auditor.chain()
            )
            .into(),
        })
    }

    /// The shared state (tests reach the clock and the store through it).
    pub fn state(&self) -> &Shared {
        &self.state
    }

    /// Where the Prometheus endpoint listens, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
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
            Arc::clone(&self.instance),
            stop_rx.clone(),
        ));
        let purger = tokio::spawn(purger(
            Arc::clone(&self.state),
            Arc::clone(&self.instance),
            stop_rx.clone(),
        ));
        let checkpoints = tokio::spawn(wal_checkpoints(Arc::clone(&self.state), stop_rx.clone()));
        let limits = Arc::new(Limits::new(self.state.settings.limits.clone()));
        let summaries = tokio::spawn(refusal_summaries(
            Arc::clone(&self.state),
            Arc::clone(&self.tls.refusals),
            Arc::clone(&limits),
            stop_rx.clone(),
        ));
        let revocations = tokio::spawn(crl_reloads(self.tls.revocation.clone(), stop_rx.clone()));
        let metrics = self.metrics.map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&self.state),
                stop_rx.clone(),
            ))
        });
        // Every service, and the server as a whole (""), SERVING only while
        // the probe finds the token and the database answering.
        let (health_reporter, health) = tonic_health::server::health_reporter();
        set_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
        let health_probe = tokio::spawn(health_probe(
            Arc::clone(&self.state),
            health_reporter,
            stop_rx.clone(),
        ));
        let incoming = accept_tls(
            listener,
            TlsAcceptor::from(Arc::clone(&self.tls.config)),
            Arc::clone(&limits),
            stop_rx,
        );
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

        // When shutdown begins, the health service says NOT_SERVING at once,
        // and connections get a bounded time to finish (a health Watch or a
        // client's idle stream would otherwise hold the process forever).
        let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = signalled_tx.send(());
        };
        let serving = tonic::transport::Server::builder()
            .layer(AuthLayer::new(Arc::clone(&self.state), limits))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            // No request is larger than its service's largest legitimate one
            // (tonic's default is 4 MiB for every service): `input` then
            // bounds every field of what is decoded.
            .add_service(
                AdminServer::new(AdminService::new(Arc::clone(&self.state)))
                    .max_decoding_message_size(input::MAX_OTHER_REQUEST),
            )
            .add_service(
                KeyDistributionServer::new(DistributionService::new(Arc::clone(&self.state)))
                    .max_decoding_message_size(input::MAX_OTHER_REQUEST),
            )
            .add_service(
                CardAuthenticationServer::new(CardService::new(Arc::clone(&self.state)))
                    .max_decoding_message_size(input::MAX_OTHER_REQUEST),
            )
            .add_service(
                ProxyLoadingServer::new(CardService::new(Arc::clone(&self.state)))
                    .max_decoding_message_size(input::MAX_OTHER_REQUEST),
            )
            // Sign, Verify and the MAC calls carry up to 1 MiB of data; a
            // DecryptStream item is one blob (each stream message is bounded
            // on its own).
            .add_service(
                SettlementServer::new(SettlementService::new(Arc::clone(&self.state)))
                    .max_decoding_message_size(input::MAX_SETTLEMENT_REQUEST),
            )
            .serve_with_incoming_shutdown(incoming, shutdown);
        let draining = async {
            if signalled.await.is_ok() {
                let _ = stop_tx.send(true);
                tokio::time::sleep(DRAIN).await;
                tracing::warn!(
                    "connections were still open {} s after shutdown began: closed",
                    DRAIN.as_secs()
                );
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = serving => r,
            () = draining => Ok(()),
        };
        let _ = stop_tx.send(true);
        let _ = scheduler.await;
        let _ = purger.await;
        let _ = checkpoints.await;
        let _ = summaries.await;
        let _ = revocations.await;
        let _ = health_probe.await;
        if let Some(task) = metrics {
            let _ = task.await;
        }
        self.state.store.close().await;
        result.map_err(|e| StartError::Serve(e.to_string()))
    }
}

/// How long connections may take to finish once shutdown has begun.
const DRAIN: Duration = Duration::from_secs(10);

/// The names the health service answers for: the server as a whole ("") and
/// every gRPC service.
fn health_names() -> [&'static str; 6] {
    use tonic::server::NamedService;
    [
        "",
        <AdminServer<AdminService> as NamedService>::NAME,
        <KeyDistributionServer<DistributionService> as NamedService>::NAME,
        <CardAuthenticationServer<CardService> as NamedService>::NAME,
        <ProxyLoadingServer<CardService> as NamedService>::NAME,
        <SettlementServer<SettlementService> as NamedService>::NAME,
    ]
}

/// What the health probe found wrong, if anything: the token (its login
/// session still logged in as the user; a lost login is restored by the
/// probe) and the database (`SELECT 1`), each within a few seconds.
async fn probe(state: &AppState) -> Result<(), String> {
    let within = std::time::Duration::from_secs(5);
    match tokio::time::timeout(within, state.hsm.probe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("token: {e}")),
        Err(_) => return Err("token: no answer within 5 s".into()),
    }
    let select = sqlx::query("SELECT 1").execute(state.store.pool());
    match tokio::time::timeout(within, select).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("database: {e}")),
        Err(_) => Err("database: no answer within 5 s".into()),
    }
}

/// Probes every `health_probe_ms` and sets every service SERVING or
/// NOT_SERVING by what it finds, logging each change.
async fn health_probe(
    state: Shared,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let every = std::time::Duration::from_millis(state.settings.health_probe_ms);
    let mut last: Option<bool> = None;
    loop {
        let found = probe(&state).await;
        let serving = found.is_ok();
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&reporter, status).await;
            match &found {
                Ok(()) => tracing::info!("health: SERVING"),
                Err(why) => tracing::error!(%why, "health: NOT_SERVING"),
            }
            last = Some(serving);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {
                // Going away: watchers are told first.
                set_health(&reporter, ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

/// Every name the health service answers for, set to `status`.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for name in health_names() {
        reporter.set_service_status(name, status).await;
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop; a
/// failed or slow handshake only costs its own task. A connection is then
/// admitted under its identity's limits and its HTTP/2 preface awaited
/// (`connections`).
fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Arc<Limits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<Connection, std::io::Error>> {
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
            let (acceptor, tx, limits) = (acceptor.clone(), tx.clone(), Arc::clone(&limits));
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => match connections::admit(tls, &limits).await {
                        Ok(connection) => {
                            let _ = tx.send(Ok(connection)).await;
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection closed before HTTP/2")
                        }
                    },
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
/// last one, and one with the calls and connections refused over per-identity
/// limits (none when there were none).
async fn refusal_summaries(
    state: Shared,
    refusals: Arc<refusals::HandshakeRefusals>,
    limits: Arc<Limits>,
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
        if let Some(summary) = limits.take_summary()
            && let Err(e) = state.auditor.record(&summary).await
        {
            tracing::error!(error = %e, "could not audit the summary of calls refused over limits");
        }
        if stopping {
            return;
        }
    }
}

/// Every `period`: takes or renews the lease `name` for [`LEASE_PERIODS`]
/// periods and, while this instance holds it, runs `work`. At shutdown the lease
/// is given up, so that another instance need not wait for it to expire.
async fn under_lease<F, Fut>(
    state: &AppState,
    name: &'static str,
    holder: &str,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    work: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let duration_ms =
        i64::try_from(period.saturating_mul(LEASE_PERIODS).as_millis()).unwrap_or(i64::MAX);
    let mut held = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => break,
        }
        let tenure = match state.store.conn().await {
            Ok(mut conn) => {
                leases::acquire(&mut conn, name, holder, state.clock.now_ms(), duration_ms).await
            }
            Err(e) => Err(e),
        };
        match tenure {
            Ok(Tenure::Held) => {
                if !held {
                    tracing::info!(lease = name, holder, "took the lease");
                    held = true;
                }
                work().await;
            }
            Ok(Tenure::HeldElsewhere) => {
                if held {
                    tracing::warn!(lease = name, "another instance took the lease");
                    held = false;
                }
            }
            Err(e) => {
                tracing::error!(lease = name, error = %e, "cannot take the lease; will retry")
            }
        }
    }
    if held {
        let released = match state.store.conn().await {
            Ok(mut conn) => leases::release(&mut conn, name, holder).await,
            Err(e) => Err(e),
        };
        if let Err(e) = released {
            tracing::warn!(lease = name, error = %e, "cannot give the lease up; it will expire");
        }
    }
}

/// Carries out due key destructions, under the lease [`DESTRUCTION_LEASE`].
async fn destruction_scheduler(
    state: Shared,
    instance: Arc<str>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = Duration::from_secs(state.settings.destruction_check_secs);
    under_lease(
        &state,
        DESTRUCTION_LEASE,
        &instance,
        period,
        stop,
        || async {
            if let Err(e) = run_due_destructions(&state).await {
                tracing::error!(error = %e, "scheduled key destruction failed; will retry");
            }
        },
    )
    .await;
}

/// Why a purge chunk recorded nothing.
enum PurgeError {
    /// Nothing had expired.
    Nothing,
    /// The store or the audit writer failed.
    Failed(String),
}

impl From<crate::audit::AuditError> for PurgeError {
    fn from(e: crate::audit::AuditError) -> Self {
        PurgeError::Failed(e.to_string())
    }
}

/// Reads the revocation list again when its file changes (looked at every 2 s)
/// and on SIGHUP.
async fn crl_reloads(
    revocation: Option<Arc<tls::Revocation>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(revocation) = revocation else {
        return;
    };
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = hangup => tracing::info!("SIGHUP: reading the revocation list again"),
            _ = stop.changed() => return,
        }
        let r = Arc::clone(&revocation);
        match tokio::task::spawn_blocking(move || r.reload()).await {
            Ok(Ok(true)) => tracing::info!("took a new certificate revocation list"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the revocation list; the previous one stays in force");
            }
            Err(e) => tracing::error!(error = %e, "revocation list reload failed"),
        }
    }
}

/// SQLite: a passive WAL checkpoint every second, off the audit writer's path
/// (its connection does not checkpoint on commit).
async fn wal_checkpoints(state: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    if state.store.backend() != crate::store::Backend::Sqlite {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.store.checkpoint().await {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
}

/// Deletes challenges and sessions (with their commands) that expired more than
/// [`PURGE_GRACE`] ago, under the lease [`PURGER_LEASE`]; a purge that deleted
/// something is summarised in one audit record.
async fn purger(state: Shared, instance: Arc<str>, stop: tokio::sync::watch::Receiver<bool>) {
    let period = Duration::from_secs(state.settings.purge_interval_secs);
    let grace_ms = i64::try_from(PURGE_GRACE.as_millis()).unwrap_or(i64::MAX);
    under_lease(&state, PURGER_LEASE, &instance, period, stop, || async {
        let before = state.clock.now_ms().saturating_sub(grace_ms);
        // Chunk after chunk, each in the audit writer's batch with its own
        // summary record: the rows and the record commit together, and on SQLite
        // the purge never contends with the writer for the write lock.
        loop {
            let instance = Arc::clone(&instance);
            let chunk = state
                .auditor
                .commit_described(
                    AuditEvent::allowed("local:retention", PURGE_OPERATION),
                    false,
                    move |tx| {
                        Box::pin(async move {
                            let purged = cards::purge_chunk(tx, before, PURGE_BATCH)
                                .await
                                .map_err(|e| PurgeError::Failed(e.to_string()))?;
                            if purged.is_empty() {
                                return Err(PurgeError::Nothing);
                            }
                            let summary = format!(
                                "purged expired card rows: challenges {}, sessions {}, sealed commands {} (expired before {}; proxy loads kept); by {instance}",
                                purged.challenges,
                                purged.sessions,
                                purged.commands,
                                crate::clock::rfc3339(before),
                            );
                            Ok((purged, summary))
                        })
                    },
                )
                .await;
            match chunk {
                Ok(purged) => {
                    tracing::info!(
                        challenges = purged.challenges,
                        sessions = purged.sessions,
                        commands = purged.commands,
                        "purged expired card rows"
                    );
                    if !purged.is_full(PURGE_BATCH) {
                        return;
                    }
                }
                Err(PurgeError::Nothing) => return,
                Err(PurgeError::Failed(e)) => {
                    tracing::error!(error = %e, "purge of expired card rows failed; will retry");
                    return;
                }
            }
        }
    })
    .await;
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Serve(format!("cannot listen on {addr}: {e}")))
}
