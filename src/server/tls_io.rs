//! The TLS stream as hyper reads it, with one addition: records rustls
//! queued while *reading* are sent at once. tokio-rustls only writes when
//! the application writes, so the `no_renegotiation` warning alert rustls
//! queues for a TLS 1.2 renegotiation attempt (a ClientHello after the
//! handshake) would otherwise wait, unsent, while the client waits for a
//! ServerHello — a connection stuck with nothing in flight. Go's crypto/tls
//! server sends the same alert at once. (rustls refuses a second attempt
//! on the same connection outright; the connection timers bound the rest.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

pub struct FlushAlerts<IO>(pub TlsStream<IO>);

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for FlushAlerts<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if self.0.get_ref().1.wants_write() {
            // Pending registers the waker; an error shows up on the next
            // read or write, where hyper sees it.
            let _ = Pin::new(&mut self.0).poll_flush(cx);
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FlushAlerts<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
