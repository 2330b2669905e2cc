//! The serving certificate issued by the cluster, as the kubelet's
//! `serverTLSBootstrap` gets its own: a fresh ECDSA P-256 key in memory, a
//! `certificates.k8s.io/v1` CertificateSigningRequest for signer
//! `kubernetes.io/kubelet-serving` with the subject the apiserver expects
//! (`CN=system:node:<node>`, `O=system:nodes`) and the node's addresses as
//! SANs, then the wait for approval and issuance. The certificate is renewed
//! at a random point between 70% and 90% of its lifetime — the old one serves
//! until the new one is issued, and open connections are never touched. A
//! denied or failed request is reported and retried with backoff.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rcgen::{CertificateParams, DnType, DnValue, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use thiserror::Error;
use tokio::sync::watch;

use crate::config::CsrSettings;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::tls::{ServingCert, ServingTls};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How often a pending request is looked at.
const POLL: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum CsrError {
    #[error("CSR {0} was denied: {1}")]
    Denied(String, String),
    #[error("CSR {0} failed: {1}")]
    Failed(String, String),
    #[error("CSR {0} disappeared before it was issued")]
    Vanished(String),
    #[error(
        "no subject alternative names: give --node-ip or --node-hostname, or let Node {0} have addresses"
    )]
    NoNames(String),
    #[error("the issued certificate is unusable: {0}")]
    BadCertificate(String),
    #[error("cannot make the request: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("apiserver: {0}")]
    Api(#[from] kube::Error),
}

impl CsrError {
    /// The `reason` label of the failure counter.
    fn reason(&self) -> &'static str {
        match self {
            CsrError::Denied(..) => "denied",
            CsrError::Failed(..) => "failed",
            CsrError::Vanished(_) => "vanished",
            CsrError::NoNames(_) | CsrError::Generate(_) => "request",
            CsrError::BadCertificate(_) => "certificate",
            CsrError::Api(_) => "apiserver",
        }
    }
}

/// Requests, waits for and renews the serving certificate.
pub struct CsrIssuer {
    csrs: Api<CertificateSigningRequest>,
    nodes: Api<Node>,
    node: String,
    settings: CsrSettings,
    provider: Arc<CryptoProvider>,
    serving: Arc<ServingTls>,
    status: watch::Sender<String>,
    metrics: Arc<Metrics>,
}

impl CsrIssuer {
    pub fn new(
        client: kube::Client,
        node: String,
        settings: CsrSettings,
        provider: Arc<CryptoProvider>,
        serving: Arc<ServingTls>,
        status: watch::Sender<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        CsrIssuer {
            csrs: Api::all(client.clone()),
            nodes: Api::all(client),
            node,
            settings,
            provider,
            serving,
            status,
            metrics,
        }
    }

