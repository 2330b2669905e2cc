//! The serving side: certificate, key and client CA → a rustls `ServerConfig`.
//!
//! A [`TlsState`] is immutable. Reloading builds a new one and publishes it;
//! each new connection takes the latest, open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::TlsError;
use super::client_auth::RequestClientCert;
use super::client_ca::ClientCa;
use super::coverage::ServingCoverage;
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

/// A serving certificate chain and its key, checked to match.
#[derive(Debug)]
pub struct ServingCert {
    pub certified: Arc<CertifiedKey>,
    /// `notAfter` of the leaf, seconds since the epoch.
    pub expires_at: i64,
    /// `notBefore` of the leaf, seconds since the epoch.
    pub issued_at: i64,
}

impl ServingCert {
    pub fn load(cert: &Path, key: &Path, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let chain = load_certificates(cert)?;
        let (issued_at, expires_at) = validity(cert, &chain[0])?;
        let certified =
            CertifiedKey::from_der(chain, load_private_key(key)?, provider).map_err(|e| {
                TlsError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        Ok(ServingCert {
            certified: Arc::new(certified),
            expires_at,
            issued_at,
        })
    }

    /// From a chain issued for `key` (e.g. by a CertificateSigningRequest);
    /// `origin` names where it came from in errors.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        provider: &Arc<CryptoProvider>,
        origin: &Path,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            path: origin.to_owned(),
        })?;
        let (issued_at, expires_at) = validity(origin, leaf)?;
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::KeyMismatch {
                cert: origin.to_owned(),
                key: origin.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(ServingCert {
            certified: Arc::new(certified),
            expires_at,
            issued_at,
        })
    }
}

fn validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<(i64, i64), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: format!("cannot parse certificate: {e}"),
        })?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
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
        let serving = ServingCert::load(&files.cert, &files.key, provider)?;
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|path| ClientCa::load(path, provider).map(Arc::new))
            .transpose()?;
        TlsState::new(&serving, client_ca, options, provider)
    }

    pub fn new(
        serving: &ServingCert,
        client_ca: Option<Arc<ClientCa>>,
        options: &TlsOptions,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(options.protocol_versions())?;
        let builder = match &client_ca {
            Some(ca) => builder.with_client_cert_verifier(Arc::new(RequestClientCert::new(
                provider.clone(),
                ca.subjects().to_vec(),
            ))),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(FixedCert(serving.certified.clone())));
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        // Session tickets/IDs stay on (rustls defaults): the apiserver reuses
        // connections, and resumption cuts handshake cost for new ones.
        Ok(TlsState {
            server_config: Arc::new(config),
            client_ca,
            serving_expires_at: serving.expires_at,
        })
    }
}

/// One certificate for every handshake (no SNI arrives when the apiserver
/// dials an IP).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The current serving certificate and client CA, whichever changed last,
/// assembled into the [`TlsState`] new connections use. Until there is a
/// serving certificate (a CSR not yet issued) there is no state, and the
/// front door turns connections away.
pub struct ServingTls {
    options: TlsOptions,
    provider: Arc<CryptoProvider>,
    /// Checks every serving certificate before it is used (file, reload or
    /// CSR alike): one place, so no source of certificates skips it.
    coverage: Option<Arc<ServingCoverage>>,
    pieces: Mutex<Pieces>,
    updates: watch::Sender<Option<Arc<TlsState>>>,
}

#[derive(Default)]
struct Pieces {
    serving: Option<Arc<ServingCert>>,
    client_ca: Option<Arc<ClientCa>>,
}

impl ServingTls {
    pub fn new(
        options: TlsOptions,
        provider: Arc<CryptoProvider>,
        coverage: Option<Arc<ServingCoverage>>,
    ) -> (Arc<ServingTls>, watch::Receiver<Option<Arc<TlsState>>>) {
        let (updates, current) = watch::channel(None);
        let serving = ServingTls {
            options,
            provider,
            coverage,
            pieces: Mutex::new(Pieces::default()),
            updates,
        };
        (Arc::new(serving), current)
    }

    /// Replaces the serving certificate and the client CA together.
    pub fn set(
        &self,
        serving: Arc<ServingCert>,
        client_ca: Option<Arc<ClientCa>>,
    ) -> Result<(), TlsError> {
        self.admit(&serving)?;
        let mut pieces = self.pieces.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&serving, client_ca.clone())?;
        *pieces = Pieces {
            serving: Some(serving),
            client_ca,
        };
        Ok(())
    }

    /// Replaces the serving certificate, keeping the client CA.
    pub fn set_serving(&self, serving: Arc<ServingCert>) -> Result<(), TlsError> {
        self.admit(&serving)?;
        let mut pieces = self.pieces.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&serving, pieces.client_ca.clone())?;
        pieces.serving = Some(serving);
        Ok(())
    }

    /// Replaces the client CA, keeping the serving certificate (if any yet).
    pub fn set_client_ca(&self, client_ca: Option<Arc<ClientCa>>) -> Result<(), TlsError> {
        let mut pieces = self.pieces.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(serving) = &pieces.serving {
            self.publish(serving, client_ca.clone())?;
        }
        pieces.client_ca = client_ca;
        Ok(())
    }

    /// The coverage check ([`ServingCoverage::admit`]): an error only when
    /// the certificate must not be used.
    fn admit(&self, serving: &ServingCert) -> Result<(), TlsError> {
        match (&self.coverage, serving.certified.cert.first()) {
            (Some(coverage), Some(leaf)) => coverage.admit(leaf).map_err(TlsError::Coverage),
            _ => Ok(()),
        }
    }

    fn publish(
        &self,
        serving: &ServingCert,
        client_ca: Option<Arc<ClientCa>>,
    ) -> Result<(), TlsError> {
        let state = TlsState::new(serving, client_ca, &self.options, &self.provider)?;
        self.updates.send_replace(Some(Arc::new(state)));
        Ok(())
    }
}
