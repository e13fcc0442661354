//! brandkms: the central key service of an electronic-money brand.
//!
//! The request path reads from the folder names, in order:
//!
//! | stage | folder | what it does |
//! | --- | --- | --- |
//! | listener, TLS, identity | [`server`] | accepts mTLS, names the caller from its certificate (the `auth` layer), composition root |
//! | gRPC handlers | [`service`] | wire types to domain types, the one error-to-status map |
//! | domain operations | [`ops`] | context, `authorize` (the one way to ask `brandkms_policy`), one file per operation family |
//! | policy | `brandkms_policy` (its own crate) | pure decisions with named reasons |
//! | token | [`hsm`] | PKCS#11 through `cryptoki`, one file per mechanism family |
//! | store | [`store`] | SQLite or PostgreSQL rows |
//! | audit | [`audit`] | the hash- and MAC-chained audit trail |
//!
//! Host commands (`kms init`, `reconcile`, `doctor`, `bench`) live in
//! [`commands`]; `main.rs` is thin.

pub mod audit;
pub mod clock;
pub mod commands;
pub mod config;
pub mod failpoint;
pub mod hsm;
pub mod ops;
pub mod server;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
