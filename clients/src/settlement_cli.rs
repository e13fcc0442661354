//! `terminal seal`: a terminal or shop encrypts account or card numbers under the
//! brand's settlement public key, client side, into sealed blobs (one base64 line
//! each). `clearing decrypt FILE`: the clearing house streams a settlement file
//! through `DecryptStream` with a progress bar, writes the results and reports the
//! lines that failed without stopping; `clearing sign` / `clearing verify`:
//! signed settlement results (RSA-PSS), verified by anyone (a store).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use brandkms_proto::v1 as pb;
use clap::{Parser, Subcommand};
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

use crate::kmsctl::ConnectionArgs;
use crate::sdk::{Client, ClientError, seal};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Io(String),
}

fn io(what: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", what.display()))
}

/// terminal: seal account or card numbers for the clearing house.
#[derive(Debug, Parser)]
#[command(name = "terminal", version)]
struct TerminalCli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: TerminalCommand,
}

#[derive(Debug, Subcommand)]
enum TerminalCommand {
    /// Seal each VALUE (or each line of standard input) into a sealed blob line.
    Seal {
        /// The settlement key.
        #[arg(long)]
        alias: String,
        /// Its version (default: the active one).
        #[arg(long)]
        version: Option<u32>,
        /// Refuse the public key unless its SHA-256 fingerprint is this (hex).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Append the lines to this file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Values to seal (default: standard input, one per line).
        values: Vec<String>,
    },
}

/// clearing: decrypt settlement files, sign and verify settlement results.
#[derive(Debug, Parser)]
#[command(name = "clearing", version)]
struct ClearingCli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: ClearingCommand,
}

#[derive(Debug, Subcommand)]
enum ClearingCommand {
    /// Decrypt a settlement file (one sealed blob per line, base64).
    Decrypt {
        /// The settlement file.
        file: PathBuf,
        /// Where the results go (line number, tab, plaintext), mode 0600.
        #[arg(long)]
        out: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// The server's configuration: then also measure the token's raw
        /// RSA-OAEP decryption rate with `kms bench` (a benchmark) and compare.
        #[arg(long)]
        kms_config: Option<PathBuf>,
        /// The `kms` binary (default: next to this one).
        #[arg(long)]
        kms: Option<PathBuf>,
    },
    /// Sign a settlement result file with a settlement key (RSA-PSS SHA-256).
    Sign {
        /// The settlement key.
        #[arg(long)]
        alias: String,
        /// The result file.
        file: PathBuf,
        /// Where the signature goes (base64; the key version is printed).
        #[arg(long)]
        signature: PathBuf,
    },
    /// Verify a signed settlement result (anyone, e.g. a store).
    Verify {
        /// The settlement key.
        #[arg(long)]
        alias: String,
        /// The version that signed.
        #[arg(long)]
        version: u32,
        /// The result file.
        file: PathBuf,
        /// The signature file (base64).
        #[arg(long)]
        signature: PathBuf,
    },
}

async fn terminal(cli: TerminalCli) -> Result<(), Error> {
    let client = Client::connect(&cli.connection.resolve()?).await?;
    let TerminalCommand::Seal {
        alias,
        version,
        fingerprint,
        out,
        values,
    } = cli.command;
    let public = client
        .settlement()
        .get_public_key(pb::GetPublicKeyRequest {
            alias,
            version: version.unwrap_or(0),
        })
        .await?;
    let public_fingerprint = hex::encode(&public.fingerprint);
    if let Some(f) = fingerprint
        && !f.eq_ignore_ascii_case(&public_fingerprint)
    {
        return Err(Error::Io(format!(
            "public key fingerprint {public_fingerprint} is not the expected {f}: refusing to seal"
        )));
    }
    let values: Vec<Zeroizing<String>> = if values.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map(Zeroizing::new))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Io(format!("standard input: {e}")))?
    } else {
        values.into_iter().map(Zeroizing::new).collect()
    };
    let mut lines = String::new();
    for v in &values {
        lines.push_str(&STANDARD.encode(seal(&public, v.as_bytes())?));
        lines.push('\n');
    }
    match out {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .map_err(io(&path))?,
        None => print!("{lines}"),
    }
    eprintln!(
        "sealed {} values under {} v{} (fingerprint {})",
        values.len(),
        public.alias,
        public.version,
        public_fingerprint
    );
    Ok(())
}

