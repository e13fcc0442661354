//! The facts authorisation decisions read on every request — the caller's entity,
//! its tie-ups, a key and its version, the dual-control set — kept in memory per
//! admin generation.
//!
//! Every change to entities, tie-ups, consents, keys and their versions takes the
//! `admin` write lock, which counts up (`store::audit::admin_generation`), on
//! every instance alike. A request reads that count once, when its caller is
//! identified; facts cached under the same count are exactly what the database
//! holds, so they are used without another read, and any change on any instance
//! empties the cache at the next request that sees the new count. A suspension
//! or a terminated tie-up therefore takes effect on the next request everywhere,
//! as when every fact was read afresh, with one small read instead of four or
//! five per call.
//!
//! Facts read after the count are at least as new as the count (the change and
//! its count commit together); they are cached only while the cache still holds
//! that count, so a slow request never puts older facts under a newer count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::ops::OpsError;
use crate::ops::authorize::policy_tie_up;
use crate::ops::versions::key_version;
use crate::store::entities::{self as entity_rows, EntityRecord};
use crate::store::keys::{KeyRecord, KeyVersionRecord};
use crate::store::settings;
use crate::store::tieups as tie_rows;
use crate::store::{Conn, StoreError};
use brandkms_policy::SensitiveOperation;

/// Entries per map before the cache starts afresh (bounded memory whatever the
/// number of participants calling).
const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
struct Cached {
    generation: i64,
    entities: HashMap<String, EntityRecord>,
    tie_ups: HashMap<String, Arc<[brandkms_policy::TieUp]>>,
    versions: HashMap<(String, Option<u32>), (KeyRecord, KeyVersionRecord)>,
    dual_control: Option<Arc<[SensitiveOperation]>>,
}

/// The cache one process's requests share.
#[derive(Debug, Default)]
pub struct FactCache {
    cached: Mutex<Cached>,
}

impl FactCache {
    /// The view of a request that read admin generation `generation`.
    pub fn view(self: &Arc<Self>, generation: i64) -> FactView {
        FactView {
            cache: Arc::clone(self),
            generation,
        }
    }

    /// Reads the admin generation and returns the view for it.
    pub async fn current(self: &Arc<Self>, conn: &mut Conn) -> Result<FactView, StoreError> {
        let generation = crate::store::audit::admin_generation(conn).await?;
        Ok(self.view(generation))
    }

    fn lookup<T>(&self, generation: i64, find: impl FnOnce(&Cached) -> Option<T>) -> Option<T> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.generation == generation {
            find(&cached)
        } else {
            None
        }
    }

    fn keep(&self, generation: i64, put: impl FnOnce(&mut Cached)) {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if generation < cached.generation {
            return;
        }
        let full = cached.entities.len() >= CAPACITY
            || cached.tie_ups.len() >= CAPACITY
            || cached.versions.len() >= CAPACITY;
        if generation > cached.generation || full {
            *cached = Cached {
                generation,
                ..Cached::default()
            };
        }
        put(&mut cached);
    }
}

/// What one request decides on: the admin generation it read, and the cache.
#[derive(Clone, Debug)]
pub struct FactView {
    cache: Arc<FactCache>,
    generation: i64,
}

impl FactView {
    /// The entity `id`, if registered.
    pub async fn entity(
        &self,
        conn: &mut Conn,
        id: &str,
    ) -> Result<Option<EntityRecord>, StoreError> {
        if let Some(e) = self
            .cache
            .lookup(self.generation, |c| c.entities.get(id).cloned())
        {
            return Ok(Some(e));
        }
        let found = entity_rows::get(conn, id).await?;
        if let Some(e) = &found {
            self.cache.keep(self.generation, |c| {
                c.entities.insert(id.to_string(), e.clone());
            });
        }
        Ok(found)
    }

    /// Every tie-up of `entity_id`, as the policy sees them.
    pub async fn tie_ups(
        &self,
        conn: &mut Conn,
        entity_id: &str,
    ) -> Result<Arc<[brandkms_policy::TieUp]>, StoreError> {
        if let Some(t) = self
            .cache
            .lookup(self.generation, |c| c.tie_ups.get(entity_id).cloned())
        {
            return Ok(t);
        }
        let found: Arc<[brandkms_policy::TieUp]> = tie_rows::list(conn, Some(entity_id))
            .await?
            .iter()
            .map(policy_tie_up)
            .collect();
        self.cache.keep(self.generation, |c| {
            c.tie_ups.insert(entity_id.to_string(), Arc::clone(&found));
        });
        Ok(found)
    }

    /// The operations held for a second officer (the database's set; every
    /// sensitive operation while the set was never written, which `kms init` and
    /// `kms serve` do before any request).
    pub async fn dual_control(
        &self,
        conn: &mut Conn,
    ) -> Result<Arc<[SensitiveOperation]>, StoreError> {
        if let Some(ops) = self
            .cache
            .lookup(self.generation, |c| c.dual_control.clone())
        {
            return Ok(ops);
        }
        let ops: Arc<[SensitiveOperation]> = settings::dual_control(conn)
            .await?
            .map_or_else(|| SensitiveOperation::ALL.into(), Into::into);
        self.cache.keep(self.generation, |c| {
            c.dual_control = Some(Arc::clone(&ops));
        });
        Ok(ops)
    }

    /// As [`key_version`]: key `alias` and its version `version`, or its active
    /// version when `None`.
    pub async fn key_version(
        &self,
        conn: &mut Conn,
        alias: &str,
        version: Option<u32>,
    ) -> Result<(KeyRecord, KeyVersionRecord), OpsError> {
        let slot = (alias.to_string(), version);
        if let Some(found) = self
            .cache
            .lookup(self.generation, |c| c.versions.get(&slot).cloned())
        {
            return Ok(found);
        }
        let found = key_version(conn, alias, version).await?;
        self.cache.keep(self.generation, |c| {
            c.versions.insert(slot, found.clone());
        });
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_generation_empties_the_cache_and_an_older_one_never_fills_it() {
        let cache = Arc::new(FactCache::default());
        cache.keep(3, |c| {
            c.tie_ups.insert("a".into(), Arc::from(Vec::new()));
        });
        assert!(cache.lookup(3, |c| c.tie_ups.get("a").cloned()).is_some());
        assert!(cache.lookup(4, |c| c.tie_ups.get("a").cloned()).is_none());
        cache.keep(4, |c| {
            c.tie_ups.insert("b".into(), Arc::from(Vec::new()));
        });
        assert!(cache.lookup(4, |c| c.tie_ups.get("a").cloned()).is_none());
        // A request that read generation 3 before the change must not put what
        // it read under generation 4.
        cache.keep(3, |c| {
            c.tie_ups.insert("c".into(), Arc::from(Vec::new()));
        });
        assert!(cache.lookup(4, |c| c.tie_ups.get("c").cloned()).is_none());
        assert!(cache.lookup(3, |c| c.tie_ups.get("c").cloned()).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Arc::new(FactCache::default());
        for i in 0..(CAPACITY * 3) {
            cache.keep(1, |c| {
                c.tie_ups.insert(format!("e{i}"), Arc::from(Vec::new()));
            });
        }
        let len = cache.cached.lock().unwrap().tie_ups.len();
        assert!(len <= CAPACITY, "{len}");
    }
}
