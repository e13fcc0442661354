//! `issuer sync`: with a PKCS#11 token of the issuer's own, make (once) an RSA key
//! pair in it, establish a transport key with brandkms (unwrapped into the token),
//! then fetch every key the issuer's supply tie-ups cover, unwrap each into the
//! token and check its KCV against the one brandkms delivered.

use std::path::PathBuf;
use std::process::ExitCode;

use brandkms_proto::v1 as pb;
use clap::{Parser, Subcommand};
use cryptoki::object::KeyType;
use zeroize::Zeroizing;

use crate::card::{Card, CardKeyEntry};
use crate::kmsctl::ConnectionArgs;
use crate::sdk::{Client, ClientError};
use crate::token::{Token, TokenError};

/// issuer: receive brandkms keys into the participant's own token, and manage the
/// consents an issuer gives to third parties.
#[derive(Debug, Parser)]
#[command(name = "issuer", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Establish a transport key (once) and fetch every key the supply tie-ups
    /// cover into the participant's own token, checking each KCV.
    Sync(SyncArgs),
    /// Consents this issuer gives to third parties.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Personalise a (simulated) card: its card key is derived in this token from
    /// a delivered master and written, with a balance, into a card file.
    Personalise(PersonaliseArgs),
    /// Write this participant's RSA public key (SPKI DER; the key pair is made
    /// in the token on first use) and print its SHA-256 fingerprint, which the
    /// brand's officers check with you out of band before they mark the key
    /// trusted (`kmsctl entity trust-key`). Connects to nothing.
    PublicKey {
        #[command(flatten)]
        token: TokenArgs,
        /// Where to write the SPKI DER.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PersonaliseArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The card-access key (delivered by `issuer sync`).
    #[arg(long)]
    alias: String,
    /// Its version (default: the current one).
    #[arg(long)]
    version: Option<u32>,
    /// The card's id, 16 hex digits.
    #[arg(long)]
    card_id: String,
    /// Initial balance, minor units.
    #[arg(long, default_value_t = 0)]
    balance: u64,
    /// Maximum balance, minor units.
    #[arg(long, default_value_t = 100_000)]
    max_balance: u64,
    /// ISO 4217 currency.
    #[arg(long, default_value = "JPY")]
    currency: String,
    /// The card file to write (0600).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The participant's PKCS#11 module.
    #[arg(long, env = "ISSUER_PKCS11_MODULE")]
    module: PathBuf,
    /// The label of the issuer's token.
    #[arg(long, env = "ISSUER_TOKEN_LABEL")]
    token_label: String,
    /// Environment variable holding the token's user PIN.
    #[arg(long, default_value = "ISSUER_PIN")]
    pin_env: String,
}

impl TokenArgs {
    fn open(&self) -> Result<Token, Error> {
        let pin =
            Zeroizing::new(std::env::var(&self.pin_env).map_err(|_| {
                Error::Usage(format!("set {} to the token's user PIN", self.pin_env))
            })?);
        Ok(Token::open(&self.module, &self.token_label, &pin)?)
    }
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Consent that THIRD_PARTY receive KEY.
    Grant {
        /// The third party (e.g. a bank centre this issuer brought in).
        #[arg(long)]
        third_party: String,
        /// The key.
        #[arg(long)]
        alias: String,
    },
    /// Withdraw a consent.
    Revoke {
        /// The third party.
        #[arg(long)]
        third_party: String,
        /// The key.
        #[arg(long)]
        alias: String,
    },
    /// Consents that concern this issuer.
    List,
}

#[derive(Debug, clap::Args)]
struct SyncArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// Establish a new transport key even if the token has one.
    #[arg(long)]
    new_transport_key: bool,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Usage(String),
    #[error("KCV mismatch for {alias} v{version}: delivered {delivered}, unwrapped {unwrapped}")]
    KcvMismatch {
        alias: String,
        version: u32,
        delivered: String,
        unwrapped: String,
    },
}

const TRANSPORT_LABEL: &str = "brandkms-participant/transport";

/// Entry point of the `issuer` binary.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("issuer: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::PublicKey { token, out } = &cli.command {
        let spki = token.open()?.rsa_public_key()?;
        std::fs::write(out, &spki)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", out.display())))?;
        let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki));
        println!("{}: RSA public key, SHA-256 {fingerprint}", out.display());
        return Ok(());
    }
    let client = Client::connect(&cli.connection.resolve()?).await?;
    match cli.command {
        Command::Sync(args) => sync(&client, args).await,
        Command::Consent(c) => consent(&client, c).await,
        Command::Personalise(p) => personalise(&client, p).await,
        Command::PublicKey { .. } => Ok(()),
    }
}

