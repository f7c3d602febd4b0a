//! Pebble, the ACME test CA, and `pebble-challtestsrv` as its DNS, as real processes on loopback.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::net::free_port;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA of Pebble's own HTTPS listener (`acme.ca_bundle`).
    pub ca_bundle: PathBuf,
    ca_pem: String,
    management: String,
    dns_management: String,
    children: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(addr: &str) {
    crate::wait::until(
        &format!("{addr} to listen"),
        Duration::from_secs(20),
        || TcpStream::connect(addr).is_ok(),
    )
    .unwrap();
}

impl Pebble {
    /// Start Pebble validating on `http_port` and `tls_port` (the nodes' public ports), with
    /// `env` added to Pebble's environment. Validation waits are off; the ~5% rejected nonces
    /// are left on unless `env` says otherwise, so the client's retry is exercised.
    pub fn start(http_port: u16, tls_port: u16, env: &[(&str, &str)]) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("palisade-pebble-")
            .tempdir()
            .unwrap();
        let pki = crate::pki::pki(&["127.0.0.1", "localhost"]);
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let ca_bundle = dir.path().join("ca.pem");
        std::fs::write(&cert, &pki.chain_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        std::fs::write(&ca_bundle, &pki.ca_pem).unwrap();

        let dns = format!("127.0.0.1:{}", free_port());
        let dns_management = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let management = format!("127.0.0.1:{}", free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();

        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-dns01", &dns, "-management", &dns_management])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.254", "-defaultIPv6", ""])
            .stdout(Stdio::from(log("challtestsrv.log")))
            .stderr(Stdio::from(log("challtestsrv.err")))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install -y pebble)");
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen,
                "managementListenAddress": management,
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log("pebble.log")))
            .stderr(Stdio::from(log("pebble.err")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let pebble = cmd.spawn().expect("pebble (apt-get install -y pebble)");
        let p = Pebble {
            directory: format!("https://{listen}/dir"),
            ca_bundle,
            ca_pem: pki.ca_pem,
            management,
            dns_management: dns_management.clone(),
            children: vec![challtestsrv, pebble],
            dir,
        };
        wait_port(&dns_management);
        wait_port(&listen);
        wait_port(&p.management);
        p
    }

    /// Answer A queries for `host` with `ip` only (and nothing for AAAA).
    pub fn point(&self, host: &str, ip: &str) {
        let agent = crate::admin::agent();
        let clear = serde_json::json!({ "host": host });
        let add = serde_json::json!({ "host": host, "addresses": [ip] });
        for (path, body) in [("clear-a", clear), ("add-a", add)] {
            let url = format!("http://{}/{path}", self.dns_management);
            let r = agent.post(&url).send_json(&body).unwrap();
            assert_eq!(r.status(), 200, "challtestsrv {path} {host}");
        }
    }

    /// Pebble's issuing root: what a browser would have in its store.
    pub fn root_pem(&self) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let a = rt
            .block_on(crate::http::https_get(
                &self.management,
                "127.0.0.1",
                "/roots/0",
                &self.ca_pem,
            ))
            .unwrap();
        assert_eq!(a.status, 200);
        String::from_utf8(a.body.to_vec()).unwrap()
    }

    /// Pebble's log, for assertion messages.
    pub fn log(&self) -> String {
        ["pebble.log", "pebble.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }

    /// How many orders Pebble created (it logs one line per order it stores).
    pub fn orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Added order"))
            .count()
    }
}

/// A TLS 1.3 client that trusts only `root_pem`.
pub fn tls13_client(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Handshake with `addr` for `host`; the leaf certificate it served, verified.
pub fn served_leaf(
    addr: &str,
    host: &str,
    cfg: &Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .to_vec();
    Ok(leaf)
}
