//! `kmsctl health`: whether the server is serving (grpc.health.v1).

use serde_json::json;

use super::output::Output;
use crate::sdk::{Client, ClientError};

/// Prints whether the server is serving; not serving is an `Unavailable` error
/// after the report.
pub(super) async fn run(client: &Client, out: &Output) -> Result<(), ClientError> {
    let serving = client.healthy().await?;
    if out.json {
        out.print_json(&json!({ "serving": serving }));
    } else {
        println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
    }
    if !serving {
        return Err(ClientError::local(tonic::Code::Unavailable, "not serving"));
    }
    Ok(())
}
