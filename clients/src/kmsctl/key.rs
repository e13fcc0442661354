//! `kmsctl key`: card-access, settlement and authenticator keys and their
//! versions.

use brandkms_proto::v1 as pb;
use clap::{Subcommand, ValueEnum};

use super::output::Output;
use super::parse::parse_u32;
use crate::sdk::{Client, ClientError};

/// A version state an officer may set (`KEY_STATE_*`); the others are reached
/// by destruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum StateArg {
    Active,
    AuthOnly,
    DecryptOnly,
    Retired,
}

impl From<StateArg> for pb::KeyState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Active => pb::KeyState::Active,
            StateArg::AuthOnly => pb::KeyState::AuthOnly,
            StateArg::DecryptOnly => pb::KeyState::DecryptOnly,
            StateArg::Retired => pb::KeyState::Retired,
        }
    }
}

/// A key class to list (`KEY_CLASS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum ClassArg {
    CardAccess,
    Transport,
    Settlement,
    Authenticator,
    Internal,
}

impl From<ClassArg> for pb::KeyClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::CardAccess => pb::KeyClass::CardAccess,
            ClassArg::Transport => pb::KeyClass::Transport,
            ClassArg::Settlement => pb::KeyClass::Settlement,
            ClassArg::Authenticator => pb::KeyClass::Authenticator,
            ClassArg::Internal => pb::KeyClass::Internal,
        }
    }
}

/// What a card-access key is for (`PURPOSE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum PurposeArg {
    Load,
    Purchase,
}

impl From<PurposeArg> for pb::Purpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::Load => pb::Purpose::Load,
            PurposeArg::Purchase => pb::Purpose::Purchase,
        }
    }
}

/// A card-access key's algorithm (`KEY_ALGORITHM_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum CardAlgorithmArg {
    Des,
    Tdes2,
    Tdes3,
}

impl From<CardAlgorithmArg> for pb::KeyAlgorithm {
    fn from(a: CardAlgorithmArg) -> Self {
        match a {
            CardAlgorithmArg::Des => pb::KeyAlgorithm::Des,
            CardAlgorithmArg::Tdes2 => pb::KeyAlgorithm::Tdes2,
            CardAlgorithmArg::Tdes3 => pb::KeyAlgorithm::Tdes3,
        }
    }
}

/// A settlement key pair's algorithm (`KEY_ALGORITHM_RSA*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum SettlementAlgorithmArg {
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl From<SettlementAlgorithmArg> for pb::KeyAlgorithm {
    fn from(a: SettlementAlgorithmArg) -> Self {
        match a {
            SettlementAlgorithmArg::Rsa2048 => pb::KeyAlgorithm::Rsa2048,
            SettlementAlgorithmArg::Rsa3072 => pb::KeyAlgorithm::Rsa3072,
            SettlementAlgorithmArg::Rsa4096 => pb::KeyAlgorithm::Rsa4096,
        }
    }
}

