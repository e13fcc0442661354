//! The reader side that holds no key: a cybershop or the loading portal relays
//! bytes between brandkms (which authenticates the card and seals the command)
//! and the card. `cybershop purchase` debits a card; `loading-portal load` loads
//! one for an issuer that is not online (a proxy load). The card is the software
//! simulator's file.

use std::path::PathBuf;
use std::process::ExitCode;

use brandkms_proto::v1 as pb;
use clap::Parser;

use crate::card::{Card, CardError};
use crate::kmsctl::ConnectionArgs;
use crate::sdk::{Client, ClientError};

/// What a card transaction can fail on.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// brandkms refused or failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The card refused.
    #[error("card: {0}")]
    Card(#[from] CardError),
    /// brandkms did not authenticate the card.
    #[error("the card was not authenticated (wrong card key?)")]
    CardRejected,
    /// The card's receipt did not verify.
    #[error("the card's receipt is not genuine")]
    ReceiptNotGenuine,
    /// Bad input.
    #[error("{0}")]
    Usage(String),
}

/// A whole transaction's result.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// The session.
    pub session_id: String,
    /// The sealed command.
    pub sealed: pb::SealedCommand,
    /// The verified receipt.
    pub receipt: pb::ReceiptVerification,
}

/// The service code brandkms reports for `alias` among the caller's keys.
pub async fn service_code(client: &Client, alias: &str) -> Result<u16, TransactionError> {
    let keys = client
        .distribution()
        .list_entitled_keys_all(pb::ListEntitledKeysRequest::default())
        .await?;
    keys.iter()
        .find(|k| k.alias == alias)
        .and_then(|k| k.service_code)
        .and_then(|c| u16::try_from(c).ok())
        .ok_or_else(|| {
            TransactionError::Usage(format!("no tie-up of yours in force covers {alias:?}"))
        })
}

/// Passes 1 to 3 between brandkms and the card; returns the session id.
pub async fn authenticate(
    client: &Client,
    card: &mut Card,
    alias: &str,
    service_code: u16,
) -> Result<String, TransactionError> {
    let version = card.key_version(service_code).ok_or_else(|| {
        TransactionError::Usage(format!(
            "the card holds no key for {alias} ({service_code:#06X})"
        ))
    })?;
    let mut cards = client.cards();
    let ch = cards
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: alias.to_string(),
            key_version: version,
            card_id: card.cid()?.to_vec(),
        })
        .await?;
    let rb: [u8; 8] = ch
        .rb
        .as_slice()
        .try_into()
        .map_err(|_| TransactionError::Usage("RB is not 8 bytes".into()))?;
    let c1 = card.answer_challenge(service_code, version, &rb)?;
    let r = cards
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id,
            c1: c1.to_vec(),
        })
        .await?;
    if !r.authenticated {
        return Err(TransactionError::CardRejected);
    }
    let c2: [u8; 16] =
        r.c2.as_slice()
            .try_into()
            .map_err(|_| TransactionError::Usage("C2 is not 16 bytes".into()))?;
    card.accept_service(&c2)?;
    Ok(r.session_id)
}

/// Seals `op` in the session, has the card process it, and verifies its receipt.
pub async fn command(
    client: &Client,
    card: &mut Card,
    session_id: &str,
    op: pb::CardOp,
    amount: u64,
    currency: &str,
) -> Result<(pb::SealedCommand, pb::ReceiptVerification), TransactionError> {
    let mut cards = client.cards();
    let sealed = cards
        .seal_command(pb::SealCommandRequest {
            session_id: session_id.to_string(),
            op: op as i32,
            amount,
            currency: currency.to_string(),
        })
        .await?;
    let (receipt, mac) = card.process(sealed.counter, &sealed.payload, &sealed.mac)?;
    let verified = cards
        .verify_receipt(pb::VerifyReceiptRequest {
            session_id: session_id.to_string(),
            counter: sealed.counter,
            payload: receipt.to_vec(),
            mac: mac.to_vec(),
        })
        .await?;
    if !verified.genuine {
        return Err(TransactionError::ReceiptNotGenuine);
    }
    Ok((sealed, verified))
}

