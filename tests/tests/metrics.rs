//! Issue 14, item 1: the Prometheus endpoint on a listener of its own. A
//! scrape during a run of calls shows the request counters and latency
//! histograms moving, with the token pool, database pool, audit batch and
//! limit series beside them. (Alone in its test process: the series are the
//! process's.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms_proto::v1 as pb;
use brandkms_tests::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over plain HTTP/1.1: (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the series whose line starts with `series ` (0 when absent).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_scrape_shows_requests_and_latencies_moving() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let officer = s.client("officer-1").await;
    let create = |alias: &str| pb::CreateKeyRequest {
        alias: alias.into(),
        service_code: 0x0A01,
        purpose: pb::Purpose::Purchase as i32,
        ..Default::default()
    };
    officer.admin().create_key(create("key-1")).await.unwrap();
    let (status, first) = get(s.metrics_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");

    let created = r#"brandkms_grpc_requests_total{service="Admin",method="CreateKey",code="Ok"}"#;
    let missing =
        r#"brandkms_grpc_requests_total{service="Admin",method="GetKey",code="NotFound"}"#;
    let latency =
        r#"brandkms_grpc_request_duration_seconds_count{service="Admin",method="CreateKey"}"#;
    assert_eq!(value(&first, created), 1.0, "{first}");
    assert_eq!(value(&first, latency), 1.0, "{first}");

    // More calls, one refused: the counters and the histogram move.
    for i in 2..=4 {
        officer
            .admin()
            .create_key(create(&format!("key-{i}")))
            .await
            .unwrap();
    }
    let refused = officer
        .admin()
        .get_key(pb::GetKeyRequest {
            alias: "no-such-key".into(),
        })
        .await;
    assert!(refused.is_err());
    let (_, second) = get(s.metrics_addr, "/metrics").await;
    assert_eq!(value(&second, created), 4.0, "{second}");
    assert_eq!(value(&second, missing), 1.0, "{second}");
    assert_eq!(value(&second, latency), 4.0, "{second}");
    assert!(
        second.contains(r#"brandkms_grpc_request_duration_seconds_bucket{service="Admin",method="CreateKey",le="#),
        "{second}"
    );
    // The token pool, the database pool, the audit batches.
    assert!(value(&second, "brandkms_hsm_sessions") >= 1.0, "{second}");
    assert!(second.contains("brandkms_hsm_sessions_in_use "), "{second}");
    assert!(value(&second, r#"brandkms_hsm_call_seconds_count{kind="short"}"#) > 0.0);
    assert!(value(&second, r#"brandkms_hsm_call_seconds_count{kind="long"}"#) > 0.0);
    assert!(value(&second, "brandkms_hsm_wait_seconds_count") > 0.0);
    // Token operations by mechanism family: key generation for CreateKey, the
    // audit MAC of every batch.
    for family in ["keygen", "hmac"] {
        let series = format!("brandkms_hsm_op_seconds_count{{family=\"{family}\"}}");
        assert!(value(&second, &series) > 0.0, "{series}: {second}");
    }
    assert!(
        second.contains(r#"brandkms_db_connections{state="idle"}"#),
        "{second}"
    );
    assert!(
        value(&second, "brandkms_audit_batch_requests_count")
            > value(&first, "brandkms_audit_batch_requests_count")
    );
    assert!(value(&second, "brandkms_audit_commit_seconds_count") > 0.0);
    // Nothing else is served.
    let (status, _) = get(s.metrics_addr, "/").await;
    assert!(status.contains("404"), "{status}");
    s.stop().await;
}
