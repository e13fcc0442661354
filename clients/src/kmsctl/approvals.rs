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

/// `kmsctl dual-control ...`: which operations are held for a second officer.
#[derive(Debug, Subcommand)]
pub(super) enum DualControlCommand {
    /// Show the operations held for a second officer.
    Show,
    /// Replace the set (itself held for a second officer while set_dual_control
    /// is in it).
    Set {
        /// Operations: rotate_key, destroy_key_version, create_supply_tie_up,
        /// widen_supply_tie_up, register_officer, resume_officer,
        /// set_dual_control.
        #[arg(required_unless_present = "none", conflicts_with = "none")]
        operations: Vec<String>,
        /// Hold nothing: turn dual control off.
        #[arg(long)]
        none: bool,
    },
}

/// Runs a `dual-control` subcommand.
pub(super) async fn dual_control(
    command: DualControlCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut admin = client.admin();
    match command {
        DualControlCommand::Show => {
            out.dual_control(&admin.get_dual_control(pb::GetDualControlRequest {}).await?);
        }
        DualControlCommand::Set { operations, .. } => {
            out.dual_control_change(
                admin
                    .set_dual_control(pb::SetDualControlRequest { operations })
                    .await?,
            );
        }
    }
    Ok(())
}
