//! Assembly: a validated [`Config`] becomes a running gateway. Reading
//! [`Gateway::bind`] top to bottom is reading the request path: TLS →
//! authentication → authorization → forwarding; then the admin listener and
//! the reloader that keep it running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
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
use crate::config::Config;
use crate::config::Serving;
use crate::csr::CsrIssuer;
use crate::fault::{self, FailureReporter};
use crate::metrics::Metrics;
use crate::metrics_endpoint::{self, MetricsEndpoint};
use crate::pipeline::Pipeline;
use crate::proxy::{Forwarder, Upstream, UpstreamOptions};
use crate::server::Server;
use crate::tls::coverage::ServingCoverage;
use crate::tls::reload::{self, Material};
use crate::tls::{self, ClientCa, ServingCert, ServingTls, TlsError};

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
    materials: Vec<Material>,
    metrics: Arc<Metrics>,
    /// With --serving-cert-source=csr: requests and renews the certificate.
    csr: Option<CsrIssuer>,
    grace: Duration,
    shutting_down: CancellationToken,
}

impl Gateway {
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let provider = tls::crypto_provider(&config.tls)?;
        let mut materials = Vec::new();

        // TLS: the serving certificate (from files, or issued through a CSR)
        // and the client CA, assembled into what new handshakes use.
        let coverage = Arc::new(ServingCoverage::new(
            config.serving_coverage.ips.clone(),
            config.serving_coverage.dns_names.clone(),
            config.serving_coverage.policy,
            metrics.clone(),
        ));
        let (serving_tls, tls_state) =
            ServingTls::new(config.tls.clone(), provider.clone(), Some(coverage.clone()));
        let (serving_status, serving_status_updates) = watch::channel(String::new());
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
        let mut csr = None;
        match &config.serving {
            Serving::Files { cert, key } => {
                let load = {
                    let (cert, key, provider, metrics) =
                        (cert.clone(), key.clone(), provider.clone(), metrics.clone());
                    let serving_tls = serving_tls.clone();
                    move || -> Result<(), TlsError> {
                        let serving = ServingCert::load(&cert, &key, &provider)?;
                        let client_ca = load_client_ca()?;
                        metrics.set_expiry("serving", serving.expires_at);
                        serving_tls.set(Arc::new(serving), client_ca)
                    }
                };
                load()?;
                let paths = [
                    Some(cert.clone()),
                    Some(key.clone()),
                    config.client_ca_file.clone(),
                ];
                materials.push(Material::new(
                    "serving",
                    paths.into_iter().flatten().collect(),
                    Box::new(move || load().map_err(|e| e.to_string())),
                ));
            }
            Serving::Csr(settings) => {
                serving_tls.set_client_ca(load_client_ca()?)?;
                if let Some(path) = config.client_ca_file.clone() {
                    let serving_tls = serving_tls.clone();
                    materials.push(Material::new(
                        "client_ca",
                        vec![path],
                        Box::new(move || {
                            let ca = load_client_ca().map_err(|e| e.to_string())?;
                            serving_tls.set_client_ca(ca).map_err(|e| e.to_string())
                        }),
                    ));
                }
                let client = apiserver::client(settings.kubeconfig.as_deref()).await?;
                csr = Some(CsrIssuer::new(
                    client,
                    config.node_name.clone(),
                    settings.clone(),
                    provider.clone(),
                    serving_tls.clone(),
                    serving_status,
                    metrics.clone(),
                ));
            }
        }

        // Authentication and authorization, with the apiserver if configured.
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
        let authenticator = Authenticator::new(tls_state.clone(), tokens, config.anonymous_auth);
        let authorizer = Authorizer::new(config.static_rules.clone(), webhook);
        let metrics_endpoint = match (config.metrics_listen, metrics_authz) {
            (Some(addr), Some(authz)) => Some(
                bind_metrics_endpoint(addr, &config, &tls_state, &authenticator, authz, &metrics)
                    .await?,
            ),
            _ => None,
        };

