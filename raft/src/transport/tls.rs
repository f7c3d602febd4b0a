//! Mutual TLS for the cluster transport.
//!
//! Every node presents `[node certificate, cluster CA]`. A client checks the server's certificate
//! against the CA and the name `node-{id}.palisade` of the node it meant to reach; a server checks
//! that the client's certificate chains to the CA and reads the client's node id from it. A node
//! that is still joining has no certificate: it may only ask to join, and it pins the CA by the
//! hash its join token carries.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub const ALPN: &[u8] = b"palisade-cluster/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {detail}")]
    Bad { what: &'static str, detail: String },
}

fn bad(what: &'static str) -> impl Fn(String) -> TlsError {
    move |detail| TlsError::Bad { what, detail }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS material, as PEM.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

pub fn parse_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(what)(e.to_string()))
}

impl Identity {
    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(parse_cert(&self.ca_pem, "cluster CA certificate")?)
            .map_err(|e| bad("cluster CA certificate")(e.to_string()))?;
        Ok(roots)
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = vec![
            parse_cert(&self.cert_pem, "node certificate")?,
            parse_cert(&self.ca_pem, "cluster CA certificate")?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("node private key")(e.to_string()))?;
        Ok((chain, key))
    }

    /// Check that the node certificate was issued by the cluster CA (for start-up checks).
    pub fn check(&self) -> Result<(), TlsError> {
        let ca = parse_cert(&self.ca_pem, "cluster CA certificate")?;
        let cert = parse_cert(&self.cert_pem, "node certificate")?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca)
            .map_err(|e| bad("cluster CA certificate")(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| bad("node certificate")(e.to_string()))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            bad("node certificate")("was not issued by this data dir's cluster CA".into())
        })
    }

    /// This identity's certificate and key, ready to present.
    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let (chain, key) = self.chain_and_key()?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad("node private key")(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        self.server_config_with(NodeCert::new(self)?)
    }

    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_with(NodeCert::new(self)?)
    }

    /// The server side, presenting whatever `cert` holds at each handshake.
    pub fn server_config_with(
        &self,
        cert: Arc<NodeCert>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad("client verifier")(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS versions")(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert);
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// The client side, presenting whatever `cert` holds at each handshake.
    pub fn client_config_with(
        &self,
        cert: Arc<NodeCert>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS versions")(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(cert);
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The certificate a node presents, both as server and as client, replaceable while it runs:
/// node certificates expire, and a renewed one is used from the next handshake on.
#[derive(Debug)]
pub struct NodeCert(RwLock<Arc<CertifiedKey>>);

impl NodeCert {
    pub fn new(identity: &Identity) -> Result<Arc<NodeCert>, TlsError> {
        Ok(Arc::new(NodeCert(RwLock::new(identity.certified_key()?))))
    }

    /// Present `identity`'s certificate from now on.
    pub fn replace(&self, identity: &Identity) -> Result<(), TlsError> {
        let key = identity.certified_key()?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration for a node that has no certificate yet: it trusts a server whose chain
/// holds the CA with the given SHA-256 and whose certificate that CA issued.
pub fn join_client_config(ca_sha256: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions")(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            sha256: ca_sha256,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedCa {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| ring::digest::digest(&ring::digest::SHA256, c).as_ref() == self.sha256)
            .ok_or_else(|| {
                rustls::Error::General("the peer's cluster CA does not match the join token".into())
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
