//! One attempt at a certificate, the steps of RFC 8555 §7: the account, an order (placed within
//! the budget, or resumed), each authorization's challenge written to the replicated state and
//! waited for on every voter, then the CSR, the certificate, and the result stored. Every write
//! is fenced by the name's lease.

use std::time::Duration;

use instant_acme::{Account, AuthorizationStatus, Identifier, NewOrder, OrderStatus, RetryPolicy};
use palisade_raft::cluster::{LeaseError, LeaseGuard};
use palisade_raft::command::{Command, Refusal};
use palisade_raft::ids::{Hostname, Name};
use palisade_raft::model::{
    AcmeLimits, Alpn01, AuditEntry, Cert, CertSource, CertState, CertStatus, Http01, Millis,
    Record, RecordKey,
};
use palisade_raft::now_ms;

use super::schedule::{cert_name, failure_window, full_until, orders_window};
use super::{Acme, ChallengeKind};

/// How long every voter gets to apply a challenge record before the CA is told to look.
const CHALLENGE_SPREAD: Duration = Duration::from_secs(10);
/// Challenge records outlive any order by far; the sweep removes them after this.
pub(super) const CHALLENGE_TTL_MS: u64 = 3_600_000;

/// Why an attempt ended without a certificate.
#[derive(Debug)]
pub(super) enum Failure {
    /// Counts toward the back-off.
    Failed { message: String, validation: bool },
    /// The budget is spent; try again at `until` (no back-off).
    Budget { message: String, until: Millis },
    /// The lease was lost: another node owns the name now; write nothing more.
    Deposed,
}

pub(super) fn failed(message: impl Into<String>) -> Failure {
    Failure::Failed {
        message: message.into(),
        validation: false,
    }
}

impl Acme {
    /// Write `command` only while this node still holds the name's lease.
    pub(super) async fn fenced(
        &self,
        lease: &LeaseGuard,
        command: Command,
        audit: Option<AuditEntry>,
    ) -> Result<u64, Failure> {
        match lease.write(command, audit).await {
            Ok(index) => Ok(index),
            Err(LeaseError::Deposed { lease, token }) => {
                metrics::counter!("palisade_acme_fenced_refusals_total").increment(1);
                tracing::warn!(%lease, token, "a write of a deposed ACME owner was refused");
                Err(Failure::Deposed)
            }
            Err(LeaseError::Refused(r @ Refusal::BudgetSpent { free_at, .. })) => {
                Err(Failure::Budget {
                    message: r.to_string(),
                    until: free_at,
                })
            }
            Err(LeaseError::Refused(r)) => Err(failed(format!("the cluster refused a write: {r}"))),
            Err(e @ LeaseError::Unexpected(_)) => Err(failed(e.to_string())),
            Err(LeaseError::Cluster(e)) => {
                Err(failed(format!("the cluster did not take a write: {e}")))
            }
        }
    }

