//! Connection settings: flags, then environment (`KMSCTL_*`), then a profile file
//! (`--profile`, `KMSCTL_PROFILE`, or `~/.config/brandkms/kmsctl.toml`). Relative
//! paths in a profile are relative to the profile's directory.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::sdk::{ClientError, ConnectOptions};

/// Where and as whom to connect.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Server, https://HOST:PORT.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "KMSCTL_ENDPOINT"
    )]
    endpoint: Option<String>,
    /// Brand CA certificate (PEM).
    #[arg(long, global = true, help_heading = "Connection", env = "KMSCTL_CA")]
    ca: Option<PathBuf>,
    /// Your certificate (PEM).
    #[arg(long, global = true, help_heading = "Connection", env = "KMSCTL_CERT")]
    cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, global = true, help_heading = "Connection", env = "KMSCTL_KEY")]
    key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the endpoint's host, or
    /// localhost for an IP address).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "KMSCTL_SERVER_NAME"
    )]
    server_name: Option<String>,
    /// Profile file (TOML: endpoint, ca, cert, key, server_name).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "KMSCTL_PROFILE"
    )]
    profile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    endpoint: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

fn default_profile() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".config/brandkms/kmsctl.toml");
    p.exists().then_some(p)
}

impl ConnectionArgs {
    /// The settings, each from the first place that gives it.
    pub fn resolve(&self) -> Result<ConnectOptions, ClientError> {
        let (profile, base) = match self.profile.clone().or_else(default_profile) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ClientError::Config(format!("cannot read profile {}: {e}", path.display()))
                })?;
                let p: Profile = toml::from_str(&text)
                    .map_err(|e| ClientError::Config(format!("profile {}: {e}", path.display())))?;
                (p, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (Profile::default(), PathBuf::new()),
        };
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let need = |what: &str, flag: &str, v: Option<PathBuf>, from_profile: Option<PathBuf>| {
            v.or_else(|| from_profile.map(rel)).ok_or_else(|| {
                ClientError::Config(format!(
                    "no {what}: give --{flag}, KMSCTL_{}, or a profile",
                    flag.to_ascii_uppercase()
                ))
            })
        };
        Ok(ConnectOptions {
            endpoint: self
                .endpoint
                .clone()
                .or(profile.endpoint)
                .unwrap_or_else(|| "https://127.0.0.1:7443".to_string()),
            ca: need("CA certificate", "ca", self.ca.clone(), profile.ca)?,
            cert: need(
                "client certificate",
                "cert",
                self.cert.clone(),
                profile.cert,
            )?,
            key: need("client key", "key", self.key.clone(), profile.key)?,
            domain: self.server_name.clone().or(profile.server_name),
        })
    }
}
