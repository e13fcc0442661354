//! A chain's anchor: its newest (sequence, hash), kept in a private token data
//! object that the writer moves on after each batch committed and before any
//! request of the batch is answered. The database cannot rewrite it, so records
//! deleted from the end of a chain, or a whole chain wiped, no longer match it.

use crate::hsm::{DataObject, ObjectId};

/// `CKA_APPLICATION` of every anchor object.
pub const ANCHOR_APPLICATION: &str = "brandkms.audit-anchor";

const MAGIC: &str = "brandkms-audit-anchor-v1";

/// What an anchor says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The token object holding it.
    pub object: ObjectId,
    /// The chain.
    pub chain: String,
    /// The newest sequence number acknowledged (0: none yet).
    pub seq: u64,
    /// That record's hash, hex (the genesis hash for 0).
    pub hash: String,
}

impl Anchor {
    /// The object's label.
    pub fn label(chain: &str) -> String {
        format!("{ANCHOR_APPLICATION}/{chain}")
    }

    /// The object's value.
    pub fn value(chain: &str, seq: u64, hash: &str) -> Vec<u8> {
        format!("{MAGIC} {chain} {seq} {hash}").into_bytes()
    }

    /// Reads a data object as an anchor; `None` when it is not one.
    pub fn parse(object: &DataObject) -> Option<Anchor> {
        let text = std::str::from_utf8(&object.value).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != MAGIC {
            return None;
        }
        let chain = parts.next()?.to_string();
        let seq = parts.next()?.parse().ok()?;
        let hash = parts.next()?.to_string();
        if parts.next().is_some() || hash.len() != 64 {
            return None;
        }
        Some(Anchor {
            object: object.id,
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
            id: ObjectId([7; 16]),
            label: Anchor::label("c1"),
            value: Anchor::value("c1", 42, GENESIS_HASH),
        };
        let a = Anchor::parse(&object).unwrap();
        assert_eq!((a.chain.as_str(), a.seq, a.hash.as_str()), ("c1", 42, GENESIS_HASH));
        let other = DataObject {
            value: b"something else".to_vec(),
            ..object
        };
        assert_eq!(Anchor::parse(&other), None);
    }
}
