//! The `serving` section (listener and TLS): where the gateway listens, the
//! serving certificate — from files or requested from the cluster (the
//! `csr` settings) — how it is checked against the node's addresses, the
//! client CA and the TLS protocol options.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::node::Node;
use super::{ConfigError, declared_defaults};
use crate::tls::coverage::CoveragePolicy;
use crate::tls::{TlsOptions, TlsVersion};

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingCertSource {
    /// --tls-cert-file and --tls-private-key-file, reloaded when they change.
    #[default]
    File,
    /// A kubernetes.io/kubelet-serving CertificateSigningRequest, rotated
    /// before it expires.
    Csr,
}

/// Flags and file keys of the serving section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServingSettings {
    /// Address the apiserver dials.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10250")]
    pub secure_listen_address: SocketAddr,

    /// Where the serving certificate comes from: file (--tls-cert-file and
    /// --tls-private-key-file) or csr (requested from the cluster with a
    /// kubernetes.io/kubelet-serving CertificateSigningRequest).
    #[arg(long, value_name = "SOURCE", default_value = "file")]
    pub serving_cert_source: ServingCertSource,

    /// What a serving certificate that misses a --node-ip/--node-hostname
    /// SAN, or is outside its validity window, does: warn (serve; warn
    /// line, /readyz reason, metric) or refuse (the gateway does not start;
    /// a reloaded one is not used).
    #[arg(long, value_name = "POLICY", default_value = "warn")]
    pub serving_cert_coverage: CoveragePolicy,

    /// csr: keep the issued key and certificate here, so a restart reuses a
    /// valid one instead of asking again.
    #[arg(long, value_name = "DIR")]
    pub serving_cert_dir: Option<PathBuf>,

    /// csr: kubeconfig to request the certificate with (e.g. the node's own
    /// kubelet credentials, so approvers see system:node:<name>)
    /// [default: --kubeconfig, else the pod's ServiceAccount].
    #[arg(long, value_name = "FILE")]
    pub csr_kubeconfig: Option<PathBuf>,

    /// Serving certificate (PEM, leaf first). Required with --serving-cert-source=file.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of the serving certificate (PEM). Required with --serving-cert-source=file.
    #[arg(long, value_name = "FILE")]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that vouches for client certificates (the apiserver's
    /// `--kubelet-client-certificate` issuer). Without it no client
    /// certificate is requested.
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Lowest TLS version accepted: VersionTLS12 or VersionTLS13.
    #[arg(long, value_name = "VERSION", default_value = "VersionTLS12")]
    pub tls_min_version: TlsVersion,

    /// Comma-separated TLS 1.2 cipher suites (Go names). TLS 1.3 suites are
    /// always on [default: rustls' secure defaults].
    #[arg(long, value_name = "SUITES", value_delimiter = ',')]
    pub tls_cipher_suites: Vec<String>,
}

impl Default for ServingSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// The serving side, validated.
#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    pub serving: Serving,
    pub coverage: ServingCoverageConfig,
    pub client_ca_file: Option<PathBuf>,
    pub tls: TlsOptions,
}

/// What the serving certificate is checked against (`tls::coverage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCoverageConfig {
    pub ips: Vec<std::net::IpAddr>,
    pub dns_names: Vec<String>,
    pub policy: CoveragePolicy,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    Files { cert: PathBuf, key: PathBuf },
    Csr(CsrSettings),
}

/// How the serving certificate is requested (`--serving-cert-source=csr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrSettings {
    /// SANs; both empty means "from the Node object".
    pub ips: Vec<std::net::IpAddr>,
    pub dns_names: Vec<String>,
    pub dir: Option<PathBuf>,
    /// `None`: the pod's ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
}

impl ServingSettings {
    /// `kubeconfig` is the apiserver section's, the CSR's fallback.
    /// Errors: file mode without both files; csr mode with either.
    pub fn validate(
        &self,
        node: &Node,
        kubeconfig: Option<&PathBuf>,
    ) -> Result<Listener, ConfigError> {
        let serving = match self.serving_cert_source {
            ServingCertSource::File => {
                let cert = self.tls_cert_file.clone().ok_or_else(|| {
                    ConfigError::invalid(
                        "tls-cert-file",
                        "required: the serving certificate (PEM), or --serving-cert-source=csr",
                    )
                })?;
                let key = self.tls_private_key_file.clone().ok_or_else(|| {
                    ConfigError::invalid(
                        "tls-private-key-file",
                        "required: the serving certificate's key (PEM)",
                    )
                })?;
                Serving::Files { cert, key }
            }
            ServingCertSource::Csr => {
                if self.tls_cert_file.is_some() || self.tls_private_key_file.is_some() {
                    return Err(ConfigError::invalid(
                        "serving-cert-source",
                        "csr requests the serving certificate: drop --tls-cert-file and --tls-private-key-file",
                    ));
                }
                Serving::Csr(CsrSettings {
                    ips: node.ips.clone(),
                    dns_names: node.dns_names.clone(),
                    dir: self.serving_cert_dir.clone(),
                    kubeconfig: self.csr_kubeconfig.clone().or_else(|| kubeconfig.cloned()),
                })
            }
        };
        Ok(Listener {
            listen: self.secure_listen_address,
            serving,
            coverage: ServingCoverageConfig {
                ips: node.ips.clone(),
                dns_names: node.dns_names.clone(),
                policy: self.serving_cert_coverage,
            },
            client_ca_file: self.client_ca_file.clone(),
            tls: TlsOptions {
                min_version: self.tls_min_version,
                cipher_suites: self.tls_cipher_suites.clone(),
            },
        })
    }
}
