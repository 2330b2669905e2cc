//! Assembly: a validated [`Config`] becomes a running gateway. [`Gateway::bind`]
//! is the list of components in the order a request meets them — the front
//! door's TLS, authentication and authorization, the kubelet — then the
//! server that runs the chain ([`crate::pipeline`]), the admin listener and,
//! when configured, the secure metrics listener.
//! Two things are shared by all of them: the [`Reloader`] that keeps every
//! file-backed value current, and the [`Drain`] that shuts them down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::apiserver::{self, ApiserverError};
use crate::authn::{Authenticator, TokenAuthenticator};
use crate::authz::cache::DecisionCache;
use crate::authz::sar::Reviewer;
use crate::authz::{Authorizer, Webhook};
use crate::config::{Config, Serving};
use crate::csr::CsrIssuer;
use crate::drain::Drain;
use crate::fault::{self, FailureReporter};
use crate::metrics::Metrics;
use crate::metrics_endpoint::{self, MetricsEndpoint};
use crate::pipeline::Pipeline;
use crate::proxy::{Forwarder, Upstream, UpstreamOptions};
use crate::reload::Reloader;
use crate::server::Server;
use crate::tls::coverage::ServingCoverage;
use crate::tls::{self, ClientCa, ServingCert, ServingTls, TlsError, TlsState};

/// How long the other direction of an upgraded stream may keep going after
/// one side has closed.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Bound on cached authorization decisions (one per identity, verb and
/// subresource): far more than the callers a node sees.
const DECISION_CACHE_ENTRIES: u64 = 65_536;

/// Files are re-checked this often even without a change event.
const RELOAD_RESYNC: Duration = Duration::from_secs(60);

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

/// A gateway bound to its ports, ready to run.
pub struct Gateway {
    server: Server,
    local_addr: SocketAddr,
    admin: Arc<Admin>,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    /// The secure metrics listener, when --metrics-listen-address is set.
    metrics_endpoint: Option<(Arc<MetricsEndpoint>, TcpListener, SocketAddr)>,
    reloader: Reloader,
    /// With --serving-cert-source=csr: requests and renews the certificate.
    csr: Option<CsrIssuer>,
    grace: Duration,
    drain: Drain,
}

impl Gateway {
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let provider = tls::crypto_provider(&config.tls)?;
        let mut reloader = Reloader::new(metrics.clone());
        let drain = Drain::new();

        let front = FrontDoor::new(&config, &provider, &metrics, &mut reloader).await?;
        let access = access_control(&config, front.tls.clone(), &metrics).await?;
        let metrics_endpoint = match (config.metrics_listen, access.metrics_authz) {
            (Some(addr), Some(authz)) => {
                let timeouts = metrics_endpoint::Timeouts {
                    handshake: config.limits.tls_handshake_timeout,
                    request_header: config.limits.request_header_timeout,
                };
                let endpoint = MetricsEndpoint::new(
                    front.tls.clone(),
                    access.authenticator.clone(),
                    authz,
                    metrics.clone(),
                    timeouts,
                );
                let (listener, addr) = bind(addr).await?;
                Some((Arc::new(endpoint), listener, addr))
            }
            _ => None,
        };
        let upstream = kubelet(&config, &provider, &mut reloader)?;
        let pipeline = Arc::new(Pipeline {
            streaming_authz: config.streaming_authz,
            authenticator: access.authenticator,
            authorizer: access.authorizer,
            forwarder: Forwarder::new(upstream.clone(), HALF_CLOSE_LINGER, drain.clone()),
            metrics: metrics.clone(),
            log_format: config.log_format,
        });

        let (listener, local_addr) = bind(config.listen).await?;
        let server = Server::new(
            listener,
            front.tls.clone(),
            pipeline,
            config.limits.clone(),
            metrics.clone(),
        );
        let (admin_listener, admin_addr) = bind(config.admin_listen).await?;
        let admin = Arc::new(Admin::new(
            metrics,
            front.tls,
            front.status,
            front.coverage,
            upstream,
            drain.clone(),
        ));

