//! One connection from accept to close. Every state has a bound:
//!
//! | state | bound |
//! |---|---|
//! | accepted, TLS handshake | `--tls-handshake-timeout` |
//! | HTTP/1.1, first request head (from the handshake) | `--request-header-timeout` |
//! | HTTP/1.1, between requests (to the next head's first byte) | `--idle-timeout` |
//! | HTTP/1.1, a head that has started | `--request-header-timeout` |
//! | HTTP/2, connection preface | `--request-header-timeout` |
//! | HTTP/2, no open stream (PINGs do not count) | `--idle-timeout`, then GOAWAY and 1s |
//!
//! The protocol is the one ALPN negotiated (RFC 9113 §3.2 for `h2`;
//! `http/1.1` or no ALPN is HTTP/1.1), served by hyper's builder for that
//! protocol alone — nothing is sniffed, so no configured limit can be
//! side-stepped by speaking the other protocol.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::head_timeout::{HeadClock, HeadTimeout};
use super::preface::Preface;
use super::streams::{Guarded, OpenStreams};
use super::tls_io::FlushAlerts;
use crate::admit::AmbiguousFraming;
use crate::authn::ClientCertificate;
use crate::body::{self, Body, BoxError, Counted};
use crate::config::Limits;
use crate::drain::Drain;
use crate::pipeline::{Connection, Pipeline};

/// How long an HTTP/2 connection closed for idleness may take to finish
/// after its GOAWAY: Go's `goAwayTimeout` (`x/net/http2`). A client that
/// never answers hyper's graceful-shutdown PING cannot hold it open.
const GOAWAY_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP settings for each protocol, built once.
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    limits: Limits,
}

impl Protocols {
    pub fn new(limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // hyper starts this when the connection is ready for a head,
            // and stops it at a complete head: so it bounds the wait for the
            // next request (Go's IdleTimeout). HeadTimeout bounds the head
            // itself and the first request.
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(limits.max_request_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(
                u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX),
            )
            // CVE-2023-44487: streams reset before they are accepted count
            // against this; past it the connection is closed.
            .max_pending_accept_reset_streams(limits.http2_max_reset_streams)
            .max_local_error_reset_streams(1024)
            // Finds dead peers; an idle live one is closed by `idle_for`.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Protocols {
            http1,
            http2,
            limits: limits.clone(),
        }
    }
}

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    protocols: Arc<Protocols>,
    pipeline: Arc<Pipeline>,
    closing: Drain,
) {
    let _ = stream.set_nodelay(true);
    let limits = &protocols.limits;
    let tls =
        match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
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
    let client_certificate = ClientCertificate::new(chain);
    let io = FlushAlerts(tls);

    let result = if http2 {
        let connection = Arc::new(Connection {
            peer,
            client_certificate,
        });
        let streams = OpenStreams::new();
        let service = {
            let streams = streams.clone();
            service_fn(move |request: http::Request<Incoming>| {
                let guard = streams.open();
                let (pipeline, connection) = (pipeline.clone(), connection.clone());
                async move {
                    let response = pipeline.handle(&connection, request).await;
                    Ok::<_, Infallible>(response.map(|b| body::boxed(Guarded::new(b, guard))))
                }
            })
        };
        let io = Preface::new(io, limits.request_header_timeout);
        let conn = protocols.http2.serve_connection(TokioIo::new(io), service);
        drive(conn, streams.idle_for(limits.idle_timeout), closing).await
    } else {
        let clock = Arc::new(HeadClock::default());
        let connection = Arc::new(Connection {
            peer,
            client_certificate,
        });
        let service = {
            let clock = clock.clone();
            service_fn(move |mut request: http::Request<Incoming>| {
                if clock.take_ambiguous_framing() {
                    request.extensions_mut().insert(AmbiguousFraming);
                }
                clock.request_started();
                let (pipeline, connection, clock) =
                    (pipeline.clone(), connection.clone(), clock.clone());
                async move {
                    let response = pipeline.handle(&connection, request).await;
                    Ok::<_, Infallible>(timed_response(clock, response))
                }
            })
        };
        let io = HeadTimeout::new(io, clock.clone(), limits.request_header_timeout);
        let conn = protocols
            .http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        // hyper closes an idle HTTP/1.1 connection itself (see Protocols).
        drive(conn, std::future::pending(), closing).await
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Tells the head clock how the response ended: an upgraded connection
/// carries no more heads; otherwise the next head may start once the body
/// is done.
fn timed_response(clock: Arc<HeadClock>, response: http::Response<Body>) -> http::Response<Body> {
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        clock.upgraded();
        return response;
    }
    let finished = Box::new(move |_bytes| clock.response_finished());
    response.map(|b| body::boxed(Counted::new(b, Arc::default(), Some(finished))))
}

/// A hyper connection that can be asked to finish and close.
trait GracefulConnection: Future<Output = hyper::Result<()>> {
    fn begin_close(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
{
    fn begin_close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> GracefulConnection for http2::Connection<I, S, E>
where
    Self: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, Body>,
{
    fn begin_close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` to its end, closing it gracefully when it has been `idle`
/// (then it gets [`GOAWAY_TIMEOUT`] to finish) or at shutdown (then it gets
/// until the grace period ends).
async fn drive(
    conn: impl GracefulConnection,
    idle: impl Future<Output = ()>,
    closing: Drain,
) -> hyper::Result<()> {
    let mut conn = pin!(conn);
    let idle_closed = tokio::select! {
        result = conn.as_mut() => return result,
        () = idle => true,
        () = closing.draining() => false,
    };
    conn.as_mut().begin_close();
    let limit = async {
        if idle_closed {
            tokio::select! {
                () = tokio::time::sleep(GOAWAY_TIMEOUT) => {}
                () = closing.closing() => {}
            }
        } else {
            closing.closing().await;
        }
    };
    tokio::select! {
        result = conn => result,
        () = limit => Ok(()),
    }
}
