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

/// Package `brandkms.v1`.
pub mod v1 {
    tonic::include_proto!("brandkms.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("brandkms_descriptor");
