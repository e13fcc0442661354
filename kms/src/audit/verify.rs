//! Verification of every chain against its records, its MACs and its anchor in
//! the token, on one consistent snapshot of the database.

use std::collections::HashMap;

use super::anchor::{ANCHOR_APPLICATION, Anchor};
use super::{AuditError, Auditor, GENESIS_HASH, record_hash};
use crate::hsm::{Hsm, ObjectId};
use crate::store::Store;
use crate::store::audit::{self as rows, ChainRow};

/// The first problem found in a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The sequence number of the first record that does not verify (or is missing).
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// One chain's verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The chain.
    pub chain: String,
    /// The process that started it (empty when the chain is missing).
    pub instance: String,
    /// Records checked.
    pub records: u64,
    /// The newest sequence number its anchor in the token vouches for (`None`:
    /// no anchor visible; the chain's records still verify by their hashes and
    /// MACs, but deleted newest records would not show).
    pub anchored: Option<u64>,
    /// The first broken or missing link, if any.
    pub first_broken: Option<BrokenLink>,
}

/// The result of verifying every chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per chain, oldest first; chains the token anchors but the database lacks
    /// come last.
    pub chains: Vec<ChainReport>,
}

impl VerifyReport {
    /// Records checked, over all chains.
    pub fn records(&self) -> u64 {
        self.chains.iter().map(|c| c.records).sum()
    }

    /// The first broken chain and its first problem.
    pub fn first_broken(&self) -> Option<(&ChainReport, &BrokenLink)> {
        self.chains
            .iter()
            .find_map(|c| c.first_broken.as_ref().map(|b| (c, b)))
    }

    /// True when every chain verified.
    pub fn intact(&self) -> bool {
        self.first_broken().is_none()
    }
}

const PAGE: u32 = 500;

/// True when the database, read afresh, holds the anchored record with the
/// anchored hash.
async fn anchored_now(store: &Store, a: &Anchor) -> Result<bool, AuditError> {
    let mut conn = store.conn().await?;
    Ok(rows::hash_at(&mut conn, &a.chain, a.seq).await?.as_deref() == Some(a.hash.as_str()))
}

/// Verifies the chains of a deployment without writing anything: no chain of
/// its own, no anchor (`kms verify-restore` on a restored database and token).
#[derive(Clone, Debug)]
pub struct AuditVerifier {
    hsm: Hsm,
    key: ObjectId,
}

impl Auditor {
    /// Verifies every chain (see [`AuditVerifier::verify`]).
    pub async fn verify(&self, store: &Store) -> Result<VerifyReport, AuditError> {
        AuditVerifier::new(self.hsm.clone(), self.key)
            .verify(store)
            .await
    }
}

impl AuditVerifier {
    /// A verifier with the deployment's audit MAC key (`key`, its `CKA_ID`).
    pub fn new(hsm: Hsm, key: ObjectId) -> AuditVerifier {
        AuditVerifier { hsm, key }
    }

    /// Verifies every chain: sequence numbers contiguous from 1, each record's
    /// hash recomputed and linked to the previous, every MAC verified in the
    /// token, the newest record MACed, and the chain reaching its anchor with the
    /// anchored hash (so a deleted tail or a wiped chain is found). The anchors
    /// are read before the snapshot is taken: a batch anchored before then has
    /// committed before then, so appends during verification raise no alarm.
    pub async fn verify(&self, store: &Store) -> Result<VerifyReport, AuditError> {
        let mut anchors = self.anchors().await?;
        let mut conn = store.begin_snapshot().await?;
        let chains = rows::chains(&mut conn).await?;
        // Chains registered after the anchors were read: read them again.
        if chains.iter().any(|c| !anchors.contains_key(&c.id)) {
            anchors = self.anchors().await?;
        }
        let mut report = VerifyReport::default();
        for chain in &chains {
            let anchor = anchors.remove(&chain.id);
            let (mut checked, short) = self.verify_chain(&mut conn, chain, anchor.clone()).await?;
            if short
                && let Some(a) = &anchor
                && anchored_now(store, a).await?
            {
                // The snapshot ends before records that committed (and were
                // anchored) before it was taken, as a reader's snapshot may on
                // SQLite: the database holds them, with the anchored hash, now.
                checked.first_broken = None;
            }
            report.chains.push(checked);
        }
        let mut missing: Vec<Anchor> = anchors.into_values().filter(|a| a.seq > 0).collect();
        missing.sort_by(|a, b| a.chain.cmp(&b.chain));
        for a in missing {
            report.chains.push(ChainReport {
                chain: a.chain.clone(),
                instance: String::new(),
                records: 0,
                anchored: Some(a.seq),
                first_broken: Some(BrokenLink {
                    seq: 1,
                    problem: format!(
                        "chain missing from the database: the token anchors {} records",
                        a.seq
                    ),
                }),
            });
        }
        Ok(report)
    }