async fn consent(client: &Client, command: ConsentCommand) -> Result<(), Error> {
    let mut dist = client.distribution();
    let show = |c: &pb::Consent| {
        println!(
            "{} -> {} on {}: {}",
            c.issuer,
            c.third_party,
            c.alias,
            if c.standing { "standing" } else { "revoked" }
        );
    };
    let request = |third_party: String, alias: String| pb::ConsentRequest {
        issuer: String::new(),
        third_party,
        alias,
    };
    match command {
        ConsentCommand::Grant { third_party, alias } => {
            show(&dist.grant_consent(request(third_party, alias)).await?)
        }
        ConsentCommand::Revoke { third_party, alias } => {
            show(&dist.revoke_consent(request(third_party, alias)).await?)
        }
        ConsentCommand::List => {
            for c in dist
                .list_consents_all(pb::ListConsentsRequest::default())
                .await?
            {
                show(&c);
            }
        }
    }
    Ok(())
}

async fn sync(client: &Client, cli: SyncArgs) -> Result<(), Error> {
    let token = cli.token.open()?;
    let mut dist = client.distribution();

    if cli.new_transport_key || !token.has_key(TRANSPORT_LABEL)? {
        let spki = token.rsa_public_key()?;
        let t = dist
            .establish_transport_key(pb::EstablishTransportKeyRequest {
                rsa_public_key_spki_der: spki,
            })
            .await?;
        let kcv = token.store_transport_key(&t.wrapped_key, TRANSPORT_LABEL)?;
        if kcv != hex::encode_upper(&t.kcv) {
            return Err(Error::KcvMismatch {
                alias: t.alias,
                version: t.version,
                delivered: hex::encode_upper(&t.kcv),
                unwrapped: kcv,
            });
        }
        println!(
            "transport key {} v{} established, KCV {kcv} matches",
            t.alias, t.version
        );
    }

    let entitled = dist
        .list_entitled_keys_all(pb::ListEntitledKeysRequest::default())
        .await?;
    // A key refused (compromised, outside its cryptoperiod, ...) does not
    // stop the others; the sync still fails at the end, naming the first.
    let mut refused = None;
    for entry in entitled
        .iter()
        .filter(|e| e.mode == pb::TieUpMode::Supply as i32)
    {
        let w = match dist
            .request_key(pb::RequestKeyRequest {
                alias: entry.alias.clone(),
                version: 0,
            })
            .await
        {
            Ok(w) => w,
            Err(e @ ClientError::Status { .. }) => {
                eprintln!("{} not synced: {e}", entry.alias);
                refused.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let key_type = match pb::KeyAlgorithm::try_from(w.algorithm) {
            Ok(pb::KeyAlgorithm::Des) => KeyType::DES,
            Ok(pb::KeyAlgorithm::Tdes3) => KeyType::DES3,
            _ => KeyType::DES2,
        };
        let label = format!("brandkms/{}/v{}", w.alias, w.version);
        // Under this participant's trusted RSA key, or under its transport key.
        let under = if w.wrapping.starts_with("RSA-OAEP") {
            crate::token::Unwrapping::RsaOaep
        } else {
            crate::token::Unwrapping::AesKwp(TRANSPORT_LABEL)
        };
        let kcv = token.store_delivered_key(under, &w.wrapped_key, key_type, &label)?;
        if kcv != hex::encode_upper(&w.kcv) {
            return Err(Error::KcvMismatch {
                alias: w.alias,
                version: w.version,
                delivered: hex::encode_upper(&w.kcv),
                unwrapped: kcv,
            });
        }
        println!(
            "{} v{} ({}) stored in token as {label}, KCV {kcv} matches",
            w.alias, w.version, w.wrapping
        );
    }
    match refused {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn personalise(client: &Client, p: PersonaliseArgs) -> Result<(), Error> {
    let cid: [u8; 8] = hex::decode(&p.card_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            Error::Usage(format!("--card-id {:?}: expected 16 hex digits", p.card_id))
        })?;
    let entitled = client
        .distribution()
        .list_entitled_keys_all(pb::ListEntitledKeysRequest::default())
        .await?;
    let e = entitled
        .iter()
        .find(|e| e.alias == p.alias)
        .ok_or_else(|| Error::Usage(format!("no tie-up of yours covers {:?}", p.alias)))?;
    let service_code = e
        .service_code
        .and_then(|c| u16::try_from(c).ok())
        .ok_or_else(|| Error::Usage(format!("{:?} has no service code", p.alias)))?;
    let version = p.version.unwrap_or(e.current_version);
    let token = p.token.open()?;
    let label = format!("brandkms/{}/v{version}", p.alias);
    let kc = token.diversify(&label, &cid)?;
    let card = Card::personalise(
        cid,
        vec![CardKeyEntry {
            service_code,
            version,
            key: hex::encode_upper(kc.as_slice()),
        }],
        p.balance,
        p.max_balance,
        &p.currency,
    );
    card.save(&p.out).map_err(|e| Error::Usage(e.to_string()))?;
    println!(
        "card {} personalised for {} v{version} (service code {service_code:#06X}), balance {} {}: {}",
        card.card_id,
        p.alias,
        p.balance,
        p.currency,
        p.out.display()
    );
    Ok(())
}

/// The `issuer` command line, for man pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
