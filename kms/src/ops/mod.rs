//! Domain operations, the third stage of the request path: typed inputs, the
//! checks that decide `NotFound` / `FailedPrecondition`, the policy's decision
//! through [`authorize`], the token, and the state change with its audit record
//! in one transaction. No gRPC types here, and nothing from `crate::service` or
//! `crate::server`.

pub mod approvals;
pub mod authorize;
pub mod card_protocol;
pub mod cards;
pub mod context;
pub mod distribution;
pub mod entities;
pub mod facts;
pub mod generate;
pub mod import;
pub mod keys;
pub mod limits;
pub mod rsa_public;
pub mod settlement;
pub mod tieups;
pub mod versions;

pub use authorize::authorize;
pub use context::{AppState, Caller, OpsError, Shared, invalid, quote, valid_name};
