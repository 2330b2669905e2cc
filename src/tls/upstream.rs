//! The client side: how the gateway proves itself to the kubelet and checks
//! the kubelet's serving certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use super::TlsError;
use super::pem::load_certificates;

/// How to reach the kubelet over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundle that signed the kubelet's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// The gateway's own client certificate and key for the kubelet.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any kubelet certificate. Only for kubelets with a self-signed
    /// certificate and no CA to check it with.
    pub insecure_skip_verify: bool,
    /// Verify the kubelet's certificate for this name instead of the
    /// upstream host.
    pub server_name: Option<ServerName<'static>>,
}

/// The kubelet's CA bundle (`--upstream-ca-file`), ready to verify its
/// serving certificate with: webpki's verifier over exactly those roots,
/// as `ClientConfig::with_root_certificates` builds it.
pub fn load_upstream_ca(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let unusable = |reason: String| TlsError::BadCertificate {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| unusable(format!("not usable as a CA certificate: {e}")))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unusable(e.to_string()))
}

/// `ca` is the current verifier from `--upstream-ca-file` ([`load_upstream_ca`],
/// reloaded) and `client_cert` the gateway's current client certificate for
/// the kubelet; each new kubelet connection uses the latest of both. With
/// neither `ca` nor `insecure_skip_verify`, no kubelet certificate verifies.
pub fn upstream_client_config(
    tls: &UpstreamTls,
    ca: Option<watch::Receiver<Arc<WebPkiServerVerifier>>>,
    client_cert: Option<watch::Receiver<Arc<CertifiedKey>>>,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider.clone())))
    } else if let Some(ca) = ca {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentCa(ca)))
    } else {
        builder.with_root_certificates(RootCertStore::empty())
    };
    Ok(match client_cert {
        Some(current) => builder.with_client_cert_resolver(Arc::new(CurrentClientCert(current))),
        None => builder.with_no_client_auth(),
    })
}

/// Presents whatever client certificate was loaded last.
#[derive(Debug)]
struct CurrentClientCert(watch::Receiver<Arc<CertifiedKey>>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies with whatever CA bundle was loaded last; a connection is
/// verified once, at its handshake.
#[derive(Debug)]
struct CurrentCa(watch::Receiver<Arc<WebPkiServerVerifier>>);

impl CurrentCa {
    fn now(&self) -> Arc<WebPkiServerVerifier> {
        self.0.borrow().clone()
    }
}

impl ServerCertVerifier for CurrentCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.now()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.now().supported_verify_schemes()
    }
}

/// `--upstream-insecure-skip-tls-verify`: any certificate is accepted, but the
/// handshake signatures are still checked so the session keys are sound.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
