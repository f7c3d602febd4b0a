//! `palisade api METHOD PATH [BODY]`: any admin API call, printed as it comes back.

use anyhow::{Context, Result};

use super::client::{call, ClientArgs, Payload};

/// Any admin API call: `palisade api GET /v1/projects`, `palisade api PUT /v1/settings '{…}'`.
#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    method: String,
    path: String,
    /// A JSON body, or `@FILE` to read one.
    body: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn api(a: ApiArgs) -> Result<()> {
    let body = match a.body {
        None => Payload::None,
        Some(b) => {
            let text = match b.strip_prefix('@') {
                Some(file) => {
                    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
                }
                None => b,
            };
            Payload::Json(serde_json::from_str(&text).context("the body is not JSON")?)
        }
    };
    print!(
        "{}",
        call(&a.method.to_uppercase(), &a.client, &a.path, body)?
    );
    println!();
    Ok(())
}
