//! `kmsctl tieup`: tie-up agreements.

use brandkms_proto::v1 as pb;
use clap::{Args, Subcommand, ValueEnum};

use super::output::Output;
use super::parse::parse_time;
use crate::sdk::{Client, ClientError};

/// How a tie-up covers a key (`TIE_UP_MODE_*`), the `MODE` of `--cover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum ModeArg {
    Supply,
    Hold,
    ProxyLoad,
}

impl From<ModeArg> for pb::TieUpMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Supply => pb::TieUpMode::Supply,
            ModeArg::Hold => pb::TieUpMode::Hold,
            ModeArg::ProxyLoad => pb::TieUpMode::ProxyLoad,
        }
    }
}

/// A tie-up state `update` may set (`TIE_UP_STATE_*`); `terminate` ends one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum TieStateArg {
    Active,
    Suspended,
}

impl From<TieStateArg> for pb::TieUpState {
    fn from(s: TieStateArg) -> Self {
        match s {
            TieStateArg::Active => pb::TieUpState::Active,
            TieStateArg::Suspended => pb::TieUpState::Suspended,
        }
    }
}

/// One `--cover ALIAS:MODE`: a key and how the tie-up covers it (the mode's
/// case is ignored).
fn parse_cover(s: &str) -> Result<pb::TieUpKey, String> {
    let (alias, mode) = s
        .split_once(':')
        .ok_or_else(|| "expected ALIAS:MODE".to_string())?;
    let mode = <ModeArg as ValueEnum>::from_str(mode, true).map_err(|_| {
        let modes: Vec<String> = ModeArg::value_variants()
            .iter()
            .filter_map(ValueEnum::to_possible_value)
            .map(|v| v.get_name().to_string())
            .collect();
        format!(
            "unknown tie-up mode {mode:?} (possible modes: {})",
            modes.join(", ")
        )
    })?;
    Ok(pb::TieUpKey {
        alias: alias.to_string(),
        mode: pb::TieUpMode::from(mode) as i32,
    })
}

/// The terms `create` and `update` share.
#[derive(Debug, Args)]
pub(super) struct TieUpTerms {
    /// A key the tie-up covers and its mode, ALIAS:MODE with MODE supply, hold or
    /// proxy_load (repeatable).
    #[arg(long = "cover", value_name = "ALIAS:MODE", value_parser = parse_cover)]
    keys: Vec<pb::TieUpKey>,
    /// Start (RFC 3339 or Unix ms).
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// End (RFC 3339 or Unix ms).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Per-transaction limit in minor units.
    #[arg(long)]
    limit: Option<u64>,
}

/// `kmsctl tieup ...`.
#[derive(Debug, Subcommand)]
pub(super) enum TieUpCommand {
    /// Record a tie-up.
    Create {
        /// The entity.
        entity: String,
        #[command(flatten)]
        terms: TieUpTerms,
        /// The issuer whose contract brought the entity in.
        #[arg(long)]
        sponsor: Option<String>,
    },
    /// Change a tie-up (keys given replace its keys).
    Update {
        /// Tie-up id.
        id: String,
        #[command(flatten)]
        terms: TieUpTerms,
        /// Make it open-ended.
        #[arg(long, conflicts_with = "until")]
        no_end: bool,
        /// active or suspended.
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<TieStateArg>,
    },
    /// End a tie-up for good.
    Terminate {
        /// Tie-up id.
        id: String,
    },
    /// List tie-ups.
    List {
        /// Only this entity's.
        #[arg(long)]
        entity: Option<String>,
    },
}

/// Runs a `tieup` subcommand.
pub(super) async fn run(
    command: TieUpCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut admin = client.admin();
    match command {
        TieUpCommand::Create {
            entity,
            terms,
            sponsor,
        } => {
            let t = admin
                .create_tie_up(pb::CreateTieUpRequest {
                    entity_id: entity,
                    keys: terms.keys,
                    valid_from: terms.from.unwrap_or(0),
                    valid_until: terms.until.unwrap_or(0),
                    sponsor_issuer: sponsor.unwrap_or_default(),
                    per_transaction_limit: terms.limit,
                })
                .await?;
            out.tie_up_change(t);
        }
        TieUpCommand::Update {
            id,
            terms,
            no_end,
            state,
        } => {
            let t = admin
                .update_tie_up(pb::UpdateTieUpRequest {
                    id,
                    keys: terms.keys,
                    valid_from: terms.from,
                    valid_until: if no_end { Some(0) } else { terms.until },
                    per_transaction_limit: terms.limit,
                    state: state.map_or(0, |s| pb::TieUpState::from(s) as i32),
                })
                .await?;
            out.tie_up_change(t);
        }
        TieUpCommand::Terminate { id } => {
            out.tie_ups(&[admin.terminate_tie_up(pb::TieUpRef { id }).await?])
        }
        TieUpCommand::List { entity } => out.tie_ups(
            &admin
                .list_tie_ups_all(pb::ListTieUpsRequest {
                    entity_id: entity.unwrap_or_default(),
                    ..Default::default()
                })
                .await?,
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_parse() {
        let hold = parse_cover("key-k:hold").unwrap();
        assert_eq!(hold.alias, "key-k");
        assert_eq!(hold.mode, pb::TieUpMode::Hold as i32);
        assert_eq!(
            parse_cover("key-p:PROXY_LOAD").unwrap().mode,
            pb::TieUpMode::ProxyLoad as i32
        );
        assert!(parse_cover("key-a").is_err());
        assert!(parse_cover("key-a:lend").is_err());
        assert!(parse_cover("key-a:proxy-load").is_err());
    }
}
