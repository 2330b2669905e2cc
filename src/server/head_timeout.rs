//! Slow-header protection for HTTP/1.1. hyper's header timeout runs from the
//! moment a connection is ready for its next request, so it is really an
//! idle timeout (and must stay ≥ the kubelet's 90s, or the apiserver's
//! pooled connections get closed under it). This guard adds the other half:
//! a request head must be complete within `--request-header-timeout` —
//! counted from its first byte, or, for a connection's first request, from
//! the moment the connection is ready (Go's `ReadHeaderTimeout`: net/http
//! `conn.serve` reads the first request at once with that deadline, and
//! later ones only after `IdleTimeout` has seen their first bytes). A
//! caller trickling a header byte by byte (slowloris), or connecting and
//! sending nothing, cannot hold a connection.
//!
//! The guard sits between TLS and hyper. It cannot see where a head ends, so
//! the connection's request handler (`connection::serve`) tells it through a
//! shared [`HeadClock`]: a request started (head complete), its response
//! finished (idle again), or the connection was upgraded (no heads any more).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

use super::framing::HeadScan;

const IDLE: u8 = 0;
const IN_REQUEST: u8 = 1;
const UPGRADED: u8 = 2;

/// Where an HTTP/1.1 connection is, as far as request heads go.
#[derive(Debug, Default)]
pub struct HeadClock(AtomicU8, AtomicBool);

impl HeadClock {
    /// The head was parsed and the request handed on.
    pub fn request_started(&self) {
        let _ = self
            .0
            .compare_exchange(IDLE, IN_REQUEST, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The response is done; the next bytes start a new head.
    pub fn response_finished(&self) {
        let _ = self
            .0
            .compare_exchange(IN_REQUEST, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The connection now carries a spliced stream.
    pub fn upgraded(&self) {
        self.0.store(UPGRADED, Ordering::Release);
    }

    /// Whether the head just parsed carried both `Content-Length` and
    /// `Transfer-Encoding` (see [`HeadScan`]); reading it clears it.
    pub fn take_ambiguous_framing(&self) -> bool {
        self.1.swap(false, Ordering::AcqRel)
    }

    fn idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == IDLE
    }
}

pub struct HeadTimeout<IO> {
    io: IO,
    clock: Arc<HeadClock>,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The framing scan of the head being read, while idle.
    scan: Option<HeadScan>,
}

impl<IO> HeadTimeout<IO> {
    /// Guards a new connection: its first head must be complete within
    /// `limit` from now.
    pub fn new(io: IO, clock: Arc<HeadClock>, limit: Duration) -> Self {
        HeadTimeout {
            io,
            clock,
            limit,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            scan: None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeadTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let idle = self.clock.idle();
        if !idle {
            self.deadline = None;
            self.scan = None;
        } else if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete within --request-header-timeout",
            )));
        }

        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let got_bytes = buf.filled().len() > before;
        if idle && got_bytes {
            let this = &mut *self;
            let scan = this.scan.get_or_insert_with(HeadScan::new);
            if let Some(ambiguous) = scan.feed(&buf.filled()[before..]) {
                this.clock.1.store(ambiguous, Ordering::Release);
            }
        }
        if idle && got_bytes && self.deadline.is_none() {
            let mut deadline = Box::pin(tokio::time::sleep(self.limit));
            // Register the waker so the deadline fires even if no more bytes come.
            let _ = deadline.as_mut().poll(cx);
            self.deadline = Some(deadline);
        }
        polled
    }
}

write_passes_through!(HeadTimeout);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stalls_is_cut_off() {
        let (mut client, server) = duplex(1024);
        let clock = Arc::new(HeadClock::default());
        let mut guarded = HeadTimeout::new(server, clock, Duration::from_secs(10));
        client
            .write_all(b"GET /pods HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(guarded.read(&mut buf).await.unwrap() > 0);
        // Nothing more comes: the next read fails when the deadline passes.
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_that_sends_nothing_is_cut_off() {
        let (_client, server) = duplex(1024);
        let clock = Arc::new(HeadClock::default());
        let mut guarded = HeadTimeout::new(server, clock, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let error = guarded.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_and_request_bodies_are_not_timed() {
        let (mut client, server) = duplex(1024);
        let clock = Arc::new(HeadClock::default());
        let mut guarded = HeadTimeout::new(server, clock.clone(), Duration::from_secs(10));
        let mut buf = [0u8; 256];

        client
            .write_all(b"POST /run/a/b/c HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(guarded.read(&mut buf).await.unwrap() > 0);
        clock.request_started();
        // A slow body is the request's business, not the head's.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"body").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 4);
        clock.response_finished();

        // Idle after a request: no bytes, no deadline (hyper's idle timeout
        // handles this).
        let read = tokio::time::timeout(Duration::from_secs(600), guarded.read(&mut buf)).await;
        assert!(read.is_err(), "an idle connection is left alone");
    }

    #[tokio::test(start_paused = true)]
    async fn upgraded_connections_are_never_timed() {
        let (mut client, server) = duplex(1024);
        let clock = Arc::new(HeadClock::default());
        let mut guarded = HeadTimeout::new(server, clock.clone(), Duration::from_secs(10));
        clock.request_started();
        clock.upgraded();
        clock.response_finished();
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            client.write_all(b"spdy").await.unwrap();
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 4);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}
