//! The `kms` command line and the host commands: `init`, `reconcile`, `doctor`,
//! `bench` (and `serve`, which hands over to `crate::server`). Each command loads
//! and validates the configuration, applies the PKCS#11 module's environment
//! while the process is still single-threaded, then runs on Tokio.
//!
//! Development-only code (the rcgen development PKI behind `kms init --dev`, and
//! SoftHSM2 token creation) is compiled only with the `dev` feature.

pub mod backup;
pub mod bench;
#[cfg(feature = "dev")]
pub mod dev;
pub mod doctor;
pub mod init;
pub mod reconcile;
#[cfg(feature = "dev")]
pub mod softhsm;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::init::OfficerSeed;
use crate::audit::AuditEvent;
use crate::config::{ProcessEnv, Settings};
use crate::hsm::Hsm;
use crate::store::Store;

/// kms: the brandkms key service (serve) and its host commands (init, doctor,
/// reconcile, backup, verify-restore, bench).
#[derive(Debug, Parser)]
#[command(name = "kms", version)]
struct Cli {
    /// Log lines as JSON (one object per line, for a log collector) or as
    /// text. Colour only when standard error is a terminal.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BRANDKMS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `kms bench --operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchOperation {
    /// A card transaction's token operations.
    Card,
    /// RSA-OAEP decryptions, as `clearing decrypt` does.
    Oaep,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run migrations and create the internal keys (idempotent).
    Init {
        /// The configuration file.
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Write a ready development deployment (token, PKI, config) into DIR first.
        #[arg(long, value_name = "DIR")]
        dev: Option<PathBuf>,
        /// Register a first officer with this entity id (repeatable).
        #[arg(long = "officer", value_name = "ID")]
        officers: Vec<String>,
    },
    /// Report token objects no row knows and rows whose object is missing.
    Reconcile {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Destroy the orphan objects (asks for confirmation).
        #[arg(long)]
        fix: bool,
        /// Do not ask for confirmation.
        #[arg(long, requires = "fix")]
        yes: bool,
    },
    /// Serve the gRPC API (mTLS) until SIGINT or SIGTERM.
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy the database consistently while kms serves (SQLite; PostgreSQL:
    /// pg_dump), and with --softhsm-token the SoftHSM2 token directory first.
    Backup {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The backup directory (created; must be new or empty): kms.db, and
        /// softhsm/ with --softhsm-token.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Also copy the SoftHSM2 token directory (before the database, so that
        /// the copied audit anchors are never ahead of the copied records).
        #[arg(long)]
        softhsm_token: bool,
    },
    /// Check a restored database against a restored token: every live key
    /// version's object present with its recorded check value or fingerprint
    /// (computed in the token), objects no row knows, and every audit chain.
    /// Writes nothing to the token; like every command it migrates an older
    /// database's schema (drill on a copy). Exit code 1 when something does not
    /// check.
    VerifyRestore {
        /// The configuration file of the restored deployment.
        #[arg(long)]
        config: PathBuf,
    },
    /// Probe what the configured token can do.
    Doctor {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Measure the raw token rate of a card transaction's operations (a
    /// benchmark: no gRPC, TLS or database; ephemeral objects only).
    Bench {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent workers (default: the configured session pool size).
        #[arg(long)]
        threads: Option<usize>,
        /// What to measure.
        #[arg(long, value_enum, default_value_t = BenchOperation::Card)]
        operation: BenchOperation,
        /// `oaep`: the RSA modulus size.
        #[arg(long, default_value_t = 3072)]
        bits: u64,
    },
}

/// Failure of a command: the message is printed as `kms: error: ...`.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(e: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            message: e.to_string(),
        }
    }

    fn runtime(e: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

/// The `kms` command line, for man pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Entry point of the `kms` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("kms: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Init {
            config,
            dev,
            mut officers,
        } => {
            let config = match (config, dev) {
                (Some(c), _) => c,
                (None, Some(dir)) => dev_deployment(&dir, &mut officers)?,
                (None, None) => return Err(Failure::usage("give --config FILE or --dev DIR")),
            };
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_init(settings, officers))
        }
        Command::Reconcile { config, fix, yes } => {
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_reconcile(settings, fix, yes))
        }
        Command::Serve { config } => {
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_serve(settings))
        }
        Command::Backup {
            config,
            out,
            softhsm_token,
        } => {
            // Relative to where the command was given, not the deployment.
            let out =
                std::path::absolute(&out).map_err(|e| Failure::usage(format!("--out: {e}")))?;
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_backup(settings, &out, softhsm_token))
        }
        Command::VerifyRestore { config } => {
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_verify_restore(settings))
        }
        Command::Doctor { config } => {
            let settings = settings(&config)?;
            // `settings` moved into the deployment.
            let deployment = std::env::current_dir().map_err(Failure::runtime)?;
            runtime()?.block_on(cmd_doctor(settings, &deployment))
        }
        Command::Bench {
            config,
            seconds,
            threads,
            operation,
            bits,
        } => {
            let settings = settings(&config)?;
            runtime()?.block_on(cmd_bench(settings, seconds, threads, operation, bits))
        }
    }
}

