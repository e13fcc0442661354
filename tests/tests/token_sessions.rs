//! Issue 14, item 4: every session of the process closed under the pool
//! (`C_CloseAllSessions`, as a token reset or a removal does), alone in its test
//! process (the sessions and the login are the whole process's). The call that
//! meets a dead session answers UNAVAILABLE (nothing done; retry) and recovers
//! the pool: the next calls run on new sessions, logged in again, with object
//! handles found again, with no restart and before any health probe. Closed
//! again, the health probe finds the login session gone, reopens it, and reports
//! SERVING again. The audit chain verifies afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::TestServer;
use brandkms_tests::health::{all_become, fast_probe};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn create(officer: &Client, alias: &str) -> Result<pb::Key, brandkms_clients::ClientError> {
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: alias.into(),
            service_code: 0x0A01,
            purpose: pb::Purpose::Purchase as i32,
            ..Default::default()
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_closed_under_the_pool_are_reopened_without_a_restart() {
    // No probe for a minute: the call path alone must recover.
    let settings = brandkms::config::ServiceSettings {
        health_probe_ms: 60_000,
        ..fast_probe()
    };
    let s = TestServer::start_with(brandkms::testing::sqlite_db(), settings).await;
    let officer = s.client("officer-1").await;
    // Sessions pooled, the audit MAC key's handle cached.
    for i in 0..4 {
        create(&officer, &format!("before-{i}")).await.unwrap();
    }

    s.state.hsm.close_all_sessions_for_tests().await.unwrap();
    let mut refused = 0;
    let mut done = 0;
    for i in 0..6 {
        match create(&officer, &format!("after-{i}")).await {
            Ok(_) => done += 1,
            Err(brandkms_clients::ClientError::Status { code, message, .. }) => {
                assert_eq!(code, Code::Unavailable, "{message}");
                assert!(message.contains("retry"), "{message}");
                assert_eq!(done, 0, "a failure after a success: {message}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("after closing every session: {refused} refused (UNAVAILABLE), {done} done");
    assert!(done >= 4, "{refused} refused, {done} done");
    assert!(refused <= 2, "{refused} refused, {done} done");

    // The probe's path: closed again, the next probe reports it and reopens
    // the login session; the one after finds it held.
    s.state.hsm.close_all_sessions_for_tests().await.unwrap();
    assert!(s.state.hsm.probe().await.is_err());
    s.state.hsm.probe().await.unwrap();
    create(&officer, "after-probe").await.unwrap();
    let mut health = HealthClient::new(officer.channel());
    all_become(&mut health, ServingStatus::Serving, Duration::from_secs(5)).await;

    let report = officer
        .admin()
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap();
    assert!(report.intact, "{report:?}");
    s.stop().await;
}
