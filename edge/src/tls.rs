//! TLS for the public listener: certificates chosen by SNI from the live view, keys opened with
//! the master key into memory only. A name with no certificate fails the handshake: there is no
//! default certificate that would show one project's names to a visitor of another.

use std::sync::Arc;

use palisade_raft::crypto::MasterKey;
use palisade_raft::model::{Cert, RecordKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::view::LiveView;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
}

/// The sealing context of a certificate's key: its record key, so a sealed key moved to another
/// record does not open.
pub fn key_context(c: &Cert) -> String {
    RecordKey::Cert {
        name: c.name.clone(),
    }
    .encode()
}

pub fn certified_key(c: &Cert, master: &MasterKey) -> Result<CertifiedKey, CertError> {
    certified_key_from(&c.chain_pem, &c.key, &key_context(c), master)
}

/// A chain and its sealed key (sealed under `context`) as rustls serves them.
pub fn certified_key_from(
    chain_pem: &str,
    sealed_key: &palisade_raft::model::Sealed,
    context: &str,
    master: &MasterKey,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Chain("no certificate in PEM".into()));
    }
    let key_pem = master
        .open(sealed_key, context)
        .map_err(|e| CertError::Key(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug)]
pub struct SniResolver {
    view: Arc<LiveView>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveView(index {})", self.get().index)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        // RFC 8737: a validation handshake offers `acme-tls/1` alone and gets the validation
        // certificate; nobody else ever sees it.
        let mut alpn = hello.alpn().into_iter().flatten();
        if alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none() {
            metrics::counter!("palisade_acme_tls_alpn_handshakes_total").increment(1);
            return self.view.get().alpn01(&name);
        }
        let found = self.view.get().cert(&name);
        if found.is_none() {
            metrics::counter!("palisade_tls_handshake_failures_total", "reason" => "unknown_sni")
                .increment(1);
        }
        found
    }
}

/// The two server configurations (TLS 1.2 and 1.3, or 1.3 only); the listener picks one per
/// connection from the cluster's `min_tls` setting.
pub struct TlsConfigs {
    pub any: Arc<rustls::ServerConfig>,
    pub tls13: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    pub fn new(view: Arc<LiveView>) -> Result<TlsConfigs, rustls::Error> {
        let make = |versions: &[&'static rustls::SupportedProtocolVersion]| -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
            let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SniResolver { view: view.clone() }));
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
            Ok(Arc::new(cfg))
        };
        Ok(TlsConfigs {
            any: make(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            tls13: make(&[&rustls::version::TLS13])?,
        })
    }

    pub fn pick(&self, tls13_only: bool) -> Arc<rustls::ServerConfig> {
        if tls13_only {
            self.tls13.clone()
        } else {
            self.any.clone()
        }
    }
}