/// Writes (or reuses) a development deployment in `dir` and adds its officers.
#[cfg(feature = "dev")]
fn dev_deployment(dir: &Path, officers: &mut Vec<String>) -> Result<PathBuf, Failure> {
    let (config, written) = dev::write_deployment(dir).map_err(Failure::runtime)?;
    if written {
        println!("wrote development deployment in {}", dir.display());
    } else {
        println!(
            "development deployment in {} already present",
            dir.display()
        );
    }
    officers.extend(dev::DEV_OFFICERS.iter().map(|s| s.to_string()));
    Ok(config)
}

/// Without the `dev` feature there is no development PKI to write.
#[cfg(not(feature = "dev"))]
fn dev_deployment(_dir: &Path, _officers: &mut Vec<String>) -> Result<PathBuf, Failure> {
    Err(Failure::usage(
        "--dev: this kms was built without the `dev` feature (cargo build --features dev)",
    ))
}

/// Loads the configuration, applies the module's environment and moves into
/// the configuration file's directory, the deployment: the module resolves
/// relative paths of its own configuration (SoftHSM2's `directories.tokendir`)
/// there, so a copy of a deployment uses its own token. Every path of the
/// configuration itself is already absolute by then.
fn settings(path: &Path) -> Result<Settings, Failure> {
    // Absolute, symbolic links kept: relative paths in the file stay relative
    // to the directory the operator named.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let settings = Settings::load(&path, &ProcessEnv).map_err(Failure::usage)?;
    warn_if_token_delayed(&settings);
    absolutise_process_env(&settings.module_env);
    apply_module_env(&settings.module_env);
    let deployment = deployment_dir(&path);
    std::env::set_current_dir(&deployment)
        .map_err(|e| Failure::runtime(format!("{}: {e}", deployment.display())))?;
    Ok(settings)
}

