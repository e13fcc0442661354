//! Configuration: one TOML file, then environment overrides, then validation into
//! typed [`Settings`]. Every error names the field it is about. The PIN never comes
//! from the file: it is read from an environment variable or from a file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use brandkms_policy::SensitiveOperation;

use crate::hsm::HsmParams;

pub mod pkcs11_uri;

/// Default number of HSM sessions (and HSM calls under way at once).
pub const DEFAULT_SESSIONS: usize = 8;
/// Default environment variable holding the user PIN.
pub const DEFAULT_PIN_ENV: &str = "BRANDKMS_PIN";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The longest benchmark delay per token round trip a `bench-delay` build accepts.
pub const MAX_BENCHMARK_TOKEN_DELAY_MS: u64 = 1_000;

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field has an unusable value.
    #[error("config field {field}: {reason}")]
    Field {
        /// The field, as `section.name` (or the environment variable that set it).
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn field(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    hsm: RawHsm,
    #[serde(default)]
    database: RawDatabase,
    tls: Option<RawTls>,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    /// A PKCS#11 URI (RFC 7512) selecting module, token and PIN source.
    uri: Option<String>,
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_env: Option<String>,
    pin_file: Option<PathBuf>,
    /// The name of a systemd credential (`LoadCredential=NAME:...`) holding the PIN.
    pin_credential: Option<String>,
    /// Present only to reject it with a precise message.
    pin: Option<toml::Value>,
    sessions: Option<usize>,
    /// Benchmarks only; refused unless built with the `bench-delay` feature.
    benchmark_token_delay_ms: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    challenge_ttl_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
    destruction_check_secs: Option<u64>,
    purge_interval_secs: Option<u64>,
    refused_handshake_summary_secs: Option<u64>,
    dual_control: Option<Vec<String>>,
    approval_ttl_secs: Option<u64>,
    transport_keys_per_hour: Option<usize>,
    health_probe_ms: Option<u64>,
    #[serde(default)]
    limits: LimitSettings,
}

/// Validated settings, built once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the gRPC service listens.
    pub listen: SocketAddr,
    /// Where the Prometheus endpoint listens (plain HTTP; loopback advised),
    /// if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How to reach the token.
    pub hsm: HsmParams,
    /// Environment for the PKCS#11 module, applied before it loads
    /// (for SoftHSM2: `SOFTHSM2_CONF`, `OPENSSL_CONF`).
    pub module_env: Vec<(String, String)>,
    /// The metadata database.
    pub database: DatabaseSettings,
    /// TLS files, required by `kms serve`.
    pub tls: Option<TlsSettings>,
    /// Lifetimes of challenges and sessions, and the background tasks' periods.
    pub service: ServiceSettings,
}

/// The metadata database. `Debug` hides the URL's password.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// TLS files.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The brand CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server private key.
    pub key: PathBuf,
    /// The brand CA's certificate revocation list (PEM or DER), if any: checked
    /// at every handshake, read again when the file changes and on SIGHUP.
    pub crl: Option<PathBuf>,
}

/// Service timings and dual control.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long a card challenge stays valid.
    pub challenge_ttl_secs: u64,
    /// How long a card session stays valid.
    pub session_ttl_secs: u64,
    /// How often due key destructions are carried out.
    pub destruction_check_secs: u64,
    /// How often expired challenges and sessions (with their commands) are purged.
    pub purge_interval_secs: u64,
    /// How often the handshakes refused meanwhile are summarised in one audit record.
    pub refused_handshake_summary_secs: u64,
    /// The Admin operations held for a second officer.
    pub dual_control: Vec<SensitiveOperation>,
    /// How long a proposal may wait for its approval.
    pub approval_ttl_secs: u64,
    /// `EstablishTransportKey` calls accepted per entity per hour (per instance).
    pub transport_keys_per_hour: usize,
    /// Per-identity connection and call limits (`[service.limits]`).
    pub limits: LimitSettings,
    /// How often the health probe checks the token and the database (ms).
    pub health_probe_ms: u64,
}

