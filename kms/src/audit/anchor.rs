//! A chain's anchor: its newest (sequence, hash), kept in a private token data
//! object (named by its chain; the anchor itself is its label, the attribute the
//! module lets the owner change) that the writer moves on after each batch
//! committed and before any request of the batch is answered. The database cannot rewrite it, so records
//! deleted from the end of a chain, or a whole chain wiped, no longer match it.

use crate::hsm::{DataObject, ObjectId};

/// `CKA_APPLICATION` of every anchor object.
pub const ANCHOR_APPLICATION: &str = "brandkms.audit-anchor";

const MAGIC: &str = "brandkms-audit-anchor-v1";

/// What an anchor says. Anchors name the audit MAC key of their deployment, so
/// deployments (or test databases) sharing a token keep to their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The `CKA_ID` of the audit MAC key of the chain's deployment.
    pub key: ObjectId,
    /// The chain.
    pub chain: String,
    /// The newest sequence number acknowledged (0: none yet).
    pub seq: u64,
    /// That record's hash, hex (the genesis hash for 0).
    pub hash: String,
}

impl Anchor {
    /// The name (its `CKA_VALUE`, fixed) of one of the chain's two anchor
    /// objects. The writer moves them in turn, so that a process killed while
    /// the token rewrites one (SoftHSM2 truncates an object's file, then writes
    /// it) still leaves the other, one batch behind.
    pub fn name(chain: &str, slot: u8) -> String {
        format!("{ANCHOR_APPLICATION}/{chain}/{slot}")
    }

    /// The object's label: the anchor.
    pub fn label(key: &ObjectId, chain: &str, seq: u64, hash: &str) -> String {
        format!("{MAGIC} {} {chain} {seq} {hash}", key.to_hex())
    }

    /// Reads a data object as an anchor; `None` when it is not one.
    pub fn parse(object: &DataObject) -> Option<Anchor> {
        let mut parts = object.label.split(' ');
        if parts.next()? != MAGIC {
            return None;
        }
        let key = ObjectId::from_hex(parts.next()?)?;
        let chain = parts.next()?.to_string();
        let seq = parts.next()?.parse().ok()?;
        let hash = parts.next()?.to_string();
        if parts.next().is_some() || hash.len() != 64 {
            return None;
        }
        Some(Anchor {
            key,
            chain,
            seq,
            hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS_HASH;

    #[test]
    fn an_anchor_reads_back_and_rejects_other_data() {
        let object = DataObject {
            label: Anchor::label(&ObjectId([9; 16]), "c1", 42, GENESIS_HASH),
            value: Anchor::name("c1", 0).into_bytes(),
        };
        let a = Anchor::parse(&object).unwrap();
        assert_eq!(a.key, ObjectId([9; 16]));
        assert_eq!(
            (a.chain.as_str(), a.seq, a.hash.as_str()),
            ("c1", 42, GENESIS_HASH)
        );
        let other = DataObject {
            label: "something else".into(),
            ..object
        };
        assert_eq!(Anchor::parse(&other), None);
    }
}
