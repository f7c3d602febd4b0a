//! The operator's side of the admin API: where it is, which key to use, and one HTTP call.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the admin API is and which key to use: flags, then the environment, then the client
/// file (`--client-config`, `PALISADE_CLIENT_CONFIG`, or `~/.config/palisade/client.toml`), a
/// TOML file with `admin = "10.0.0.5:7001"` and `key = "pal_…"`.
#[derive(clap::Args)]
pub(crate) struct ClientArgs {
    /// Admin API address of any node (default 127.0.0.1:7001).
    #[arg(long, env = "PALISADE_ADMIN")]
    admin: Option<String>,
    /// API key (or PALISADE_API_KEY).
    #[arg(long, env = "PALISADE_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The cluster CA (`DATA_DIR/tls/ca.pem`) of an admin API served over TLS.
    #[arg(long, env = "PALISADE_ADMIN_CA")]
    ca: Option<PathBuf>,
    /// A client file holding `admin`, `key` and optionally `ca`.
    #[arg(long, env = "PALISADE_CLIENT_CONFIG")]
    client_config: Option<PathBuf>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    admin: Option<String>,
    key: Option<String>,
    ca: Option<PathBuf>,
}

/// Where and how to reach the admin API.
pub(crate) struct Target {
    admin: String,
    key: String,
    /// The CA's PEM when the API is served over TLS.
    ca_pem: Option<String>,
}

impl ClientArgs {
    fn file(&self) -> Result<ClientFile> {
        let (path, explicit) = match &self.client_config {
            Some(p) => (p.clone(), true),
            None => match std::env::var_os("HOME") {
                Some(h) => (PathBuf::from(h).join(".config/palisade/client.toml"), false),
                None => return Ok(ClientFile::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("client file {}", path.display()))
            }
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(ClientFile::default())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read client file {}", path.display())),
        }
    }

    /// The admin address, key and CA to use.
    pub(crate) fn resolve(&self) -> Result<Target> {
        let need_file = self.admin.is_none() || self.key.is_none() || self.ca.is_none();
        let file = if need_file {
            self.file()?
        } else {
            ClientFile::default()
        };
        let admin = self
            .admin
            .clone()
            .or(file.admin)
            .unwrap_or_else(|| "127.0.0.1:7001".into());
        let key = self.key.clone().or(file.key).context(
            "no API key: give --key, set PALISADE_API_KEY, or put key = \"…\" in the client file",
        )?;
        let ca_pem = match self.ca.clone().or(file.ca) {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the CA {}", path.display()))?,
            ),
        };
        Ok(Target { admin, key, ca_pem })
    }
}

/// A request body.
pub(crate) enum Payload {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// An HTTP client; with `ca_pem`, one that speaks TLS and trusts only that CA.
fn agent(ca_pem: Option<&str>) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)));
    if let Some(pem) = ca_pem {
        use rustls_pki_types::pem::PemObject;
        let roots = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.map(|c| ureq::tls::Certificate::from_der(&c).to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .context("the CA file holds no readable certificate")?;
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// Call the admin API; the body as text on success, the API's own error otherwise.
pub(crate) fn call(method: &str, c: &ClientArgs, path: &str, body: Payload) -> Result<String> {
    let Target { admin, key, ca_pem } = c.resolve()?;
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{admin}{path}");
    let (ctype, bytes) = match body {
        Payload::None => (None, Vec::new()),
        Payload::Json(v) => (Some("application/json"), serde_json::to_vec(&v)?),
        Payload::Raw(ctype, bytes) => (Some(ctype), bytes),
    };
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("Authorization", format!("Bearer {key}"));
    if let Some(ct) = ctype {
        req = req.header("Content-Type", ct);
    }
    let resp = agent(ca_pem.as_deref())?.run(req.body(bytes)?);
    let mut resp = resp.with_context(|| format!("cannot reach the admin API at {admin}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    if !status.is_success() {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let detail = v["error"].as_str().unwrap_or("no detail");
        let mut msg = format!("{method} {path} answered {status}: {detail}");
        for e in v["errors"].as_array().into_iter().flatten() {
            msg.push_str(&format!(
                "\n  line {}: {}",
                e["line"],
                e["message"].as_str().unwrap_or("")
            ));
        }
        bail!(msg);
    }
    Ok(text)
}

/// [`call`] for JSON answers.
pub(crate) fn call_json(method: &str, c: &ClientArgs, path: &str, body: Payload) -> Result<Value> {
    let text = call(method, c, path, body)?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Percent-encode a query value.
pub(crate) fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