        Ok(Gateway {
            server,
            local_addr,
            admin,
            admin_listener,
            admin_addr,
            metrics_endpoint,
            reloader,
            csr: front.csr,
            grace: config.shutdown_grace_period,
            drain,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The secure metrics listener's address, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(_, _, addr)| *addr)
    }

    /// Serves until `shutdown` is cancelled, then drains for the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let metrics = self.metrics_addr().map(|a| a.to_string());
        tracing::info!(address = %self.local_addr, admin = %self.admin_addr,
            metrics = metrics.as_deref().unwrap_or("off"), "serving");
        let drain = self.drain;
        let reloader = tokio::spawn(self.reloader.run(RELOAD_RESYNC, drain.clone()));
        let admin = tokio::spawn(self.admin.serve(self.admin_listener));
        let metrics_endpoint = self
            .metrics_endpoint
            .map(|(endpoint, listener, _)| tokio::spawn(endpoint.serve(listener, drain.clone())));
        let csr = self
            .csr
            .map(|issuer| tokio::spawn(issuer.run(drain.clone())));

        // The caller's signal begins the drain: the listener stops, /readyz
        // turns 503 at once, requests and streams get the grace period.
        let begin = drain.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            begin.begin();
        });
        self.server.run(drain.clone(), self.grace).await;

        drain.stop();
        let _ = reloader.await;
        let _ = admin.await;
        if let Some(task) = metrics_endpoint {
            let _ = task.await;
        }
        if let Some(csr) = csr {
            let _ = csr.await;
        }
    }
}

/// The serving side of TLS: the serving certificate (from files, reloaded,
/// or issued through a CSR) and the client CA, assembled into the state new
/// handshakes use.
struct FrontDoor {
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    coverage: Arc<ServingCoverage>,
    /// Why there is no serving certificate yet (a CSR in flight).
    status: watch::Receiver<String>,
    csr: Option<CsrIssuer>,
}

impl FrontDoor {
    async fn new(
        config: &Config,
        provider: &Arc<CryptoProvider>,
        metrics: &Arc<Metrics>,
        reloader: &mut Reloader,
    ) -> Result<FrontDoor, StartError> {
        let coverage = Arc::new(ServingCoverage::new(
            config.serving_coverage.ips.clone(),
            config.serving_coverage.dns_names.clone(),
            config.serving_coverage.policy,
            metrics.clone(),
        ));
        let (serving_tls, tls) =
            ServingTls::new(config.tls.clone(), provider.clone(), Some(coverage.clone()));
        let (status_updates, status) = watch::channel(String::new());
        let load_client_ca = {
            let (path, provider, metrics) = (
                config.client_ca_file.clone(),
                provider.clone(),
                metrics.clone(),
            );
            move || -> Result<Option<Arc<ClientCa>>, TlsError> {
                let Some(path) = &path else {
                    return Ok(None);
                };
                let ca = ClientCa::load(path, &provider)?;
                metrics.set_expiry("client_ca", ca.expires_at());
                Ok(Some(Arc::new(ca)))
            }
        };
        let csr = match &config.serving {
            // Certificate, key and client CA are one material: a rotation
            // that changes the CA with the certificate lands at once.
            Serving::Files { cert, key } => {
                let paths = [Some(cert), Some(key), config.client_ca_file.as_ref()];
                let (cert, key, provider, metrics) =
                    (cert.clone(), key.clone(), provider.clone(), metrics.clone());
                reloader.add(
                    "serving",
                    paths.into_iter().flatten().cloned().collect(),
                    move || -> Result<(), TlsError> {
                        let serving = ServingCert::load(&cert, &key, &provider)?;
                        let client_ca = load_client_ca()?;
                        metrics.set_expiry("serving", serving.expires_at);
                        serving_tls.set(Arc::new(serving), client_ca)
                    },
                )?;
                None
            }
            Serving::Csr(settings) => {
                if let Some(path) = config.client_ca_file.clone() {
                    let serving_tls = serving_tls.clone();
                    reloader.add("client_ca", vec![path], move || {
                        serving_tls.set_client_ca(load_client_ca()?)
                    })?;
                }
                let client = apiserver::client(settings.kubeconfig.as_deref()).await?;
                Some(CsrIssuer::new(
                    client,
                    config.node_name.clone(),
                    settings.clone(),
                    provider.clone(),
                    serving_tls,
                    status_updates,
                    metrics.clone(),
                ))
            }
        };
        Ok(FrontDoor {
            tls,
            coverage,
            status,
            csr,
        })
    }
}

