//! `cybershop purchase`: an online purchase, the card authenticated by brandkms.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    brandkms_clients::terminal::cybershop_main().await
}
