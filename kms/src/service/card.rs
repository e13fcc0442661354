//! The `CardAuthentication` and `ProxyLoading` services. Inputs are checked
//! (lengths, op, amount, currency) before anything is read or written; a
//! malformed request gets `InvalidArgument` and changes nothing but its audit record.

use brandkms_proto::v1 as pb;
use brandkms_proto::v1::card_authentication_server::CardAuthentication;
use brandkms_proto::v1::proxy_loading_server::ProxyLoading;
use tonic::{Request, Response, Status};

use super::convert::{hex_bytes, name, optional_name, optional_time, version};
use super::paging::{PageRequest, numeric_key};
use super::{audited, audited_read, caller};
use crate::hsm::CMAC_LEN;
use crate::ops::card_protocol::{Op, PAYLOAD_LEN};
use crate::ops::cards::{self as ops, Completed, MAX_AMOUNT, Verified};
use crate::ops::{AppState, OpsError, Shared, invalid, quote};
use crate::store::cards::ProxyLoadRecord;

/// The `CardAuthentication` and `ProxyLoading` services.
#[derive(Debug, Clone)]
pub struct CardService {
    state: Shared,
}

impl CardService {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        CardService { state }
    }

    fn state(&self) -> &AppState {
        &self.state
    }
}

fn exactly<const N: usize>(what: &str, bytes: &[u8]) -> Result<[u8; N], OpsError> {
    <[u8; N]>::try_from(bytes)
        .map_err(|_| invalid(format!("{what} must be {N} bytes, not {}", bytes.len())))
}

fn op(v: i32) -> Result<Op, OpsError> {
    match pb::CardOp::try_from(v) {
        Ok(pb::CardOp::Load) => Ok(Op::Load),
        Ok(pb::CardOp::Debit) => Ok(Op::Debit),
        Ok(pb::CardOp::ReadBalance) => Ok(Op::ReadBalance),
        Ok(pb::CardOp::Unspecified) => Err(invalid("op is required: LOAD, DEBIT or READ_BALANCE")),
        Err(_) => Err(invalid(format!("unknown op {v}"))),
    }
}

fn amount(op: Op, amount: u64) -> Result<u64, OpsError> {
    match op {
        Op::ReadBalance if amount != 0 => Err(invalid("READ_BALANCE carries amount 0")),
        Op::Load | Op::Debit if amount == 0 => Err(invalid("amount must be at least 1")),
        _ if amount > MAX_AMOUNT => Err(invalid(format!(
            "amount {amount} is out of range (at most {MAX_AMOUNT})"
        ))),
        _ => Ok(amount),
    }
}

fn currency(c: &str) -> Result<[u8; 3], OpsError> {
    match <[u8; 3]>::try_from(c.as_bytes()) {
        Ok(b) if b.iter().all(u8::is_ascii_uppercase) => Ok(b),
        _ => Err(invalid(format!(
            "currency {} must be three ISO 4217 capital letters (e.g. JPY)",
            quote(c)
        ))),
    }
}

