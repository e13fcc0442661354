//! `kmsctl approvals`, `kmsctl approve` and `kmsctl reject`: proposals held for
//! a second officer (dual control).

use brandkms_proto::v1 as pb;
use clap::{Args, Subcommand, ValueEnum};

use super::output::Output;
use crate::sdk::{Client, ClientError};

/// A proposal's state (`APPROVAL_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum ApprovalStateArg {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl From<ApprovalStateArg> for pb::ApprovalState {
    fn from(s: ApprovalStateArg) -> Self {
        match s {
            ApprovalStateArg::Pending => pb::ApprovalState::Pending,
            ApprovalStateArg::Approved => pb::ApprovalState::Approved,
            ApprovalStateArg::Rejected => pb::ApprovalState::Rejected,
            ApprovalStateArg::Expired => pb::ApprovalState::Expired,
        }
    }
}

/// `kmsctl approvals ...`.
#[derive(Debug, Subcommand)]
pub(super) enum ApprovalsCommand {
    /// List proposals, newest first.
    List {
        /// Only in this state: pending, approved, rejected, expired.
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<ApprovalStateArg>,
    },
}

/// `kmsctl approve ID`.
#[derive(Debug, Args)]
pub(super) struct ApproveArgs {
    /// The approval id (ap-...).
    id: String,
}

/// `kmsctl reject ID [--reason TEXT]`.
#[derive(Debug, Args)]
pub(super) struct RejectArgs {
    /// The approval id (ap-...).
    id: String,
    /// Why (recorded; no secrets).
    #[arg(long)]
    reason: Option<String>,
}

/// Runs an `approvals` subcommand.
pub(super) async fn run(
    command: ApprovalsCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    match command {
        ApprovalsCommand::List { state } => out.approvals(
            &client
                .admin()
                .list_approvals_all(pb::ListApprovalsRequest {
                    state: state.map_or(0, |s| pb::ApprovalState::from(s) as i32),
                    ..Default::default()
                })
                .await?,
        ),
    }
    Ok(())
}

/// Runs `approve`: the held operation runs, as the approving officer.
pub(super) async fn approve(
    args: ApproveArgs,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    out.approved(
        client
            .admin()
            .approve(pb::ApprovalRef { id: args.id })
            .await?,
    );
    Ok(())
}

/// Runs `reject`.
pub(super) async fn reject(
    args: RejectArgs,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    out.approvals(&[client
        .admin()
        .reject(pb::RejectRequest {
            id: args.id,
            reason: args.reason.unwrap_or_default(),
        })
        .await?]);
    Ok(())
}
