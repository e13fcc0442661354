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

/// The command line of every binary of this crate, for man pages and shell
/// completions (`xtask assets`).
pub fn commands() -> Vec<clap::Command> {
    vec![
        kmsctl::command(),
        issuer::command(),
        terminal::cybershop_command(),
        terminal::portal_command(),
        loadgen::command(),
        settlement_cli::terminal_command(),
        settlement_cli::clearing_command(),
    ]
}
