//! Certificates for tests and benchmarks: a CA and an ECDSA P-256 leaf it signed.

/// A CA and a certificate it signed for some host names.
pub struct Pki {
    pub ca_pem: String,
    /// The CA certificate, DER (a client's trust anchor).
    pub ca_der: Vec<u8>,
    pub chain_pem: String,
    /// The leaf certificate, DER.
    pub leaf_der: Vec<u8>,
    pub key_pem: String,
}

/// A new CA and a leaf for `hosts`, both with ECDSA P-256 keys (rcgen's default).
pub fn pki(hosts: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("P-256 key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "palisade test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let leaf =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .expect("host names")
            .signed_by(&key, &issuer)
            .expect("leaf signed by the CA");
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        chain_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem: key.serialize_pem(),
    }
}
