//! Input bounds end to end (security-hardening issue, items 9 to 11): request
//! fields have maximum lengths checked before any use, error messages and audit
//! records quote at most a short escaped prefix of caller input, proxy-load sums
//! never saturate, and a request that is not valid protobuf is the caller's
//! `InvalidArgument`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::store::cards::{ProxyLoadRecord, insert_proxy_load};
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, audit_records, on_each_database, register, status_of};
use tonic::Code;
use tonic::codegen::{Bytes, http};

/// Every audit record's caller input (key alias and reason) stays small.
async fn assert_audit_small(officer: &brandkms_clients::Client, operation: &str) -> usize {
    let records = audit_records(officer, operation).await;
    for r in &records {
        assert!(
            r.key_alias.len() <= 64 && r.reason.len() <= 512,
            "an audit record of {operation} echoes input: alias {} bytes, reason {} bytes",
            r.key_alias.len(),
            r.reason.len()
        );
    }
    records.len()
}

#[tokio::test]
async fn long_input_is_refused_first_and_quoted_short() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        // The red team's call: a 3 MiB alias, ten times. Refused before any use
        // (the settlement service decodes nothing over 1 MiB and 16 KiB), with a
        // short message, and nothing of it in the audit trail.
        for _ in 0..10 {
            let (code, message) = status_of(
                officer
                    .settlement()
                    .get_public_key(pb::GetPublicKeyRequest {
                        alias: "a".repeat(3 << 20),
                        version: 0,
                    })
                    .await,
            );
            assert!(
                matches!(code, Code::OutOfRange | Code::InvalidArgument),
                "{code:?}"
            );
            assert!(message.len() < 300, "message of {} bytes", message.len());
        }
        // Under the message size, the field's own bound: InvalidArgument naming
        // the field, its length and the bound, quoting none of it.
        let (code, message) = status_of(
            officer
                .settlement()
                .get_public_key(pb::GetPublicKeyRequest {
                    alias: "b".repeat(100 << 10),
                    version: 0,
                })
                .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert_eq!(
            message,
            "GetPublicKeyRequest.alias is 102400 bytes; at most 64 are accepted"
        );
        // Admin requests too (the codec of every service).
        let (code, message) = status_of(
            officer
                .admin()
                .get_key(pb::GetKeyRequest {
                    alias: "c".repeat(65),
                })
                .await,
        );
        assert_eq!(
            (code, message.as_str()),
            (
                Code::InvalidArgument,
                "GetKeyRequest.alias is 65 bytes; at most 64 are accepted"
            )
        );
        // Within the bound but malformed: the message quotes it escaped, the
        // audit record keeps no malformed alias as the key.
        let odd = format!("K\n{}", "\u{e9}".repeat(31));
        let (code, message) = status_of(
            officer
                .settlement()
                .get_public_key(pb::GetPublicKeyRequest {
                    alias: odd.clone(),
                    version: 0,
                })
                .await,
        );
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains(&format!("{odd:?}")), "{message}");
        let records = audit_records(&officer, "Settlement/GetPublicKey").await;
        let last = records.last().unwrap();
        assert_eq!(last.outcome, pb::AuditOutcome::Failed as i32);
        assert_eq!(last.key_alias, "");
        assert!(last.reason.contains("K\\n"), "{}", last.reason);
        // The codec's refusal is audited too (by the identity layer), with the
        // same short reason.
        assert!(
            records
                .iter()
                .any(|r| r.outcome == pb::AuditOutcome::Failed as i32
                    && r.reason
                        == "GetPublicKeyRequest.alias is 102400 bytes; at most 64 are accepted"
                    && r.caller == "officer-1"),
            "{records:?}"
        );
        assert_audit_small(&officer, "Settlement/GetPublicKey").await;
        // The audit trail still lists in one piece.
        assert!(!audit_records(&officer, "").await.is_empty());

        // The largest legitimate request (1 MiB to sign) still reaches the
        // handler, which refuses it for what it is (no such key), not its size.
        let (code, message) = status_of(
            officer
                .settlement()
                .sign(pb::SignRequest {
                    alias: "no-such-key".into(),
                    data: vec![7; 1 << 20],
                })
                .await,
        );
        assert!(
            matches!(code, Code::NotFound | Code::PermissionDenied),
            "{code:?} {message}"
        );
        // One byte more is refused by the bound.
        let (code, message) = status_of(
            officer
                .settlement()
                .sign(pb::SignRequest {
                    alias: "no-such-key".into(),
                    data: vec![7; (1 << 20) + 1],
                })
                .await,
        );
        assert_eq!(
            (code, message.as_str()),
            (
                Code::InvalidArgument,
                "SignRequest.data is 1048577 bytes; at most 1048576 are accepted"
            )
        );
        s
    })
    .await;
}