        // Forwarding: the gateway's own credentials for the kubelet, reloaded.
        if config.upstream_tls.insecure_skip_verify {
            tracing::warn!(
                "--upstream-insecure-skip-tls-verify: the kubelet's serving certificate is not verified"
            );
        }
        let client_cert = match &config.upstream_tls.client_cert {
            Some((cert, key)) => {
                let (updates, current) =
                    watch::channel(Arc::new(tls::load_certified_key(cert, key, &provider)?));
                let (cert, key, provider) = (cert.clone(), key.clone(), provider.clone());
                let paths = vec![cert.clone(), key.clone()];
                let reload = Box::new(move || {
                    let loaded = tls::load_certified_key(&cert, &key, &provider)
                        .map_err(|e| e.to_string())?;
                    updates.send_replace(Arc::new(loaded));
                    Ok(())
                });
                materials.push(Material::new("upstream_client", paths, reload));
                Some(current)
            }
            None => None,
        };
        let upstream_tls =
            tls::upstream_client_config(&config.upstream_tls, client_cert, &provider)?;
        let (token_updates, token) =
            watch::channel(read_upstream_token(config.upstream_token_file.as_deref())?);
        if let Some(path) = config.upstream_token_file.clone() {
            let reload = Box::new({
                let path = path.clone();
                move || {
                    let token = read_upstream_token(Some(&path)).map_err(|e| e.to_string())?;
                    token_updates.send_replace(token);
                    Ok(())
                }
            });
            materials.push(Material::new("upstream_token", vec![path], reload));
        }
        let upstream = Upstream::new(
            config.upstream_scheme.clone(),
            config.upstream_authority.clone(),
            upstream_tls,
            config.upstream_tls.server_name.clone(),
            token,
            &UpstreamOptions::default(),
        );
        let forwarder = Forwarder::new(upstream.clone(), HALF_CLOSE_LINGER);

        let pipeline = Arc::new(Pipeline {
            streaming_authz: config.streaming_authz,
            authenticator,
            authorizer,
            forwarder,
            metrics: metrics.clone(),
            log_format: config.log_format,
        });

        let listener = bind(config.listen).await?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let server = Server::new(
            listener,
            tls_state.clone(),
            pipeline,
            config.limits.clone(),
            metrics.clone(),
        );

        let admin_listener = bind(config.admin_listen).await?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let shutting_down = CancellationToken::new();
        let admin = Arc::new(Admin::new(
            metrics.clone(),
            tls_state,
            serving_status_updates,
            coverage,
            upstream,
            shutting_down.clone(),
        ));

        Ok(Gateway {
            server,
            local_addr,
            admin,
            admin_listener,
            admin_addr,
            metrics_endpoint,
            materials,
            metrics,
            csr,
            grace: config.shutdown_grace_period,
            shutting_down,
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
        tracing::info!(address = %self.local_addr, admin = %self.admin_addr, metrics = metrics.as_deref().unwrap_or("off"), "serving");
        let stop = CancellationToken::new();
        let reloader = tokio::spawn(reload::watch(
            self.materials,
            self.metrics.clone(),
            RELOAD_RESYNC,
            stop.clone(),
        ));
        let admin = tokio::spawn(self.admin.serve(self.admin_listener, stop.clone()));
        let metrics_endpoint = self
            .metrics_endpoint
            .map(|(endpoint, listener, _)| tokio::spawn(endpoint.serve(listener, stop.clone())));
        let csr = self
            .csr
            .map(|issuer| tokio::spawn(issuer.run(stop.clone())));

        let shutting_down = self.shutting_down.clone();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            // /readyz turns 503 at once, while requests drain.
            shutting_down.cancel();
        });
        self.server.run(shutdown, self.grace).await;

        stop.cancel();
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

async fn bind_metrics_endpoint(
    addr: SocketAddr,
    config: &Config,
    tls: &watch::Receiver<Option<Arc<tls::TlsState>>>,
    authenticator: &Authenticator,
    authz: metrics_endpoint::Authorization,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<MetricsEndpoint>, TcpListener, SocketAddr), StartError> {
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let timeouts = metrics_endpoint::Timeouts {
        handshake: config.limits.tls_handshake_timeout,
        request_header: config.limits.request_header_timeout,
    };
    let endpoint = MetricsEndpoint::new(
        tls.clone(),
        authenticator.clone(),
        authz,
        metrics.clone(),
        timeouts,
    );
    Ok((Arc::new(endpoint), listener, local))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// The `Authorization` header the gateway sends to the kubelet.
fn read_upstream_token(path: Option<&Path>) -> Result<Option<HeaderValue>, StartError> {
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
