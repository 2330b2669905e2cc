//! The client CA bundle (`--client-ca-file`) and the chain check made with it.
//!
//! Chains are checked when a request is authenticated, not during the TLS
//! handshake: like the kubelet (Go's `tls.RequestClientCert` plus an x509
//! authenticator), a wrong-CA, expired or wrong-usage certificate must get a
//! `401 Unauthorized` the caller can read, not a handshake alert.

use std::path::Path;
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::TlsError;
use super::pem::load_certificates;

/// A loaded client CA bundle.
#[derive(Debug)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    subjects: Vec<DistinguishedName>,
    expires_at: i64,
}

impl ClientCa {
    pub fn load(path: &Path, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let certs = load_certificates(path)?;
        let expires_at = earliest_expiry(path, &certs)?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: format!("not usable as a CA certificate: {e}"),
            })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::BadCertificate {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
        let subjects = verifier.root_hint_subjects().to_vec();
        Ok(ClientCa {
            verifier,
            subjects,
            expires_at,
        })
    }

    /// Checks that `chain` (leaf first, then the intermediates the client
    /// sent) leads to one of the CAs, is valid at `now` and is meant for
    /// client authentication.
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
    }

    /// The CA subjects, sent in the TLS CertificateRequest so a client holding
    /// several certificates picks the right one.
    pub fn subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    /// When the first CA certificate in the bundle expires (seconds since the epoch).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

/// The earliest `notAfter` among `certs`, in seconds since the epoch.
pub(crate) fn earliest_expiry(path: &Path, certs: &[CertificateDer<'_>]) -> Result<i64, TlsError> {
    certs
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, cert)| cert.validity().not_after.timestamp())
                .map_err(|e| TlsError::BadCertificate {
                    path: path.to_owned(),
                    reason: format!("cannot parse certificate: {e}"),
                })
        })
        .try_fold(i64::MAX, |earliest, t| Ok(earliest.min(t?)))
}
