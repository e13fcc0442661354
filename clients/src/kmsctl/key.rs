//! `kmsctl key`: card-access, settlement and authenticator keys and their
//! versions.

use brandkms_proto::v1 as pb;
use clap::{Subcommand, ValueEnum};

use super::output::Output;
use super::parse::{parse_time, parse_u32};
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
    ImportKek,
}

impl From<ClassArg> for pb::KeyClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::CardAccess => pb::KeyClass::CardAccess,
            ClassArg::Transport => pb::KeyClass::Transport,
            ClassArg::Settlement => pb::KeyClass::Settlement,
            ClassArg::Authenticator => pb::KeyClass::Authenticator,
            ClassArg::Internal => pb::KeyClass::Internal,
            ClassArg::ImportKek => pb::KeyClass::ImportKek,
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

/// What `kmsctl key import` brings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(super) enum ImportClassArg {
    /// A card-access key (algorithm from --algorithm).
    CardAccess,
    /// An AES-256 import KEK that bulk imports are wrapped under.
    ImportKek,
}

/// A card-access key's algorithm on the command line.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct CardAlgorithmArgs {
    /// tdes2 (default), tdes3, or des with --allow-legacy-des.
    #[arg(long, value_enum, ignore_case = true, default_value_t = CardAlgorithmArg::Tdes2)]
    algorithm: CardAlgorithmArg,
    /// Allow single DES (legacy; reported weak).
    #[arg(long)]
    allow_legacy_des: bool,
}

/// A version's cryptoperiod on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct PeriodArgs {
    /// Not used before this time (RFC 3339 or Unix ms; `none`: unbounded).
    #[arg(long, value_parser = parse_bound)]
    not_before: Option<i64>,
    /// No new work from this time on (RFC 3339 or Unix ms; `none`: unbounded).
    #[arg(long, value_parser = parse_bound)]
    not_after: Option<i64>,
}

/// A cryptoperiod bound: a time, or `none` (0 on the wire: unbounded).
fn parse_bound(s: &str) -> Result<i64, String> {
    if s.eq_ignore_ascii_case("none") {
        Ok(0)
    } else {
        parse_time(s)
    }
}

/// One key of a bulk-import file (`kmsctl key import-batch`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchKey {
    alias: String,
    #[serde(default = "tdes2")]
    algorithm: String,
    #[serde(default)]
    service_code: u32,
    purpose: Option<String>,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    allow_legacy_des: bool,
    /// RFC 5649 under the KEK, hex.
    wrapped: String,
    /// 6 hex digits.
    kcv: String,
    not_before: Option<String>,
    not_after: Option<String>,
}

fn tdes2() -> String {
    "tdes2".into()
}

/// A bulk-import file: the KEK and `[[key]]` tables.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    kek: String,
    #[serde(default)]
    kek_version: u32,
    #[serde(default, rename = "key")]
    keys: Vec<BatchKey>,
}