    /// One attempt: the steps of RFC 8555 §7, each write fenced by the lease.
    pub(super) async fn order(
        &self,
        host: &Hostname,
        lease: &LeaseGuard,
        placed: &mut bool,
        challenges: &mut Vec<RecordKey>,
    ) -> Result<(), Failure> {
        let now = now_ms();
        let previous = self.status(host);
        let mut status = previous
            .clone()
            .unwrap_or_else(|| CertStatus::new(host.clone(), now));
        status.state = CertState::Ordering;
        status.owner = Some(self.cluster.node_id);
        status.last_attempt_at = Some(now);
        if host.is_wildcard() {
            status.state = CertState::Refused;
            status.last_error = Some(format!(
                "{host} is a wildcard: a CA validates wildcards only by DNS-01, which Palisade does not do; upload a certificate for it (tls = manual)"
            ));
            let cmd = Command::Put {
                record: Record::CertStatus(status),
            };
            self.fenced(lease, cmd, None).await?;
            return Ok(());
        }
        self.fenced(
            lease,
            Command::Put {
                record: Record::CertStatus(status.clone()),
            },
            None,
        )
        .await?;

        let budget = self.limits();
        let failures = RecordKey::RateWindow {
            name: failure_window(host),
        };
        if let Some(Record::RateWindow(w)) = self.read(&failures) {
            if let Some(until) = full_until(
                &w,
                budget.max_failed_validations,
                budget.failed_window_ms,
                now,
            ) {
                return Err(Failure::Budget {
                    message: format!(
                        "{} failed validations of {host} within {} minutes: the CA's limit; waiting before ordering again",
                        budget.max_failed_validations,
                        budget.failed_window_ms / 60_000
                    ),
                    until,
                });
            }
        }

        let account = self.account().await.map_err(failed)?;
        // An order left by an attempt that failed for a passing reason is resumed once, so a
        // network error does not cost a second order.
        let resumed = match status.order_url.clone() {
            Some(url) => match account.order(url).await {
                Ok(mut o) => {
                    let open =
                        matches!(o.state().status, OrderStatus::Pending | OrderStatus::Ready);
                    open.then_some(o)
                }
                Err(_) => None,
            },
            None => None,
        };
        let mut order = match resumed {
            Some(o) => {
                tracing::info!(%host, "resuming the order of the last attempt");
                o
            }
            None => {
                self.place_order(host, lease, &account, &status, &budget, now, placed)
                    .await?
            }
        };

        let mut used = self.cfg.challenge;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| {
                    failed(format!("reading the authorization: {}", acme_error(&e)))
                })?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(failed(format!(
                            "the CA's authorization for {host} is {other:?}"
                        )))
                    }
                }
                let offered =
                    |k: ChallengeKind| authz.challenges.iter().any(|c| c.r#type == k.acme());
                if !offered(used) {
                    used = used.other();
                    if !offered(used) {
                        return Err(failed(format!(
                            "the CA offers neither http-01 nor tls-alpn-01 for {host}"
                        )));
                    }
                }
                let mut challenge = authz
                    .challenge(used.acme())
                    .ok_or_else(|| failed("the challenge vanished"))?;
                let key_auth = challenge.key_authorization();
                let expires_at = now_ms() + CHALLENGE_TTL_MS;
                let master = self.cluster.master_key();
                let record = match used {
                    ChallengeKind::Http01 => {
                        let token_name: Name = challenge.token.parse().map_err(|e| {
                            failed(format!("the CA sent an unusable challenge token: {e}"))
                        })?;
                        let key = RecordKey::Http01 {
                            token: token_name.clone(),
                        };
                        let sealed = master.seal(key_auth.as_str().as_bytes(), &key.encode());
                        challenges.push(key);
                        Record::Http01(Http01 {
                            token: token_name,
                            key_authorization: sealed,
                            expires_at,
                        })
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let (cert_pem, key_pem) =
                            alpn_certificate(host, key_auth.digest().as_ref()).map_err(|e| {
                                failed(format!("making the TLS-ALPN-01 certificate: {e}"))
                            })?;
                        let key = RecordKey::Alpn01 { host: host.clone() };
                        let sealed = master.seal(key_pem.as_bytes(), &key.encode());
                        challenges.push(key);
                        Record::Alpn01(Alpn01 {
                            host: host.clone(),
                            cert_pem,
                            key: sealed,
                            expires_at,
                        })
                    }
                };
                let index = self.fenced(lease, Command::Put { record }, None).await?;
                if let Err(e) = self
                    .cluster
                    .wait_applied_everywhere(index, CHALLENGE_SPREAD)
                    .await
                {
                    // A node that has not applied it yet answers 404 if the CA picks it; the
                    // others answer. Go on rather than stall the order on a dead voter.
                    tracing::warn!(%host, error = %e, "challenge not yet on every voter");
                }
                challenge.set_ready().await.map_err(|e| {
                    failed(format!("telling the CA to validate: {}", acme_error(&e)))
                })?;
            }
        }

        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.cfg.order_timeout);
        let polled = order.poll_ready(&retry).await;
        let invalid = order.state().status == OrderStatus::Invalid;
        match polled {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) if invalid => {
                let mut detail = match &polled {
                    Err(instant_acme::Error::Api(p)) => p.detail.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                let mut authorizations = order.authorizations();
                while let Some(Ok(authz)) = authorizations.next().await {
                    for c in &authz.challenges {
                        if let Some(d) = c.error.as_ref().and_then(|p| p.detail.clone()) {
                            detail = d;
                        }
                    }
                }
                self.note_failed_validation(host, lease, &budget).await?;
                return Err(Failure::Failed {
                    message: format!(
                        "the CA could not validate {host} by {}: {}. Check that DNS for {host} points at this cluster and that port {} reaches it.",
                        used.as_str(),
                        if detail.is_empty() { "the order became invalid".to_string() } else { detail },
                        if used == ChallengeKind::Http01 { 80 } else { 443 },
                    ),
                    validation: true,
                });
            }
            Ok(other) => {
                return Err(failed(format!(
                    "the CA left the order for {host} {other:?}"
                )));
            }
            Err(e) => {
                return Err(failed(format!(
                    "the CA did not finish validating {host} within {:?}: {}",
                    self.cfg.order_timeout,
                    acme_error(&e)
                )));
            }
        }

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| failed(format!("making the certificate key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| failed(format!("making the CSR: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| failed(format!("making the CSR: {e}")))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| failed(format!("the CA refused the CSR: {}", acme_error(&e))))?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(|e| {
            failed(format!(
                "the CA did not hand out the certificate: {}",
                acme_error(&e)
            ))
        })?;

        let (hosts, not_before, not_after, issuer) = palisade_raft::crypto::cert_facts(&chain_pem)
            .map_err(|e| failed(format!("the CA's certificate does not read: {e}")))?;
        let name = cert_name(host);
        let context = RecordKey::Cert { name: name.clone() }.encode();
        let cert = Cert {
            name,
            hosts,
            chain_pem,
            key: self
                .cluster
                .master_key()
                .seal(key.serialize_pem().as_bytes(), &context),
            not_before,
            not_after,
            issuer,
            source: CertSource::Acme,
            project: None,
        };
        let done = now_ms();
        // A renewal asked for during this attempt is kept for the next one.
        let requested = self
            .status(host)
            .and_then(|s| s.renew_requested_at)
            .filter(|&t| t > now);
        let status = CertStatus {
            state: CertState::Valid,
            failures: 0,
            last_error: None,
            last_success_at: Some(done),
            next_attempt_at: self
                .renew_at(&cert, &budget)
                .max(done.saturating_add(budget.min_reissue_ms)),
            renew_requested_at: requested,
            orders: status.orders + u64::from(*placed),
            order_url: None,
            ..status
        };
        let outcome = format!("issued; valid until {}", iso(not_after));
        let entry = self.audit("cert.issue", host, &outcome);
        self.fenced(
            lease,
            Command::PutMany {
                records: vec![Record::Cert(cert), Record::CertStatus(status)],
            },
            Some(entry),
        )
        .await?;
        metrics::counter!("palisade_acme_certificates_total").increment(1);
        tracing::info!(%host, not_after, "certificate stored");
        Ok(())
    }

    /// Spend the budget for a new order (audited `acme.order`), place it, and remember its URL.
    #[allow(clippy::too_many_arguments)]
    async fn place_order(
        &self,
        host: &Hostname,
        lease: &LeaseGuard,
        account: &Account,
        status: &CertStatus,
        budget: &AcmeLimits,
        now: Millis,
        placed: &mut bool,
    ) -> Result<instant_acme::Order, Failure> {
        let orders = orders_window(&self.cfg.directory);
        let spend = Command::Spend {
            name: orders.clone(),
            window_ms: budget.orders_window_ms,
            limit: budget.max_orders,
        };
        let entry = self.audit("acme.order", host, "ok");
        match self.fenced(lease, spend, Some(entry)).await {
            Ok(_) => {}
            Err(Failure::Budget { .. }) => {
                let until = match self.read(&RecordKey::RateWindow { name: orders }) {
                    Some(Record::RateWindow(w)) => {
                        full_until(&w, budget.max_orders, budget.orders_window_ms, now)
                            .unwrap_or(now)
                    }
                    _ => now,
                };
                return Err(Failure::Budget {
                    message: format!(
                        "the cluster placed {} orders within {} minutes (the CA's limit); this one waits",
                        budget.max_orders,
                        budget.orders_window_ms / 60_000
                    ),
                    until,
                });
            }
            Err(e) => return Err(e),
        }
        *placed = true;
        metrics::counter!("palisade_acme_orders_total").increment(1);
        let ids = [Identifier::Dns(host.to_string())];
        let order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| failed(format!("the CA did not take the order: {}", acme_error(&e))))?;
        let remembered = CertStatus {
            order_url: Some(order.url().to_string()),
            ..status.clone()
        };
        let put = Command::Put {
            record: Record::CertStatus(remembered),
        };
        self.fenced(lease, put, None).await?;
        Ok(order)
    }

    async fn note_failed_validation(
        &self,
        host: &Hostname,
        lease: &LeaseGuard,
        budget: &AcmeLimits,
    ) -> Result<(), Failure> {
        let spend = Command::Spend {
            name: failure_window(host),
            window_ms: budget.failed_window_ms,
            limit: budget.max_failed_validations.max(1),
        };
        match self.fenced(lease, spend, None).await {
            Err(Failure::Deposed) => Err(Failure::Deposed),
            _ => Ok(()),
        }
    }
}

/// A problem document as an operator reads it: the CA's detail, then its type.
pub(super) fn acme_error(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => match (&p.detail, &p.r#type) {
            (Some(d), Some(t)) => format!(
                "{d} ({})",
                t.trim_start_matches("urn:ietf:params:acme:error:")
            ),
            (Some(d), None) => d.clone(),
            _ => p.to_string(),
        },
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

/// The TLS-ALPN-01 validation certificate (RFC 8737 §3): self-signed, the name as its only SAN,
/// the key authorization's digest in the critical acmeIdentifier extension.
fn alpn_certificate(host: &Hostname, digest: &[u8]) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn iso(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_certificate_carries_the_digest_critically() {
        let host: Hostname = "a.test".parse().unwrap();
        let digest = [7u8; 32];
        let (pem, _key) = alpn_certificate(&host, &digest).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: 0x04 0x20 then the digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
