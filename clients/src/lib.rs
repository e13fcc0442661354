//! brandkms client SDK, officer and participant commands, and the card simulator.

pub mod card;
pub mod issuer;
pub mod kmsctl;
pub mod loadgen;
pub mod sdk;
pub mod settlement_cli;
pub mod terminal;
pub mod token;

pub use sdk::{Client, ClientError, ConnectOptions};
