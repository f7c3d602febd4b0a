//! Secrets at rest and the cluster's own PKI.
//!
//! The master key seals every secret the store holds (certificate keys, challenge keys, ACME
//! credentials) with AES-256-GCM. The cluster CA signs one certificate per node whose only name is
//! `node-{id}.palisade`; that name is how a peer proves which node it is.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::ids::NodeId;
use crate::model::Sealed;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed secret could not be opened: wrong master key or corrupted data")]
    Open,
    #[error("master key must be 64 hex characters (32 bytes)")]
    BadMasterKey,
    #[error("certificate error: {0}")]
    Cert(String),
}

pub fn fill_random(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random source failed");
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// SHA-256 over data that arrives in pieces; [`Sha256::hex`] reads the digest so far and keeps
/// going.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0.clone().finish())
    }
}

/// The key that seals secrets at rest. It lives in the data dir (mode 0600), never in RocksDB,
/// and its `Debug` never prints it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

/// PBKDF2 rounds for [`MasterKey::from_passphrase`] (OWASP's 2023 figure for SHA-256).
pub const PASSPHRASE_ROUNDS: u32 = 600_000;

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        fill_random(&mut k);
        MasterKey(k)
    }

    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(s.trim()).map_err(|_| CryptoError::BadMasterKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(MasterKey(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key derived from a passphrase (PBKDF2-HMAC-SHA256, `PASSPHRASE_ROUNDS` rounds) and a
    /// random salt stored beside what it seals: for secrets that leave the cluster (a
    /// configuration export) and must stay encrypted outside it.
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Self {
        let mut k = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(PASSPHRASE_ROUNDS).expect("non-zero"),
            salt,
            passphrase.as_bytes(),
            &mut k,
        );
        MasterKey(k)
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte key"))
    }

    /// Seal `plaintext`; `context` (for example the record key) is authenticated but not stored,
    /// so a sealed value moved to another record will not open.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut buf = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Sealed(out)
    }

    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>, CryptoError> {
        if sealed.0.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, body) = sealed.0.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = body.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }
}

/// The DNS name a node's certificate carries, and the name a peer must present.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{id}.palisade")
}

/// The node id a certificate (DER) names, if it is a node certificate.
pub fn node_id_of_cert(der: &[u8]) -> Option<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(name) => name
            .strip_prefix("node-")?
            .strip_suffix(".palisade")?
            .parse()
            .ok(),
        _ => None,
    })
}

/// PEM of a certificate authority and its private key.
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn cert_err(e: impl fmt::Display) -> CryptoError {
    CryptoError::Cert(e.to_string())
}

impl CaMaterial {
    /// A new cluster CA (ECDSA P-256).
    pub fn generate(cluster_id: &str) -> Result<Self, CryptoError> {
        let key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("palisade cluster {cluster_id}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign a node certificate for `id` over the public key in `csr_pem`, valid for `validity`.
    /// Whatever names the CSR asks for are ignored: the CA decides the node's identity.
    pub fn sign_node_csr(
        &self,
        id: NodeId,
        csr_pem: &str,
        validity: std::time::Duration,
    ) -> Result<String, CryptoError> {
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_err)?;
        csr.params = node_cert_params(id, validity)?;
        let issuer = self.issuer()?;
        Ok(csr.signed_by(&issuer).map_err(cert_err)?.pem())
    }

    /// A new certificate for node `id`'s existing key (`key_pem`), valid for `validity` from
    /// now: how a node renews its own before it expires (every node holds the CA key).
    pub fn renew_node_cert(
        &self,
        id: NodeId,
        key_pem: &str,
        validity: std::time::Duration,
    ) -> Result<String, CryptoError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let params = node_cert_params(id, validity)?;
        Ok(params
            .signed_by(&key, &self.issuer()?)
            .map_err(cert_err)?
            .pem())
    }

    /// A fresh key and a server certificate for the admin API at `ips` (and DNS `names`),
    /// valid for a year: clients that trust the cluster CA can reach any node's admin address
    /// over TLS. Each node makes its own at start; nothing is stored.
    pub fn admin_server_cert(
        &self,
        ips: &[std::net::IpAddr],
        names: &[String],
    ) -> Result<(String, String), CryptoError> {
        let key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(cert_err)?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "palisade admin API");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn issuer(&self) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, CryptoError> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(cert_err)?;
        rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_err)
    }
}

/// How long a node certificate is valid unless configured otherwise; a node renews its own
/// when a third of that is left.
pub const NODE_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

fn node_cert_params(
    id: NodeId,
    validity: std::time::Duration,
) -> Result<rcgen::CertificateParams, CryptoError> {
    let mut params = rcgen::CertificateParams::new(vec![node_server_name(id)]).map_err(cert_err)?;
    // A minute of slack for clocks that disagree a little.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + validity;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_server_name(id));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// A node's new key and a signing request for it; the key never leaves the node.
pub fn node_key_and_csr() -> Result<(String, String), CryptoError> {
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let params =
        rcgen::CertificateParams::new(vec!["pending.palisade".to_string()]).map_err(cert_err)?;
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// The DNS names, validity (Unix ms) and issuer of the first certificate of a PEM chain.
pub fn cert_facts(
    chain_pem: &str,
) -> Result<(Vec<crate::ids::Hostname>, u64, u64, String), String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                hosts.push(
                    d.parse()
                        .map_err(|e: crate::ids::InvalidId| e.to_string())?,
                );
            }
        }
    }
    if hosts.is_empty() {
        return Err("the certificate names no DNS host (subjectAltName)".into());
    }
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((
        hosts,
        ms(cert.validity().not_before),
        ms(cert.validity().not_after),
        cert.issuer().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let k = MasterKey::generate();
        let s = k.seal(b"private key", "cert/a");
        assert_eq!(k.open(&s, "cert/a").unwrap(), b"private key");
        assert!(k.open(&s, "cert/b").is_err());
        assert!(MasterKey::generate().open(&s, "cert/a").is_err());
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    #[test]
    fn node_certificates_name_the_node() {
        let ca = CaMaterial::generate("test").unwrap();
        let (_key, csr) = node_key_and_csr().unwrap();
        let pem = ca.sign_node_csr(7, &csr, NODE_CERT_VALIDITY).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(node_id_of_cert(&der), Some(7));
    }
}
