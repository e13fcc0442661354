//! Two `kms serve` processes on one PostgreSQL database and one token: one at a
//! time purges (the lease "purger"), and when it is killed the other takes over
//! once the lease has expired. Skipped when PostgreSQL is not configured (never
//! under CI). A test binary of its own: it opens the deployment's token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brandkms::commands::dev::CONFIG_FILE;
use brandkms::commands::init;
use brandkms::server::{DESTRUCTION_LEASE, PURGE_OPERATION, PURGER_LEASE};
use brandkms::store::Store;
use brandkms::store::cards::{self, ChallengeRecord};
use brandkms::store::leases::{self, LeaseRecord};
use brandkms::testing;

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// A `kms serve` process, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kms serve` on the deployment in `dir`, with the database at `url`, logging
/// to `dir/<log>`.
fn serve(dir: &Path, url: &str, log: &str) -> Serving {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Serving(
        Command::new(KMS)
            .args(["serve", "--config"])
            .arg(dir.join(CONFIG_FILE))
            .env("BRANDKMS_DATABASE_URL", url)
            .env("BRANDKMS_LISTEN", "127.0.0.1:0")
            .env("BRANDKMS_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("SOFTHSM2_CONF")
            .env_remove("OPENSSL_CONF")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The process id in a holder `<hostname>:<pid> chain <chain>`.
fn pid_of(holder: &str) -> u32 {
    let process = holder.split(' ').next().unwrap();
    process.rsplit(':').next().unwrap().parse().unwrap()
}

async fn lease(store: &Store, name: &str) -> Option<LeaseRecord> {
    let mut conn = store.conn().await.unwrap();
    leases::lease(&mut conn, name).await.unwrap()
}

/// Polls `check` every 100 ms until it gives a value; fails after 30 s.
async fn wait_for<T, Fut>(what: &str, check: impl Fn() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records three challenges that expired long ago and waits until a purge has
/// deleted them.
async fn expire_and_wait(store: &Store, round: u32) {
    let mut conn = store.conn().await.unwrap();
    for i in 0..3 {
        cards::insert_challenge(
            &mut conn,
            &ChallengeRecord {
                id: format!("ch-{round}-{i}"),
                caller: "officer-1".into(),
                alias: "key-k".into(),
                version: 1,
                card_id: "0123456789012345".into(),
                rb: "B1B2B3B4B5B6B7B8".into(),
                created_at: 1_000,
                expires_at: 31_000,
            },
        )
        .await
        .unwrap();
    }
    drop(conn);
    // The rows go first, then the purge's summary record: wait for both.
    wait_for("the purge", || async {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM card_challenges")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let recorded = purges(store).await.len();
        (left == 0 && recorded > usize::try_from(round).unwrap()).then_some(())
    })
    .await;
}

/// The reasons of the purge summaries, oldest first.
async fn purges(store: &Store) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT reason FROM audit_records WHERE operation = $1 ORDER BY at, chain, seq",
    )
    .bind(PURGE_OPERATION)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_kms_processes_purges_and_the_other_takes_over_when_it_is_killed() {
    let Some(db) = testing::postgres_db().await else {
        eprintln!("skipped: {} is not set", testing::PG_URL_ENV);
        return;
    };
    let url = db.settings.url.clone();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let init = Command::new(KMS)
        .args(["init", "--dev"])
        .arg(&dir)
        .env("BRANDKMS_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("OPENSSL_CONF")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let config = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[service]\npurge_interval_secs = 1\ndestruction_check_secs = 1\n"),
    )
    .unwrap();
    let store = Store::connect(&db.settings).await.unwrap();
    let mut a = Some(serve(&dir, &url, "a.log"));
    let mut b = Some(serve(&dir, &url, "b.log"));
    let pids = [a.as_ref().unwrap().0.id(), b.as_ref().unwrap().0.id()];

    // While both run, one holds the lease and does every purge.
    let first = wait_for("a purger", || lease(&store, PURGER_LEASE)).await;
    assert!(pids.contains(&pid_of(&first.holder)), "{first:?} {pids:?}");
    for round in 0..5 {
        expire_and_wait(&store, round).await;
        let now = lease(&store, PURGER_LEASE).await.unwrap();
        assert_eq!(
            (now.holder.as_str(), now.acquired_at),
            (first.holder.as_str(), first.acquired_at),
            "the lease changed hands while its holder ran"
        );
    }
    let by_first = format!("; by {}", first.holder);
    let reasons = purges(&store).await;
    assert_eq!(reasons.len(), 5, "one summary per purge: {reasons:?}");
    for r in &reasons {
        assert!(
            r.starts_with("purged expired card rows: challenges 3, sessions 0, sealed commands 0 "),
            "{r}"
        );
        assert!(r.ends_with(&by_first), "{r}");
    }
    let destruction = lease(&store, DESTRUCTION_LEASE).await.unwrap();
    assert!(
        pids.contains(&pid_of(&destruction.holder)),
        "{destruction:?}"
    );

    // SIGKILL the holder: its lease stays until it expires, then the other
    // process takes it and purges.
    let killed = if pid_of(&first.holder) == pids[0] {
        a.take()
    } else {
        b.take()
    };
    let mut killed = killed.unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let orphaned = lease(&store, PURGER_LEASE).await.unwrap();
    assert_eq!(orphaned.holder, first.holder);
    let second = wait_for("the takeover", || async {
        lease(&store, PURGER_LEASE)
            .await
            .filter(|l| l.holder != first.holder)
    })
    .await;
    let survivor = pids.iter().find(|p| **p != pid_of(&first.holder)).unwrap();
    assert_eq!(pid_of(&second.holder), *survivor, "{second:?}");
    assert!(
        second.acquired_at >= orphaned.expires_at,
        "taken over before the lease expired: {orphaned:?} {second:?}"
    );
    expire_and_wait(&store, 5).await;
    let reasons = purges(&store).await;
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(
        reasons[5].ends_with(&format!("; by {}", second.holder)),
        "{}",
        reasons[5]
    );
    drop((a, b));

    // Every chain (one per process run) verifies, against its anchor too.
    let hsm = testing::open_deployment_token(&dir);
    let report = init::auditor(&hsm, &store)
        .await
        .unwrap()
        .verify(&store)
        .await
        .unwrap();
    assert!(report.intact(), "{report:?}");
    store.close().await;
}
