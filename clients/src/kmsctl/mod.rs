//! `kmsctl`: the security officers' command line. Every Admin call is a
//! subcommand; connection settings come from flags, the environment or a profile
//! file; output is a readable table, or JSON with `--json`; failures print the
//! gRPC status and message and exit non-zero.
//!
//! One module per noun, each with its arguments and its `run`; this one holds
//! the root of the command line and the dispatch.

mod approvals;
mod audit;
mod connection;
mod distribution;
mod entity;
mod health;
mod key;
mod output;
mod parse;
mod proxy_loads;
mod tieup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::sdk::{Client, ClientError};
pub use connection::ConnectionArgs;
use output::Output;

/// kmsctl: manage brandkms keys, participants, tie-ups and the audit trail.
#[derive(Debug, Parser)]
#[command(name = "kmsctl", version)]
pub struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The nouns (and `approve`, `reject`, `health`).
#[derive(Debug, Subcommand)]
enum Command {
    /// Card-access keys and their versions.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Participants.
    #[command(subcommand)]
    Entity(entity::EntityCommand),
    /// Tie-up agreements.
    #[command(subcommand)]
    Tieup(tieup::TieUpCommand),
    /// Key deliveries.
    #[command(subcommand)]
    Distribution(distribution::DistributionCommand),
    /// Proxy loads performed for issuers that are not online.
    #[command(subcommand)]
    ProxyLoads(proxy_loads::ProxyLoadsCommand),
    /// Proposals held for a second officer (dual control).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Approve another officer's proposal: the operation runs, as you.
    Approve(approvals::ApproveArgs),
    /// Reject a proposal (the proposer may withdraw their own).
    Reject(approvals::RejectArgs),
    /// Which operations are held for a second officer (kept in the database).
    #[command(subcommand)]
    DualControl(approvals::DualControlCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Whether the server is serving (grpc.health.v1).
    Health,
}

/// Entry point of the `kmsctl` binary.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json);
    match run(cli, &out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("kmsctl: error: {message}");
            match e {
                ClientError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Connects and runs the subcommand.
async fn run(cli: Cli, out: &Output) -> Result<(), ClientError> {
    let options = cli.connection.resolve()?;
    let client = Client::connect(&options).await?;
    match cli.command {
        Command::Health => health::run(&client, out).await,
        Command::Key(c) => key::run(c, &client, out).await,
        Command::Entity(c) => entity::run(c, &client, out).await,
        Command::Tieup(c) => tieup::run(c, &client, out).await,
        Command::Distribution(c) => distribution::run(c, &client, out).await,
        Command::ProxyLoads(c) => proxy_loads::run(c, &client, out).await,
        Command::Approvals(c) => approvals::run(c, &client, out).await,
        Command::Approve(a) => approvals::approve(a, &client, out).await,
        Command::Reject(a) => approvals::reject(a, &client, out).await,
        Command::DualControl(c) => approvals::dual_control(c, &client, out).await,
        Command::Audit(c) => audit::run(c, &client, out).await,
    }
}

/// The `kmsctl` command line, for man pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;
    use brandkms_proto::v1 as pb;
    use clap::{CommandFactory, ValueEnum};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn enum_arguments_take_the_short_wire_names() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["kmsctl", "key", "state", "a", "1", "auth_only"]).is_ok());
        assert!(parse(&["kmsctl", "key", "state", "a", "1", "DECRYPT_ONLY"]).is_ok());
        assert!(parse(&["kmsctl", "key", "state", "a", "1", "bogus"]).is_err());
        assert!(parse(&["kmsctl", "key", "state", "a", "1", "auth-only"]).is_err());
        assert!(parse(&["kmsctl", "entity", "list", "--kind", "bank_center"]).is_ok());
        assert!(parse(&["kmsctl", "tieup", "create", "e", "--cover", "k:proxy_load"]).is_ok());
        assert!(parse(&["kmsctl", "tieup", "create", "e", "--cover", "k:lend"]).is_err());
        assert!(parse(&["kmsctl", "approvals", "list", "--state", "maybe"]).is_err());
    }

    /// Each value names the wire value whose short name it is, as the
    /// arguments were parsed before (`auth_only` for `KEY_STATE_AUTH_ONLY`).
    fn named_like_the_wire<A: ValueEnum>(prefix: &str, wire: impl Fn(&A) -> &'static str) {
        for a in A::value_variants() {
            let name = a
                .to_possible_value()
                .unwrap()
                .get_name()
                .to_ascii_uppercase();
            assert_eq!(wire(a), format!("{prefix}{name}"));
        }
    }

    #[test]
    fn enum_arguments_map_to_their_wire_values() {
        named_like_the_wire::<key::StateArg>("KEY_STATE_", |&a| {
            pb::KeyState::from(a).as_str_name()
        });
        named_like_the_wire::<key::ClassArg>("KEY_CLASS_", |&a| {
            pb::KeyClass::from(a).as_str_name()
        });
        named_like_the_wire::<key::PurposeArg>("PURPOSE_", |&a| pb::Purpose::from(a).as_str_name());
        named_like_the_wire::<key::CardAlgorithmArg>("KEY_ALGORITHM_", |&a| {
            pb::KeyAlgorithm::from(a).as_str_name()
        });
        named_like_the_wire::<key::SettlementAlgorithmArg>("KEY_ALGORITHM_", |&a| {
            pb::KeyAlgorithm::from(a).as_str_name()
        });
        named_like_the_wire::<entity::KindArg>("ENTITY_KIND_", |&a| {
            pb::EntityKind::from(a).as_str_name()
        });
        named_like_the_wire::<tieup::ModeArg>("TIE_UP_MODE_", |&a| {
            pb::TieUpMode::from(a).as_str_name()
        });
        named_like_the_wire::<tieup::TieStateArg>("TIE_UP_STATE_", |&a| {
            pb::TieUpState::from(a).as_str_name()
        });
        named_like_the_wire::<approvals::ApprovalStateArg>("APPROVAL_STATE_", |&a| {
            pb::ApprovalState::from(a).as_str_name()
        });
    }
}
