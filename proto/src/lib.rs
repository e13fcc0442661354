//! gRPC definitions of brandkms, package `brandkms.v1`, generated at build time with
//! `protox` (no system `protoc`) and `tonic-prost-build`.
#![allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod blob;
pub mod limits;

/// Package `brandkms.v1`.
pub mod v1 {
    tonic::include_proto!("brandkms.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("brandkms_descriptor");

impl v1::KeyChange {
    /// The key, when the operation ran.
    pub fn done(self) -> Option<v1::Key> {
        match self.result {
            Some(v1::key_change::Result::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The approval it awaits, when dual control held it.
    pub fn pending(self) -> Option<v1::Approval> {
        match self.result {
            Some(v1::key_change::Result::Pending(a)) => Some(a),
            _ => None,
        }
    }
}

impl v1::TieUpChange {
    /// The tie-up, when the change ran.
    pub fn done(self) -> Option<v1::TieUp> {
        match self.result {
            Some(v1::tie_up_change::Result::TieUp(t)) => Some(t),
            _ => None,
        }
    }

    /// The approval it awaits, when dual control held it.
    pub fn pending(self) -> Option<v1::Approval> {
        match self.result {
            Some(v1::tie_up_change::Result::Pending(a)) => Some(a),
            _ => None,
        }
    }
}
