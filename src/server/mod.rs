//! The front door: accept TCP, complete the TLS handshake, serve HTTP/2 or
//! HTTP/1.1 (as ALPN chose) on the connection, hand every request to the
//! [`Pipeline`], and on shutdown stop accepting and drain. Each connection
//! state has a timer ([`connection`] lists them), so `--max-connections`
//! cannot be held by peers that send nothing.

/// `impl AsyncWrite for $wrapper<IO>` that hands every call to `self.io`:
/// the read-side guards (head timer, preface check) watch only what the peer
/// sends, and writes pass through them untouched.
macro_rules! write_passes_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}

mod connection;
mod framing;
mod head_timeout;
mod preface;
mod streams;
mod tls_io;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::tls::TlsState;
use connection::Protocols;
pub use head_timeout::{HeadClock, HeadTimeout};

pub struct Server {
    listener: TcpListener,
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    metrics: Arc<Metrics>,
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

    /// Serves until `drain` begins, then stops accepting, lets in-flight
    /// requests and upgraded streams run for `grace`, closes what is still
    /// open (phase 2 of `drain`) and returns.
    pub async fn run(self, drain: Drain, grace: Duration) {
        let protocols = Arc::new(Protocols::new(&self.limits));
        let connections = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));

        loop {
            let accepted = tokio::select! {
                () = drain.draining() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => tokio::select! {
                        () = drain.draining() => break,
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
            let connection = connection::serve(
                stream,
                peer,
                TlsAcceptor::from(server_config),
                protocols.clone(),
                self.pipeline.clone(),
                drain.clone(),
            );
            let metrics = self.metrics.clone();
            metrics.connections.inc();
            connections.spawn(async move {
                connection.await;
                metrics.connections.dec();
                drop(permit);
            });
        }
        drop(self.listener);
        finish(&drain, &connections, grace).await;
    }
}

/// Waits for in-flight requests (every connection was told to finish when
/// draining began), then for upgraded streams, both bounded by `grace`;
/// what is still open then is closed.
async fn finish(drain: &Drain, connections: &TaskTracker, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections"
    );
    connections.close();
    let requests_done = tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_ok();
    if !requests_done {
        tracing::warn!("in-flight requests still running at the end of the grace period");
    }
    let streams_done = tokio::time::timeout_at(deadline, drain.streams_ended())
        .await
        .is_ok();
    if !streams_done {
        tracing::warn!(
            open = drain.open_streams(),
            "closing upgraded streams at the end of the grace period"
        );
    }
    drain.close_now();
    drain.streams_ended().await;
    connections.wait().await;
    tracing::info!("shutdown complete");
}