#[tonic::async_trait]
impl CardAuthentication for CardService {
    async fn begin_authentication(
        &self,
        request: Request<pb::BeginAuthenticationRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        const OP: &str = "CardAuthentication/BeginAuthentication";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let alias = name("alias", &r.alias)?;
            let cid = exactly::<8>("card_id", &r.card_id)?;
            ops::begin(self.state(), &caller, &alias, version(r.key_version), cid).await
        }
        .await;
        let key = Some((r.alias.as_str(), version(r.key_version)));
        let begun = audited(self.state(), &caller, OP, key, result).await?;
        Ok(Response::new(pb::Challenge {
            challenge_id: begun.challenge.id,
            rb: begun.rb.to_vec(),
            service_code: u32::from(begun.service_code),
            key_version: begun.challenge.version,
            expires_at: begun.challenge.expires_at,
        }))
    }

    async fn complete_authentication(
        &self,
        request: Request<pb::CompleteAuthenticationRequest>,
    ) -> Result<Response<pb::AuthenticationResult>, Status> {
        const OP: &str = "CardAuthentication/CompleteAuthentication";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut seen: Option<(String, u32)> = None;
        let result = async {
            let id = name("challenge_id", &r.challenge_id)?;
            let c1 = exactly::<16>("c1", &r.c1)?;
            ops::complete(self.state(), &caller, &id, c1, &mut seen).await
        }
        .await;
        let completed = audited(self.state(), &caller, OP, seen_key(&seen), result).await?;
        Ok(Response::new(match completed {
            Completed::Authenticated { c2, session } => pb::AuthenticationResult {
                authenticated: true,
                c2: c2.to_vec(),
                session_id: session.id,
                expires_at: session.expires_at,
            },
            Completed::Rejected => pb::AuthenticationResult::default(),
        }))
    }

    async fn seal_command(
        &self,
        request: Request<pb::SealCommandRequest>,
    ) -> Result<Response<pb::SealedCommand>, Status> {
        const OP: &str = "CardAuthentication/SealCommand";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut seen: Option<(String, u32)> = None;
        let result = async {
            let session = name("session_id", &r.session_id)?;
            let op = op(r.op)?;
            let amount = amount(op, r.amount)?;
            let currency = currency(&r.currency)?;
            ops::seal(
                self.state(),
                &caller,
                &session,
                op,
                amount,
                currency,
                &mut seen,
            )
            .await
        }
        .await;
        let sealed = audited(self.state(), &caller, OP, seen_key(&seen), result).await?;
        Ok(Response::new(pb::SealedCommand {
            payload: sealed.payload.to_vec(),
            counter: sealed.counter,
            txn_id: sealed.txn_id.to_vec(),
            mac: sealed.mac.to_vec(),
            proxy_load_issuer: sealed.proxy_load_issuer.unwrap_or_default(),
        }))
    }

    async fn verify_receipt(
        &self,
        request: Request<pb::VerifyReceiptRequest>,
    ) -> Result<Response<pb::ReceiptVerification>, Status> {
        const OP: &str = "CardAuthentication/VerifyReceipt";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let mut seen: Option<(String, u32)> = None;
        let result = async {
            let session = name("session_id", &r.session_id)?;
            let payload = exactly::<PAYLOAD_LEN>("payload", &r.payload)?;
            let mac = exactly::<CMAC_LEN>("mac", &r.mac)?;
            ops::verify_receipt(
                self.state(),
                &caller,
                &session,
                r.counter,
                payload,
                mac,
                &mut seen,
            )
            .await
        }
        .await;
        let verified = audited(self.state(), &caller, OP, seen_key(&seen), result).await?;
        Ok(Response::new(match verified {
            Verified::Genuine(receipt) => pb::ReceiptVerification {
                genuine: true,
                status: receipt_status(receipt.status),
                balance: receipt.balance,
                currency: String::from_utf8_lossy(&receipt.currency).into_owned(),
                txn_id: receipt.txn_id.to_vec(),
            },
            Verified::NotGenuine => pb::ReceiptVerification::default(),
        }))
    }
}

/// The card's status byte as the wire enum (the byte plus one; UNSPECIFIED is
/// never a card's answer).
fn receipt_status(byte: u8) -> i32 {
    match pb::ReceiptStatus::try_from(i32::from(byte) + 1) {
        Ok(pb::ReceiptStatus::Unspecified) | Err(_) => pb::ReceiptStatus::Unsupported as i32,
        Ok(status) => status as i32,
    }
}

fn proxy_load_status(stored: &str) -> i32 {
    let status = match stored {
        "pending" => pb::ProxyLoadStatus::Pending,
        "confirmed" => pb::ProxyLoadStatus::Confirmed,
        _ => pb::ProxyLoadStatus::Unspecified,
    };
    status as i32
}

fn proxy_load(p: ProxyLoadRecord) -> pb::ProxyLoad {
    pb::ProxyLoad {
        txn_id: hex_bytes(&p.txn_id),
        issuer: p.issuer,
        requested_by: p.requested_by,
        alias: p.alias,
        key_version: p.version,
        card_id: hex_bytes(&p.card_id),
        amount: p.amount,
        currency: p.currency,
        status: proxy_load_status(&p.status),
        at: p.at,
        confirmed_at: p.confirmed_at.unwrap_or(0),
    }
}

