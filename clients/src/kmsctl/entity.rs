//! `kmsctl entity`: participants.

use brandkms_proto::v1 as pb;
use clap::{Subcommand, ValueEnum};

use super::output::Output;
use crate::sdk::{Client, ClientError};

/// A participant's kind (`ENTITY_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum KindArg {
    Issuer,
    PosCenter,
    MmkCenter,
    BankCenter,
    MerchantTerminal,
    Cybershop,
    LoadingPortal,
    ClearingHouse,
    Officer,
}

impl From<KindArg> for pb::EntityKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Issuer => pb::EntityKind::Issuer,
            KindArg::PosCenter => pb::EntityKind::PosCenter,
            KindArg::MmkCenter => pb::EntityKind::MmkCenter,
            KindArg::BankCenter => pb::EntityKind::BankCenter,
            KindArg::MerchantTerminal => pb::EntityKind::MerchantTerminal,
            KindArg::Cybershop => pb::EntityKind::Cybershop,
            KindArg::LoadingPortal => pb::EntityKind::LoadingPortal,
            KindArg::ClearingHouse => pb::EntityKind::ClearingHouse,
            KindArg::Officer => pb::EntityKind::Officer,
        }
    }
}

/// `kmsctl entity ...`.
#[derive(Debug, Subcommand)]
pub(super) enum EntityCommand {
    /// Register a participant (an officer: held for a second officer under
    /// dual control).
    Register {
        /// Id: [a-z0-9._-]; its certificate's SAN URI is urn:brandkms:entity:<id>.
        id: String,
        /// issuer, pos_center, mmk_center, bank_center, merchant_terminal,
        /// cybershop, loading_portal, clearing_house or officer.
        #[arg(long, value_enum, ignore_case = true)]
        kind: KindArg,
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
    /// Resume a participant (an officer: held for a second officer under dual
    /// control).
    Resume {
        /// Id.
        id: String,
    },
    /// The key ceremony: make a participant's RSA public key the trusted key
    /// its deliveries are wrapped under. The token's security officer marks it
    /// CKA_TRUSTED with the SO PIN (read from --so-pin-file, else from the
    /// first line of standard input; used for this call only, never kept).
    TrustKey {
        /// The participant.
        id: String,
        /// Its RSA public key, SPKI DER, as `issuer public-key` writes it.
        #[arg(long)]
        spki: std::path::PathBuf,
        /// The SHA-256 fingerprint of the SPKI (hex) you checked with the
        /// participant out of band.
        #[arg(long)]
        fingerprint: String,
        /// A file holding the token's security-officer PIN.
        #[arg(long)]
        so_pin_file: Option<std::path::PathBuf>,
    },
    /// List participants.
    List {
        /// Only this kind.
        #[arg(long, value_enum, ignore_case = true)]
        kind: Option<KindArg>,
    },
}

/// Runs an `entity` subcommand.
pub(super) async fn run(
    command: EntityCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut admin = client.admin();
    match command {
        EntityCommand::Register {
            id,
            kind,
            name,
            online,
            tamper_resistant,
        } => {
            let request = pb::RegisterEntityRequest {
                id,
                kind: pb::EntityKind::from(kind) as i32,
                name,
                online,
                tamper_resistant,
            };
            // Officers have a call of their own, which dual control may hold.
            if kind == KindArg::Officer {
                out.entity_change(admin.register_officer(request).await?);
            } else {
                out.entities(&[admin.register_entity(request).await?]);
            }
        }
        EntityCommand::Suspend { id } => {
            out.entities(&[admin.suspend_entity(pb::EntityRef { id }).await?])
        }
        EntityCommand::Resume { id } => {
            let officers = admin
                .list_entities_all(pb::ListEntitiesRequest {
                    kind: pb::EntityKind::Officer as i32,
                    ..Default::default()
                })
                .await?;
            if officers.iter().any(|o| o.id == id) {
                out.entity_change(admin.resume_officer(pb::EntityRef { id }).await?);
            } else {
                out.entities(&[admin.resume_entity(pb::EntityRef { id }).await?]);
            }
        }
        EntityCommand::TrustKey {
            id,
            spki,
            fingerprint,
            so_pin_file,
        } => {
            let spki_der = read_spki(&spki)?;
            let mut so_pin = zeroize::Zeroizing::new(String::new());
            match so_pin_file {
                Some(path) => {
                    *so_pin = std::fs::read_to_string(&path).map_err(|e| {
                        ClientError::Config(format!("cannot read {}: {e}", path.display()))
                    })?;
                }
                None => {
                    std::io::stdin()
                        .read_line(&mut so_pin)
                        .map_err(|e| ClientError::Config(format!("cannot read the SO PIN: {e}")))?;
                }
            }
            let kept = so_pin.trim_end_matches(['\r', '\n']).len();
            so_pin.truncate(kept);
            // The request's copy goes to the encoder (and is freed there); the
            // one read is wiped when `so_pin` drops.
            let key = admin
                .trust_participant_key(pb::TrustParticipantKeyRequest {
                    entity_id: id,
                    spki_der,
                    fingerprint_sha256: fingerprint,
                    so_pin: so_pin.to_string(),
                })
                .await?;
            out.key(&key);
        }
        EntityCommand::List { kind } => {
            let kind = kind.map_or(0, |k| pb::EntityKind::from(k) as i32);
            out.entities(
                &admin
                    .list_entities_all(pb::ListEntitiesRequest {
                        kind,
                        ..Default::default()
                    })
                    .await?,
            );
        }
    }
    Ok(())
}

/// An SPKI DER file (the exact bytes the fingerprint was taken of).
fn read_spki(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
    if bytes.starts_with(b"-----BEGIN") {
        return Err(ClientError::Config(format!(
            "{}: PEM; give the DER file whose SHA-256 was checked (issuer public-key writes it)",
            path.display()
        )));
    }
    Ok(bytes)
}
