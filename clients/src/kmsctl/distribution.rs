//! `kmsctl distribution`: key deliveries.

use brandkms_proto::v1 as pb;
use clap::Subcommand;

use super::output::Output;
use crate::sdk::{Client, ClientError};

/// `kmsctl distribution ...`.
#[derive(Debug, Subcommand)]
pub(super) enum DistributionCommand {
    /// Which key version went to whom, when, under which transport key.
    List {
        /// Only this key.
        #[arg(long)]
        alias: Option<String>,
        /// Only this version of it (with --alias): who received it.
        #[arg(long, requires = "alias")]
        version: Option<u32>,
        /// Only deliveries to this entity.
        #[arg(long)]
        entity: Option<String>,
    },
}

/// Runs a `distribution` subcommand.
pub(super) async fn run(
    command: DistributionCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    match command {
        DistributionCommand::List {
            alias,
            version,
            entity,
        } => out.distributions(
            &client
                .admin()
                .list_distributions_all(pb::ListDistributionsRequest {
                    alias: alias.unwrap_or_default(),
                    entity_id: entity.unwrap_or_default(),
                    version: version.unwrap_or_default(),
                    ..Default::default()
                })
                .await?,
        ),
    }
    Ok(())
}