/// `[service.limits]`: what one identity (the entity a client certificate
/// names) may hold and start on one instance, and how long a connection may
/// wait. Every figure is at least 1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// After the TLS handshake, the client's HTTP/2 preface must arrive within
    /// this many seconds, or the connection is closed.
    pub preface_timeout_secs: u64,
    /// A connection on which the client sends nothing for this many seconds is
    /// closed.
    pub idle_timeout_secs: u64,
    /// Connections one identity may hold at once; the next is answered with an
    /// HTTP/2 GOAWAY (ENHANCE_YOUR_CALM) and closed.
    pub connections_per_identity: usize,
    /// Calls one identity may have in flight at once.
    pub concurrent_calls: usize,
    /// Calls one identity may start per second, sustained.
    pub calls_per_second: u32,
    /// Calls one identity may start at once after a quiet spell.
    pub call_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            preface_timeout_secs: 10,
            idle_timeout_secs: 300,
            connections_per_identity: 64,
            concurrent_calls: 64,
            calls_per_second: 5000,
            call_burst: 10_000,
        }
    }
}

impl LimitSettings {
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let figures = [
            (
                "service.limits.preface_timeout_secs",
                self.preface_timeout_secs,
            ),
            ("service.limits.idle_timeout_secs", self.idle_timeout_secs),
            (
                "service.limits.connections_per_identity",
                u64::try_from(self.connections_per_identity).unwrap_or(u64::MAX),
            ),
            (
                "service.limits.concurrent_calls",
                u64::try_from(self.concurrent_calls).unwrap_or(u64::MAX),
            ),
            (
                "service.limits.calls_per_second",
                u64::from(self.calls_per_second),
            ),
            ("service.limits.call_burst", u64::from(self.call_burst)),
        ];
        if let Some((name, _)) = figures.iter().find(|(_, v)| *v == 0) {
            return Err((name, "must be at least 1"));
        }
        for (name, secs) in [
            (
                "service.limits.preface_timeout_secs",
                self.preface_timeout_secs,
            ),
            ("service.limits.idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if secs > 86_400 {
                return Err((name, "must be at most 86400 (a day)"));
            }
        }
        Ok(())
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            challenge_ttl_secs: 30,
            session_ttl_secs: 120,
            destruction_check_secs: 60,
            purge_interval_secs: 60,
            refused_handshake_summary_secs: 60,
            dual_control: SensitiveOperation::DEFAULT.to_vec(),
            approval_ttl_secs: 86_400,
            transport_keys_per_hour: 12,
            limits: LimitSettings::default(),
            health_probe_ms: 2000,
        }
    }
}

