//! The secure metrics listener: `/metrics` over TLS for a cluster
//! Prometheus, guarded the way the kube-scheduler and
//! kube-controller-manager guard their secure ports (k8s.io/apiserver's
//! `DelegatingAuthenticator` and `DelegatingAuthorizer`) and the way
//! kube-rbac-proxy guards a sidecar's:
//!
//! 1. TLS with the gateway's own serving certificate and client CA (the
//!    current [`TlsState`], so reloads and CSR rotation apply here too);
//! 2. the gateway's authentication (client certificate, else bearer token
//!    through a TokenReview, else anonymous if enabled) — 401 otherwise;
//! 3. a SubjectAccessReview for the non-resource `get` on `/metrics`,
//!    cached like the kubelet API's decisions — 403 when denied, 500 when
//!    the apiserver cannot answer (counted and attributed like the main
//!    listener's: `kubelet_guard_apiserver_review_failures_total`).
//!
//! Only `GET /metrics` is served. Probes stay on the loopback admin
//! listener (`admin`), which needs no credentials.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::authn::{Authenticator, AuthnError, ClientCertificate, Identity};
use crate::authz::cache::DecisionCache;
use crate::authz::sar::{ReviewError, Reviewer};
use crate::drain::Drain;
use crate::metrics::{Metrics, ScrapeLabels};
use crate::tls::TlsState;

/// The one path served, and the non-resource URL its review names.
pub const METRICS_PATH: &str = "/metrics";

/// Scrapers are few (one or two Prometheus replicas); more connections at
/// once wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// A connection is closed after this long whatever it does, so idle
/// connections cannot hold the [`MAX_CONNECTIONS`] slots for good (a
/// scraper simply reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Bound on cached decisions (one per identity).
const DECISION_CACHE_ENTRIES: u64 = 1024;

/// Deadlines for one connection: the TLS handshake, and a request head
/// (also the wait for the next one on a kept-alive connection).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Duration,
    pub request_header: Duration,
}

/// How `get /metrics` is authorized: a SubjectAccessReview, cached with the
/// webhook's TTLs (allowed, denied).
pub struct Authorization {
    pub reviewer: Reviewer,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
}

pub struct MetricsEndpoint {
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    authenticator: Authenticator,
    reviewer: Reviewer,
    decisions: DecisionCache<Arc<Identity>>,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
}

/// Why a scrape was refused. Bodies are short; the cause of a 500 is in the
/// log (written where the review failed, rate-limited). As on the main
/// listener, a token the apiserver could not check is a 401 (the
/// TokenReview failure is counted as the infrastructure's).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthnError),
    #[error("forbidden")]
    Forbidden { user: String },
    #[error("authorization could not be checked: {error}")]
    ReviewFailed {
        user: String,
        error: Arc<ReviewError>,
    },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::ReviewFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> String {
        match self {
            Refusal::Unauthenticated(_) => "Unauthorized\n".into(),
            Refusal::Forbidden { user } => {
                format!("Forbidden (user={user}, verb=get, path={METRICS_PATH})\n")
            }
            Refusal::ReviewFailed { user, .. } => {
                format!("Authorization error (user={user}, verb=get, path={METRICS_PATH})\n")
            }
        }
    }
}

impl MetricsEndpoint {
    pub fn new(
        tls: watch::Receiver<Option<Arc<TlsState>>>,
        authenticator: Authenticator,
        authorization: Authorization,
        metrics: Arc<Metrics>,
        timeouts: Timeouts,
    ) -> Self {
        MetricsEndpoint {
            tls,
            authenticator,
            reviewer: authorization.reviewer,
            decisions: DecisionCache::new(
                authorization.authorized_ttl,
                authorization.unauthorized_ttl,
                DECISION_CACHE_ENTRIES,
            ),
            metrics,
            timeouts,
        }
    }

    /// Serves until the gateway has stopped (phase 3 of its [`Drain`]):
    /// scrapes keep working while requests drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Drain) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = tokio::select! {
                () = drain.stopped() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let endpoint = self.clone();
            let drain = drain.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = endpoint.connection(stream, peer) => {}
                    () = drain.stopped() => {}
                }
                drop(slot);
            });
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // No serving certificate yet (a CSR in flight): nothing to offer.
        let Some(state) = self.tls.borrow().clone() else {
            return;
        };
        let acceptor = TlsAcceptor::from(state.server_config.clone());
        let tls = match tokio::time::timeout(self.timeouts.handshake, acceptor.accept(stream)).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "metrics listener: TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let session = &tls.get_ref().1;
        let http2 = session.alpn_protocol() == Some(b"h2");
        let certificate = Arc::new(ClientCertificate::new(
            session
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        ));
        let request_header = self.timeouts.request_header;
        let service = service_fn(move |request| {
            let (endpoint, certificate) = (self.clone(), certificate.clone());
            async move {
                Ok::<_, Infallible>(
                    endpoint
                        .answer(certificate.as_ref().as_ref(), request)
                        .await,
                )
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The protocol ALPN chose, never sniffed (as on the main listener).
        if http2 {
            builder = builder.http2_only();
        } else {
            builder = builder.http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(request_header);
        }
        let served = builder.serve_connection(TokioIo::new(tls), service);
        // Err(Elapsed): the lifetime is over; the connection is dropped.
        if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, served).await {
            tracing::debug!(%peer, %error, "metrics listener: connection ended");
        }
    }

    async fn answer(
        &self,
        certificate: Option<&ClientCertificate>,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let response = match self.admit(certificate, &request).await {
            Ok(()) if request.method() != Method::GET => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET only\n".into(),
            ),
            Ok(()) if request.uri().path() != METRICS_PATH => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                format!("not found: only {METRICS_PATH} is served here\n"),
            ),
            Ok(()) => self.exposition(&request),
            Err(refusal) => {
                tracing::debug!(reason = %refusal, "metrics listener: scrape refused");
                reply(
                    refusal.status(),
                    "text/plain; charset=utf-8",
                    refusal.body(),
                )
            }
        };
        self.metrics
            .scrapes
            .get_or_create(&ScrapeLabels {
                code: response.status().as_u16(),
            })
            .inc();
        response
    }

    /// Authentication, then the review of `get /metrics` (whatever was
    /// asked: only that is ever served).
    async fn admit(
        &self,
        certificate: Option<&ClientCertificate>,
        request: &Request<Incoming>,
    ) -> Result<(), Refusal> {
        let caller = self
            .authenticator
            .authenticate(certificate, request.headers())
            .await?;
        let identity = caller.identity;
        let review = || {
            self.reviewer
                .review_non_resource(&identity, "get", METRICS_PATH)
        };
        let (allowed, _source) = self
            .decisions
            .decide(identity.clone(), review)
            .await
            .map_err(|error| Refusal::ReviewFailed {
                user: identity.user.clone(),
                error,
            })?;
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                user: identity.user.clone(),
            })
        }
    }

    fn exposition(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (content_type, body) = self
            .metrics
            .exposition(request.headers().get(header::ACCEPT));
        reply(StatusCode::OK, content_type, body)
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}
