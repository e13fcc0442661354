//! `kmsctl audit`: the audit trail.

use brandkms_proto::v1 as pb;
use clap::Subcommand;
use serde_json::json;

use super::output::Output;
use super::parse::parse_time;
use crate::sdk::{Client, ClientError};

/// `kmsctl audit ...`.
#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// List records, oldest first (the newest LIMIT, page after page).
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
        /// Only the records of this request (the x-request-id its caller
        /// received; the id of its log lines).
        #[arg(long)]
        request_id: Option<String>,
        /// At most this many, the newest (default 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Verify the whole chain (hashes and token MACs).
    Verify,
}

/// Runs an `audit` subcommand; a broken chain is a `DataLoss` error after the
/// report.
pub(super) async fn run(
    command: AuditCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut admin = client.admin();
    match command {
        AuditCommand::List {
            from,
            until,
            caller,
            operation,
            request_id,
            limit,
        } => {
            let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut request = pb::ListAuditRequest {
                start_time: from.unwrap_or(0),
                end_time: until.unwrap_or(0),
                caller: caller.unwrap_or_default(),
                operation: operation.unwrap_or_default(),
                request_id: request_id.unwrap_or_default(),
                page_size: limit.min(1000),
                page_token: String::new(),
            };
            // Pages come newest first; print the newest `limit`, oldest first.
            let mut records = Vec::new();
            while records.len() < wanted {
                let page = admin.list_audit(request.clone()).await?;
                records.extend(page.records);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            records.truncate(wanted);
            records.reverse();
            out.audit(&records);
        }
        AuditCommand::Verify => {
            let r = admin
                .verify_audit(pb::VerifyAuditRequest::default())
                .await?;
            if out.json {
                let chains: Vec<_> = r
                    .chains
                    .iter()
                    .map(|c| {
                        json!({
                            "chain": c.chain,
                            "instance": c.instance,
                            "records": c.records,
                            "anchored_seq": c.anchored_seq,
                            "intact": c.intact,
                            "first_broken_seq": (!c.intact).then_some(c.first_broken_seq),
                            "problem": (!c.intact).then_some(&c.problem),
                        })
                    })
                    .collect();
                out.print_json(&json!({
                    "intact": r.intact,
                    "records": r.records,
                    "first_broken_chain": (!r.intact).then_some(&r.first_broken_chain),
                    "first_broken_seq": (!r.intact).then_some(r.first_broken_seq),
                    "problem": (!r.intact).then_some(&r.problem),
                    "chains": chains,
                }));
            } else {
                for c in &r.chains {
                    let anchored = c.anchored_seq.map_or(
                        "no anchor visible: newest records not vouched for".to_string(),
                        |s| format!("anchored at {s}"),
                    );
                    if c.intact {
                        println!(
                            "chain {} ({}): {} records, {anchored}: intact",
                            c.chain, c.instance, c.records
                        );
                    } else {
                        println!(
                            "chain {} ({}): BROKEN at record {}: {} ({anchored})",
                            c.chain, c.instance, c.first_broken_seq, c.problem
                        );
                    }
                }
                if r.intact {
                    println!(
                        "audit trail intact: {} chains, {} records, hashes, token MACs and anchors verified",
                        r.chains.len(),
                        r.records
                    );
                } else {
                    println!(
                        "audit trail BROKEN: chain {} at record {}: {}",
                        r.first_broken_chain, r.first_broken_seq, r.problem
                    );
                }
            }
            if !r.intact {
                return Err(ClientError::local(
                    tonic::Code::DataLoss,
                    format!(
                        "audit trail broken: chain {} at record {}",
                        r.first_broken_chain, r.first_broken_seq
                    ),
                ));
            }
        }
    }
    Ok(())
}