fn private_file(path: &std::path::Path) -> Result<std::fs::File, Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io(path))
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs `kms bench --operation oaep` for as long as the decryption took, with the
/// modulus size of the file's first key, and prints both rates.
async fn compare_with_token(
    client: &Client,
    file: &std::path::Path,
    config: &std::path::Path,
    kms: Option<PathBuf>,
    rate: f64,
    secs: f64,
) -> Result<(), Error> {
    let first = std::fs::File::open(file).map_err(io(file)).and_then(|f| {
        std::io::BufReader::new(f)
            .lines()
            .find_map(|l| l.ok().and_then(|l| STANDARD.decode(l.trim()).ok()))
            .and_then(|b| brandkms_proto::blob::SealedBlob::decode(&b).ok())
            .ok_or_else(|| Error::Io("no sealed blob in the file to benchmark".into()))
    })?;
    let public = client
        .settlement()
        .get_public_key(pb::GetPublicKeyRequest {
            alias: first.alias.clone(),
            version: first.version,
        })
        .await?;
    let kms = match kms {
        Some(k) => k,
        None => std::env::current_exe()
            .map_err(|e| Error::Io(e.to_string()))?
            .with_file_name("kms"),
    };
    let seconds = (secs.ceil() as u64).clamp(1, 60);
    let out = std::process::Command::new(&kms)
        .args(["bench", "--operation", "oaep", "--config"])
        .arg(config)
        .args([
            "--seconds",
            &seconds.to_string(),
            "--bits",
            &public.bits.to_string(),
        ])
        .output()
        .map_err(|e| Error::Io(format!("{}: {e}", kms.display())))?;
    if !out.status.success() {
        return Err(Error::Io(format!(
            "kms bench: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Io(format!("kms bench output: {e}")))?;
    let raw = v
        .get("per_second")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let threads = v.get("threads").cloned().unwrap_or_default();
    println!(
        "raw token (kms bench, same token, {threads} workers, {seconds} s): {raw:.0} RSA-{} OAEP decryptions/s; DecryptStream / raw = {:.2}",
        public.bits,
        if raw > 0.0 { rate / raw } else { 0.0 }
    );
    Ok(())
}

async fn decrypt(
    client: &Client,
    file: PathBuf,
    out: PathBuf,
    quiet: bool,
) -> Result<(f64, f64), Error> {
    let total = {
        let f = std::fs::File::open(&file).map_err(io(&file))?;
        std::io::BufReader::new(f).lines().count() as u64
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::DecryptItem>(64);
    let (error_tx, mut error_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
    let reader_file = file.clone();
    // Lines are read as the stream consumes them: memory stays bounded.
    let reader = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let f = std::fs::File::open(&reader_file).map_err(io(&reader_file))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(io(&reader_file))?;
            let index = n as u64 + 1;
            match STANDARD.decode(line.trim()) {
                Ok(blob) => {
                    if tx.blocking_send(pb::DecryptItem { index, blob }).is_err() {
                        break;
                    }
                }
                Err(_) => {
                    let _ = error_tx.send((index, "not base64".to_string()));
                }
            }
        }
        Ok(())
    });
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results = client
        .settlement()
        .decrypt_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    let mut writer = std::io::BufWriter::new(private_file(&out)?);
    let (mut ok, mut failed) = (0u64, Vec::new());
    let started = std::time::Instant::now();
    while let Some(r) = results.next().await {
        let r = r.map_err(ClientError::from)?;
        match r.result {
            Some(pb::decrypt_result::Result::Plaintext(p)) => {
                let p = Zeroizing::new(p);
                let text = Zeroizing::new(match std::str::from_utf8(&p) {
                    Ok(t) => t.to_string(),
                    Err(_) => hex::encode_upper(p.as_slice()),
                });
                writeln!(writer, "{}\t{}", r.index, text.as_str()).map_err(io(&out))?;
                ok += 1;
            }
            Some(pb::decrypt_result::Result::Error(e)) => failed.push((r.index, e.message)),
            None => failed.push((r.index, "no result".into())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.flush().map_err(io(&out))?;
    reader
        .await
        .map_err(|e| Error::Io(format!("reader: {e}")))??;
    while let Ok(e) = error_rx.try_recv() {
        failed.push(e);
        bar.inc(1);
    }
    failed.sort();
    for (line, e) in &failed {
        eprintln!("line {line}: {e}");
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = ok as f64 / secs.max(1e-9);
    println!(
        "decrypted {ok} of {total} lines in {secs:.1} s ({rate:.0}/s); {} failed; results in {}{}",
        failed.len(),
        out.display(),
        peak_rss_mib()
            .map(|m| format!("; peak memory of this process {m:.0} MiB"))
            .unwrap_or_default()
    );
    Ok((rate, secs))
}

async fn clearing(cli: ClearingCli) -> Result<(), Error> {
    let client = Client::connect(&cli.connection.resolve()?).await?;
    match cli.command {
        ClearingCommand::Decrypt {
            file,
            out,
            quiet,
            kms_config,
            kms,
        } => {
            let (rate, secs) = decrypt(&client, file.clone(), out, quiet).await?;
            if let Some(config) = kms_config {
                compare_with_token(&client, &file, &config, kms, rate, secs).await?;
            }
            Ok(())
        }
        ClearingCommand::Sign {
            alias,
            file,
            signature,
        } => {
            let data = std::fs::read(&file).map_err(io(&file))?;
            let s = client
                .settlement()
                .sign(pb::SignRequest {
                    alias: alias.clone(),
                    data,
                })
                .await?;
            std::fs::write(&signature, STANDARD.encode(&s.signature)).map_err(io(&signature))?;
            println!(
                "signed {} with {alias} v{}: {}",
                file.display(),
                s.version,
                signature.display()
            );
            Ok(())
        }
        ClearingCommand::Verify {
            alias,
            version,
            file,
            signature,
        } => {
            let data = std::fs::read(&file).map_err(io(&file))?;
            let text = std::fs::read_to_string(&signature).map_err(io(&signature))?;
            let signature = STANDARD
                .decode(text.trim())
                .map_err(|e| Error::Io(format!("signature: {e}")))?;
            let v = client
                .settlement()
                .verify(pb::VerifyRequest {
                    alias: alias.clone(),
                    version,
                    data,
                    signature,
                })
                .await?;
            if v.valid {
                println!("signature valid: {alias} v{version}");
                Ok(())
            } else {
                Err(Error::Io(format!(
                    "signature NOT valid for {} under {alias} v{version}",
                    file.display()
                )))
            }
        }
    }
}

fn exit(name: &str, r: Result<(), Error>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the `terminal` binary.
pub async fn terminal_main() -> ExitCode {
    exit("terminal", terminal(TerminalCli::parse()).await)
}

/// Entry point of the `clearing` binary.
pub async fn clearing_main() -> ExitCode {
    exit("clearing", clearing(ClearingCli::parse()).await)
}

/// The `terminal` command line, for man pages and shell completions.
pub fn terminal_command() -> clap::Command {
    <TerminalCli as clap::CommandFactory>::command()
}

/// The `clearing` command line, for man pages and shell completions.
pub fn clearing_command() -> clap::Command {
    <ClearingCli as clap::CommandFactory>::command()
}