    /// The newest anchor of each chain of this deployment (anchors naming its
    /// audit key) in the token.
    async fn anchors(&self) -> Result<HashMap<String, Anchor>, AuditError> {
        let objects = self.hsm.run(|s| s.list_data(ANCHOR_APPLICATION)).await?;
        let mut out: HashMap<String, Anchor> = HashMap::new();
        let own = objects
            .iter()
            .filter_map(Anchor::parse)
            .filter(|a| a.key == self.key);
        for a in own {
            match out.get(&a.chain) {
                Some(b) if b.seq >= a.seq => {}
                _ => {
                    out.insert(a.chain.clone(), a);
                }
            }
        }
        Ok(out)
    }

    async fn verify_chain(
        &self,
        conn: &mut crate::store::Conn,
        chain: &ChainRow,
        anchor: Option<Anchor>,
    ) -> Result<(ChainReport, bool), AuditError> {
        let mut report = ChainReport {
            chain: chain.id.clone(),
            instance: chain.instance.clone(),
            records: 0,
            anchored: anchor.as_ref().map(|a| a.seq),
            first_broken: None,
        };
        let broken = |mut report: ChainReport, seq: u64, problem: String| {
            report.records = seq.saturating_sub(1);
            report.first_broken = Some(BrokenLink { seq, problem });
            Ok((report, false))
        };
        let mut expected_seq = 1u64;
        let mut prev_hash = GENESIS_HASH.to_string();
        let mut newest_maced = true;
        let mut hash_at_anchor = None;
        loop {
            let page = rows::page(conn, &chain.id, expected_seq - 1, PAGE).await?;
            if page.is_empty() {
                break;
            }
            let mut macs = Vec::new();
            for row in &page {
                if row.seq != expected_seq {
                    return broken(report, expected_seq, "record missing".into());
                }
                if row.prev_hash != prev_hash {
                    return broken(
                        report,
                        row.seq,
                        "does not link to the previous record".into(),
                    );
                }
                if chain.format > super::FORMAT {
                    return broken(
                        report,
                        row.seq,
                        format!(
                            "chain format {} is newer than this kms ({}): verify with an upgraded kms",
                            chain.format,
                            super::FORMAT
                        ),
                    );
                }
                let hash = record_hash(row, chain.format);
                if hex::encode(hash) != row.hash {
                    return broken(
                        report,
                        row.seq,
                        "record altered: hash does not match its content".into(),
                    );
                }
                newest_maced = row.mac.is_some();
                if let Some(mac) = &row.mac {
                    let Ok(mac) = hex::decode(mac) else {
                        return broken(report, row.seq, "MAC is not hex".into());
                    };
                    macs.push((row.seq, hash, mac));
                }
                if anchor.as_ref().is_some_and(|a| a.seq == row.seq) {
                    hash_at_anchor = Some(row.hash.clone());
                }
                prev_hash = row.hash.clone();
                expected_seq += 1;
            }
            let key = self.key;
            let bad = self
                .hsm
                .run_long(move |s| {
                    for (seq, hash, mac) in &macs {
                        if !s.hmac_sha256_verify(&key, hash, mac)? {
                            return Ok(Some(*seq));
                        }
                    }
                    Ok(None)
                })
                .await?;
            if let Some(seq) = bad {
                return broken(
                    report,
                    seq,
                    "MAC does not verify with the token's audit key".into(),
                );
            }
        }
        let records = expected_seq - 1;
        report.records = records;
        if !newest_maced {
            return broken(
                report,
                records,
                "the newest record carries no MAC: records after the last MAC are not authenticated"
                    .into(),
            );
        }
        match anchor {
            // Every record's hash and MAC verified: the chain was written with
            // the token's audit key, so no database administrator forged it;
            // only its end cannot be vouched for. (A process that cannot see
            // another's anchor: SoftHSM2 does not always show one process the
            // objects another created.)
            None => Ok((report, false)),
            Some(a) if a.seq > records => {
                let (report, _) = broken(
                    report,
                    records + 1,
                    format!(
                        "records missing: the token anchors the chain at record {}, the database ends at {records}",
                        a.seq
                    ),
                )?;
                // Intact as far as it goes, but short of its anchor.
                Ok((report, true))
            }
            Some(a) if a.seq > 0 && hash_at_anchor.as_deref() != Some(a.hash.as_str()) => broken(
                report,
                a.seq,
                "record differs from the one the token anchors".into(),
            ),
            Some(_) => Ok((report, false)),
        }
    }
}
