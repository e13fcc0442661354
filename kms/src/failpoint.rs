//! Crash-test seams. With the `testing` feature, `BRANDKMS_FAILPOINT=<name>` makes
//! the process announce `failpoint <name> reached` on stderr and then stop
//! (block forever), so that a test can kill it with SIGKILL at exactly that
//! point. Without the feature this compiles to nothing.

/// Stops the process here when the named failpoint is armed.
#[cfg(feature = "testing")]
pub fn hit(name: &str) {
    if std::env::var("BRANDKMS_FAILPOINT").ok().as_deref() == Some(name) {
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}

/// Stops the process here when the named failpoint is armed.
#[cfg(not(feature = "testing"))]
pub fn hit(_name: &str) {}
