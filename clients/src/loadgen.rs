//! `loadgen`: whole card transactions (begin, complete, seal a DEBIT, the
//! simulated card answers, verify the receipt) against a running server for a
//! set time, then transactions per second and p50 / p99 / p99.9 latency; with
//! `--kms-config` it then runs `kms bench` on the same token for the same time and
//! prints the raw PKCS#11 rate of the same token operations and the ratio. A
//! measurement, not a test.
//!
//! Two modes. Closed loop (`--clients N`, the default): N clients, each starting
//! its next transaction when the last one ends, show the peak rate. Open loop
//! (`--rate R`): transactions start on a fixed schedule, R per second, over the
//! clients' connections, however slowly the server answers, and each latency is
//! measured from the transaction's intended start, so a stall counts against
//! every transaction it delays (no coordinated omission).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brandkms_proto::v1 as pb;
use clap::Parser;

use crate::card::Card;
use crate::kmsctl::ConnectionArgs;
use crate::sdk::Client;
use crate::terminal::{self, TransactionError};

/// loadgen: whole card transactions against a running brandkms, with latency
/// percentiles and the token's raw rate for comparison.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// A personalised card file (each client works on its own copy in memory).
    #[arg(long)]
    card: PathBuf,
    /// The card-access key (the caller needs a hold tie-up on it).
    #[arg(long)]
    alias: String,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open loop: start this many transactions per second on a fixed schedule
    /// (over the `--clients` connections), measuring from each intended start.
    #[arg(long)]
    rate: Option<f64>,
    /// The server's configuration: also measure the raw token rate with `kms bench`.
    #[arg(long)]
    kms_config: Option<PathBuf>,
    /// The `kms` binary (default: next to this one).
    #[arg(long)]
    kms: Option<PathBuf>,
    /// Workers for `kms bench` (default: the server's session pool size).
    #[arg(long)]
    bench_threads: Option<usize>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// One whole transaction: a DEBIT of 1 (the card refilled when empty).
async fn purchase(
    client: &Client,
    card: &mut Card,
    alias: &str,
    service_code: u16,
) -> Result<(), TransactionError> {
    if card.balance == 0 {
        card.balance = card.max_balance;
    }
    let currency = card.currency.clone();
    terminal::transact(
        client,
        card,
        alias,
        service_code,
        pb::CardOp::Debit,
        1,
        &currency,
    )
    .await
    .map(|_| ())
}

async fn worker(
    client: Client,
    mut card: Card,
    alias: String,
    service_code: u16,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match purchase(&client, &mut card, &alias, service_code).await {
            Ok(()) => tally.latencies.push(start.elapsed()),
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    tally
}

fn bench(cli: &Cli, config: &PathBuf) -> Result<(f64, String), String> {
    let kms = match &cli.kms {
        Some(k) => k.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("kms"),
    };
    let mut cmd = std::process::Command::new(&kms);
    cmd.args(["bench", "--config"])
        .arg(config)
        .args(["--seconds", &cli.seconds.to_string()]);
    if let Some(t) = cli.bench_threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", kms.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("kms bench output: {e}"))?;
    let rate = v
        .get("per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or("kms bench: no per_second")?;
    let threads = v.get("threads").cloned().unwrap_or_default();
    Ok((rate, format!("{threads} workers")))
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Closed loop: each client starts its next transaction when its last one ends.
async fn closed_loop(
    clients: Vec<Client>,
    card: &Card,
    alias: &str,
    service_code: u16,
    run_for: Duration,
) -> Result<Tally, TransactionError> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(worker(
                client,
                card.clone(),
                alias.to_string(),
                service_code,
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        all.add(
            t.await
                .map_err(|e| TransactionError::Usage(e.to_string()))?,
        );
    }
    Ok(all)
}

/// Open loop: transaction `i` is due at `i / rate` seconds after the start and
/// is sent then (or at once, if the schedule is behind), over the connections in
/// turn, each with its own copy of the card; its latency runs from when it was
/// due. Every transaction scheduled within `run_for` is waited for.
async fn open_loop(
    clients: Vec<Client>,
    card: &Card,
    alias: &str,
    service_code: u16,
    rate: f64,
    run_for: Duration,
) -> Result<Tally, TransactionError> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (run_for.as_secs_f64() * rate).floor() as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in (0..total).zip(clients.iter().cycle()) {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (client, mut card, alias) = (client.clone(), card.clone(), alias.to_string());
        tasks.push(tokio::spawn(async move {
            let result = purchase(&client, &mut card, &alias, service_code).await;
            (result, due.elapsed())
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let (result, latency) = t
            .await
            .map_err(|e| TransactionError::Usage(e.to_string()))?;
        match result {
            Ok(()) => all.latencies.push(latency),
            Err(e) => {
                all.errors += 1;
                all.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(all)
}

async fn run(cli: Cli) -> Result<(), TransactionError> {
    let options = cli.connection.resolve()?;
    let card = Card::load(&cli.card)?;
    let probe = Client::connect(&options).await?;
    let service_code = terminal::service_code(&probe, &cli.alias).await?;
    let mut clients = Vec::new();
    for _ in 0..cli.clients.max(1) {
        clients.push(Client::connect(&options).await?);
    }
    let run_for = Duration::from_secs(cli.seconds.max(1));
    let start = Instant::now();
    let (mut all, mode) = match cli.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => (
            open_loop(clients, &card, &cli.alias, service_code, rate, run_for).await?,
            format!(
                "open loop at {rate:.1} tx/s over {} connections",
                cli.clients.max(1)
            ),
        ),
        Some(rate) => {
            return Err(TransactionError::Usage(format!(
                "--rate {rate}: a positive number of transactions per second"
            )));
        }
        None => (
            closed_loop(clients, &card, &cli.alias, service_code, run_for).await?,
            format!("{} clients", cli.clients.max(1)),
        ),
    };
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies.sort();
    let done = all.latencies.len();
    let rate = done as f64 / elapsed;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "loadgen: {mode} for {elapsed:.1} s against {}: {done} transactions, {rate:.1} tx/s, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, {} errors",
        options.endpoint,
        ms(percentile(&all.latencies, 0.50)),
        ms(percentile(&all.latencies, 0.99)),
        ms(percentile(&all.latencies, 0.999)),
        all.errors
    );
    if let Some(e) = &all.first_error {
        println!("loadgen: first error: {e}");
    }
    if let Some(config) = &cli.kms_config {
        match bench(&cli, config) {
            Ok((raw, how)) => println!(
                "raw token (kms bench, same token, {how}, {} s): {raw:.1} tx/s of the same token operations; service / raw = {:.2}",
                cli.seconds,
                if raw > 0.0 { rate / raw } else { 0.0 }
            ),
            Err(e) => println!("raw token rate not measured: {e}"),
        }
    }
    Ok(())
}

/// Entry point of the `loadgen` binary.
pub async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `loadgen` command line, for man pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