    /// Keeps a valid serving certificate published until the gateway has
    /// stopped.
    pub async fn run(self, drain: Drain) {
        let mut current = self.restore();
        if let Some(cert) = &current {
            self.publish(cert.clone());
        } else {
            self.status
                .send_replace("requesting a serving certificate".into());
        }
        let mut failures = 0u32;
        loop {
            if let Some(cert) = &current {
                let wait = until(renewal_time(
                    cert.issued_at,
                    cert.expires_at,
                    random_fraction(),
                ));
                tracing::info!(
                    in_secs = wait.as_secs(),
                    "serving certificate renewal scheduled"
                );
                tokio::select! {
                    () = drain.stopped() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let obtained = tokio::select! {
                () = drain.stopped() => return,
                obtained = self.obtain() => obtained,
            };
            match obtained {
                Ok(cert) => {
                    failures = 0;
                    self.publish(cert.clone());
                    self.metrics.certificate_rotations.inc();
                    current = Some(cert);
                }
                Err(error) => {
                    failures += 1;
                    self.metrics
                        .csr_failures
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: error.reason(),
                        })
                        .inc();
                    let delay = backoff(failures, random_fraction());
                    tracing::error!(%error, retry_in_secs = delay.as_secs(), "serving certificate not issued");
                    if current.is_none() {
                        self.status
                            .send_replace(format!("{error}; asking again in {}s", delay.as_secs()));
                    }
                    tokio::select! {
                        () = drain.stopped() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn publish(&self, cert: Arc<ServingCert>) {
        self.metrics.set_expiry("serving", cert.expires_at);
        match self.serving.set_serving(cert) {
            Ok(()) => {
                self.status.send_replace(String::new());
            }
            Err(error) => tracing::error!(%error, "cannot serve the issued certificate"),
        }
    }

    /// One request, from key to issued certificate.
    async fn obtain(&self) -> Result<Arc<ServingCert>, CsrError> {
        let (ips, dns_names) = self.names().await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let request = self.signing_request(&key, &ips, &dns_names)?;
        let created = self.csrs.create(&PostParams::default(), &request).await?;
        let name = created.metadata.name.unwrap_or_default();
        tracing::info!(csr = %name, ?ips, ?dns_names, "CSR created; waiting for approval");
        self.status
            .send_replace(format!("CSR {name} pending approval"));

        let mut told_approved = false;
        loop {
            tokio::time::sleep(POLL).await;
            let csr = match self.csrs.get_opt(&name).await? {
                Some(csr) => csr,
                None => return Err(CsrError::Vanished(name)),
            };
            let status = csr.status.unwrap_or_default();
            for condition in status.conditions.unwrap_or_default() {
                let why = || {
                    format!(
                        "{} {}",
                        condition.reason.clone().unwrap_or_default(),
                        condition.message.clone().unwrap_or_default()
                    )
                };
                match condition.type_.as_str() {
                    "Denied" => return Err(CsrError::Denied(name, why().trim().to_owned())),
                    "Failed" => return Err(CsrError::Failed(name, why().trim().to_owned())),
                    "Approved" if !told_approved => {
                        told_approved = true;
                        tracing::info!(csr = %name, "CSR approved; waiting for the signer");
                        self.status
                            .send_replace(format!("CSR {name} approved, waiting for the signer"));
                    }
                    _ => {}
                }
            }
            if let Some(ByteString(pem)) = status.certificate.filter(|c| !c.0.is_empty()) {
                let cert = self.issued(&name, &pem, &key)?;
                tracing::info!(csr = %name, expires_at = cert.expires_at, "serving certificate issued");
                self.persist(&pem, &key);
                return Ok(Arc::new(cert));
            }
        }
    }

    /// The SANs: as configured, else the Node object's addresses.
    async fn names(&self) -> Result<(Vec<IpAddr>, Vec<String>), CsrError> {
        if !self.settings.ips.is_empty() || !self.settings.dns_names.is_empty() {
            return Ok((self.settings.ips.clone(), self.settings.dns_names.clone()));
        }
        let node = self.nodes.get(&self.node).await?;
        let (mut ips, mut dns_names) = (Vec::new(), Vec::new());
        for address in node.status.and_then(|s| s.addresses).unwrap_or_default() {
            match address.type_.as_str() {
                "InternalIP" | "ExternalIP" => ips.extend(address.address.parse::<IpAddr>().ok()),
                "Hostname" | "InternalDNS" | "ExternalDNS" => dns_names.push(address.address),
                _ => {}
            }
        }
        ips.dedup();
        dns_names.dedup();
        if ips.is_empty() && dns_names.is_empty() {
            return Err(CsrError::NoNames(self.node.clone()));
        }
        Ok((ips, dns_names))
    }

    fn signing_request(
        &self,
        key: &KeyPair,
        ips: &[IpAddr],
        dns_names: &[String],
    ) -> Result<CertificateSigningRequest, CsrError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            DnValue::Utf8String(format!("system:node:{}", self.node)),
        );
        params.distinguished_name.push(
            DnType::OrganizationName,
            DnValue::Utf8String("system:nodes".into()),
        );
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        let pem = params.serialize_request(key)?.pem()?;
        Ok(CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some(format!("kubelet-guard-{}-", self.node)),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: SIGNER.into(),
                // ECDSA keys: no key encipherment (the signer refuses it).
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        })
    }

    fn issued(&self, name: &str, pem: &[u8], key: &KeyPair) -> Result<ServingCert, CsrError> {
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CsrError::BadCertificate(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        ServingCert::from_der(chain, key, &self.provider, Path::new(name))
            .map_err(|e| CsrError::BadCertificate(e.to_string()))
    }

    /// A persisted certificate still worth using: ours, and not yet at the
    /// point where it would be renewed anyway.
    fn restore(&self) -> Option<Arc<ServingCert>> {
        let dir = self.settings.dir.as_ref()?;
        let (cert_path, key_path) = persisted(dir);
        if !cert_path.exists() {
            return None;
        }
        match ServingCert::load(&cert_path, &key_path, &self.provider) {
            Ok(cert) if now() < cert.expires_at => {
                tracing::info!(dir = %dir.display(), expires_at = cert.expires_at, "reusing the stored serving certificate");
                Some(Arc::new(cert))
            }
            Ok(_) => {
                tracing::info!(dir = %dir.display(), "the stored serving certificate expired; asking for a new one");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reuse the stored serving certificate; asking for a new one");
                None
            }
        }
    }

    fn persist(&self, chain_pem: &[u8], key: &KeyPair) {
        let Some(dir) = &self.settings.dir else {
            return;
        };
        if let Err(error) = write_pair(dir, chain_pem, &key.serialize_pem()) {
            tracing::warn!(dir = %dir.display(), %error, "cannot store the serving certificate");
        }
    }
}

fn persisted(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("serving.crt"), dir.join("serving.key"))
}

/// Writes key then certificate, each through a rename, so a crash never
/// leaves a half-written file.
fn write_pair(dir: &Path, chain_pem: &[u8], key_pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = persisted(dir);
    for (path, contents, private) in [
        (&key_path, key_pem.as_bytes(), true),
        (&cert_path, chain_pem, false),
    ] {
        let staged = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            options.mode(0o600);
        }
        options.open(&staged)?.write_all(contents)?;
        std::fs::rename(&staged, path)?;
    }
    Ok(())
}

/// Seconds since the epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When to renew: `fraction` (0..1) picks a point between 70% and 90% of
/// the certificate's lifetime, so a fleet issued together does not renew
/// together.
pub fn renewal_time(issued_at: i64, expires_at: i64, fraction: f64) -> i64 {
    let lifetime = (expires_at - issued_at).max(0) as f64;
    issued_at + (lifetime * (0.7 + 0.2 * fraction.clamp(0.0, 1.0))).round() as i64
}

fn until(at: i64) -> Duration {
    Duration::from_secs(u64::try_from(at - now()).unwrap_or(0))
}

/// 5s, 10s, 20s … up to 5 minutes, ±20%.
pub fn backoff(failures: u32, fraction: f64) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.min(BACKOFF_MAX)
        .mul_f64(0.8 + 0.4 * fraction.clamp(0.0, 1.0))
}

/// A uniform fraction in [0, 1) from the system's random source.
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(renewal_time(1_000, 2_000, 0.0), 1_700);
        assert_eq!(renewal_time(1_000, 2_000, 1.0), 1_900);
        assert_eq!(renewal_time(1_000, 2_000, 0.5), 1_800);
        assert_eq!(renewal_time(1_000, 1_000, 0.5), 1_000, "already due");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let middle = |n| backoff(n, 0.5);
        assert_eq!(middle(1), Duration::from_secs(5));
        assert_eq!(middle(2), Duration::from_secs(10));
        assert_eq!(middle(4), Duration::from_secs(40));
        assert_eq!(middle(30), Duration::from_secs(300));
        assert_eq!(backoff(1, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(6));
    }
}