/// The deployment a configuration file belongs to: its directory.
fn deployment_dir(config: &Path) -> PathBuf {
    std::path::absolute(config)
        .ok()
        .and_then(|c| c.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A module variable the process environment gives as a relative path (e.g.
/// `SOFTHSM2_CONF=dev/softhsm/softhsm2.conf`) meant the directory the command
/// was given in: made absolute before `kms` moves into the deployment.
#[allow(unsafe_code)]
fn absolutise_process_env(vars: &[(String, String)]) {
    let names = vars
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(["SOFTHSM2_CONF", "OPENSSL_CONF"]);
    for name in names {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let path = Path::new(&value);
        if path.is_relative()
            && path.exists()
            && let Ok(absolute) = std::path::absolute(path)
        {
            // SAFETY: called from `main` before the Tokio runtime or any other
            // thread exists, and before the PKCS#11 module (the reader) is loaded.
            unsafe { std::env::set_var(name, absolute) };
        }
    }
}

/// Says loudly, on stderr and in the log, that a benchmark delay slows every token
/// call (only a `bench-delay` build can have one: the configuration refuses it
/// otherwise).
fn warn_if_token_delayed(settings: &Settings) {
    let delay = settings.hsm.benchmark_token_delay;
    if delay.is_zero() {
        return;
    }
    let ms = delay.as_millis();
    eprintln!(
        "kms: WARNING: BENCHMARK BUILD: every token call is delayed by {ms} ms \
         ([hsm] benchmark_token_delay_ms = {ms}); for benchmarks only, never in production"
    );
    tracing::warn!(
        delay_ms = ms,
        "benchmark build: every token call is delayed ([hsm] benchmark_token_delay_ms); never in production"
    );
}

#[allow(unsafe_code)]
fn apply_module_env(vars: &[(String, String)]) {
    for (name, value) in vars {
        // A variable already set in the environment wins over the file.
        if std::env::var_os(name).is_none() {
            // SAFETY: called from `main` before the Tokio runtime or any other
            // thread exists, and before the PKCS#11 module (the reader) is loaded.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)
}

/// Opens the token (blocking) and the store.
async fn open(settings: &Settings) -> Result<(Hsm, Store), Failure> {
    let params = settings.hsm.clone();
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&params))
        .await
        .map_err(Failure::runtime)?
        .map_err(|e| Failure::runtime(format!("hsm: {e}")))?;
    let store = Store::connect(&settings.database)
        .await
        .map_err(Failure::runtime)?;
    Ok((hsm, store))
}

fn local_actor(command: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    format!("local:{command}:{user}")
}

async fn cmd_init(settings: Settings, officers: Vec<String>) -> Result<ExitCode, Failure> {
    let (hsm, store) = open(&settings).await?;
    let seeds: Vec<OfficerSeed> = officers
        .into_iter()
        .map(|id| OfficerSeed {
            name: format!("security officer {id}"),
            id,
        })
        .collect();
    let dual_control = settings.service.dual_control.clone();
    let report = init::run(&hsm, &store, &local_actor("init"), &seeds, &dual_control)
        .await
        .map_err(Failure::runtime)?;
    for (alias, kcv) in &report.created {
        println!(
            "created internal key {alias} v1 (KCV {kcv}) in token {}",
            hsm.token_label()
        );
    }
    for id in &report.officers_added {
        println!("registered officer {id}");
    }
    if let Some(ops) = &report.dual_control {
        println!(
            "dual control: {} (kept in the database; change it with `kmsctl dual-control set`)",
            crate::ops::approvals::describe_dual_control(ops)
        );
    }
    if report.nothing_to_do() {
        println!(
            "nothing to do: already initialised ({} present in token {})",
            report.present.join(", "),
            hsm.token_label()
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn cmd_reconcile(settings: Settings, fix: bool, yes: bool) -> Result<ExitCode, Failure> {
    let (hsm, store) = open(&settings).await?;
    let report = reconcile::check(&hsm, &store)
        .await
        .map_err(Failure::runtime)?;
    println!(
        "token {}: {} brandkms objects; database: {} live key versions",
        hsm.token_label(),
        report.objects,
        report.rows
    );
    for o in &report.orphans {
        println!("orphan object (no row): cka_id={} label={}", o.id, o.label);
    }
    for r in &report.missing {
        println!(
            "missing object (row without object): {} v{} state={} cka_id={}",
            r.alias, r.version, r.state, r.cka_id
        );
    }
    if report.is_consistent() {
        println!("consistent");
        return Ok(ExitCode::SUCCESS);
    }
    if fix && !report.orphans.is_empty() {
        if !yes && !confirm(report.orphans.len())? {
            println!("nothing destroyed");
            return Ok(ExitCode::FAILURE);
        }
        let destroyed = reconcile::remove_orphans(&hsm, &store, &report.orphans)
            .await
            .map_err(Failure::runtime)?;
        if let Ok(auditor) = init::auditor(&hsm, &store).await {
            for o in &destroyed {
                let event =
                    AuditEvent::allowed(&local_actor("reconcile"), "reconcile.destroy_orphan")
                        .outcome(
                            crate::audit::Outcome::Allowed,
                            Some(format!("cka_id {} label {}", o.id, o.label)),
                        );
                auditor.record(&event).await.map_err(Failure::runtime)?;
            }
        }
        for o in &destroyed {
            println!("destroyed orphan object cka_id={} label={}", o.id, o.label);
        }
        if report.missing.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    Ok(ExitCode::FAILURE)
}

fn confirm(count: usize) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "refusing to destroy objects without confirmation: run in a terminal or add --yes",
        ));
    }
    print!("destroy {count} orphan object(s) in the token? type 'destroy' to confirm: ");
    std::io::stdout().flush().map_err(Failure::runtime)?;
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(Failure::runtime)?;
    Ok(line.trim() == "destroy")
}

async fn cmd_doctor(settings: Settings, deployment: &Path) -> Result<ExitCode, Failure> {
    let (hsm, store) = open(&settings).await?;
    println!(
        "module {}: token {} logged in",
        settings.hsm.module.display(),
        hsm.token_label()
    );
    let mut probes = doctor::run(&hsm).await.map_err(Failure::runtime)?;
    let softhsm2_conf = std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from);
    // A SQLite database's directory is the deployment's state directory.
    let database = crate::store::sqlite_path(&settings.database.url);
    probes.extend(doctor::token_directory_probe(
        softhsm2_conf.as_deref(),
        deployment,
        database.as_deref().and_then(Path::parent),
    ));
    for p in &probes {
        match &p.result {
            Ok(()) => println!("ok           {}", p.capability),
            Err(e) => println!("unavailable  {}: {e}", p.capability),
        }
    }
    println!(
        "hardening: what a holder of this PIN could do with any PKCS#11 client (docs/threat-model.md)"
    );
    let findings = hsm
        .run(|s| Ok(s.hardening()))
        .await
        .map_err(Failure::runtime)?;
    for f in &findings {
        let verdict = match f.closed {
            Some(true) => "closed",
            Some(false) => "OPEN",
            None => "unknown",
        };
        println!("{verdict:<12} {}: {}", f.check, f.meaning);
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn cmd_backup(
    settings: Settings,
    out: &Path,
    softhsm_token: bool,
) -> Result<ExitCode, Failure> {
    let conf =
        if softhsm_token {
            Some(std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from).ok_or_else(|| {
            Failure::usage(
                "--softhsm-token: SOFTHSM2_CONF is not set ([hsm.env] or the environment): \
                 the token is not SoftHSM2's; back it up with the HSM vendor's tools",
            )
        })?)
        } else {
            None
        };
    let store = Store::connect(&settings.database)
        .await
        .map_err(|e| Failure::runtime(format!("database: {e}")))?;
    let result = backup::backup(&store, out, conf.as_deref()).await;
    store.close().await;
    let report = result.map_err(Failure::runtime)?;
    println!(
        "database copied to {} ({} live key versions)",
        report.database.display(),
        report.key_versions
    );
    match &report.token {
        Some(dir) => println!(
            "SoftHSM2 token directory copied to {} (its softhsm2.conf names it relative to \
             the deployment, softhsm/tokens: restore both as softhsm/ beside kms.toml)",
            dir.display()
        ),
        None => println!(
            "token not copied: back it up with the HSM's own tools (or --softhsm-token for SoftHSM2), \
             before the database copy"
        ),
    }
    println!(
        "restore drill: a deployment with this database and token, then kms verify-restore --config ..."
    );
    Ok(ExitCode::SUCCESS)
}

async fn cmd_verify_restore(settings: Settings) -> Result<ExitCode, Failure> {
    let (hsm, store) = open(&settings).await?;
    let result = backup::verify_restore(&hsm, &store).await;
    store.close().await;
    let report = result.map_err(Failure::runtime)?;
    println!(
        "token {}: {} live key versions to check",
        hsm.token_label(),
        report.versions.len()
    );
    for c in &report.versions {
        let v = &c.version;
        let what = if v.kcv.len() == 64 {
            "fingerprint"
        } else {
            "KCV"
        };
        match &c.computed {
            Ok(value) if c.matches() => {
                println!("ok        {} v{} {what} {value}", v.alias, v.version)
            }
            Ok(value) => println!(
                "MISMATCH  {} v{}: recorded {what} {}, the token computes {value}",
                v.alias, v.version, v.kcv
            ),
            Err(backup::Unchecked::Missing) => println!(
                "MISSING   {} v{} cka_id={}: no object with its CKA_ID",
                v.alias, v.version, v.cka_id
            ),
            Err(backup::Unchecked::Failed(e)) => println!(
                "FAILED    {} v{} cka_id={}: {e}",
                v.alias, v.version, v.cka_id
            ),
        }
    }
    for o in &report.orphans {
        println!(
            "orphan    object cka_id={} label={}: no row (made after the database backup?)",
            o.id, o.label
        );
    }
    for chain in &report.audit.chains {
        match &chain.first_broken {
            None => println!(
                "ok        audit chain {}: {} records{}",
                chain.chain,
                chain.records,
                chain
                    .anchored
                    .map(|seq| format!(", anchored at {seq}"))
                    .unwrap_or_default()
            ),
            Some(b) => println!(
                "BROKEN    audit chain {} at record {}: {}",
                chain.chain, b.seq, b.problem
            ),
        }
    }
    if report.verified() {
        println!(
            "restore verified: {} key versions, {} audit records",
            report.versions.len(),
            report.audit.records()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("restore NOT verified");
        Ok(ExitCode::FAILURE)
    }
}

async fn cmd_bench(
    settings: Settings,
    seconds: u64,
    threads: Option<usize>,
    operation: BenchOperation,
    bits: u64,
) -> Result<ExitCode, Failure> {
    let params = settings.hsm.clone();
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&params))
        .await
        .map_err(Failure::runtime)?
        .map_err(|e| Failure::runtime(format!("hsm: {e}")))?;
    let threads = threads.unwrap_or(settings.hsm.sessions).max(1);
    let duration = std::time::Duration::from_secs(seconds.max(1));
    let report = match operation {
        BenchOperation::Card => {
            eprintln!(
                "kms bench: {threads} workers for {seconds} s on token {}; per transaction: {}",
                hsm.token_label(),
                self::bench::OPERATIONS
            );
            self::bench::run(&hsm, threads, duration).await
        }
        BenchOperation::Oaep => {
            let hash = if hsm.run(|s| s.probe_oaep_sha256()).await.unwrap_or(false) {
                crate::hsm::OaepHash::Sha256
            } else {
                crate::hsm::OaepHash::Sha1
            };
            eprintln!(
                "kms bench: {threads} workers for {seconds} s on token {}: RSA-{bits} OAEP ({}) decryptions",
                hsm.token_label(),
                hash.as_str()
            );
            self::bench::run_oaep(&hsm, threads, duration, bits, hash).await
        }
    }
    .map_err(|e| Failure::runtime(format!("hsm: {e}")))?;
    println!(
        "{{\"transactions\": {}, \"seconds\": {:.3}, \"threads\": {}, \"per_second\": {:.1}}}",
        report.transactions,
        report.seconds,
        report.threads,
        report.rate()
    );
    Ok(ExitCode::SUCCESS)
}

async fn cmd_serve(settings: Settings) -> Result<ExitCode, Failure> {
    let server = crate::server::Server::build(&settings, crate::clock::Clock::default())
        .await
        .map_err(Failure::runtime)?;
    let listener = crate::server::bind(settings.listen)
        .await
        .map_err(Failure::runtime)?;
    let addr = listener.local_addr().map_err(Failure::runtime)?;
    tracing::info!(%addr, token = %settings.hsm.token_label, "kms serving (mTLS)");
    println!("kms listening on {addr}");
    if let Some(metrics) = server.metrics_addr() {
        println!("kms metrics on http://{metrics}/metrics");
    }
    server
        .serve(listener, shutdown_signal())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!("kms stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
