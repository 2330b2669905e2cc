//! Everything about certificates and TLS settings, for both sides of the
//! gateway: the serving side the apiserver dials, the client CA that vouches
//! for callers, and the client side that dials the kubelet.
//!
//! The rest of the gateway never touches PEM files: it reads the current
//! [`TlsState`] and asks [`ClientCa`] whether a presented chain is good.

mod client_auth;
mod client_ca;
pub mod coverage;
mod options;
mod pem;
mod server;
mod upstream;

use std::path::PathBuf;

use thiserror::Error;

pub use client_auth::RequestClientCert;
pub use client_ca::ClientCa;
pub use options::{TlsOptions, TlsVersion, crypto_provider};
pub use pem::{load_certificates, load_certified_key, load_private_key};
pub use server::{ServingCert, ServingFiles, ServingTls, TlsState};
pub use upstream::{UpstreamTls, load_upstream_ca, upstream_client_config};

/// A certificate, key or TLS setting that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} is not valid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("unknown or unsupported TLS cipher suite {0:?} (supported: {1})")]
    UnknownCipherSuite(String, String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The serving certificate does not cover the node and
    /// `--serving-cert-coverage=refuse` is set (see [`coverage`]).
    #[error("{0}")]
    Coverage(String),
}