/// Who may do what: the main listener's authentication and authorization,
/// and the secure metrics listener's authorization (a SubjectAccessReview
/// for `get /metrics`, when there is a webhook to ask).
struct AccessControl {
    authenticator: Authenticator,
    authorizer: Authorizer,
    metrics_authz: Option<metrics_endpoint::Authorization>,
}

/// Authentication (client certificates; bearer tokens by TokenReview) and
/// authorization (static rules; SubjectAccessReview), with the apiserver if
/// configured.
async fn access_control(
    config: &Config,
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    metrics: &Arc<Metrics>,
) -> Result<AccessControl, StartError> {
    let (tokens, webhook, metrics_authz) = match &config.apiserver {
        Some(apiserver) => {
            let client = apiserver::client(apiserver.kubeconfig.as_deref()).await?;
            let failures = Arc::new(FailureReporter::new(metrics.clone(), fault::WARN_EVERY));
            let tokens = apiserver.token_authentication.as_ref().map(|t| {
                TokenAuthenticator::new(
                    client.clone(),
                    t.audiences.clone(),
                    t.cache_ttl,
                    apiserver.review_timeout,
                    metrics.clone(),
                    failures.clone(),
                )
            });
            let webhook = apiserver.authorization.as_ref().map(|a| Webhook {
                reviewer: Reviewer::new(
                    client.clone(),
                    config.node_name.clone(),
                    apiserver.review_timeout,
                    metrics.clone(),
                    failures.clone(),
                ),
                cache: DecisionCache::new(
                    a.authorized_ttl,
                    a.unauthorized_ttl,
                    DECISION_CACHE_ENTRIES,
                ),
            });
            // The secure metrics listener asks with the same reviewer and TTLs.
            let metrics_authz =
                webhook
                    .as_ref()
                    .zip(apiserver.authorization.as_ref())
                    .map(|(w, a)| metrics_endpoint::Authorization {
                        reviewer: w.reviewer.clone(),
                        authorized_ttl: a.authorized_ttl,
                        unauthorized_ttl: a.unauthorized_ttl,
                    });
            (tokens, webhook, metrics_authz)
        }
        None => (None, None, None),
    };
    Ok(AccessControl {
        authenticator: Authenticator::new(tls, tokens, config.anonymous_auth),
        authorizer: Authorizer::new(config.static_rules.clone(), webhook),
        metrics_authz,
    })
}

/// The kubelet: where it is and the gateway's credentials for it — the CA
/// its certificate is checked with, the client certificate and the bearer
/// token — each reloaded when its file changes.
fn kubelet(
    config: &Config,
    provider: &Arc<CryptoProvider>,
    reloader: &mut Reloader,
) -> Result<Upstream, StartError> {
    let upstream_tls = &config.upstream_tls;
    if upstream_tls.insecure_skip_verify {
        tracing::warn!(
            "--upstream-insecure-skip-tls-verify: the kubelet's serving certificate is not verified"
        );
    }
    let ca = match &upstream_tls.ca_file {
        Some(path) if !upstream_tls.insecure_skip_verify => {
            let (path, provider) = (path.clone(), provider.clone());
            let ca = reloader.add("upstream_ca", vec![path.clone()], move || {
                tls::load_upstream_ca(&path, &provider)
            })?;
            Some(ca.watch())
        }
        _ => None,
    };
    let client_cert = match &upstream_tls.client_cert {
        Some((cert, key)) => {
            let (cert, key, provider) = (cert.clone(), key.clone(), provider.clone());
            let current = reloader.add(
                "upstream_client",
                vec![cert.clone(), key.clone()],
                move || tls::load_certified_key(&cert, &key, &provider).map(Arc::new),
            )?;
            Some(current.watch())
        }
        None => None,
    };
    let client_tls = tls::upstream_client_config(upstream_tls, ca, client_cert, provider)?;
    let token = match config.upstream_token_file.clone() {
        Some(path) => reloader
            .add("upstream_token", vec![path.clone()], move || {
                read_upstream_token(&path)
            })?
            .watch(),
        None => watch::channel(None).1,
    };
    Ok(Upstream::new(
        config.upstream_scheme.clone(),
        config.upstream_authority.clone(),
        client_tls,
        upstream_tls.server_name.clone(),
        token,
        &UpstreamOptions::default(),
    ))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// The `Authorization` header the gateway sends to the kubelet.
fn read_upstream_token(path: &Path) -> Result<Option<HeaderValue>, StartError> {
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