#[tokio::test]
async fn a_decrypt_stream_item_over_its_bound_stops_the_stream_and_is_audited() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        let mut settlement = pb::settlement_client::SettlementClient::new(officer.channel());
        let items = vec![
            pb::DecryptItem {
                index: 1,
                blob: b"not a blob".to_vec(),
            },
            pb::DecryptItem {
                index: 2,
                blob: vec![0x42; 5000],
            },
        ];
        let mut results = settlement
            .decrypt_stream(tokio_stream::iter(items))
            .await
            .unwrap()
            .into_inner();
        let first = results.message().await.unwrap().unwrap();
        assert_eq!(first.index, 1);
        assert!(matches!(
            first.result,
            Some(pb::decrypt_result::Result::Error(_))
        ));
        let stopped = results.message().await.unwrap_err();
        assert_eq!(
            (stopped.code(), stopped.message()),
            (
                Code::InvalidArgument,
                "DecryptItem.blob is 5000 bytes; at most 1100 are accepted"
            )
        );
        // The stream's record (written when it ends) says why it stopped.
        let mut reason = String::new();
        for _ in 0..100 {
            if let Some(r) = audit_records(&officer, "Settlement/DecryptStream")
                .await
                .pop()
            {
                reason = r.reason;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            reason.starts_with("0 decrypted, 1 failed")
                && reason.ends_with(
                    "; stopped: InvalidArgument: DecryptItem.blob is 5000 bytes; at most 1100 are accepted"
                ),
            "{reason}"
        );
        s
    })
    .await;
}

