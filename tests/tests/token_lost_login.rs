//! Issue 14, item 4: a lost login never reads as a missing key. With the
//! user logged out under the pool (alone in its test process: the login is the
//! whole process's), looking up a key answers a session-lost error, never "no
//! such object" — a scheduled destruction would otherwise record as destroyed
//! a key that is still in the token. That call recovers the login; the same
//! lookup then tells a missing object as missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use brandkms::hsm::{HsmError, ObjectId};
use brandkms_tests::TestServer;
use brandkms_tests::health::fast_probe;

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_login_is_not_a_missing_object() {
    // No probe for a minute: the lookup itself meets the lost login.
    let settings = brandkms::config::ServiceSettings {
        health_probe_ms: 60_000,
        ..fast_probe()
    };
    let s = TestServer::start_with(brandkms::testing::sqlite_db(), settings).await;
    let absent = ObjectId([0x5a; 16]);
    let lookup = || {
        s.state
            .hsm
            .run(move |session| session.find(&absent).map(|_| ()))
    };
    assert!(matches!(lookup().await, Err(HsmError::ObjectNotFound(_))));

    s.state.hsm.logout_for_tests().await.unwrap();
    match lookup().await {
        Err(e) => assert!(
            e.is_session_lost(),
            "a lost login, not a missing object: {e}"
        ),
        Ok(()) => panic!("found an object that does not exist"),
    }
    // That call recovered the login.
    assert!(matches!(lookup().await, Err(HsmError::ObjectNotFound(_))));
    s.stop().await;
}
