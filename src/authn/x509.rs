//! Identity from a client certificate: user = subject CN, groups = every
//! subject O, as the apiserver's and kubelet's x509 authenticator define it.

use std::sync::{Arc, Mutex};

use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Identity;
use crate::tls::ClientCa;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("{0}")]
    Chain(String),
    #[error("certificate cannot be parsed")]
    Malformed,
    #[error("certificate subject has no common name")]
    NoCommonName,
    #[error("certificate subject has more than one common name")]
    AmbiguousCommonName,
    #[error("certificate subject holds a name that is not a UTF-8 string")]
    NotUtf8,
    #[error("client certificates are not accepted: no client CA is configured")]
    NoClientCa,
}

/// The certificate chain a connection presented, with the result of its last
/// successful check. A chain is checked once per connection and client CA,
/// then again only when the CA changes or a certificate in it expires.
#[derive(Debug)]
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    verified: Mutex<Option<Verified>>,
}

#[derive(Debug)]
struct Verified {
    client_ca: Arc<ClientCa>,
    valid_until: UnixTime,
    identity: Arc<Identity>,
}

impl ClientCertificate {
    /// `chain` is what the TLS layer received: leaf first. Returns `None` for
    /// an empty chain.
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Option<Self> {
        (!chain.is_empty()).then(|| ClientCertificate {
            chain,
            verified: Mutex::new(None),
        })
    }

    pub fn authenticate(
        &self,
        client_ca: &Arc<ClientCa>,
        now: UnixTime,
    ) -> Result<Arc<Identity>, CertificateError> {
        // A poisoned lock only means another request panicked mid-check; the
        // cached value is then simply not trusted.
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = verified.as_ref()
            && Arc::ptr_eq(&v.client_ca, client_ca)
            && now < v.valid_until
        {
            return Ok(v.identity.clone());
        }
        *verified = None;

        client_ca
            .verify(&self.chain, now)
            .map_err(|e| CertificateError::Chain(e.to_string()))?;
        let identity = Arc::new(identity_from_certificate(&self.chain[0])?);
        let valid_until = chain_valid_until(&self.chain)?;
        *verified = Some(Verified {
            client_ca: client_ca.clone(),
            valid_until,
            identity: identity.clone(),
        });
        Ok(identity)
    }
}

/// User and groups from a certificate's subject. The CN must be present,
/// single and UTF-8; a CN the apiserver would read differently is refused.
pub fn identity_from_certificate(der: &[u8]) -> Result<Identity, CertificateError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
    let subject = cert.subject();

    let mut common_names = subject.iter_common_name();
    let user = common_names
        .next()
        .ok_or(CertificateError::NoCommonName)?
        .as_str()
        .map_err(|_| CertificateError::NotUtf8)?;
    if common_names.next().is_some() {
        return Err(CertificateError::AmbiguousCommonName);
    }
    if user.is_empty() {
        return Err(CertificateError::NoCommonName);
    }
    let groups = subject
        .iter_organization()
        .map(|o| o.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertificateError::NotUtf8)?;

    Ok(Identity {
        user: user.to_owned(),
        groups,
        ..Identity::default()
    })
}

/// The moment the first certificate of the chain expires.
fn chain_valid_until(chain: &[CertificateDer<'_>]) -> Result<UnixTime, CertificateError> {
    let mut earliest = i64::MAX;
    for der in chain {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
        earliest = earliest.min(cert.validity().not_after.timestamp());
    }
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(earliest).unwrap_or(0),
    )))
}
