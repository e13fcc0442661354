//! The benchmark-only token delay (`bench-delay` builds only): every token round
//! trip is held for the configured delay, with its session, as a networked HSM's.
//! `cargo test -p brandkms --features bench-delay --test bench_delay`.
#![cfg(feature = "bench-delay")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use brandkms::hsm::{Hsm, HsmParams};
use brandkms::testing;

const DELAY: Duration = Duration::from_millis(40);

fn delayed_hsm(sessions: usize) -> Hsm {
    Hsm::open(&HsmParams {
        sessions,
        benchmark_token_delay: DELAY,
        ..testing::token().params()
    })
    .expect("open the test token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_call_waits_the_delay_holding_its_session() {
    let hsm = delayed_hsm(1);
    let start = Instant::now();
    hsm.run(|s| s.random(8)).await.unwrap();
    assert!(start.elapsed() >= DELAY, "{:?}", start.elapsed());

    // One session: three calls at once wait for each other's delay.
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let hsm = hsm.clone();
            tokio::spawn(async move { hsm.run(|s| s.random(8)).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert!(start.elapsed() >= DELAY * 3, "{:?}", start.elapsed());
}
