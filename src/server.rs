//! The front door: accept TCP, complete the TLS handshake, serve HTTP/1.1 or
//! HTTP/2 on the connection, hand every request to the [`Pipeline`], and on
//! shutdown stop accepting and drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authn::ClientCertificate;
use crate::pipeline::{Connection, Pipeline};
use crate::tls::TlsState;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A TLS handshake that takes longer is dropped (the apiserver's own
    /// dialer gives up after 10s).
    pub handshake_timeout: Duration,
    /// HTTP/1.1: how long a connection may wait for (and take to send) the
    /// next request head. At least the kubelet's 90s idle timeout, so the
    /// apiserver's pooled connections are never closed under it.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (the kubelet allows 1 MiB).
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection (Go's default, which the kubelet uses).
    pub max_concurrent_streams: u32,
    /// Connections served at once; beyond this, accepting pauses.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(90),
            max_header_bytes: 1 << 20,
            max_concurrent_streams: 250,
            max_connections: 20_000,
        }
    }
}

pub struct Server {
    listener: TcpListener,
    tls: watch::Receiver<Arc<TlsState>>,
    pipeline: Arc<Pipeline>,
    options: ServerOptions,
}

impl Server {
    pub fn new(
        listener: TcpListener,
        tls: watch::Receiver<Arc<TlsState>>,
        pipeline: Arc<Pipeline>,
        options: ServerOptions,
    ) -> Self {
        Server {
            listener,
            tls,
            pipeline,
            options,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests and upgraded streams run for `grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let http = self.http_builder();
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.options.max_connections));

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
            let acceptor = TlsAcceptor::from(self.tls.borrow().server_config.clone());
            let connection = serve_connection(
                stream,
                peer,
                acceptor,
                self.options.handshake_timeout,
                http.clone(),
                self.pipeline.clone(),
                graceful.watcher(),
            );
            tokio::spawn(async move {
                connection.await;
                drop(permit);
            });
        }
        let Server {
            listener, pipeline, ..
        } = self;
        drop(listener);
        drain(&pipeline, graceful, grace).await;
    }

    fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout)
            .max_buf_size(self.options.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.options.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.options.max_header_bytes).unwrap_or(u32::MAX));
        builder
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
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    http: auto::Builder<TokioExecutor>,
    pipeline: Arc<Pipeline>,
    watcher: hyper_util::server::graceful::Watcher,
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
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let connection = Arc::new(Connection {
        peer,
        client_certificate: ClientCertificate::new(chain),
    });

    let service = service_fn(move |request| {
        let pipeline = pipeline.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(pipeline.handle(&connection, request).await) }
    });
    let conn = http
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .into_owned();
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
