//! The serving side: certificate, key and client CA → a rustls `ServerConfig`.
//!
//! A [`TlsState`] is immutable. Reloading builds a new one and publishes it;
//! each new connection takes the latest, open connections keep theirs.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;

use super::TlsError;
use super::client_auth::RequestClientCert;
use super::client_ca::{ClientCa, earliest_expiry};
use super::options::TlsOptions;
use super::pem::{load_certificates, load_private_key};

/// ALPN protocols offered to callers: HTTP/2 for plain requests (client-go
/// negotiates it for logs), HTTP/1.1 for upgrades (the apiserver forces it).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the serving material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Without a client CA, client certificates are not requested at all.
    pub client_ca: Option<PathBuf>,
}

/// Everything the TLS front door needs for one generation of certificates.
#[derive(Debug)]
pub struct TlsState {
    pub server_config: Arc<ServerConfig>,
    pub client_ca: Option<Arc<ClientCa>>,
    /// `notAfter` of the serving certificate, seconds since the epoch.
    pub serving_expires_at: i64,
}

impl TlsState {
    pub fn load(
        files: &ServingFiles,
        options: &TlsOptions,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let chain = load_certificates(&files.cert)?;
        let key = load_private_key(&files.key)?;
        let serving_expires_at = earliest_expiry(&files.cert, &chain[..1])?;
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|path| ClientCa::load(path, provider).map(Arc::new))
            .transpose()?;

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(options.protocol_versions())?;
        let builder = match &client_ca {
            Some(ca) => builder.with_client_cert_verifier(Arc::new(RequestClientCert::new(
                provider.clone(),
                ca.subjects().to_vec(),
            ))),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|e| TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    reason: e.to_string(),
                })?;
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        // Session tickets/IDs stay on (rustls defaults): the apiserver reuses
        // connections, and resumption cuts handshake cost for new ones.

        Ok(TlsState {
            server_config: Arc::new(config),
            client_ca,
            serving_expires_at,
        })
    }
}