impl BatchFile {
    fn request(self) -> Result<pb::ImportKeysRequest, String> {
        let time = |t: &Option<String>| t.as_deref().map_or(Ok(0), parse_time);
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in self.keys {
            let at = |e: String| format!("key {:?}: {e}", k.alias);
            let algorithm = CardAlgorithmArg::from_str(&k.algorithm, true).map_err(at)?;
            let purpose = match &k.purpose {
                Some(p) => pb::Purpose::from(PurposeArg::from_str(p, true).map_err(at)?) as i32,
                None => 0,
            };
            keys.push(pb::BulkKey {
                algorithm: pb::KeyAlgorithm::from(algorithm) as i32,
                service_code: k.service_code,
                purpose,
                exportable: k.exportable,
                allow_legacy_des: k.allow_legacy_des,
                wrapped_key: hex::decode(&k.wrapped)
                    .map_err(|e| at(format!("wrapped is not hex: {e}")))?,
                expected_kcv: hex::decode(&k.kcv)
                    .map_err(|e| at(format!("kcv is not hex: {e}")))?,
                not_before: time(&k.not_before).map_err(at)?,
                not_after: time(&k.not_after).map_err(at)?,
                alias: k.alias,
            });
        }
        Ok(pb::ImportKeysRequest {
            kek_alias: self.kek,
            kek_version: self.kek_version,
            keys,
        })
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
        #[command(flatten)]
        card: CardAlgorithmArgs,
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
    /// Import a card-access key or an import KEK wrapped under the import key
    /// (held for a second officer under dual control): a new key, or a new
    /// active version.
    Import {
        /// Alias: [a-z0-9._-], at most 64.
        alias: String,
        /// card_access (default) or import_kek (AES-256; --algorithm ignored).
        #[arg(long, value_enum, ignore_case = true, default_value_t = ImportClassArg::CardAccess)]
        class: ImportClassArg,
        #[command(flatten)]
        period: PeriodArgs,
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
        #[command(flatten)]
        card: CardAlgorithmArgs,
        /// For a new key: a supply tie-up may deliver it, wrapped.
        #[arg(long)]
        exportable: bool,
    },
    /// Import many card-access keys wrapped (RFC 5649) under an import KEK, from
    /// a TOML file: `kek = "ALIAS"`, then one `[[key]]` table per key (alias,
    /// algorithm, service_code, purpose, exportable, wrapped (hex), kcv (hex),
    /// optional not_before / not_after). Held as one proposal under dual
    /// control; each key is imported or refused on its own.
    ImportBatch {
        /// The batch file.
        file: std::path::PathBuf,
    },
    /// Set a version's cryptoperiod: no use before --not-before, no new work
    /// from --not-after on. A bound not given stays as it is; `none` removes
    /// it. Letting a version serve longer is held for a second officer under
    /// dual control (widen_cryptoperiod).
    Cryptoperiod {
        /// Alias.
        alias: String,
        /// Version (default: the active one).
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        period: PeriodArgs,
    },
    /// Mark a version compromised (held for a second officer under dual
    /// control): refused for everything from then on. Lists who received it.
    Compromise {
        /// Alias.
        alias: String,
        /// The compromised version.
        version: u32,
        /// What happened (recorded; no secrets).
        #[arg(long)]
        reason: String,
        /// Also rotate: a new active version in the same command.
        #[arg(long)]
        rotate: bool,
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
        /// Only versions whose cryptoperiod ends within this long (e.g. 30d,
        /// 12h), or has ended.
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring: Option<std::time::Duration>,
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
            card:
                CardAlgorithmArgs {
                    algorithm,
                    allow_legacy_des,
                },
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
            class,
            period,
            wrapped,
            kcv,
            import_key_version,
            service_code,
            purpose,
            card:
                CardAlgorithmArgs {
                    algorithm,
                    allow_legacy_des,
                },
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
                        key_class: match class {
                            ImportClassArg::CardAccess => pb::KeyClass::CardAccess as i32,
                            ImportClassArg::ImportKek => pb::KeyClass::ImportKek as i32,
                        },
                        algorithm: match class {
                            ImportClassArg::CardAccess => pb::KeyAlgorithm::from(algorithm) as i32,
                            ImportClassArg::ImportKek => pb::KeyAlgorithm::Aes256 as i32,
                        },
                        service_code,
                        purpose: purpose.map_or(0, |p| pb::Purpose::from(p) as i32),
                        exportable,
                        allow_legacy_des,
                        wrapped_key,
                        expected_kcv,
                        import_key_version,
                        not_before: period.not_before.unwrap_or_default(),
                        not_after: period.not_after.unwrap_or_default(),
                    })
                    .await?,
            )
        }
        KeyCommand::ImportBatch { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", file.display())))?;
            let batch: BatchFile = toml::from_str(&text)
                .map_err(|e| ClientError::Config(format!("{}: {e}", file.display())))?;
            let request = batch
                .request()
                .map_err(|e| ClientError::Config(format!("{}: {e}", file.display())))?;
            out.import_keys_change(admin.import_keys(request).await?);
        }
        KeyCommand::Cryptoperiod {
            alias,
            version,
            period,
        } => {
            // The bounds not given stay as they are.
            let key = admin
                .get_key(pb::GetKeyRequest {
                    alias: alias.clone(),
                })
                .await?;
            let current = key
                .versions
                .iter()
                .find(|v| match version {
                    Some(n) => v.version == n,
                    None => v.state == pb::KeyState::Active as i32,
                })
                .ok_or_else(|| {
                    ClientError::Config(format!("{alias} has no such version (or no active one)"))
                })?;
            let change = admin
                .set_key_version_cryptoperiod(pb::SetKeyVersionCryptoperiodRequest {
                    version: current.version,
                    not_before: period.not_before.unwrap_or(current.not_before),
                    not_after: period.not_after.unwrap_or(current.not_after),
                    alias,
                })
                .await?;
            out.key_change(change);
        }
        KeyCommand::Compromise {
            alias,
            version,
            reason,
            rotate,
        } => {
            let change = admin
                .mark_key_version_compromised(pb::MarkKeyVersionCompromisedRequest {
                    alias: alias.clone(),
                    version,
                    rotate,
                    reason,
                })
                .await?;
            // Who holds the version and must be told, whether the mark is
            // done or awaits the second officer.
            let received = admin
                .list_distributions_all(pb::ListDistributionsRequest {
                    alias,
                    version,
                    ..Default::default()
                })
                .await?;
            out.compromised(change, &received);
        }
        KeyCommand::Rotate { alias } => {
            out.key_change(admin.rotate_key(pb::RotateKeyRequest { alias }).await?)
        }
        KeyCommand::List { class, expiring } => {
            let key_class = class.map_or(0, |c| pb::KeyClass::from(c) as i32);
            let request = pb::ListKeysRequest {
                key_class,
                expiring_within_secs: expiring.map_or(0, |d| d.as_secs().max(1)),
                ..Default::default()
            };
            let keys = admin.list_keys_all(request).await?;
            match expiring {
                Some(d) => {
                    let within = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    out.expiring(&keys, super::parse::now_ms().saturating_add(within));
                }
                None => out.keys(&keys),
            }
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
