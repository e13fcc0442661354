//! `terminal seal`: account or card numbers sealed under the settlement public key.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::settlement_cli::terminal_main().await
}