#[tokio::test]
async fn proxy_load_totals_never_saturate() {
    on_each_database(|s: TestServer| async move {
        let officer = s.client("officer-1").await;
        register(&officer, "issuer-2-1", pb::EntityKind::Issuer).await;
        register(&officer, "loading-portal", pb::EntityKind::LoadingPortal).await;
        let load = |i: u8, amount: u64, currency: &str| ProxyLoadRecord {
            txn_id: hex::encode([i; 16]),
            issuer: "issuer-2-1".into(),
            requested_by: "loading-portal".into(),
            alias: "key-e".into(),
            version: 1,
            card_id: hex::encode([i; 8]),
            amount,
            currency: currency.into(),
            status: "pending".into(),
            at: 1_000 + i64::from(i),
            confirmed_at: None,
        };
        let mut conn = s.state.store.conn().await.unwrap();
        for i in 1..=3 {
            insert_proxy_load(&mut conn, &load(i, i64::MAX as u64, "JPY"))
                .await
                .unwrap();
        }
        insert_proxy_load(&mut conn, &load(4, 5, "EUR"))
            .await
            .unwrap();
        drop(conn);
        // Three loads of 2^63-1 do not fit 64 bits: refused, naming the group
        // and what to do, never 18446744073709551615.
        let (code, message) = status_of(
            officer
                .proxy_loads()
                .summarize_proxy_loads(pb::SummarizeProxyLoadsRequest::default())
                .await,
        );
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(
            message.contains("issuer-2-1's pending JPY proxy loads")
                && message.contains("shorter periods"),
            "{message}"
        );
        // A period of two of them sums exactly.
        let summary = officer
            .proxy_loads()
            .summarize_proxy_loads(pb::SummarizeProxyLoadsRequest {
                start_time: 1_001,
                end_time: 1_003,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(summary.totals.len(), 1);
        assert_eq!(
            (summary.totals[0].count, summary.totals[0].total),
            (2, 2 * (i64::MAX as u64))
        );
        // The refusal is audited.
        let records = audit_records(&officer, "ProxyLoading/SummarizeProxyLoads").await;
        assert_eq!(records[0].outcome, pb::AuditOutcome::Failed as i32);
        s
    })
    .await;
}

/// A body of one frame, as given.
struct Raw(Option<Bytes>);

impl http_body::Body for Raw {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Sends `body` as the whole request body of `path` and returns the status.
async fn raw_call(s: &TestServer, path: &str, body: Vec<u8>) -> tonic::Status {
    use tonic::client::GrpcService;
    let client = s.client("officer-1").await;
    let mut channel = client.channel();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Raw(Some(Bytes::from(body)))))
        .unwrap();
    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    let response = GrpcService::call(&mut channel, request).await.unwrap();
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    use http_body_util::BodyExt;
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status")
}

/// A gRPC frame: flag, length, message.
fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    f.extend_from_slice(message);
    f
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    on_each_database(|s: TestServer| async move {
        const PATH: &str = "/brandkms.v1.Settlement/GetPublicKey";
        // Field 1 (alias) says 5 bytes; one follows.
        let truncated = raw_call(&s, PATH, frame(0, &[0x0a, 0x05, b'a'])).await;
        assert_eq!(truncated.code(), Code::InvalidArgument, "{truncated:?}");
        assert!(
            truncated.message().contains("not valid protobuf"),
            "{truncated:?}"
        );
        // The codec's mark for the audit does not leave the server.
        assert!(
            !truncated
                .metadata()
                .contains_key(brandkms_proto::limits::REFUSED_INPUT_MARKER),
            "{truncated:?}"
        );
        // Invalid UTF-8 in the alias.
        let utf8 = raw_call(&s, PATH, frame(0, &[0x0a, 0x02, 0xff, 0xfe])).await;
        assert_eq!(utf8.code(), Code::InvalidArgument, "{utf8:?}");
        // A wrong wire type for a field.
        let wire = raw_call(&s, PATH, frame(0, &[0x0d, 1, 2, 3])).await;
        assert_eq!(wire.code(), Code::InvalidArgument, "{wire:?}");
        // Out of the codec's reach, in tonic's frame reader before any codec:
        // the gRPC compression spec requires INTERNAL for a compressed-flag
        // message without grpc-encoding, and tonic answers a frame cut short
        // with INTERNAL "Unexpected EOF". Kept as they are (see the report).
        let flagged = raw_call(&s, PATH, frame(1, &[0x0a, 0x01, b'a'])).await;
        assert_eq!(flagged.code(), Code::Internal, "{flagged:?}");
        assert!(flagged.message().contains("compressed-flag"), "{flagged:?}");
        let mut cut = frame(0, &[0x0a, 0x01, b'a']);
        cut.truncate(6);
        let cut = raw_call(&s, PATH, cut).await;
        assert_eq!(cut.code(), Code::Internal, "{cut:?}");
        // The three the codec refused are audited as failed, and nothing
        // else is (the transport's refusals never reach the identity layer's
        // view of a response as the codec's).
        let officer = s.client("officer-1").await;
        let records = audit_records(&officer, "Settlement/GetPublicKey").await;
        let refused: Vec<_> = records
            .iter()
            .filter(|r| r.reason.starts_with("the request is not valid protobuf"))
            .collect();
        assert_eq!(refused.len(), 3, "{records:?}");
        assert!(
            refused
                .iter()
                .all(|r| r.outcome == pb::AuditOutcome::Failed as i32)
        );
        assert_audit_small(&officer, "Settlement/GetPublicKey").await;
        s
    })
    .await;
}
