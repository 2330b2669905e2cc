//! The admin listener (plain HTTP, loopback by default): liveness,
//! readiness and metrics for the kubelet's probes and for Prometheus.
//!
//! - `/healthz`, `/livez`: the process is serving.
//! - `/readyz`: the serving certificate is loaded, valid and covers the
//!   node's addresses (`tls::coverage`), the kubelet
//!   answers its `/healthz` to the gateway's credentials, and the gateway is
//!   not shutting down. 503 with the reasons otherwise.
//!   Its result is `kubelet_guard_ready`, which the alerting rules read;
//!   after 15 s without a probe the gateway checks on its own.
//! - `/metrics`: OpenMetrics text when the scraper asks for it (Prometheus
//!   does), the classic Prometheus text format otherwise.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::tls::TlsState;
use crate::tls::coverage::ServingCoverage;

/// How long a readiness answer is reused, so probes cannot hammer the kubelet.
const READINESS_CACHE: Duration = Duration::from_secs(1);
const KUBELET_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// With no readiness check for this long, the gateway checks on its own, so
/// that `kubelet_guard_ready` follows a kubelet that is down: a stopped
/// kubelet sends no readiness probes. (The DaemonSet's probe asks every 5 s,
/// so while the kubelet runs no extra check is made.)
const READINESS_STALE: Duration = Duration::from_secs(15);

pub struct Admin {
    metrics: Arc<Metrics>,
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Why there is no serving certificate yet (a CSR in flight), if so.
    serving_status: watch::Receiver<String>,
    /// Whether the serving certificate covers the node's addresses.
    coverage: Arc<ServingCoverage>,
    kubelet: Upstream,
    /// `/readyz` is 503 from the moment draining begins.
    drain: Drain,
    last_readiness: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        tls: watch::Receiver<Option<Arc<TlsState>>>,
        serving_status: watch::Receiver<String>,
        coverage: Arc<ServingCoverage>,
        kubelet: Upstream,
        drain: Drain,
    ) -> Self {
        Admin {
            metrics,
            tls,
            serving_status,
            coverage,
            kubelet,
            drain,
            last_readiness: Mutex::new(None),
        }
    }

    /// Serves until the gateway has stopped (phase 3 of its [`Drain`]):
    /// through draining, so probes see `/readyz` turn 503.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        tokio::spawn(self.clone().refresh_readiness());
        loop {
            let stream = tokio::select! {
                () = self.drain.stopped() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let drain = self.drain.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(request).await) }
                });
                let http = auto::Builder::new(TokioExecutor::new());
                tokio::select! {
                    _ = http.serve_connection(TokioIo::new(stream), service) => {}
                    () = drain.stopped() => {}
                }
            });
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match request.uri().path() {
            "/healthz" | "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.readiness().await {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
                Err(reasons) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {reasons}\n"),
                ),
            },
            "/metrics" => {
                let (content_type, body) = self
                    .metrics
                    .exposition(request.headers().get(header::ACCEPT));
                reply(StatusCode::OK, content_type, body)
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// Keeps `kubelet_guard_ready` current until the gateway has stopped.
    async fn refresh_readiness(self: Arc<Self>) {
        let mut last = Instant::now();
        loop {
            tokio::select! {
                () = self.drain.stopped() => return,
                () = tokio::time::sleep(READINESS_STALE / 3) => {}
            }
            let checked = self
                .last_readiness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(at, _)| *at);
            if let Some(at) = checked {
                last = last.max(at);
            }
            if last.elapsed() >= READINESS_STALE {
                let _ = self.readiness().await;
                last = Instant::now();
            }
        }
    }

    async fn readiness(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            self.metrics.ready.set(0);
            return Err("shutting down".into());
        }
        if let Some((at, answer)) = self
            .last_readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < READINESS_CACHE
        {
            return answer.clone();
        }
        let answer = self.check().await;
        self.metrics.ready.set(i64::from(answer.is_ok()));
        *self
            .last_readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let expires_at = self.tls.borrow().as_ref().map(|s| s.serving_expires_at);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match expires_at {
            None => problems.push(format!(
                "no serving certificate yet: {}",
                self.serving_status.borrow().as_str()
            )),
            Some(expires_at) if expires_at <= now => problems.push(format!(
                "the serving certificate expired at {expires_at} (seconds since the epoch)"
            )),
            Some(_) => {
                if let Some(gap) = self.coverage.problem() {
                    problems.push(gap);
                }
            }
        }
        match tokio::time::timeout(KUBELET_PROBE_TIMEOUT, self.kubelet.probe("/healthz")).await {
            Ok(Ok(status)) if status.is_success() => {}
            Ok(Ok(status)) => problems.push(format!("the kubelet answered /healthz with {status}")),
            Ok(Err(error)) => problems.push(format!("the kubelet is unreachable: {error}")),
            Err(_) => problems.push(format!(
                "the kubelet did not answer within {KUBELET_PROBE_TIMEOUT:?}"
            )),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
