//! brandkms client SDK, officer and participant commands, and the card simulator.

pub mod kmsctl;
pub mod sdk;

pub use sdk::{Client, ClientError, ConnectOptions};
