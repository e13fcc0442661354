//! `loading-portal load`: a proxy load for an issuer that is not online.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::terminal::portal_main().await
}
