//! Server TLS for the stand-ins, built with rustls directly (not the
//! gateway's own TLS code, which is what the tests examine).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// A TLS config that serves `cert`/`key` (PEM) and, with `client_ca`, only
/// talks to clients whose certificate that CA signed. Errors: a file that
/// cannot be read or holds no usable PEM, a key that does not match.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> std::io::Result<rustls::ServerConfig> {
    let error = |path: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: {e}", path.display()))
    };
    let certificates = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| error(path, &e))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(cert, &e))?;
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(client_ca)? {
                roots.add(ca).map_err(|e| error(client_ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error(client_ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| error(key, &e))?;
    builder
        .with_single_cert(certificates(cert)?, private_key)
        .map_err(|e| error(cert, &e))
}
