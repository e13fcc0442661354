//! Per-identity limits, so that one participant cannot starve the others: how
//! many connections it holds, how many calls it has in flight and how many it
//! starts per second (a token bucket with a burst). The identity is the entity
//! its client certificate names. Limits are per instance. A refused call is
//! answered `ResourceExhausted` with a RetryInfo; refusals are counted, logged
//! at a bounded rate and summarised in the audit trail once per period (so a
//! flood costs no audit append per call).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::audit::{AuditEvent, Outcome};
use crate::config::LimitSettings;
use crate::ops::OpsError;

/// The operation name of the summary records.
pub const SUMMARY_OPERATION: &str = "Limits/Refused";
/// At most this many entities are named per summary.
const MAX_NAMED: usize = 16;
/// At most one log line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A count per key with a ceiling; a [`Slot`] holds one until dropped.
#[derive(Debug)]
struct Slots {
    limit: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One of a key's slots, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    key: Arc<str>,
}

impl Slots {
    fn take(self: &Arc<Self>, key: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Arc<str> = match held.get_key_value(key) {
            Some((_, n)) if *n >= self.limit => return None,
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(key),
        };
        *held.entry(Arc::clone(&key)).or_insert(0) += 1;
        Some(Slot {
            slots: Arc::clone(self),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What was refused since the last summary.
#[derive(Debug, Default)]
struct Refused {
    /// Refused calls and connections per entity (at most [`MAX_NAMED`] named).
    by_entity: BTreeMap<String, (u64, u64)>,
    /// Refusals of entities beyond those named.
    others: u64,
    logged_at: Option<Instant>,
}

/// The limits of one instance.
pub struct Limits {
    settings: LimitSettings,
    connections: Arc<Slots>,
    in_flight: Arc<Slots>,
    rate: DefaultKeyedRateLimiter<String>,
    refused: Mutex<Refused>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a refusal was of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Connection,
}

impl Limits {
    /// Limits as configured (every figure at least 1, as the config checks).
    pub fn new(settings: LimitSettings) -> Limits {
        let per_second = NonZeroU32::new(settings.calls_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.call_burst).unwrap_or(per_second);
        Limits {
            connections: Arc::new(Slots {
                limit: settings.connections_per_identity,
                held: Mutex::default(),
            }),
            in_flight: Arc::new(Slots {
                limit: settings.concurrent_calls,
                held: Mutex::default(),
            }),
            rate: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            refused: Mutex::default(),
            settings,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// A connection of `entity`, held until the slot is dropped; `None` when it
    /// already holds as many as it may.
    pub fn connection(&self, entity: &str) -> Option<Slot> {
        let slot = self.connections.take(entity);
        if slot.is_none() {
            self.count(entity, Kind::Connection);
        }
        slot
    }

    /// Admits a call of `entity`: a slot held while it runs, or the refusal to
    /// answer (over its rate, with the time until the next call is admitted; or
    /// over its calls in flight).
    pub fn call(&self, entity: &str) -> Result<Slot, OpsError> {
        let refuse = |message: String, retry_after: Duration| {
            self.count(entity, Kind::Call);
            OpsError::ResourceExhausted {
                message,
                retry_after_ms: i64::try_from(retry_after.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1),
            }
        };
        let key = entity.to_string();
        if let Err(not_until) = self.rate.check_key(&key) {
            return Err(refuse(
                format!(
                    "entity {entity:?} is over its rate of {} calls per second (burst {}); retry after the RetryInfo delay",
                    self.settings.calls_per_second, self.settings.call_burst
                ),
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        self.in_flight.take(entity).ok_or_else(|| {
            refuse(
                format!(
                    "entity {entity:?} already has {} calls in flight, its limit; retry when one ends",
                    self.settings.concurrent_calls
                ),
                Duration::from_millis(100),
            )
        })
    }

    fn count(&self, entity: &str, kind: Kind) {
        let label = match kind {
            Kind::Call => "call",
            Kind::Connection => "connection",
        };
        metrics::counter!("brandkms_limited_total", "kind" => label).increment(1);
        let mut r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let named = r.by_entity.len() < MAX_NAMED || r.by_entity.contains_key(entity);
        if named {
            let (calls, connections) = r.by_entity.entry(entity.to_string()).or_default();
            match kind {
                Kind::Call => *calls += 1,
                Kind::Connection => *connections += 1,
            }
        } else {
            r.others += 1;
        }
        if r.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            r.logged_at = Some(Instant::now());
            tracing::warn!(
                %entity,
                ?kind,
                "refused over a per-identity limit (logged at most every 10 s; summarised in the audit trail)"
            );
        }
    }

    /// The audit record of the refusals since the last call, if any; forgets
    /// the rate state of entities that are back under their rate.
    pub fn take_summary(&self) -> Option<AuditEvent> {
        self.rate.retain_recent();
        let mut r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if r.by_entity.is_empty() && r.others == 0 {
            return None;
        }
        let mut parts: Vec<String> = std::mem::take(&mut r.by_entity)
            .into_iter()
            .map(|(entity, (calls, connections))| {
                format!("{entity}: {calls} calls, {connections} connections")
            })
            .collect();
        if r.others > 0 {
            parts.push(format!("others: {}", r.others));
        }
        r.others = 0;
        Some(
            AuditEvent::allowed("local:limits", SUMMARY_OPERATION).outcome(
                Outcome::Denied,
                Some(format!(
                    "refused over per-identity limits: {}",
                    parts.join("; ")
                )),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            connections_per_identity: 2,
            concurrent_calls: 1,
            calls_per_second: 1,
            call_burst: 3,
            ..LimitSettings::default()
        }
    }

    #[test]
    fn connections_are_capped_per_identity_and_given_back() {
        let l = Limits::new(settings());
        let a1 = l.connection("a").unwrap();
        let _a2 = l.connection("a").unwrap();
        assert!(l.connection("a").is_none());
        assert!(l.connection("b").is_some(), "identities are counted apart");
        drop(a1);
        assert!(l.connection("a").is_some());
        let summary = l.take_summary().unwrap().reason.unwrap();
        assert!(summary.contains("a: 0 calls, 1 connections"), "{summary}");
        assert!(l.take_summary().is_none());
    }

    #[test]
    fn calls_are_limited_by_rate_and_in_flight() {
        let l = Limits::new(settings());
        let first = l.call("a").unwrap();
        let refused = l.call("a").unwrap_err();
        assert!(
            matches!(&refused, OpsError::ResourceExhausted { message, .. } if message.contains("in flight")),
            "{refused:?}"
        );
        drop(first);
        drop(l.call("a").unwrap());
        // The burst of 3 is spent (the refused call counted against it too).
        let refused = l.call("a").unwrap_err();
        assert!(
            matches!(&refused, OpsError::ResourceExhausted { message, retry_after_ms } if message.contains("rate") && *retry_after_ms > 0),
            "{refused:?}"
        );
        assert!(l.call("b").is_ok(), "identities are counted apart");
    }
}
