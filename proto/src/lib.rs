//! gRPC definitions of brandkms, package `brandkms.v1`, generated at build time with
//! `protox` (no system `protoc`) and `tonic-prost-build`.
