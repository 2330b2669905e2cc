//! TLS configuration shared by every tool: PEM loading, a server that
//! requires client certificates, and a client that presents one.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("no key in {}", path.display()))
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).context("bad CA certificate")?;
    }
    Ok(roots)
}

/// TLS 1.3 only, as every target in the bench is configured.
static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A server that requires a client certificate from `client_ca` (like the
/// kubelet behind the gateway, or the apiserver when `client_ca` is None).
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_protocol_versions(TLS13);
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
                .build()
                .context("client verifier")?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .context("serving certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client that trusts `ca` and presents `cert`/`key`, ALPN `http/1.1`
/// (upgrades need it, as the apiserver forces it).
pub struct Client {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Client {
    pub fn new(ca: &Path, cert: &Path, key_path: &Path, server_name: &str) -> anyhow::Result<Self> {
        let mut config = ClientConfig::builder_with_protocol_versions(TLS13)
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .context("client certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| anyhow!("bad server name {server_name}: {e}"))?;
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    pub async fn connect(&self, addr: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}
