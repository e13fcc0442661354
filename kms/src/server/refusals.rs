//! Client certificates refused at the TLS handshake (not issued by the brand CA):
//! counted, logged at a bounded rate, and summarised in the audit trail once per
//! period, so that strangers cost no audit append each and cannot slow the
//! service's write path.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

use super::identity;
use crate::audit::{AuditEvent, Outcome};

/// At most this many fingerprints are kept per period.
const MAX_FINGERPRINTS: usize = 16;
/// At most this many distinct reasons are kept per period.
const MAX_REASONS: usize = 4;
/// At most one log line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The operation name of the summary records.
pub const SUMMARY_OPERATION: &str = "TLS/RefusedHandshakes";

/// The refusals since the last summary.
#[derive(Debug, Default)]
pub struct HandshakeRefusals {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    count: u64,
    fingerprints: BTreeSet<String>,
    reasons: BTreeSet<String>,
    logged_at: Option<Instant>,
}

/// What a period's refusals come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many handshakes were refused.
    pub count: u64,
    /// The first certificates' SHA-256 fingerprints (at most 16).
    pub fingerprints: Vec<String>,
    /// Why (at most 4 distinct reasons).
    pub reasons: Vec<String>,
}

impl HandshakeRefusals {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a refused certificate; logs at most once per 10 s.
    pub fn refused(&self, cert: &CertificateDer<'_>, reason: &str) {
        metrics::counter!("brandkms_tls_handshakes_refused_total").increment(1);
        let mut w = self.window();
        w.count += 1;
        if w.fingerprints.len() < MAX_FINGERPRINTS {
            w.fingerprints.insert(identity::fingerprint(cert));
        }
        if w.reasons.len() < MAX_REASONS {
            w.reasons.insert(reason.to_string());
        }
        if w.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            w.logged_at = Some(Instant::now());
            tracing::warn!(
                refused_so_far = w.count,
                %reason,
                "refused a client certificate at the TLS handshake (logged at most every 10 s; summarised in the audit trail)"
            );
        }
    }

    /// The refusals since the last call, if any, and a fresh count.
    pub fn take(&self) -> Option<Summary> {
        let mut w = self.window();
        if w.count == 0 {
            return None;
        }
        let summary = Summary {
            count: w.count,
            fingerprints: std::mem::take(&mut w.fingerprints).into_iter().collect(),
            reasons: std::mem::take(&mut w.reasons).into_iter().collect(),
        };
        w.count = 0;
        Some(summary)
    }
}

impl Summary {
    /// The audit record of the summary.
    pub fn event(&self) -> AuditEvent {
        let more = if self.count > self.fingerprints.len() as u64 {
            ", and others"
        } else {
            ""
        };
        AuditEvent::allowed("unauthenticated", SUMMARY_OPERATION).outcome(
            Outcome::Denied,
            Some(format!(
                "{} TLS handshakes refused: {}; certificate fingerprints {}{more}",
                self.count,
                self.reasons.join("; "),
                self.fingerprints.join(", ")
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_bounded_and_reset() {
        let r = HandshakeRefusals::default();
        assert_eq!(r.take(), None);
        for i in 0..1000u32 {
            r.refused(&CertificateDer::from(i.to_be_bytes().to_vec()), "untrusted");
        }
        let s = r.take().unwrap();
        assert_eq!(
            (s.count, s.fingerprints.len(), s.reasons.len()),
            (1000, 16, 1)
        );
        assert!(s.event().reason.unwrap().ends_with(", and others"));
        assert_eq!(r.take(), None);
    }
}
