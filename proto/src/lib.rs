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

/// `done()` and `pending()` for an answer that is either what the operation
/// produced or, when dual control held it, the approval it awaits.
macro_rules! change {
    ($change:ident, $module:ident, $done:ident, $variant:ident, $what:literal) => {
        impl v1::$change {
            #[doc = concat!("The ", $what, ", when the operation ran.")]
            pub fn done(self) -> Option<v1::$done> {
                match self.result {
                    Some(v1::$module::Result::$variant(x)) => Some(x),
                    _ => None,
                }
            }

            /// The approval it awaits, when dual control held it.
            pub fn pending(self) -> Option<v1::Approval> {
                match self.result {
                    Some(v1::$module::Result::Pending(a)) => Some(a),
                    _ => None,
                }
            }
        }
    };
}

change!(KeyChange, key_change, Key, Key, "key");
change!(TieUpChange, tie_up_change, TieUp, TieUp, "tie-up");
change!(EntityChange, entity_change, Entity, Entity, "entity");
change!(
    DualControlChange,
    dual_control_change,
    DualControl,
    DualControl,
    "dual-control set"
);
