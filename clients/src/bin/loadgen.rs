//! `loadgen`: whole card transactions against a running server; a measurement.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::loadgen::main().await
}
