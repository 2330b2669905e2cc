//! The client side: how the gateway proves itself to the kubelet and checks
//! the kubelet's serving certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::TlsError;
use super::pem::{load_certificates, load_private_key};

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
}

pub fn upstream_client_config(
    tls: &UpstreamTls,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider.clone())))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(path) = &tls.ca_file {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::BadCertificate {
                    path: path.clone(),
                    reason: format!("not usable as a CA certificate: {e}"),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match &tls.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?)
            .map_err(|e| TlsError::KeyMismatch {
                cert: cert.clone(),
                key: key.clone(),
                reason: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
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
