//! `kms reconcile`: token objects that no row knows (orphans, e.g. after a crash
//! between object creation and row commit) and rows whose object is missing.

use std::collections::HashSet;

use crate::hsm::{Hsm, HsmError, ObjectId, TokenObject};
use crate::ops::versions::LABEL_PREFIX;
use crate::store::keys::{self as key_rows, KeyVersionRecord};
use crate::store::{Store, StoreError};

/// Errors of reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The token failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// brandkms token objects (by label prefix) whose `CKA_ID` no live row holds.
    pub orphans: Vec<TokenObject>,
    /// Live rows (not destroyed) whose object the token does not have.
    pub missing: Vec<KeyVersionRecord>,
    /// brandkms objects in the token.
    pub objects: usize,
    /// Live rows.
    pub rows: usize,
}

impl Report {
    /// True when token and database agree.
    pub fn is_consistent(&self) -> bool {
        self.orphans.is_empty() && self.missing.is_empty()
    }
}

/// Compares the token's brandkms objects with the database's live key versions.
pub async fn check(hsm: &Hsm, store: &Store) -> Result<Report, ReconcileError> {
    let mut conn = store.conn().await?;
    let rows = key_rows::live_versions(&mut conn).await?;
    drop(conn);
    let objects = hsm.run(|s| s.list_objects(LABEL_PREFIX)).await?;
    let known: HashSet<ObjectId> = rows.iter().map(|r| r.cka_id).collect();
    let present: HashSet<ObjectId> = objects.iter().map(|o| o.id).collect();
    Ok(Report {
        objects: objects.len(),
        rows: rows.len(),
        orphans: objects
            .into_iter()
            .filter(|o| !known.contains(&o.id))
            .collect(),
        missing: rows
            .into_iter()
            .filter(|r| !present.contains(&r.cka_id))
            .collect(),
    })
}

/// Destroys the given orphans that are still orphans now (a row may have been
/// committed since they were listed). Returns those destroyed.
pub async fn remove_orphans(
    hsm: &Hsm,
    store: &Store,
    orphans: &[TokenObject],
) -> Result<Vec<TokenObject>, ReconcileError> {
    let mut conn = store.conn().await?;
    let known: HashSet<ObjectId> = key_rows::live_versions(&mut conn)
        .await?
        .iter()
        .map(|r| r.cka_id)
        .collect();
    let mut destroyed = Vec::new();
    for orphan in orphans.iter().filter(|o| !known.contains(&o.id)) {
        let id = orphan.id;
        hsm.run(move |s| s.destroy(&id)).await?;
        tracing::info!(cka_id = %id, label = %orphan.label, "destroyed orphan token object");
        destroyed.push(orphan.clone());
    }
    Ok(destroyed)
}
