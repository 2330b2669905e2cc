//! How many requests an HTTP/2 connection has open, so that a connection
//! with none can be closed after `--idle-timeout`. HTTP/2 has no request
//! heads to time between requests, and PING frames (which hyper answers by
//! itself) are no activity: Go's HTTP/2 server likewise starts its idle timer
//! when the last stream closes and only a new stream stops it
//! (`x/net/http2` `serverConn.idleTimer`, set from `http.Server.IdleTimeout`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::watch;

use crate::body::{Body, BoxError};

/// The number of requests open on one connection.
#[derive(Debug)]
pub struct OpenStreams(watch::Sender<usize>);

impl OpenStreams {
    pub fn new() -> Arc<Self> {
        Arc::new(OpenStreams(watch::Sender::new(0)))
    }

    /// A request started; it counts as open until the guard is dropped
    /// (with the response body, or with the request future if the stream
    /// was reset first).
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.0.send_modify(|n| *n += 1);
        StreamGuard(self.clone())
    }

    /// Resolves once no request has been open for `limit` in a row.
    pub async fn idle_for(&self, limit: Duration) {
        let mut open = self.0.subscribe();
        loop {
            // `self` holds the sender, so the channel cannot close.
            let _ = open.wait_for(|n| *n == 0).await;
            tokio::select! {
                () = tokio::time::sleep(limit) => return,
                // A request opened (and maybe closed again): start over.
                _ = open.changed() => {}
            }
        }
    }
}

/// Keeps one request counted as open.
#[derive(Debug)]
pub struct StreamGuard(Arc<OpenStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as open until it is
/// sent or dropped.
pub struct Guarded {
    inner: Body,
    _guard: StreamGuard,
}

impl Guarded {
    pub fn new(inner: Body, guard: StreamGuard) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_open_request_for_the_whole_limit() {
        let streams = OpenStreams::new();
        let limit = Duration::from_secs(90);
        let started = tokio::time::Instant::now();
        let guard = streams.open();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(limit).await }
        });
        // A request open for 60s, then another one 30s after it ended.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(guard);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let second = streams.open();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(second);
        idle.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(100 + 90));
    }
}
