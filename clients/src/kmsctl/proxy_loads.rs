//! `kmsctl proxy-loads`: proxy loads performed for issuers that are not online.

use brandkms_proto::v1 as pb;
use clap::{Args, Subcommand};

use super::output::Output;
use super::parse::parse_time;
use crate::sdk::{Client, ClientError};

/// The issuer and period both subcommands take.
#[derive(Debug, Args)]
pub(super) struct PeriodArgs {
    /// Only this issuer's (officers; an issuer always sees its own).
    #[arg(long)]
    issuer: Option<String>,
    /// From (RFC 3339 or Unix ms).
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// Until, exclusive (RFC 3339 or Unix ms).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
}

impl PeriodArgs {
    /// The listing for this period (0 and empty for what is not given).
    fn list(self) -> pb::ListProxyLoadsRequest {
        pb::ListProxyLoadsRequest {
            start_time: self.from.unwrap_or(0),
            end_time: self.until.unwrap_or(0),
            issuer: self.issuer.unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The summary for this period.
    fn summary(self) -> pb::SummarizeProxyLoadsRequest {
        pb::SummarizeProxyLoadsRequest {
            start_time: self.from.unwrap_or(0),
            end_time: self.until.unwrap_or(0),
            issuer: self.issuer.unwrap_or_default(),
        }
    }
}

/// `kmsctl proxy-loads ...`.
#[derive(Debug, Subcommand)]
pub(super) enum ProxyLoadsCommand {
    /// Every proxy load in the period, oldest first.
    List(PeriodArgs),
    /// Settlement summary: count and total per issuer, currency and status.
    Report(PeriodArgs),
}

/// Runs a `proxy-loads` subcommand.
pub(super) async fn run(
    command: ProxyLoadsCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut proxy_loads = client.proxy_loads();
    match command {
        ProxyLoadsCommand::List(p) => {
            out.proxy_loads(&proxy_loads.list_proxy_loads_all(p.list()).await?)
        }
        ProxyLoadsCommand::Report(p) => {
            out.proxy_load_summary(&proxy_loads.summarize_proxy_loads(p.summary()).await?)
        }
    }
    Ok(())
}
