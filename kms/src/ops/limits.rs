//! Per-entity limits on calls that cost the token something lasting (today:
//! `EstablishTransportKey`, which generates a key): a sliding window per entity,
//! per instance. Refused calls get `ResourceExhausted` with the time to wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// How many calls each entity may make per window.
#[derive(Debug)]
pub struct PerEntity {
    limit: usize,
    window_ms: i64,
    calls: Mutex<HashMap<String, VecDeque<i64>>>,
}

/// Entities remembered at most (beyond it, windows that ended are dropped
/// first); the window is short, so this bounds memory, not fairness.
const MAX_ENTITIES: usize = 100_000;

impl PerEntity {
    /// At most `limit` calls per `window_ms` per entity.
    pub fn new(limit: usize, window_ms: i64) -> Self {
        PerEntity {
            limit,
            window_ms,
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call of `entity` at `now`; refused (nothing counted) with the
    /// milliseconds until the next call would be accepted.
    pub fn take(&self, entity: &str, now: i64) -> Result<(), i64> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if calls.len() >= MAX_ENTITIES {
            let window = self.window_ms;
            calls.retain(|_, c| c.back().is_some_and(|t| now - t < window));
        }
        let recent = calls.entry(entity.to_string()).or_default();
        while recent.front().is_some_and(|t| now - t >= self.window_ms) {
            recent.pop_front();
        }
        if recent.len() >= self.limit {
            let oldest = recent.front().copied().unwrap_or(now);
            return Err((oldest + self.window_ms - now).max(1));
        }
        recent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_per_entity_then_refuses_until_the_oldest_leaves() {
        let l = PerEntity::new(2, 1_000);
        assert_eq!(l.take("a", 0), Ok(()));
        assert_eq!(l.take("a", 100), Ok(()));
        assert_eq!(l.take("a", 200), Err(800));
        assert_eq!(l.take("b", 200), Ok(()), "entities are counted apart");
        assert_eq!(l.take("a", 1_000), Ok(()));
        assert_eq!(l.take("a", 1_050), Err(50));
    }
}
