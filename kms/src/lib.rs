//! brandkms: the central key service of an electronic-money brand.
//!
//! The request path reads from the module names: `tls` identity, `service`
//! handlers, `policy` (its own crate), `hsm`, `store`, `audit`.

pub mod hsm;
pub mod softhsm;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
