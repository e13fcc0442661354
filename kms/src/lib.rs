//! brandkms: the central key service of an electronic-money brand.
//!
//! The request path reads from the module names: `tls` identity, `service`
//! handlers, `policy` (its own crate), `hsm`, `store`, `audit`. `main.rs` is thin:
//! [`cli`] builds everything from validated [`config::Settings`].

pub mod audit;
pub mod bench;
pub mod card;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod doctor;
pub mod failpoint;
pub mod hsm;
pub mod identity;
pub mod init;
pub mod keys;
pub mod ops;
pub mod reconcile;
pub mod rsa_public;
pub mod server;
pub mod service;
pub mod softhsm;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
