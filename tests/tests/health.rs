//! Issue 14, item 3: health that tells the truth. Every service is registered
//! with the health service; a background probe of the token (its login still
//! held) and the database (`SELECT 1`) sets them all NOT_SERVING when either
//! fails and SERVING again when it recovers. A lost token login is restored by
//! the probe itself (item 4, in part).
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
async fn every_service_is_registered() {
    let s = TestServer::start(brandkms::testing::sqlite_db()).await;
    let mut health = HealthClient::new(s.client("officer-1").await.channel());
    all_become(&mut health, ServingStatus::Serving, Duration::from_secs(5)).await;
    let (c, _) = brandkms_tests::status_of(
        health
            .check(HealthCheckRequest {
                service: "brandkms.v1.NoSuchService".into(),
            })
            .await
            .map_err(brandkms_clients::ClientError::from),
    );
    assert_eq!(c, tonic::Code::NotFound);

    // Shutting down, the server tells its watchers NOT_SERVING first.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "brandkms.v1.CardAuthentication".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(2)).await,
        ServingStatus::Serving
    );
    let stopping = tokio::spawn(s.stop());
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::NotServing
    );
    drop(watch);
    stopping.await.unwrap();
}

#[tokio::test]
async fn the_database_refusing_connections_is_reported_and_its_return() {
    let Some(db) = brandkms::testing::postgres_db().await else {
        return;
    };
    let (_, name) = db.settings.url.rsplit_once('/').unwrap();
    let name = name.to_string();
    let s = TestServer::start_with(db, fast_probe()).await;
    let officer = s.client("officer-1").await;
    let mut health = HealthClient::new(officer.channel());
    all_become(&mut health, ServingStatus::Serving, Duration::from_secs(3)).await;

    // The database stops taking connections and drops the service's.
    let admin_url = std::env::var(brandkms::testing::PG_URL_ENV).unwrap();
    let mut admin = brandkms::store::connect_one(&admin_url).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    all_become(
        &mut health,
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;

    // It comes back: so does the service.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    all_become(&mut health, ServingStatus::Serving, Duration::from_secs(15)).await;
    // And an audited change commits again.
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
    s.stop().await;
}
