//! The front door: accept TCP, complete the TLS handshake, serve HTTP/2 or
//! HTTP/1.1 (as ALPN chose) on the connection, hand every request to the
//! [`Pipeline`], and on shutdown stop accepting and drain.

mod head_timeout;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authn::ClientCertificate;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::pipeline::{Connection, Pipeline};
use crate::tls::TlsState;
pub use head_timeout::{HeadClock, HeadTimeout};

pub struct Server {
    listener: TcpListener,
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// The HTTP settings for each protocol, built once.
#[derive(Clone)]
struct Protocols {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    request_header_timeout: Duration,
}

impl Server {
    pub fn new(
        listener: TcpListener,
        tls: watch::Receiver<Option<Arc<TlsState>>>,
        pipeline: Arc<Pipeline>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Server {
            listener,
            tls,
            pipeline,
            limits,
            metrics,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests and upgraded streams run for `grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let protocols = self.protocols();
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));

        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => tokio::select! {
                        () = shutdown.cancelled() => break,
                        accepted = self.listener.accept() => accepted.map(|a| (a, permit)),
                    },
                    Err(_) => break,
                },
            };
            let ((stream, peer), permit) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // No serving certificate yet (a CSR not issued): turn the
            // connection away rather than present something unverifiable.
            let Some(server_config) = self.tls.borrow().as_ref().map(|s| s.server_config.clone())
            else {
                tracing::debug!(%peer, "no serving certificate yet; connection closed");
                continue;
            };
            let acceptor = TlsAcceptor::from(server_config);
            let connection = serve_connection(
                stream,
                peer,
                acceptor,
                self.limits.tls_handshake_timeout,
                protocols.clone(),
                self.pipeline.clone(),
                graceful.watcher(),
            );
            let metrics = self.metrics.clone();
            metrics.connections.inc();
            tokio::spawn(async move {
                connection.await;
                metrics.connections.dec();
                drop(permit);
            });
        }
        let Server {
            listener, pipeline, ..
        } = self;
        drop(listener);
        drain(&pipeline, graceful, grace).await;
    }

    fn protocols(&self) -> Protocols {
        let limits = &self.limits;
        let mut http1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        http1
            .http1()
            .timer(TokioTimer::new())
            // Runs from the moment the connection is ready for a request, so
            // this is the idle timeout; HeadTimeout guards slow heads.
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(limits.max_request_header_bytes);
        let mut http2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        http2
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(
                u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX),
            )
            // CVE-2023-44487: streams reset before they are accepted count
            // against this; past it the connection is closed.
            .max_pending_accept_reset_streams(limits.http2_max_reset_streams)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Protocols {
            http1,
            http2,
            request_header_timeout: limits.request_header_timeout,
        }
    }
}

/// Waits for in-flight requests, then for upgraded streams, both bounded by
/// `grace`; streams still open then are closed.
async fn drain(pipeline: &Pipeline, graceful: GracefulShutdown, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections"
    );
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running at the end of the grace period");
    }
    let streams = pipeline.forwarder.streams();
    streams.close();
    if tokio::time::timeout_at(deadline, streams.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = streams.len(),
            "closing upgraded streams at the end of the grace period"
        );
        pipeline.forwarder.cancel_streams();
        streams.wait().await;
    }
    tracing::info!("shutdown complete");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    protocols: Protocols,
    pipeline: Arc<Pipeline>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = &tls.get_ref().1;
    let chain = session
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    // HTTP/2 over TLS needs ALPN (RFC 9113 §3.2); everything else is HTTP/1.1.
    let http2 = session.alpn_protocol() == Some(b"h2");
    let head_clock = (!http2).then(|| Arc::new(HeadClock::default()));
    let connection = Arc::new(Connection {
        peer,
        client_certificate: ClientCertificate::new(chain),
        head_clock: head_clock.clone(),
    });

    let service = service_fn(move |request| {
        let pipeline = pipeline.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(pipeline.handle(&connection, request).await) }
    });
    let result = match head_clock {
        None => {
            let conn = protocols
                .http2
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .into_owned();
            watcher.watch(conn).await
        }
        Some(clock) => {
            let io = HeadTimeout::new(tls, clock, protocols.request_header_timeout);
            let conn = protocols
                .http1
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            watcher.watch(conn).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
