//! `kmsctl`: the security officers' command line for brandkms.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::kmsctl::main().await
}