/// `kmsctl key ...`.
#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// Create a card-access key (version 1, active).
    Create {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// Service code (0 to 65535; decimal or 0x hex).
        #[arg(long, value_parser = parse_u32)]
        service_code: u32,
        /// load or purchase.
        #[arg(long, value_enum, ignore_case = true)]
        purpose: PurposeArg,
        /// tdes2 (default), tdes3, or des with --allow-legacy-des.
        #[arg(long, value_enum, ignore_case = true, default_value_t = CardAlgorithmArg::Tdes2)]
        algorithm: CardAlgorithmArg,
        /// Allow single DES (legacy; reported weak).
        #[arg(long)]
        allow_legacy_des: bool,
        /// A supply tie-up may deliver it, wrapped.
        #[arg(long)]
        exportable: bool,
    },
    /// Make a new import key (RSA-3072 in the token, unwrap only; the
    /// previous one is retired).
    CreateImportKey,
    /// The import key's parameters for the exporting HSM: fingerprint,
    /// wrapping, expiry; with --out, its public key (SPKI DER) in a file.
    ImportParameters {
        /// Write the public key (SPKI DER) here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Import a card-access key wrapped under the import key (held for a
    /// second officer under dual control): a new key, or a new active version.
    Import {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// The wrapped key (binary, as the exporting HSM wrote it).
        #[arg(long)]
        wrapped: std::path::PathBuf,
        /// The key check value the exporting HSM computed (6 hex digits).
        #[arg(long)]
        kcv: String,
        /// The import key version it was wrapped under (import-parameters).
        #[arg(long)]
        import_key_version: u32,
        /// For a new key: service code (0 to 65535; decimal or 0x hex).
        #[arg(long, value_parser = parse_u32, default_value_t = 0)]
        service_code: u32,
        /// For a new key: load or purchase.
        #[arg(long, value_enum, ignore_case = true)]
        purpose: Option<PurposeArg>,
        /// tdes2 (default), tdes3, or des with --allow-legacy-des.
        #[arg(long, value_enum, ignore_case = true, default_value_t = CardAlgorithmArg::Tdes2)]
        algorithm: CardAlgorithmArg,
        /// Allow single DES (legacy; reported weak).
        #[arg(long)]
        allow_legacy_des: bool,
        /// For a new key: a supply tie-up may deliver it, wrapped.
        #[arg(long)]
        exportable: bool,
    },
    /// Create a settlement RSA key pair in the token (version 1, active).
    CreateSettlement {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// rsa2048, rsa3072 (default) or rsa4096.
        #[arg(long, value_enum, ignore_case = true, default_value_t = SettlementAlgorithmArg::Rsa3072)]
        algorithm: SettlementAlgorithmArg,
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
        #[arg(long, value_enum, ignore_case = true)]
        class: Option<ClassArg>,
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
        #[arg(value_enum, ignore_case = true)]
        state: StateArg,
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

/// Runs a `key` subcommand.
pub(super) async fn run(
    command: KeyCommand,
    client: &Client,
    out: &Output,
) -> Result<(), ClientError> {
    let mut admin = client.admin();
    match command {
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
                    key_class: pb::KeyClass::CardAccess as i32,
                    service_code,
                    purpose: pb::Purpose::from(purpose) as i32,
                    algorithm: pb::KeyAlgorithm::from(algorithm) as i32,
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
                    key_class: pb::KeyClass::Authenticator as i32,
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
                    key_class: pb::KeyClass::Settlement as i32,
                    algorithm: pb::KeyAlgorithm::from(algorithm) as i32,
                    owner_entity: owner.unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            out.key(&key);
        }
        KeyCommand::CreateImportKey => out.key(
            &admin
                .create_import_key(pb::CreateImportKeyRequest {})
                .await?,
        ),
        KeyCommand::ImportParameters { out: file } => {
            let p = admin
                .get_import_parameters(pb::GetImportParametersRequest {})
                .await?;
            if let Some(path) = &file {
                std::fs::write(path, &p.spki_der).map_err(|e| {
                    ClientError::Config(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            out.import_parameters(&p);
        }
        KeyCommand::Import {
            alias,
            wrapped,
            kcv,
            import_key_version,
            service_code,
            purpose,
            algorithm,
            allow_legacy_des,
            exportable,
        } => {
            let wrapped_key = std::fs::read(&wrapped).map_err(|e| {
                ClientError::Config(format!("cannot read {}: {e}", wrapped.display()))
            })?;
            let expected_kcv = hex::decode(&kcv)
                .map_err(|e| ClientError::Config(format!("--kcv {kcv:?} is not hex: {e}")))?;
            out.key_change(
                admin
                    .import_key(pb::ImportKeyRequest {
                        alias,
                        key_class: pb::KeyClass::CardAccess as i32,
                        algorithm: pb::KeyAlgorithm::from(algorithm) as i32,
                        service_code,
                        purpose: purpose.map_or(0, |p| pb::Purpose::from(p) as i32),
                        exportable,
                        allow_legacy_des,
                        wrapped_key,
                        expected_kcv,
                        import_key_version,
                    })
                    .await?,
            )
        }
        KeyCommand::Rotate { alias } => {
            out.key_change(admin.rotate_key(pb::RotateKeyRequest { alias }).await?)
        }
        KeyCommand::List { class } => {
            let key_class = class.map_or(0, |c| pb::KeyClass::from(c) as i32);
            let request = pb::ListKeysRequest {
                key_class,
                ..Default::default()
            };
            out.keys(&admin.list_keys_all(request).await?);
        }
        KeyCommand::Show { alias } => out.key(&admin.get_key(pb::GetKeyRequest { alias }).await?),
        KeyCommand::State {
            alias,
            version,
            state,
        } => out.key(
            &admin
                .set_key_version_state(pb::SetKeyVersionStateRequest {
                    alias,
                    version,
                    state: pb::KeyState::from(state) as i32,
                })
                .await?,
        ),
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
    }
    Ok(())
}
