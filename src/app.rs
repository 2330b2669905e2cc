//! Assembly: a validated [`Config`] becomes a running gateway. Reading this
//! function top to bottom is reading the request path: TLS → authentication →
//! authorization → forwarding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{self, ApiserverError};
use crate::authn::{Authenticator, TokenAuthenticator};
use crate::authz::cache::DecisionCache;
use crate::authz::sar::Reviewer;
use crate::authz::{Authorizer, Webhook};
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::proxy::{Forwarder, Upstream, UpstreamOptions};
use crate::server::{Server, ServerOptions};
use crate::tls::{self, ServingFiles, TlsError, TlsState};

/// How long the other direction of an upgraded stream may keep going after
/// one side has closed.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Bound on cached authorization decisions (one per identity, verb and
/// subresource): far more than the callers a node sees.
const DECISION_CACHE_ENTRIES: u64 = 65_536;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Apiserver(#[from] ApiserverError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--upstream-token-file {path}: {problem}")]
    UpstreamToken { path: PathBuf, problem: String },
}

/// A gateway bound to its port, ready to run.
pub struct Gateway {
    server: Server,
    local_addr: SocketAddr,
    // Keeps the TLS state channel open; reloading publishes through it.
    _tls_updates: watch::Sender<Arc<TlsState>>,
}

impl Gateway {
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let provider = tls::crypto_provider(&config.tls)?;
        let serving = ServingFiles {
            cert: config.tls_cert_file.clone(),
            key: config.tls_private_key_file.clone(),
            client_ca: config.client_ca_file.clone(),
        };
        let (tls_updates, tls_state) =
            watch::channel(Arc::new(TlsState::load(&serving, &config.tls, &provider)?));

        let (tokens, webhook) = match &config.apiserver {
            Some(apiserver) => {
                let client = apiserver::client(apiserver.kubeconfig.as_deref()).await?;
                let tokens = apiserver.token_authentication.as_ref().map(|t| {
                    TokenAuthenticator::new(
                        client.clone(),
                        t.audiences.clone(),
                        t.cache_ttl,
                        apiserver.review_timeout,
                    )
                });
                let webhook = apiserver.authorization.as_ref().map(|a| Webhook {
                    reviewer: Reviewer::new(
                        client.clone(),
                        config.node_name.clone(),
                        apiserver.review_timeout,
                    ),
                    cache: DecisionCache::new(
                        a.authorized_ttl,
                        a.unauthorized_ttl,
                        DECISION_CACHE_ENTRIES,
                    ),
                });
                (tokens, webhook)
            }
            None => (None, None),
        };
        let authenticator = Authenticator::new(tls_state.clone(), tokens, config.anonymous_auth);
        let authorizer = Authorizer::new(config.static_rules.clone(), webhook);

        if config.upstream_tls.insecure_skip_verify {
            tracing::warn!(
                "--upstream-insecure-skip-tls-verify: the kubelet's serving certificate is not verified"
            );
        }
        let upstream_tls = tls::upstream_client_config(&config.upstream_tls, &provider)?;
        let token = read_upstream_token(config.upstream_token_file.as_deref())?;
        let (_token_updates, token) = watch::channel(token);
        let upstream = Upstream::new(
            config.upstream_scheme.clone(),
            config.upstream_authority.clone(),
            upstream_tls,
            token,
            &UpstreamOptions::default(),
        );
        let forwarder = Forwarder::new(upstream, HALF_CLOSE_LINGER);

        let pipeline = Arc::new(Pipeline {
            streaming_authz: config.streaming_authz,
            authenticator,
            authorizer,
            forwarder,
        });

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let server = Server::new(listener, tls_state, pipeline, ServerOptions::default());
        Ok(Gateway {
            server,
            local_addr,
            _tls_updates: tls_updates,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then drains for `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        tracing::info!(address = %self.local_addr, "serving");
        self.server.run(shutdown, grace).await;
    }
}

/// The `Authorization` header the gateway sends to the kubelet.
fn read_upstream_token(path: Option<&std::path::Path>) -> Result<Option<HeaderValue>, StartError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let problem = |problem: String| StartError::UpstreamToken {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(problem("the file is empty".into()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| problem("the token holds characters a header cannot carry".into()))?;
    value.set_sensitive(true);
    Ok(Some(value))
}
