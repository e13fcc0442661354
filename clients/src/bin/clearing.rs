//! `clearing decrypt|sign|verify`: the clearing house's settlement files.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::settlement_cli::clearing_main().await
}
