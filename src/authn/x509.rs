//! Identity from a client certificate, as the kubelet's x509 authenticator
//! builds it (k8s.io/apiserver v0.37.2
//! `pkg/authentication/request/x509/x509.go`, `CommonNameUserConversion`):
//! user = subject CN, uid = the subject's Kubernetes UID attribute
//! (OID 1.3.6.1.4.1.57683.2, feature `AllowParsingUserUIDFromCertAuth`, on
//! by default since 1.33), groups = every subject O in order, extra =
//! `authentication.kubernetes.io/credential-id: ["X509SHA256=<hex SHA-256 of
//! the leaf DER>"]`. `system:authenticated` is added afterwards by the
//! group adder ([`super::with_authenticated_group`]), as in the kubelet.

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
    #[error("certificate subject holds more than one user UID (1.3.6.1.4.1.57683.2)")]
    AmbiguousUid,
    #[error("certificate subject holds an empty or non-string user UID (1.3.6.1.4.1.57683.2)")]
    BadUid,
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
        let identity = Arc::new(super::with_authenticated_group(identity_from_certificate(
            &self.chain[0],
        )?));
        let valid_until = chain_valid_until(&self.chain)?;
        *verified = Some(Verified {
            client_ca: client_ca.clone(),
            valid_until,
            identity: identity.clone(),
        });
        Ok(identity)
    }
}

/// The user a certificate stands for (before the group adder). The CN must
/// be present, single and UTF-8; a CN the apiserver would read differently
/// is refused. Errors: [`CertificateError`] (never a panic, whatever `der`).
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

    // `parseUIDFromCert`: at most one, a non-empty string.
    let mut uids = subject.iter_by_oid(&UID_OID);
    let uid = match (uids.next(), uids.next()) {
        (None, _) => String::new(),
        (Some(_), Some(_)) => return Err(CertificateError::AmbiguousUid),
        (Some(uid), None) => match uid.as_str() {
            Ok(uid) if !uid.is_empty() => uid.to_owned(),
            _ => return Err(CertificateError::BadUid),
        },
    };

    Ok(Identity {
        user: user.to_owned(),
        uid,
        groups,
        extra: [(CREDENTIAL_ID_KEY.to_owned(), vec![credential_id(der)])].into(),
    })
}

/// `user.CredentialIDKey` (k8s.io/apiserver `pkg/authentication/user`).
pub const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// The Kubernetes user UID attribute of a subject: 1.3.6.1.4.1.57683.2
/// (k8s.io/apimachinery `pkg/apis/asn1`, `X509UID`).
const UID_OID: x509_parser::der_parser::oid::Oid<'static> =
    x509_parser::der_parser::oid!(1.3.6.1.4.1.57683.2);

/// `X509SHA256=` and the lowercase hex SHA-256 of the certificate's DER.
fn credential_id(der: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let mut id = String::with_capacity(11 + 64);
    id.push_str("X509SHA256=");
    for byte in sha2::Sha256::digest(der) {
        let _ = write!(id, "{byte:02x}");
    }
    id
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

/// The dev certificates (`kubelet-guard certs`) carry the identities the
/// gateway reads from a client certificate.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{APISERVER_GROUP, APISERVER_USER, DevCertsRequest, write_dev_certs};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn dev_certs_have_the_subjects_the_apiserver_expects() {
        let dir = tempfile::tempdir().unwrap();
        let request = DevCertsRequest {
            node_name: "node-a".into(),
            ips: vec!["127.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap()],
            dns_names: vec!["node-a.example".into()],
        };
        write_dev_certs(dir.path(), &request).unwrap();

        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let serving = identity_from_certificate(&der(&read("serving.crt"))).unwrap();
        assert_eq!(serving.user, "system:node:node-a");
        assert_eq!(serving.groups, ["system:nodes"]);

        let serving_der = der(&read("serving.crt"));
        let (_, cert) = x509_parser::parse_x509_certificate(&serving_der).unwrap();
        use x509_parser::extensions::GeneralName;
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans,
            &[
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&[10, 1, 2, 3]),
                GeneralName::DNSName("node-a.example"),
            ]
        );

        let apiserver = identity_from_certificate(&der(&read("apiserver-client.crt"))).unwrap();
        assert_eq!(
            (apiserver.user.as_str(), apiserver.groups.as_slice()),
            (APISERVER_USER, &[APISERVER_GROUP.to_string()][..])
        );
        let impostor = identity_from_certificate(&der(&read("untrusted-client.crt"))).unwrap();
        assert_eq!(
            (&impostor.user, &impostor.groups),
            (&apiserver.user, &apiserver.groups),
            "the impostor claims the same user and groups (only its credential id differs)"
        );

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
    }
}