/// Where settings come from besides the file: the process environment.
pub trait Env {
    /// The value of a variable, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Settings {
    /// Reads, overrides from the environment and validates a configuration file.
    pub fn load(path: &Path, env: &impl Env) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::from_raw(raw, &base, env)
    }

    fn from_raw(raw: RawConfig, base: &Path, env: &impl Env) -> Result<Settings, ConfigError> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let listen_text = env
            .var("BRANDKMS_LISTEN")
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|_| {
            field(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:7443"),
            )
        })?;

        // The Prometheus endpoint: off unless configured (`[metrics] listen`
        // or BRANDKMS_METRICS_LISTEN; `off` turns a configured one off).
        let metrics_listen = match env.var("BRANDKMS_METRICS_LISTEN").or(raw.metrics.listen) {
            None => None,
            Some(t) if t == "off" => None,
            Some(t) => Some(t.parse::<SocketAddr>().map_err(|_| {
                field(
                    "metrics.listen",
                    format!("{t:?} is not an address like 127.0.0.1:9464"),
                )
            })?),
        };

        if raw.hsm.pin.is_some() {
            return Err(field(
                "hsm.pin",
                "a PIN never goes in the config file; name an environment variable with hsm.pin_env or a file with hsm.pin_file",
            ));
        }
        let uri = match env.var("BRANDKMS_PKCS11_URI").or(raw.hsm.uri) {
            Some(text) => pkcs11_uri::parse(&text).map_err(|e| field("hsm.uri", e))?,
            None => pkcs11_uri::Pkcs11Uri::default(),
        };
        // A field given both ways is ambiguous: the operator keeps one.
        for (given_by_uri, given_by_field, what) in [
            (
                uri.module_path.is_some() || uri.module_name.is_some(),
                raw.hsm.module.is_some(),
                "hsm.module",
            ),
            (
                uri.token.is_some(),
                raw.hsm.token_label.is_some(),
                "hsm.token_label",
            ),
            (
                uri.pin_source.is_some(),
                raw.hsm.pin_file.is_some(),
                "hsm.pin_file",
            ),
        ] {
            if given_by_uri && given_by_field {
                return Err(field(
                    what,
                    "also given by hsm.uri: keep one (the environment overrides either)",
                ));
            }
        }
        let uri_module = match (uri.module_path, uri.module_name) {
            (Some(path), _) => Some(path),
            (None, Some(name)) => Some(
                pkcs11_uri::find_module(&name, &pkcs11_uri::MODULE_DIRS)
                    .map_err(|e| field("hsm.uri", e))?,
            ),
            (None, None) => None,
        };
        let module = env
            .var("BRANDKMS_PKCS11_MODULE")
            .map(PathBuf::from)
            .or(raw.hsm.module)
            .or(uri_module)
            .map(resolve)
            .ok_or_else(|| {
                field(
                    "hsm.module",
                    "missing: the path of the PKCS#11 module (or module-path in hsm.uri)",
                )
            })?;
        if !module.is_file() {
            return Err(field(
                "hsm.module",
                format!("PKCS#11 module {} does not exist", module.display()),
            ));
        }
        let token_label = env
            .var("BRANDKMS_TOKEN_LABEL")
            .or(raw.hsm.token_label)
            .or(uri.token)
            .ok_or_else(|| {
                field(
                    "hsm.token_label",
                    "missing: the label of the token (or token= in hsm.uri)",
                )
            })?;
        let pin_file = env
            .var("BRANDKMS_PIN_FILE")
            .map(PathBuf::from)
            .or(raw.hsm.pin_file)
            .or(uri.pin_source)
            .map(resolve);
        let credential = env
            .var("BRANDKMS_PIN_CREDENTIAL")
            .or(raw.hsm.pin_credential);
        let pin = match (credential, pin_file) {
            (Some(name), _) => read_pin_credential(env, &name)?,
            (None, Some(path)) => read_pin_file(&path)?,
            (None, None) => {
                let name = raw
                    .hsm
                    .pin_env
                    .unwrap_or_else(|| DEFAULT_PIN_ENV.to_string());
                Zeroizing::new(env.var(&name).ok_or_else(|| {
                    field(
                        "hsm.pin_env",
                        format!("environment variable {name} (the user PIN) is not set"),
                    )
                })?)
            }
        };
        let sessions = match env.var("BRANDKMS_HSM_SESSIONS") {
            Some(v) => v
                .parse()
                .map_err(|_| field("BRANDKMS_HSM_SESSIONS", "not a whole number"))?,
            None => raw.hsm.sessions.unwrap_or(DEFAULT_SESSIONS),
        };
        if !(1..=256).contains(&sessions) {
            return Err(field("hsm.sessions", "must be between 1 and 256"));
        }
        let benchmark_token_delay = benchmark_token_delay(raw.hsm.benchmark_token_delay_ms)?;
        let module_env = raw
            .hsm
            .env
            .into_iter()
            .map(|(k, v)| (k, resolve_env_path(base, v)))
            .collect();

        let url = env
            .var("BRANDKMS_DATABASE_URL")
            .or(raw.database.url)
            .ok_or_else(|| field("database.url", "missing: sqlite://PATH or postgres://..."))?;
        let url = normalise_database_url(&url, base)?;
        let max_connections = raw.database.max_connections.unwrap_or(8);
        if max_connections == 0 {
            return Err(field("database.max_connections", "must be at least 1"));
        }

        let tls = raw
            .tls
            .map(|t| -> Result<TlsSettings, ConfigError> {
                let need = |name: &str, p: Option<PathBuf>| {
                    p.map(resolve)
                        .ok_or_else(|| field(&format!("tls.{name}"), "missing"))
                };
                Ok(TlsSettings {
                    ca: need("ca", t.ca)?,
                    cert: need("cert", t.cert)?,
                    key: need("key", t.key)?,
                    crl: t.crl.map(resolve),
                })
            })
            .transpose()?;

        let defaults = ServiceSettings::default();
        let service = ServiceSettings {
            challenge_ttl_secs: raw
                .service
                .challenge_ttl_secs
                .unwrap_or(defaults.challenge_ttl_secs),
            session_ttl_secs: raw
                .service
                .session_ttl_secs
                .unwrap_or(defaults.session_ttl_secs),
            destruction_check_secs: raw
                .service
                .destruction_check_secs
                .unwrap_or(defaults.destruction_check_secs),
            purge_interval_secs: raw
                .service
                .purge_interval_secs
                .unwrap_or(defaults.purge_interval_secs),
            refused_handshake_summary_secs: raw
                .service
                .refused_handshake_summary_secs
                .unwrap_or(defaults.refused_handshake_summary_secs),
            dual_control: match raw.service.dual_control {
                None => defaults.dual_control,
                Some(names) => names
                    .iter()
                    .map(|n| {
                        n.parse::<SensitiveOperation>()
                            .map_err(|e| field("service.dual_control", e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
            },
            approval_ttl_secs: raw
                .service
                .approval_ttl_secs
                .unwrap_or(defaults.approval_ttl_secs),
            transport_keys_per_hour: raw
                .service
                .transport_keys_per_hour
                .unwrap_or(defaults.transport_keys_per_hour),
            limits: raw.service.limits,
            health_probe_ms: match raw.service.health_probe_ms {
                None => defaults.health_probe_ms,
                Some(ms) if (100..=60_000).contains(&ms) => ms,
                Some(_) => {
                    return Err(field(
                        "service.health_probe_ms",
                        "must be between 100 and 60000",
                    ));
                }
            },
        };
        service
            .limits
            .check()
            .map_err(|(name, message)| field(name, message))?;
        for (name, v) in [
            ("service.challenge_ttl_secs", service.challenge_ttl_secs),
            ("service.session_ttl_secs", service.session_ttl_secs),
            (
                "service.destruction_check_secs",
                service.destruction_check_secs,
            ),
            ("service.purge_interval_secs", service.purge_interval_secs),
            (
                "service.refused_handshake_summary_secs",
                service.refused_handshake_summary_secs,
            ),
            ("service.approval_ttl_secs", service.approval_ttl_secs),
            (
                "service.transport_keys_per_hour",
                u64::try_from(service.transport_keys_per_hour).unwrap_or(u64::MAX),
            ),
        ] {
            if v == 0 {
                return Err(field(name, "must be at least 1"));
            }
        }

        Ok(Settings {
            listen,
            metrics_listen,
            hsm: HsmParams {
                module,
                token_label,
                pin,
                sessions,
                benchmark_token_delay,
            },
            module_env,
            database: DatabaseSettings {
                url,
                max_connections,
            },
            tls,
            service,
        })
    }
}

/// `hsm.benchmark_token_delay_ms`: a fixed delay per token round trip, for
/// benchmarks that stand in for a networked HSM. A `bench-delay` build honours it.
#[cfg(feature = "bench-delay")]
fn benchmark_token_delay(ms: Option<u64>) -> Result<Duration, ConfigError> {
    let ms = ms.unwrap_or(0);
    if ms > MAX_BENCHMARK_TOKEN_DELAY_MS {
        return Err(field(
            "hsm.benchmark_token_delay_ms",
            format!("at most {MAX_BENCHMARK_TOKEN_DELAY_MS} (milliseconds per token round trip)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// Any other build refuses the setting, whatever its value, so that a production
/// service can never run with it.
#[cfg(not(feature = "bench-delay"))]
fn benchmark_token_delay(ms: Option<u64>) -> Result<Duration, ConfigError> {
    match ms {
        None => Ok(Duration::ZERO),
        Some(_) => Err(field(
            "hsm.benchmark_token_delay_ms",
            "a benchmark-only setting that this kms refuses: it was built without the \
             `bench-delay` feature, which alone honours it (cargo build --features bench-delay, \
             never for production); remove the line",
        )),
    }
}

/// The PIN from the systemd credential `name` (`$CREDENTIALS_DIRECTORY/name`,
/// which systemd makes readable by the service alone).
fn read_pin_credential(env: &dyn Env, name: &str) -> Result<Zeroizing<String>, ConfigError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(field(
            "hsm.pin_credential",
            "must be a credential name (LoadCredential=NAME:...), not a path",
        ));
    }
    let dir = env.var("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        field(
            "hsm.pin_credential",
            format!(
                "$CREDENTIALS_DIRECTORY is not set: run kms under systemd with LoadCredential={name}:/path/to/pin, or use hsm.pin_file"
            ),
        )
    })?;
    read_pin_file(&Path::new(&dir).join(name)).map_err(|e| match e {
        ConfigError::Field { reason, .. } => field("hsm.pin_credential", reason),
        other => other,
    })
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o077 != 0
    {
        return Err(field(
            "hsm.pin_file",
            format!(
                "PIN file {} is open to group or others (mode {:o}): chmod 600 {} (or use a systemd credential)",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        field(
            "hsm.pin_file",
            format!("cannot read PIN file {}: {e}", path.display()),
        )
    })?);
    let pin = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string());
    if pin.is_empty() {
        return Err(field(
            "hsm.pin_file",
            format!("PIN file {} is empty", path.display()),
        ));
    }
    Ok(pin)
}

/// Relative paths in module environment values that name files are resolved
/// against the config file's directory (values starting with `./`).
fn resolve_env_path(base: &Path, value: String) -> String {
    match value.strip_prefix("./") {
        Some(rest) => base.join(rest).display().to_string(),
        None => value,
    }
}

/// Accepts `sqlite://PATH` (relative to the config file, created when missing) and
/// `postgres://` / `postgresql://` URLs.
fn normalise_database_url(url: &str, base: &Path) -> Result<String, ConfigError> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(field("database.url", "sqlite:// needs a file path"));
        }
        let path = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            base.join(path)
        };
        let query = if query.is_empty() { "mode=rwc" } else { query };
        return Ok(format!("sqlite://{}?{query}", path.display()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    Err(field(
        "database.url",
        format!(
            "unsupported URL {:?}: use sqlite://PATH or postgres://USER@HOST/DB",
            redact_url(url)
        ),
    ))
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = url.get(scheme_end + 3..at).unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{}:***{}",
                url.get(..scheme_end + 3).unwrap_or_default(),
                user,
                url.get(at..).unwrap_or_default()
            )
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> MapEnv {
        MapEnv(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn load(text: &str, e: &MapEnv) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        Settings::from_raw(raw, Path::new("/etc/brandkms"), e)
    }

    const MODULE: &str = "/bin/sh"; // any existing file stands in for the module path

    fn base() -> String {
        format!(
            "[hsm]\nmodule = \"{MODULE}\"\ntoken_label = \"t\"\n[database]\nurl = \"sqlite://kms.db\"\n"
        )
    }

    fn field_of(r: Result<Settings, ConfigError>) -> String {
        match r {
            Err(ConfigError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn the_reference_configuration_is_valid_and_metrics_are_optional() {
        let reference = include_str!("../kms.reference.toml")
            .replace("/usr/lib/softhsm/libsofthsm2.so", MODULE);
        let s = load(&reference, &env(&[("BRANDKMS_PIN", "1234")])).unwrap();
        assert_eq!(s.service.dual_control, SensitiveOperation::DEFAULT);
        assert_eq!(s.service.health_probe_ms, 2000);
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let off = load(
            &reference,
            &env(&[("BRANDKMS_PIN", "1234"), ("BRANDKMS_METRICS_LISTEN", "off")]),
        );
        assert_eq!(off.unwrap().metrics_listen, None);
        assert_eq!(
            load(&base(), &env(&[("BRANDKMS_PIN", "1")]))
                .unwrap()
                .metrics_listen,
            None
        );
        let bad = format!("{}[metrics]\nlisten = \"anywhere\"\n", base());
        assert_eq!(
            field_of(load(&bad, &env(&[("BRANDKMS_PIN", "1")]))),
            "metrics.listen"
        );
        let slow = format!("{}[service]\nhealth_probe_ms = 10\n", base());
        assert_eq!(
            field_of(load(&slow, &env(&[("BRANDKMS_PIN", "1")]))),
            "service.health_probe_ms"
        );
    }

    #[test]
    fn a_minimal_config_validates_with_the_pin_from_the_environment() {
        let s = load(&base(), &env(&[("BRANDKMS_PIN", "1234")])).unwrap();
        assert_eq!(s.hsm.pin.as_str(), "1234");
        assert_eq!(s.database.url, "sqlite:///etc/brandkms/kms.db?mode=rwc");
        assert_eq!(s.hsm.sessions, DEFAULT_SESSIONS);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn environment_overrides_the_file() {
        let e = env(&[
            ("BRANDKMS_PIN", "1"),
            ("BRANDKMS_TOKEN_LABEL", "other"),
            ("BRANDKMS_DATABASE_URL", "postgres://u:secret@h/db"),
            ("BRANDKMS_LISTEN", "0.0.0.0:9000"),
        ]);
        let s = load(&base(), &e).unwrap();
        assert_eq!(s.hsm.token_label, "other");
        assert_eq!(s.database.url, "postgres://u:secret@h/db");
        assert_eq!(s.listen.port(), 9000);
    }

    #[test]
    fn a_pin_file_open_to_others_is_refused_and_a_systemd_credential_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "4321\n").unwrap();
        let with_file = base().replace(
            "token_label",
            &format!("pin_file = \"{}\"\ntoken_label", pin.display()),
        );
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = load(&with_file, &env(&[])).unwrap_err().to_string();
        assert!(
            refused.contains("hsm.pin_file") && refused.contains("chmod 600"),
            "{refused}"
        );
        assert!(
            !refused.contains("4321"),
            "the PIN is never printed: {refused}"
        );
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load(&with_file, &env(&[])).unwrap().hsm.pin.as_str(),
            "4321"
        );

        // A systemd credential (LoadCredential=kms-pin:...) wins over the file.
        std::fs::write(dir.path().join("kms-pin"), "5678").unwrap();
        std::fs::set_permissions(
            dir.path().join("kms-pin"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let with_credential =
            with_file.replace("token_label", "pin_credential = \"kms-pin\"\ntoken_label");
        let credentials = dir.path().display().to_string();
        let e = env(&[("CREDENTIALS_DIRECTORY", &credentials)]);
        assert_eq!(load(&with_credential, &e).unwrap().hsm.pin.as_str(), "5678");
        assert_eq!(
            field_of(load(&with_credential, &env(&[]))),
            "hsm.pin_credential"
        );
        let path = with_credential.replace("\"kms-pin\"", "\"../pin\"");
        assert_eq!(field_of(load(&path, &e)), "hsm.pin_credential");
    }

    #[test]
    fn a_pkcs11_uri_selects_module_token_and_pin_source() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "8765\n").unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        let uri = format!(
            "pkcs11:token=brand%20kms?module-path={MODULE}&pin-source=file:{}",
            pin.display()
        );
        let config = format!("[hsm]\nuri = \"{uri}\"\n[database]\nurl = \"sqlite://kms.db\"\n");
        let s = load(&config, &env(&[])).unwrap();
        assert_eq!(s.hsm.module, PathBuf::from(MODULE));
        assert_eq!(s.hsm.token_label, "brand kms");
        assert_eq!(s.hsm.pin.as_str(), "8765");

        // The environment overrides what the URI says, field by field, and may
        // give the URI itself.
        let s = load(
            &config,
            &env(&[("BRANDKMS_TOKEN_LABEL", "other"), ("BRANDKMS_PIN", "x")]),
        )
        .unwrap();
        assert_eq!(s.hsm.token_label, "other");
        let s = load(
            "[database]\nurl = \"sqlite://kms.db\"\n",
            &env(&[("BRANDKMS_PKCS11_URI", &uri)]),
        )
        .unwrap();
        assert_eq!(s.hsm.token_label, "brand kms");

        // A relative pin-source is relative to the config file's directory.
        let relative = load(
            &format!("[hsm]\nuri = \"pkcs11:token=t?module-path={MODULE}&pin-source=file:pin\"\n[database]\nurl = \"sqlite://kms.db\"\n"),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(relative.contains("/etc/brandkms/pin"), "{relative}");

        // A field given both ways, a bad URI, a PIN in it: refused, named.
        for (text, needle) in [
            (
                format!("[hsm]\nuri = \"{uri}\"\ntoken_label = \"t\"\n"),
                "hsm.token_label: also given by hsm.uri",
            ),
            (
                format!("[hsm]\nuri = \"{uri}\"\nmodule = \"{MODULE}\"\n"),
                "hsm.module: also given by hsm.uri",
            ),
            (
                "[hsm]\nuri = \"pkcs11:token=t?pin-value=1234\"\n".to_string(),
                "hsm.uri: pin-value: a PIN never goes in the configuration",
            ),
            (
                "[hsm]\nuri = \"pkcs11:serial=42\"\n".to_string(),
                "hsm.uri: serial is not supported",
            ),
            (
                "[hsm]\nuri = \"pkcs11:token=t\"\n".to_string(),
                "or module-path in hsm.uri",
            ),
        ] {
            let e = load(
                &format!("{text}[database]\nurl = \"sqlite://kms.db\"\n"),
                &env(&[]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains("1234"), "the PIN is never printed: {e}");
        }
    }

    #[test]
    fn a_pin_in_the_file_is_refused() {
        let text = base().replace("token_label", "pin = \"1234\"\ntoken_label");
        assert_eq!(field_of(load(&text, &env(&[]))), "hsm.pin");
    }

    #[test]
    fn errors_name_the_field() {
        let e = env(&[("BRANDKMS_PIN", "1")]);
        assert_eq!(
            field_of(load(&base().replace(MODULE, "/nope.so"), &e)),
            "hsm.module"
        );
        assert_eq!(field_of(load(&base(), &env(&[]))), "hsm.pin_env");
        let bad_db = base().replace("sqlite://kms.db", "mysql://x");
        assert_eq!(field_of(load(&bad_db, &e)), "database.url");
        let pin_file = base().replace(
            "token_label",
            "pin_file = \"/nonexistent/pin\"\ntoken_label",
        );
        assert_eq!(field_of(load(&pin_file, &e)), "hsm.pin_file");
        let zero = base().replace("token_label", "sessions = 0\ntoken_label");
        assert_eq!(field_of(load(&zero, &e)), "hsm.sessions");
        let listen = format!("listen = \"nowhere\"\n{}", base());
        assert_eq!(field_of(load(&listen, &e)), "listen");
    }

    #[cfg(not(feature = "bench-delay"))]
    #[test]
    fn the_benchmark_token_delay_is_refused_without_its_feature() {
        let e = env(&[("BRANDKMS_PIN", "1")]);
        assert!(
            load(&base(), &e)
                .unwrap()
                .hsm
                .benchmark_token_delay
                .is_zero()
        );
        for ms in [0, 10] {
            let text = base().replace(
                "token_label",
                &format!("benchmark_token_delay_ms = {ms}\ntoken_label"),
            );
            match load(&text, &e) {
                Err(ConfigError::Field { field, reason }) => {
                    assert_eq!(field, "hsm.benchmark_token_delay_ms");
                    assert!(reason.contains("`bench-delay` feature"), "{reason}");
                }
                other => panic!("expected a field error, got {other:?}"),
            }
        }
    }

    #[cfg(feature = "bench-delay")]
    #[test]
    fn the_benchmark_token_delay_is_read_with_its_feature() {
        let e = env(&[("BRANDKMS_PIN", "1")]);
        assert!(
            load(&base(), &e)
                .unwrap()
                .hsm
                .benchmark_token_delay
                .is_zero()
        );
        let ten = base().replace("token_label", "benchmark_token_delay_ms = 10\ntoken_label");
        assert_eq!(
            load(&ten, &e).unwrap().hsm.benchmark_token_delay,
            Duration::from_millis(10)
        );
        let long = base().replace(
            "token_label",
            "benchmark_token_delay_ms = 1001\ntoken_label",
        );
        assert_eq!(field_of(load(&long, &e)), "hsm.benchmark_token_delay_ms");
    }

    #[test]
    fn dual_control_is_on_by_default_and_configurable() {
        let e = env(&[("BRANDKMS_PIN", "1")]);
        let s = load(&base(), &e).unwrap();
        assert_eq!(s.service.dual_control, SensitiveOperation::DEFAULT);
        assert_eq!(s.service.approval_ttl_secs, 86_400);
        let only_rotation = format!("{}[service]\ndual_control = [\"rotate_key\"]\n", base());
        let s = load(&only_rotation, &e).unwrap();
        assert_eq!(s.service.dual_control, [SensitiveOperation::RotateKey]);
        let off = format!("{}[service]\ndual_control = []\n", base());
        assert!(load(&off, &e).unwrap().service.dual_control.is_empty());
        let bogus = format!("{}[service]\ndual_control = [\"rotate\"]\n", base());
        assert_eq!(field_of(load(&bogus, &e)), "service.dual_control");
        let zero = format!("{}[service]\napproval_ttl_secs = 0\n", base());
        assert_eq!(field_of(load(&zero, &e)), "service.approval_ttl_secs");
    }

    #[test]
    fn the_purge_interval_defaults_to_a_minute_and_zero_is_refused() {
        let e = env(&[("BRANDKMS_PIN", "1")]);
        assert_eq!(load(&base(), &e).unwrap().service.purge_interval_secs, 60);
        let five = format!("{}[service]\npurge_interval_secs = 5\n", base());
        assert_eq!(load(&five, &e).unwrap().service.purge_interval_secs, 5);
        let zero = format!("{}[service]\npurge_interval_secs = 0\n", base());
        assert_eq!(field_of(load(&zero, &e)), "service.purge_interval_secs");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = base().replace("[database]", "[database]\nurll = \"x\"");
        assert!(matches!(
            load(&text, &env(&[])),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let e = env(&[
            ("BRANDKMS_PIN", "pin-1234"),
            ("BRANDKMS_DATABASE_URL", "postgres://u:pw-5678@h/db"),
        ]);
        let s = format!("{:?}", load(&base(), &e).unwrap());
        assert!(!s.contains("pin-1234") && !s.contains("pw-5678"), "{s}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite:///x"), "sqlite:///x");
    }
}
