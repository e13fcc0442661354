//! Domain operations behind the handlers: typed inputs, the checks that decide
//! `NotFound` / `FailedPrecondition`, the state change and its audit record in one
//! transaction. No gRPC types here.

pub mod approvals;
pub mod cards;
pub mod distribution;
pub mod entities;
pub mod keys;
pub mod settlement;
pub mod tieups;
