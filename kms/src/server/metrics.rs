//! Prometheus metrics (issue 14, item 1), on a listener of their own
//! (`[metrics] listen`, loopback in the development deployment): plain HTTP,
//! `GET /metrics`, nothing else. Every series is the process's (one recorder
//! per process, the `metrics` facade's); none carries a secret, an entity id
//! or a key alias, so the label sets stay small.
//!
//! - `brandkms_grpc_requests_total{service,method,code}` and
//!   `brandkms_grpc_request_duration_seconds{service,method}`: every call, its
//!   gRPC status as the client sees it (trailers, or a trailers-only answer);
//! - `brandkms_hsm_sessions` (the pool's size), `brandkms_hsm_sessions_in_use`,
//!   `brandkms_hsm_wait_seconds` (for a pool session) and
//!   `brandkms_hsm_call_seconds{kind}` (`short`: symmetric calls on the
//!   worker; `long`: RSA and key generation on a blocking thread);
//! - `brandkms_db_connections{state}` (`idle`, `in_use`);
//! - `brandkms_audit_batch_requests` and `brandkms_audit_commit_seconds`;
//! - `brandkms_tls_handshakes_refused_total` and
//!   `brandkms_limited_total{kind}` (`call`, `connection`).

use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::ops::Shared;

/// Latency buckets (seconds), from a symmetric token call to a slow RSA one.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Audit batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("brandkms_audit_batch_requests".into()),
                    BATCH_BUCKETS,
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics shows nothing");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "brandkms_grpc_requests_total",
        "gRPC calls by service, method and status code"
    );
    describe_histogram!(
        "brandkms_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC call latency, until the answer's end"
    );
    describe_gauge!("brandkms_hsm_sessions", "token sessions the pool may hold");
    describe_gauge!("brandkms_hsm_sessions_in_use", "token sessions in use");
    describe_histogram!(
        "brandkms_hsm_wait_seconds",
        Unit::Seconds,
        "wait for a token session"
    );
    describe_histogram!(
        "brandkms_hsm_call_seconds",
        Unit::Seconds,
        "token call latency (short: symmetric; long: RSA, key generation)"
    );
    describe_gauge!("brandkms_db_connections", "database pool connections");
    describe_histogram!(
        "brandkms_audit_batch_requests",
        "requests committed together in one audit batch"
    );
    describe_histogram!(
        "brandkms_audit_commit_seconds",
        Unit::Seconds,
        "audit batch transaction, begin to commit"
    );
    describe_counter!(
        "brandkms_tls_handshakes_refused_total",
        "TLS handshakes refused (certificate not accepted)"
    );
    describe_counter!(
        "brandkms_limited_total",
        "calls and connections refused over a per-identity limit"
    );
}

/// Scrapes served at once; more wait for a free one.
const CONNECTIONS: usize = 8;
/// How long a scraper has to send its request, and to take the whole answer.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often histogram samples are folded in when nobody scrapes (they are
/// kept until then).
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `stop` turns true: at most
/// [`CONNECTIONS`] at once, each bounded in time, so that a slow or
/// flooding client costs little; folds samples in every [`UPKEEP`].
pub async fn serve(
    listener: std::sync::Arc<TcpListener>,
    state: Shared,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handle = handle();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let mut upkeep = tokio::time::interval(UPKEEP);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: do not spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let answer = if req.method() == http::Method::GET && req.uri().path() == "/metrics"
                {
                    refresh(&state);
                    http::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(handle.render())))
                } else {
                    http::Response::builder()
                        .status(http::StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"GET /metrics\n")))
                };
                async move { answer }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// The gauges read at scrape time.
fn refresh(state: &Shared) {
    let pool = state.store.pool();
    let size = f64::from(pool.size());
    let idle = f64::from(u32::try_from(pool.num_idle()).unwrap_or(u32::MAX));
    metrics::gauge!("brandkms_db_connections", "state" => "idle").set(idle);
    metrics::gauge!("brandkms_db_connections", "state" => "in_use").set((size - idle).max(0.0));
    let (sessions, in_use) = state.hsm.pool_use();
    metrics::gauge!("brandkms_hsm_sessions").set(sessions as f64);
    metrics::gauge!("brandkms_hsm_sessions_in_use").set(in_use as f64);
}

/// `(service, method)` of a gRPC path: `("Admin", "CreateKey")` of
/// `/brandkms.v1.Admin/CreateKey`; anything else (an unknown path) is
/// `("other", "other")`, so that a caller cannot make new series.
pub fn route(path: &str) -> (&'static str, &'static str) {
    type Routes = std::collections::HashMap<String, (&'static str, &'static str)>;
    static KNOWN: OnceLock<Routes> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(brandkms_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut out = Routes::new();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name: &'static str =
                    Box::leak(service.name.unwrap_or_default().into_boxed_str());
                for method in service.method {
                    let m = method.name.unwrap_or_default();
                    let path = format!("/{package}.{name}/{m}");
                    out.insert(path, (name, &*Box::leak(m.into_boxed_str())));
                }
            }
        }
        out
    });
    known.get(path).copied().unwrap_or(("other", "other"))
}

/// A status code's name, as gRPC spells it in its docs (`Ok`, `NotFound`...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "Ok",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// Records one finished call.
pub fn request_done(route: (&'static str, &'static str), code: tonic::Code, started: Instant) {
    let (service, method) = route;
    let code = code_name(code);
    metrics::counter!("brandkms_grpc_requests_total", "service" => service, "method" => method, "code" => code)
        .increment(1);
    metrics::histogram!("brandkms_grpc_request_duration_seconds", "service" => service, "method" => method)
        .record(started.elapsed().as_secs_f64());
}

/// The response, recorded when its gRPC status is known: at once for a
/// trailers-only answer, else when its trailers pass (or, a body abandoned
/// before them, as `Cancelled`).
pub fn measured(
    response: http::Response<tonic::body::Body>,
    route: (&'static str, &'static str),
    started: Instant,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = grpc_status(response.headers()) {
        request_done(route, code, started);
        return response;
    }
    response.map(|body| {
        tonic::body::Body::new(Observed {
            body,
            route,
            started,
            recorded: false,
        })
    })
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// A response body that records its call when the trailers pass.
struct Observed {
    body: tonic::body::Body,
    route: (&'static str, &'static str),
    started: Instant,
    recorded: bool,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && !this.recorded
        {
            this.recorded = true;
            let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
            request_done(this.route, code, this.started);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.recorded {
            request_done(self.route, tonic::Code::Cancelled, self.started);
        }
    }
}
