//! Issue 12, items 12 and 13: connections that complete TLS and then wait are
//! closed (no HTTP/2 preface in time; nothing sent for the idle timeout), each
//! identity holds a bounded number of connections, and a participant flooding
//! the service is limited (`ResourceExhausted` with a RetryInfo) while another's
//! latency stays close to what it is unloaded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use brandkms::config::LimitSettings;
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, audit_records, register, tie_up};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A TLS connection as `entity` with the brand PKI, nothing sent on it yet.
async fn tls_as(
    s: &TestServer,
    entity: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(s.pki.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(s.pki.join(format!("{entity}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(s.pki.join(format!("{entity}-key.pem"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or fails it); everything read,
/// and how long it took. Gives up after 30 s.
async fn until_closed(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)).await {
            Err(_) => panic!("still open after 30 s (read {} bytes)", all.len()),
            Ok(Ok(0) | Err(_)) => return (all, start.elapsed()),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Dual control off, refusals summarised every second, and `limits`.
fn settings(limits: LimitSettings) -> brandkms::config::ServiceSettings {
    brandkms::config::ServiceSettings {
        limits,
        refused_handshake_summary_secs: 1,
        ..TestServer::single_officer()
    }
}

#[tokio::test]
async fn connections_without_a_preface_or_gone_idle_are_closed_and_capped_per_identity() {
    let s = TestServer::start_with(
        brandkms::testing::sqlite_db(),
        settings(LimitSettings {
            preface_timeout_secs: 1,
            idle_timeout_secs: 2,
            connections_per_identity: 3,
            ..LimitSettings::default()
        }),
    )
    .await;

    // TLS completed, then silence: closed after the preface timeout.
    let mut silent = tls_as(&s, "cybershop-k").await;
    let (read, waited) = until_closed(&mut silent).await;
    assert!(read.is_empty(), "nothing is answered before the preface");
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");

    // The preface and SETTINGS, then silence: the server's SETTINGS, then
    // closed after the idle timeout.
    let mut idle = tls_as(&s, "cybershop-k").await;
    idle.write_all(PREFACE).await.unwrap();
    idle.write_all(SETTINGS).await.unwrap();
    let (read, waited) = until_closed(&mut idle).await;
    assert_eq!(read.get(3), Some(&4), "the server's SETTINGS frame first");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );

    // Three connections of one identity are held; the fourth is told why and
    // closed; another identity is not affected; one closed, one more is taken.
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = s.client("cybershop-k").await;
        assert!(c.healthy().await.unwrap());
        held.push(c);
    }
    let mut fourth = tls_as(&s, "cybershop-k").await;
    fourth.write_all(PREFACE).await.unwrap();
    let (read, _) = until_closed(&mut fourth).await;
    let text = String::from_utf8_lossy(&read);
    assert!(
        text.contains("too many connections for entity \"cybershop-k\" (limit 3)"),
        "{text:?}"
    );
    // GOAWAY (type 7) with ENHANCE_YOUR_CALM (0xb).
    assert_eq!(read.get(12), Some(&7));
    assert_eq!(read.get(22..26), Some(&[0, 0, 0, 0xb][..]));
    let other = s.client("cybershop-l").await;
    assert!(other.healthy().await.unwrap());
    drop(held);
    let again = Client::connect(&s.options("cybershop-k")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The server sees the closed connections go shortly after the client drops them.
    while !again.healthy().await.unwrap_or(false) {
        assert!(Instant::now() < deadline, "no connection slot came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The refused connection is summarised in the audit trail (every second
    // here).
    let officer = s.client("officer-1").await;
    let summary = summary_naming(&officer, "cybershop-k: 0 calls, 1 connections").await;
    assert_eq!(summary.outcome, pb::AuditOutcome::Denied as i32);
    s.stop().await;
}

/// Waits (up to 10 s) for the first summary of refusals over limits that
/// mentions `text`.
async fn summary_naming(officer: &Client, text: &str) -> pb::AuditRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = audit_records(officer, "Limits/Refused")
            .await
            .into_iter()
            .find(|r| r.reason.contains(text))
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no summary mentions {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The clearing house and a second clearing house (`store-s`'s certificate),
/// each with a tie-up on the RSA-3072 settlement key `settle`.
async fn two_clearing_houses(s: &TestServer) -> (Client, Client, Client) {
    let officer = s.client("officer-1").await;
    register(&officer, "clearing-house", pb::EntityKind::ClearingHouse).await;
    register(&officer, "store-s", pb::EntityKind::ClearingHouse).await;
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: "settle".into(),
            key_class: pb::KeyClass::Settlement as i32,
            algorithm: pb::KeyAlgorithm::Rsa3072 as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    for who in ["clearing-house", "store-s"] {
        tie_up(&officer, who, "settle", pb::TieUpMode::Hold, None).await;
    }
    let victim = s.client("clearing-house").await;
    let flooder = s.client("store-s").await;
    (officer, victim, flooder)
}

fn sign() -> pb::SignRequest {
    pb::SignRequest {
        alias: "settle".into(),
        data: b"settlement file".to_vec(),
    }
}

/// The p99 of `n` signatures by `c`, one every `every` (within its rate).
async fn p99_of_signatures(c: &Client, n: usize, every: Duration) -> Duration {
    let mut latencies = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(every);
    for _ in 0..n {
        tick.tick().await;
        let start = Instant::now();
        c.settlement().sign(sign()).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies.sort();
    latencies[(n * 99).div_ceil(100) - 1]
}

/// Offers `rate` signatures per second as `flooder` on `connections` connections
/// (open loop: each call starts on schedule, whatever became of the earlier
/// ones) until `stop`; answers (allowed, refused with a RetryInfo, other).
async fn flood(
    s: &TestServer,
    connections: usize,
    rate: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64, u64) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(s.client("store-s").await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut i = 0usize;
    while !*stop.borrow() {
        tick.tick().await;
        let (c, tx) = (clients[i % connections].clone(), tx.clone());
        i += 1;
        tokio::spawn(async move {
            let outcome = match c.settlement().sign(sign()).await {
                Ok(_) => 0,
                Err(e)
                    if e.code() == Some(Code::ResourceExhausted) && e.retry_after().is_some() =>
                {
                    1
                }
                Err(_) => 2,
            };
            let _ = tx.send(outcome);
        });
    }
    drop(tx);
    let mut counts = (0, 0, 0);
    while let Some(o) = rx.recv().await {
        match o {
            0 => counts.0 += 1,
            1 => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_participant_is_limited_and_another_keeps_its_latency() {
    // Each identity: 50 calls per second, 2 in flight (of the token's 4
    // sessions here).
    let limits = LimitSettings {
        concurrent_calls: 2,
        calls_per_second: 50,
        call_burst: 50,
        ..LimitSettings::default()
    };
    let s = TestServer::start_with(brandkms::testing::sqlite_db(), settings(limits)).await;
    let (officer, victim, _) = two_clearing_houses(&s).await;
    // The victim signs 25 times a second, within its rate: 200 signatures
    // alone (after a warm-up), then 200 under the flood.
    const N: usize = 200;
    let every = Duration::from_millis(40);
    p99_of_signatures(&victim, 20, every).await;
    let unloaded = p99_of_signatures(&victim, N, every).await;

    // The flood: 1,000 signatures per second offered, 20 times its rate.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let flooding = {
        let s = &s;
        async move { flood(s, 8, 1000, stop).await }
    };
    let measuring = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = p99_of_signatures(&victim, N, every).await;
        stop_tx.send(true).unwrap();
        loaded
    };
    let ((allowed, refused, other), loaded) = tokio::join!(flooding, measuring);
    eprintln!(
        "victim p99 unloaded {unloaded:?}, under the flood {loaded:?}; flooder: {allowed} allowed, {refused} refused, {other} other"
    );
    assert_eq!(
        other, 0,
        "every flood call is answered or refused with a RetryInfo"
    );
    assert!(
        refused > allowed,
        "the flooder is limited: {allowed} allowed, {refused} refused"
    );
    assert!(
        loaded <= unloaded * 2,
        "victim p99 {loaded:?} under the flood, {unloaded:?} unloaded"
    );

    // The refusals are summarised in the audit trail, not recorded one by one.
    let summary = summary_naming(&officer, "store-s: ").await;
    assert_eq!(summary.caller, "local:limits");
    let signs = audit_records(&officer, "Settlement/Sign").await;
    assert!(
        (signs.len() as u64) < allowed + refused,
        "{} sign records for {} flood calls",
        signs.len(),
        allowed + refused
    );
    s.stop().await;
}
