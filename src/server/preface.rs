//! The HTTP/2 connection preface, checked and timed before hyper sees it.
//! ALPN `h2` commits the connection to HTTP/2 (RFC 9113 §3.2); the client
//! must then open with the 24-byte preface (§3.4). Bytes of anything else —
//! an HTTP/1.1 request line, say — are a protocol error, and the connection
//! is closed at the first byte that differs rather than read further. A
//! client that sends nothing is closed after the limit, like Go's HTTP/2
//! server (`x/net/http2` `prefaceTimeout`, 10s), which also just closes the
//! connection on a bad or missing preface.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// RFC 9113 §3.4.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct Preface<IO> {
    io: IO,
    /// How many preface bytes have arrived, all correct.
    seen: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Preface<IO> {
    /// Starts the clock: the whole preface must arrive within `limit`.
    pub fn new(io: IO, limit: Duration) -> Self {
        Preface {
            io,
            seen: 0,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Preface<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 connection preface within --request-header-timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let seen = self.seen;
        if seen < PREFACE.len() && matches!(polled, Poll::Ready(Ok(()))) {
            let new = &buf.filled()[before..];
            let take = new.len().min(PREFACE.len() - seen);
            if new[..take] != PREFACE[seen..seen + take] {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ALPN chose h2 but the client did not send the HTTP/2 preface",
                )));
            }
            self.seen += take;
            if self.seen == PREFACE.len() {
                self.deadline = None;
            }
        }
        polled
    }
}

write_passes_through!(Preface);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn the_preface_passes_through_in_pieces() {
        let (mut client, server) = duplex(1024);
        let mut guarded = Preface::new(server, Duration::from_secs(10));
        let mut got = Vec::new();
        for piece in [
            &PREFACE[..3],
            &PREFACE[3..20],
            &PREFACE[20..],
            b"\0\0\0\x04",
        ] {
            client.write_all(piece).await.unwrap();
            let mut buf = [0u8; 64];
            let n = guarded.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..24], PREFACE);
        // Past the preface the clock is off.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(guarded.read(&mut [0u8; 8]).await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_request_is_refused_at_its_first_byte() {
        let (mut client, server) = duplex(1024);
        let mut guarded = Preface::new(server, Duration::from_secs(10));
        client.write_all(b"G").await.unwrap();
        let error = guarded.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_or_half_a_preface_is_cut_off() {
        for sent in [&b""[..], &PREFACE[..10]] {
            let (mut client, server) = duplex(1024);
            let mut guarded = Preface::new(server, Duration::from_secs(10));
            client.write_all(sent).await.unwrap();
            let started = tokio::time::Instant::now();
            let mut buf = [0u8; 64];
            let error = loop {
                match guarded.read(&mut buf).await {
                    Ok(_) => continue,
                    Err(error) => break error,
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert_eq!(started.elapsed(), Duration::from_secs(10));
        }
    }
}