/// Count and total per (issuer, currency, status).
type Totals = std::collections::BTreeMap<(String, String, String), (u64, u64)>;

/// Count and total per (issuer, currency, status). A total is exact or refused:
/// settlement reconciles these figures against the issuers' own, so a sum that
/// does not fit the 64-bit amount every other field of the API (and a
/// settlement system's ledger) carries is an anomaly to investigate, answered
/// `FailedPrecondition` naming the group and telling the caller to summarise a
/// shorter period, never a rounded or saturated figure. (Each load is at most
/// `MAX_AMOUNT`, 2^63-1, so a period of one load always sums.)
fn summarize(list: Vec<ProxyLoadRecord>) -> Result<Totals, OpsError> {
    let mut totals = Totals::new();
    for p in list {
        let group = (p.issuer, p.currency, p.status);
        let t = totals.entry(group.clone()).or_default();
        match (t.0.checked_add(1), t.1.checked_add(p.amount)) {
            (Some(count), Some(total)) => *t = (count, total),
            _ => {
                let (issuer, currency, status) = group;
                return Err(OpsError::FailedPrecondition(format!(
                    "the total of issuer {issuer}'s {status} {currency} proxy loads in this period exceeds {} minor units: summarise shorter periods (start_time, end_time) and add their totals",
                    u64::MAX
                )));
            }
        }
    }
    Ok(totals)
}

/// The proxy loads `caller` may see that match the filters.
async fn loads(
    state: &AppState,
    caller: &crate::ops::Caller,
    issuer: &str,
    start_time: i64,
    end_time: i64,
) -> Result<Vec<ProxyLoadRecord>, OpsError> {
    let asked = optional_name("issuer", issuer)?;
    let issuer = ops::proxy_load_scope(caller, asked.as_deref())?;
    let from = optional_time("start_time", start_time)?;
    let until = optional_time("end_time", end_time)?;
    ops::proxy_loads(state, issuer.as_deref(), from, until).await
}

#[tonic::async_trait]
impl ProxyLoading for CardService {
    async fn list_proxy_loads(
        &self,
        request: Request<pb::ListProxyLoadsRequest>,
    ) -> Result<Response<pb::ListProxyLoadsResponse>, Status> {
        const OP: &str = "ProxyLoading/ListProxyLoads";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let filters = [
                r.issuer.as_str(),
                &r.start_time.to_string(),
                &r.end_time.to_string(),
            ];
            let page = PageRequest::new("proxy-loads", &filters, r.page_size, &r.page_token)?;
            let list = loads(self.state(), &caller, &r.issuer, r.start_time, r.end_time).await?;
            Ok(page.page(list, |p| format!("{}|{}", numeric_key(p.at), p.txn_id)))
        }
        .await;
        let page = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ListProxyLoadsResponse {
            loads: page.items.into_iter().map(proxy_load).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn summarize_proxy_loads(
        &self,
        request: Request<pb::SummarizeProxyLoadsRequest>,
    ) -> Result<Response<pb::ProxyLoadSummary>, Status> {
        const OP: &str = "ProxyLoading/SummarizeProxyLoads";
        let caller = caller(&request)?;
        let r = request.into_inner();
        let result = async {
            let list = loads(self.state(), &caller, &r.issuer, r.start_time, r.end_time).await?;
            summarize(list)
        }
        .await;
        let totals = audited_read(self.state(), &caller, OP, None, result).await?;
        Ok(Response::new(pb::ProxyLoadSummary {
            start_time: r.start_time,
            end_time: r.end_time,
            totals: totals
                .into_iter()
                .map(
                    |((issuer, currency, status), (count, total))| pb::ProxyLoadTotal {
                        issuer,
                        currency,
                        status: proxy_load_status(&status),
                        count,
                        total,
                    },
                )
                .collect(),
        }))
    }
}

/// The key a card call's record names: the challenge's or session's, once read.
fn seen_key(seen: &Option<(String, u32)>) -> Option<(&str, Option<u32>)> {
    seen.as_ref()
        .map(|(alias, version)| (alias.as_str(), Some(*version)))
}