/// A whole card transaction: authenticate, seal, deliver, verify.
pub async fn transact(
    client: &Client,
    card: &mut Card,
    alias: &str,
    service_code: u16,
    op: pb::CardOp,
    amount: u64,
    currency: &str,
) -> Result<Transaction, TransactionError> {
    let session_id = authenticate(client, card, alias, service_code).await?;
    let (sealed, receipt) = command(client, card, &session_id, op, amount, currency).await?;
    Ok(Transaction {
        session_id,
        sealed,
        receipt,
    })
}

fn status_text(s: i32) -> String {
    pb::ReceiptStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("RECEIPT_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

#[derive(Debug, Parser)]
struct CardArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The card file (the software card simulator's state).
    #[arg(long)]
    card: PathBuf,
    /// The card-access key the transaction uses.
    #[arg(long)]
    alias: String,
    /// Minor units.
    #[arg(long)]
    amount: u64,
    /// ISO 4217 currency.
    #[arg(long, default_value = "JPY")]
    currency: String,
}

/// `cybershop purchase`: the seed's online purchase.
#[derive(Debug, Parser)]
#[command(
    name = "cybershop",
    version,
    about = "cybershop: a cybershop's online purchase; brandkms authenticates the card and seals the DEBIT"
)]
enum CybershopCli {
    /// Debit the card by AMOUNT.
    Purchase(CardArgs),
}

/// `loading-portal load`: a proxy load for an offline issuer.
#[derive(Debug, Parser)]
#[command(
    name = "loading-portal",
    version,
    about = "loading-portal: brandkms loads a card on behalf of an offline issuer"
)]
enum PortalCli {
    /// Load AMOUNT onto the card.
    Load(CardArgs),
}

async fn run_card(args: CardArgs, op: pb::CardOp) -> Result<(), TransactionError> {
    let client = Client::connect(&args.connection.resolve()?).await?;
    let mut card = Card::load(&args.card)?;
    let service_code = service_code(&client, &args.alias).await?;
    let result = transact(
        &client,
        &mut card,
        &args.alias,
        service_code,
        op,
        args.amount,
        &args.currency,
    )
    .await;
    // The card's state (balance, counters) is kept whatever happened.
    card.save(&args.card)?;
    let t = result?;
    println!(
        "session {}: {} {} {} (counter {}, txn {}){}",
        t.session_id,
        op.as_str_name()
            .trim_start_matches("CARD_OP_")
            .to_ascii_lowercase(),
        args.amount,
        args.currency,
        t.sealed.counter,
        hex::encode_upper(&t.sealed.txn_id),
        if t.sealed.proxy_load_issuer.is_empty() {
            String::new()
        } else {
            format!(", proxy load for {}", t.sealed.proxy_load_issuer)
        }
    );
    println!(
        "receipt genuine: status {}, card balance {} {}",
        status_text(t.receipt.status),
        t.receipt.balance,
        t.receipt.currency
    );
    if t.receipt.status != pb::ReceiptStatus::Ok as i32 {
        return Err(TransactionError::Usage(format!(
            "the card refused: {}",
            status_text(t.receipt.status)
        )));
    }
    Ok(())
}

fn exit(name: &str, r: Result<(), TransactionError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the `cybershop` binary.
pub async fn cybershop_main() -> ExitCode {
    let CybershopCli::Purchase(args) = CybershopCli::parse();
    exit("cybershop", run_card(args, pb::CardOp::Debit).await)
}

/// Entry point of the `loading-portal` binary.
pub async fn portal_main() -> ExitCode {
    let PortalCli::Load(args) = PortalCli::parse();
    exit("loading-portal", run_card(args, pb::CardOp::Load).await)
}

/// The `cybershop` command line, for man pages and shell completions.
pub fn cybershop_command() -> clap::Command {
    <CybershopCli as clap::CommandFactory>::command()
}

/// The `loading-portal` command line, for man pages and shell completions.
pub fn portal_command() -> clap::Command {
    <PortalCli as clap::CommandFactory>::command()
}
