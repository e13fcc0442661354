//! The service's clock. Production reads the system clock; tests may move it
//! forward (e.g. past a destruction's waiting period) through the `testing` seam.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Unix-millisecond clock shared by the service's parts.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        crate::store::now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward. Tests only.
    #[cfg(any(test, feature = "testing"))]
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// A Unix-millisecond time as RFC 3339 (UTC), for messages.
pub fn rfc3339(ms: i64) -> String {
    let t = u64::try_from(ms)
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(t).to_string()
}
