//! Issue 14, items 3 and 4: a lost token login, alone in its test process (the
//! login is the whole process's: no other test may run beside it). The health
//! probe reports it (NOT_SERVING), logs the user in again, and reports SERVING;
//! token calls then work without a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms_proto::v1 as pb;
use brandkms_tests::TestServer;
use brandkms_tests::health::{all_become, fast_probe, next_status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_lost_token_login_is_reported_and_restored() {
    // A probe a second: the NOT_SERVING it reports lasts that long, ample for
    // the Watch stream to deliver it on a loaded machine.
    let settings = brandkms::config::ServiceSettings {
        health_probe_ms: 1000,
        ..fast_probe()
    };
    let s = TestServer::start_with(brandkms::testing::sqlite_db(), settings).await;
    let officer = s.client("officer-1").await;
    let mut health = HealthClient::new(officer.channel());
    all_become(&mut health, ServingStatus::Serving, Duration::from_secs(5)).await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "brandkms.v1.CardAuthentication".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(1)).await,
        ServingStatus::Serving
    );

    // Another application on the token logs the user out.
    s.state.hsm.logout_for_tests().await.unwrap();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::NotServing,
        "the probe saw the lost login"
    );
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::Serving,
        "and logged in again"
    );
    // Token calls work again, without a restart: a new key is made.
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: "key-after".into(),
            service_code: 0x0A01,
            purpose: pb::Purpose::Purchase as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(watch);
    s.stop().await;
}
