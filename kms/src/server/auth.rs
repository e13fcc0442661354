//! The identity layer: before any handler runs, the caller's certificate must
//! chain to the brand CA (else `Unauthenticated`), name a registered entity (else
//! `Unauthenticated`) that is not suspended (else `PermissionDenied`, rule 2).
//! Each refusal is recorded in the audit trail. The caller's call is then
//! admitted under its per-identity limits (`limits`: else `ResourceExhausted`,
//! summarised in the audit trail, not recorded one by one) and the caller
//! handed to the handlers in the request's extensions. A request the codec refuses before its
//! handler runs (a field over its bound, or not valid protobuf) is audited here,
//! from the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use brandkms_policy::{DenyReason, EntityStatus};
use brandkms_proto::limits::REFUSED_INPUT_MARKER;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::identity::{self, IdentityError};
use super::limits::{Limits, Slot};
use tracing::Instrument;

use super::metrics;
use crate::audit::{AuditEvent, Outcome};
use crate::ops::{Caller, OpsError, Shared};
use crate::service::to_status;

/// Paths that need a brand certificate but no registered entity, and whose
/// successful calls are not audited (they touch no key and no state).
const INFRASTRUCTURE: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Wraps the gRPC routes with caller identification.
#[derive(Clone)]
pub struct AuthLayer {
    state: Shared,
    limits: Arc<Limits>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthLayer")
    }
}

impl AuthLayer {
    /// A layer that reads the caller from the verified certificate, checks
    /// its entity in `state`'s store on every request and admits the call
    /// under `limits`.
    pub fn new(state: Shared, limits: Arc<Limits>) -> Self {
        AuthLayer { state, limits }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            state: Arc::clone(&self.state),
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service the layer produces.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    state: Shared,
    limits: Arc<Limits>,
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth")
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = Arc::clone(&self.state);
        let limits = Arc::clone(&self.limits);
        let (started, route) = (std::time::Instant::now(), metrics::route(req.uri().path()));
        // A span per request: what every log line it leads to carries; its id
        // goes back to the caller in `x-request-id`.
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let span = tracing::info_span!(
            "request",
            id = %request_id,
            service = route.0,
            method = route.1,
            caller = tracing::field::Empty,
        );
        let id = request_id.clone();
        let work = async move {
            let path = req.uri().path().to_string();
            let chain = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs());
            let chain: &[_] = chain.as_deref().map(Vec::as_slice).unwrap_or_default();
            // The identity the certificate names (no database read) is admitted
            // under its limits first, so that a flood over them costs nothing
            // more; the slot is held until the response's body ends (a stream's
            // last item).
            let peer = identity::identify(chain);
            let in_flight = match &peer {
                Ok(p) => match limits.call(&p.entity_id) {
                    Ok(slot) => Some(slot),
                    Err(e) => return Ok(to_status(&e).into_http()),
                },
                Err(_) => None,
            };
            match identify(&state, chain, peer, &path, &id).await {
                Ok(Some(caller)) => {
                    tracing::Span::current().record("caller", caller.entity.id.as_str());
                    req.extensions_mut().insert(caller.clone());
                    let mut response = inner.call(req).await?;
                    // A request the codec refused (over a bound, or not valid
                    // protobuf) never reached its handler: audited here.
                    if response
                        .headers_mut()
                        .remove(REFUSED_INPUT_MARKER)
                        .is_some()
                    {
                        let reason = Status::from_header_map(response.headers())
                            .map(|s| s.message().to_string())
                            .unwrap_or_default();
                        let event = caller
                            .event(&operation_name(&path))
                            .outcome(Outcome::Failed, Some(reason));
                        if let Err(status) = record(&state, &event).await {
                            return Ok(status.into_http());
                        }
                    }
                    Ok(holding(response, in_flight))
                }
                Ok(None) => Ok(holding(inner.call(req).await?, in_flight)),
                Err(status) => Ok(status.into_http()),
            }
        };
        Box::pin(
            async move {
                work.await.map(|mut response| {
                    if let Ok(id) = http::HeaderValue::from_str(&request_id) {
                        response.headers_mut().insert("x-request-id", id);
                    }
                    metrics::measured(response, route, started)
                })
            }
            .instrument(span),
        )
    }
}

/// `Admin/CreateKey` from `/brandkms.v1.Admin/CreateKey`.
pub fn operation_name(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_start_matches("brandkms.v1.")
        .to_string()
}

/// The response, its body holding `slot` until it ends.
fn holding(
    response: http::Response<tonic::body::Body>,
    slot: Option<Slot>,
) -> http::Response<tonic::body::Body> {
    match slot {
        None => response,
        Some(slot) => response.map(|body| tonic::body::Body::new(Held { body, _slot: slot })),
    }
}

/// A response body and the caller's in-flight slot, given back when the body
/// is dropped (sent in full, or abandoned).
struct Held {
    body: tonic::body::Body,
    _slot: Slot,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn identify(
    state: &Shared,
    chain: &[rustls::pki_types::CertificateDer<'static>],
    peer: Result<identity::PeerIdentity, IdentityError>,
    path: &str,
    request_id: &str,
) -> Result<Option<Caller>, Status> {
    let operation = operation_name(path);
    // Hashed once per request: the identity already carries it.
    let fingerprint = match &peer {
        Ok(p) => Some(p.fingerprint.clone()),
        Err(_) => chain.first().map(identity::fingerprint),
    };
    let refuse = |caller: &str, outcome_status: Status| {
        let mut event = AuditEvent::allowed(caller, &operation)
            .outcome(Outcome::Denied, Some(outcome_status.message().to_string()));
        event.cert_fingerprint = fingerprint.clone();
        event.request_id = Some(request_id.to_string());
        (event, outcome_status)
    };
    let peer = match peer {
        Ok(p) => p,
        Err(e) => {
            let (event, status) = refuse("unauthenticated", Status::unauthenticated(e.to_string()));
            record(state, &event).await?;
            if matches!(e, IdentityError::NoCertificate) {
                tracing::warn!(%operation, error = %e, "refused a client certificate");
            }
            return Err(status);
        }
    };
    if INFRASTRUCTURE.iter().any(|p| path.starts_with(p)) {
        return Ok(None);
    }
    let mut conn = state
        .store
        .conn()
        .await
        .map_err(|e| to_status(&OpsError::from(e)))?;
    let view = state
        .facts
        .current(&mut conn)
        .await
        .map_err(|e| to_status(&OpsError::from(e)))?;
    let entity = view
        .entity(&mut conn, &peer.entity_id)
        .await
        .map_err(|e| to_status(&OpsError::from(e)))?;
    drop(conn);
    let Some(entity) = entity else {
        let (event, status) = refuse(
            &peer.entity_id,
            Status::unauthenticated(format!(
                "entity {:?} named by the client certificate is not registered",
                peer.entity_id
            )),
        );
        record(state, &event).await?;
        return Err(status);
    };
    if entity.status == EntityStatus::Suspended {
        let (event, status) = refuse(
            &peer.entity_id,
            to_status(&OpsError::Denied(DenyReason::EntitySuspended)),
        );
        record(state, &event).await?;
        return Err(status);
    }
    Ok(Some(Caller {
        entity,
        fingerprint: peer.fingerprint,
        approving: None,
        view,
        request_id: Some(request_id.to_string()),
    }))
}

async fn record(state: &Shared, event: &AuditEvent) -> Result<(), Status> {
    state
        .auditor
        .record(event)
        .await
        .map(|_| ())
        .map_err(|e| to_status(&OpsError::from(e)))
}
