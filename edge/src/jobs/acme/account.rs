//! The cluster's ACME account: read from the store (sealed with the master key), or made
//! once cluster-wide; and the HTTP client that reaches the directory (a private CA bundle when
//! configured).

use std::sync::Arc;

use instant_acme::{Account, AccountCredentials, NewAccount};
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::model::{AcmeAccount, AuditEntry, Record, RecordKey};

use super::steps::acme_error;
use super::Acme;

impl Acme {
    pub(super) async fn account(&self) -> Result<Account, String> {
        let mut cached = self.account.lock().await;
        if let Some(a) = &*cached {
            return Ok(a.clone());
        }
        let key = RecordKey::AcmeAccount {
            directory: self.cfg.directory.clone(),
        };
        let context = key.encode();
        let master = self.cluster.master_key();
        for _ in 0..2 {
            if let Some(Record::AcmeAccount(stored)) = self.read(&key) {
                let plain = master
                    .open(&stored.credentials, &context)
                    .map_err(|e| format!("the stored ACME account does not open: {e}"))?;
                let creds: AccountCredentials = serde_json::from_slice(&plain)
                    .map_err(|e| format!("the stored ACME account does not read: {e}"))?;
                let account = self
                    .builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                *cached = Some(account.clone());
                return Ok(account);
            }
            let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (account, creds) = self
                .builder()?
                .create(&new, self.cfg.directory.clone(), None)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let plain = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
            let record = Record::AcmeAccount(AcmeAccount {
                directory: self.cfg.directory.clone(),
                contact: self.cfg.contact.clone(),
                credentials: master.seal(&plain, &context),
            });
            let entry = AuditEntry::by_node(
                self.cluster.node_id,
                "acme.account",
                format!("acme/account/{}", self.cfg.directory),
                "created",
            );
            match self
                .cluster
                .write(Request::new(Command::Create { record }).with_audit(entry))
                .await
            {
                Ok(Response::Applied { .. }) => {
                    tracing::info!(directory = %self.cfg.directory, "ACME account created");
                    *cached = Some(account.clone());
                    return Ok(account);
                }
                Ok(_) => continue, // another node stored one first: use that
                Err(e) => return Err(format!("storing the ACME account: {e}")),
            }
        }
        Err("the ACME account could not be stored".into())
    }

    fn unreachable(&self, e: &instant_acme::Error) -> String {
        format!(
            "cannot use the ACME directory {}: {}",
            self.cfg.directory,
            acme_error(e)
        )
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        let Some(bundle) = &self.cfg.ca_bundle else {
            return Account::builder().map_err(|e| format!("TLS roots for ACME: {e}"));
        };
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(bundle)
            .map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
            roots
                .add(der)
                .map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "acme.ca_bundle {} holds no certificate",
                bundle.display()
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Account::builder_with_http(Box::new(client)))
    }
}
