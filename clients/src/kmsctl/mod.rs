//! `kmsctl`: the security officers' command line. Every Admin call is a
//! subcommand; connection settings come from flags, the environment or a profile
//! file; output is a readable table, or JSON with `--json`; failures print the
//! gRPC status and message and exit non-zero.

mod connection;
mod output;

use std::process::ExitCode;

use brandkms_proto::v1 as pb;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::sdk::{Client, ClientError};
pub use connection::ConnectionArgs;
use output::Output;

/// kmsctl: manage brandkms keys, participants, tie-ups and the audit trail.
#[derive(Debug, Parser)]
#[command(name = "kmsctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Card-access keys and their versions.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Participants.
    #[command(subcommand)]
    Entity(EntityCommand),
    /// Tie-up agreements.
    #[command(subcommand)]
    Tieup(TieUpCommand),
    /// Key deliveries.
    #[command(subcommand)]
    Distribution(DistributionCommand),
    /// Proxy loads performed for issuers that are not online.
    #[command(subcommand)]
    ProxyLoads(ProxyLoadsCommand),
    /// Proposals held for a second officer (dual control).
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Approve another officer's proposal: the operation runs, as you.
    Approve {
        /// The approval id (ap-...).
        id: String,
    },
    /// Reject a proposal (the proposer may withdraw their own).
    Reject {
        /// The approval id (ap-...).
        id: String,
        /// Why (recorded; no secrets).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Whether the server is serving (grpc.health.v1).
    Health,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a card-access key (version 1, active).
    Create {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// Service code (0 to 65535; decimal or 0x hex).
        #[arg(long, value_parser = parse_u32)]
        service_code: u32,
        /// load or purchase.
        #[arg(long)]
        purpose: String,
        /// tdes2 (default), tdes3, or des with --allow-legacy-des.
        #[arg(long, default_value = "tdes2")]
        algorithm: String,
        /// Allow single DES (legacy; reported weak).
        #[arg(long)]
        allow_legacy_des: bool,
        /// A supply tie-up may deliver it, wrapped.
        #[arg(long)]
        exportable: bool,
    },
    /// Create a settlement RSA key pair in the token (version 1, active).
    CreateSettlement {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// rsa2048, rsa3072 (default) or rsa4096.
        #[arg(long, default_value = "rsa3072")]
        algorithm: String,
        /// An entity-owned identifier key: only this entity may decrypt.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Create an authenticator key (HMAC-SHA-256) for MACs on settlement results.
    CreateAuthenticator {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
    },
    /// Add an active version; the previous one becomes auth_only (card-access,
    /// authenticator) or decrypt_only (settlement).
    Rotate {
        /// Alias.
        alias: String,
    },
    /// List keys.
    List {
        /// Only this class (card_access, settlement, ...).
        #[arg(long)]
        class: Option<String>,
    },
    /// Show one key with its versions.
    Show {
        /// Alias.
        alias: String,
    },
    /// Set a version's state: active, auth_only, decrypt_only or retired.
    State {
        /// Alias.
        alias: String,
        /// Version.
        version: u32,
        /// New state.
        state: String,
    },
    /// Schedule a retired version's destruction.
    Destroy {
        /// Alias.
        alias: String,
        /// Version.
        version: u32,
        /// Waiting period in days (at least 1; default 7).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Cancel a pending destruction.
    CancelDestroy {
        /// Alias.
        alias: String,
        /// Version.
        version: u32,
    },
}

#[derive(Debug, Subcommand)]
enum EntityCommand {
    /// Register a participant.
    Register {
        /// Id: [a-z0-9._-]; its certificate's SAN URI is urn:brandkms:entity:<id>.
        id: String,
        /// issuer, pos_center, mmk_center, bank_center, merchant_terminal,
        /// cybershop, loading_portal, clearing_house or officer.
        #[arg(long)]
        kind: String,
        /// Readable name.
        #[arg(long)]
        name: String,
        /// Issuers: online.
        #[arg(long)]
        online: bool,
        /// Terminals: tamper-resistant.
        #[arg(long)]
        tamper_resistant: bool,
    },
    /// Suspend a participant.
    Suspend {
        /// Id.
        id: String,
    },
    /// Resume a participant.
    Resume {
        /// Id.
        id: String,
    },
    /// List participants.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Debug, Args)]
struct TieUpTerms {
    /// A key the tie-up covers and its mode, ALIAS:MODE with MODE supply, hold or
    /// proxy_load (repeatable).
    #[arg(long = "cover", value_name = "ALIAS:MODE")]
    keys: Vec<String>,
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

#[derive(Debug, Subcommand)]
enum TieUpCommand {
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
        #[arg(long)]
        state: Option<String>,
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

#[derive(Debug, Subcommand)]
enum DistributionCommand {
    /// Which key version went to whom, when, under which transport key.
    List {
        /// Only this key.
        #[arg(long)]
        alias: Option<String>,
        /// Only deliveries to this entity.
        #[arg(long)]
        entity: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct PeriodArgs {
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
    fn request(self) -> pb::ListProxyLoadsRequest {
        pb::ListProxyLoadsRequest {
            from: self.from.unwrap_or(0),
            until: self.until.unwrap_or(0),
            issuer: self.issuer.unwrap_or_default(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum ProxyLoadsCommand {
    /// Every proxy load in the period, oldest first.
    List(PeriodArgs),
    /// Settlement summary: count and total per issuer, currency and status.
    Report(PeriodArgs),
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// List proposals, newest first.
    List {
        /// Only in this state: pending, approved, rejected, expired.
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List records, oldest first (the newest LIMIT).
    List {
        /// From (RFC 3339 or Unix ms).
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Until (RFC 3339 or Unix ms).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Only this caller.
        #[arg(long)]
        caller: Option<String>,
        /// Only this operation (e.g. Admin/CreateKey).
        #[arg(long)]
        operation: Option<String>,
        /// At most this many (default 100, at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify the whole chain (hashes and token MACs).
    Verify,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).map_err(|e| e.to_string()),
        None => s
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string()),
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (RFC 3339 or Unix ms)"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_string())?;
    i64::try_from(d.as_millis()).map_err(|e| e.to_string())
}

/// Parses a wire enum by its short name (`active` for `KEY_STATE_ACTIVE`).
fn wire_enum<E>(
    what: &str,
    prefix: &str,
    s: &str,
    from_name: fn(&str) -> Option<E>,
) -> Result<E, ClientError> {
    from_name(&format!("{prefix}{}", s.to_ascii_uppercase()))
        .ok_or_else(|| ClientError::Config(format!("unknown {what} {s:?}")))
}

fn tie_keys(keys: &[String]) -> Result<Vec<pb::TieUpKey>, ClientError> {
    keys.iter()
        .map(|k| {
            let (alias, mode) = k.split_once(':').ok_or_else(|| {
                ClientError::Config(format!("--cover {k:?}: expected ALIAS:MODE"))
            })?;
            let mode = wire_enum(
                "tie-up mode",
                "TIE_UP_MODE_",
                mode,
                pb::TieUpMode::from_str_name,
            )?;
            Ok(pb::TieUpKey {
                alias: alias.to_string(),
                mode: mode as i32,
            })
        })
        .collect()
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

async fn run(cli: Cli, out: &Output) -> Result<(), ClientError> {
    let options = cli.connection.resolve()?;
    let client = Client::connect(&options).await?;
    let mut admin = client.admin();
    match cli.command {
        Command::Health => {
            let serving = client.healthy().await?;
            if out.json {
                out.print_json(&json!({ "serving": serving }));
            } else {
                println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            }
            if !serving {
                return Err(ClientError::Status {
                    code: tonic::Code::Unavailable,
                    message: "not serving".to_string(),
                });
            }
        }
        Command::Key(k) => match k {
            KeyCommand::Create {
                alias,
                service_code,
                purpose,
                algorithm,
                allow_legacy_des,
                exportable,
            } => {
                let key = admin
                    .create_key(pb::CreateKeyRequest {
                        alias,
                        class: pb::KeyClass::CardAccess as i32,
                        service_code,
                        purpose: wire_enum(
                            "purpose",
                            "PURPOSE_",
                            &purpose,
                            pb::Purpose::from_str_name,
                        )? as i32,
                        algorithm: wire_enum(
                            "algorithm",
                            "KEY_ALGORITHM_",
                            &algorithm,
                            pb::KeyAlgorithm::from_str_name,
                        )? as i32,
                        allow_legacy_des,
                        exportable,
                        owner_entity: String::new(),
                    })
                    .await?;
                out.key(&key);
            }
            KeyCommand::CreateAuthenticator { alias } => out.key(
                &admin
                    .create_key(pb::CreateKeyRequest {
                        alias,
                        class: pb::KeyClass::Authenticator as i32,
                        ..Default::default()
                    })
                    .await?,
            ),
            KeyCommand::CreateSettlement {
                alias,
                algorithm,
                owner,
            } => {
                let key = admin
                    .create_key(pb::CreateKeyRequest {
                        alias,
                        class: pb::KeyClass::Settlement as i32,
                        algorithm: wire_enum(
                            "algorithm",
                            "KEY_ALGORITHM_",
                            &algorithm,
                            pb::KeyAlgorithm::from_str_name,
                        )? as i32,
                        owner_entity: owner.unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?;
                out.key(&key);
            }
            KeyCommand::Rotate { alias } => {
                out.key_change(admin.rotate_key(pb::RotateKeyRequest { alias }).await?)
            }
            KeyCommand::List { class } => {
                let class = class
                    .map(|c| wire_enum("key class", "KEY_CLASS_", &c, pb::KeyClass::from_str_name))
                    .transpose()?
                    .map_or(0, |c| c as i32);
                out.keys(&admin.list_keys(pb::ListKeysRequest { class }).await?.keys);
            }
            KeyCommand::Show { alias } => {
                out.key(&admin.get_key(pb::GetKeyRequest { alias }).await?)
            }
            KeyCommand::State {
                alias,
                version,
                state,
            } => {
                let state = wire_enum(
                    "key state",
                    "KEY_STATE_",
                    &state,
                    pb::KeyState::from_str_name,
                )? as i32;
                out.key(
                    &admin
                        .set_key_version_state(pb::SetKeyVersionStateRequest {
                            alias,
                            version,
                            state,
                        })
                        .await?,
                );
            }
            KeyCommand::Destroy {
                alias,
                version,
                days,
            } => out.key_change(
                admin
                    .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                        alias,
                        version,
                        waiting_days: days,
                    })
                    .await?,
            ),
            KeyCommand::CancelDestroy { alias, version } => out.key(
                &admin
                    .cancel_key_version_destruction(pb::CancelKeyVersionDestructionRequest {
                        alias,
                        version,
                    })
                    .await?,
            ),
        },
        Command::Entity(e) => match e {
            EntityCommand::Register {
                id,
                kind,
                name,
                online,
                tamper_resistant,
            } => {
                let kind = wire_enum(
                    "entity kind",
                    "ENTITY_KIND_",
                    &kind,
                    pb::EntityKind::from_str_name,
                )? as i32;
                out.entities(&[admin
                    .register_entity(pb::RegisterEntityRequest {
                        id,
                        kind,
                        name,
                        online,
                        tamper_resistant,
                    })
                    .await?]);
            }
            EntityCommand::Suspend { id } => {
                out.entities(&[admin.suspend_entity(pb::EntityRef { id }).await?])
            }
            EntityCommand::Resume { id } => {
                out.entities(&[admin.resume_entity(pb::EntityRef { id }).await?])
            }
            EntityCommand::List { kind } => {
                let kind = kind
                    .map(|k| {
                        wire_enum(
                            "entity kind",
                            "ENTITY_KIND_",
                            &k,
                            pb::EntityKind::from_str_name,
                        )
                    })
                    .transpose()?
                    .map_or(0, |k| k as i32);
                out.entities(
                    &admin
                        .list_entities(pb::ListEntitiesRequest { kind })
                        .await?
                        .entities,
                );
            }
        },
        Command::Tieup(t) => match t {
            TieUpCommand::Create {
                entity,
                terms,
                sponsor,
            } => {
                let t = admin
                    .create_tie_up(pb::CreateTieUpRequest {
                        entity_id: entity,
                        keys: tie_keys(&terms.keys)?,
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
                let state = state
                    .map(|s| {
                        wire_enum(
                            "tie-up state",
                            "TIE_UP_STATE_",
                            &s,
                            pb::TieUpState::from_str_name,
                        )
                    })
                    .transpose()?
                    .map_or(0, |s| s as i32);
                let t = admin
                    .update_tie_up(pb::UpdateTieUpRequest {
                        id,
                        keys: tie_keys(&terms.keys)?,
                        valid_from: terms.from,
                        valid_until: if no_end { Some(0) } else { terms.until },
                        per_transaction_limit: terms.limit,
                        state,
                    })
                    .await?;
                out.tie_up_change(t);
            }
            TieUpCommand::Terminate { id } => {
                out.tie_ups(&[admin.terminate_tie_up(pb::TieUpRef { id }).await?])
            }
            TieUpCommand::List { entity } => out.tie_ups(
                &admin
                    .list_tie_ups(pb::ListTieUpsRequest {
                        entity_id: entity.unwrap_or_default(),
                    })
                    .await?
                    .tie_ups,
            ),
        },
        Command::Distribution(DistributionCommand::List { alias, entity }) => out.distributions(
            &admin
                .list_distributions(pb::ListDistributionsRequest {
                    alias: alias.unwrap_or_default(),
                    entity_id: entity.unwrap_or_default(),
                })
                .await?
                .distributions,
        ),
        Command::ProxyLoads(ProxyLoadsCommand::List(p)) => out.proxy_loads(
            &client
                .proxy_loads()
                .list_proxy_loads(p.request())
                .await?
                .loads,
        ),
        Command::ProxyLoads(ProxyLoadsCommand::Report(p)) => out.proxy_load_summary(
            &client
                .proxy_loads()
                .summarize_proxy_loads(p.request())
                .await?,
        ),
        Command::Approvals(ApprovalsCommand::List { state }) => {
            let state = state
                .map(|s| {
                    wire_enum(
                        "approval state",
                        "APPROVAL_STATE_",
                        &s,
                        pb::ApprovalState::from_str_name,
                    )
                })
                .transpose()?
                .map_or(0, |s| s as i32);
            out.approvals(
                &admin
                    .list_approvals(pb::ListApprovalsRequest { state })
                    .await?
                    .approvals,
            );
        }
        Command::Approve { id } => out.approved(admin.approve(pb::ApprovalRef { id }).await?),
        Command::Reject { id, reason } => out.approvals(&[admin
            .reject(pb::RejectRequest {
                id,
                reason: reason.unwrap_or_default(),
            })
            .await?]),
        Command::Audit(a) => match a {
            AuditCommand::List {
                from,
                until,
                caller,
                operation,
                limit,
            } => out.audit(
                &admin
                    .list_audit(pb::ListAuditRequest {
                        from: from.unwrap_or(0),
                        until: until.unwrap_or(0),
                        caller: caller.unwrap_or_default(),
                        operation: operation.unwrap_or_default(),
                        limit,
                    })
                    .await?
                    .records,
            ),
            AuditCommand::Verify => {
                let r = admin.verify_audit(pb::VerifyAuditRequest {}).await?;
                if out.json {
                    out.print_json(&json!({
                        "intact": r.intact,
                        "records": r.records,
                        "first_broken_seq": (!r.intact).then_some(r.first_broken_seq),
                        "problem": (!r.intact).then_some(&r.problem),
                    }));
                } else if r.intact {
                    println!(
                        "audit trail intact: {} records, hashes and token MACs verified",
                        r.records
                    );
                } else {
                    println!(
                        "audit trail BROKEN at record {}: {} ({} records before it verified)",
                        r.first_broken_seq, r.problem, r.records
                    );
                }
                if !r.intact {
                    return Err(ClientError::Status {
                        code: tonic::Code::DataLoss,
                        message: format!("audit trail broken at record {}", r.first_broken_seq),
                    });
                }
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn values_parse() {
        assert_eq!(parse_u32("0x0A01"), Ok(0x0A01));
        assert_eq!(parse_u32("2561"), Ok(2561));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        assert!(parse_time("tomorrow").is_err());
        let keys = tie_keys(&["key-a:supply".to_string(), "key-k:hold".to_string()]).unwrap();
        assert_eq!(keys[1].mode, pb::TieUpMode::Hold as i32);
        assert!(tie_keys(&["key-a".to_string()]).is_err());
        assert!(tie_keys(&["key-a:lend".to_string()]).is_err());
    }
}
