//! `issuer`: an issuer's side of key distribution, with a token of its own.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::issuer::main().await
}
