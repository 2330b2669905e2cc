//! The one body type the gateway hands to hyper — a short text the gateway
//! wrote, or the kubelet's body streamed through — and the wrapper that
//! counts a body's bytes and reports when it is done.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Body = BoxBody<Bytes, BoxError>;

pub fn text(s: impl Into<String>) -> Body {
    Full::new(Bytes::from(s.into()))
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose errors can be boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Called once with the byte count when a body ends — finished, failed or
/// dropped half-way because the peer went away.
pub type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

/// Counts the data bytes passing through a body, into `counter`, and calls
/// `on_end` once when the body is done. Frames are passed on as they come:
/// nothing is buffered.
pub struct Counted {
    inner: Body,
    counter: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl Counted {
    pub fn new(inner: Body, counter: Arc<AtomicU64>, on_end: Option<OnEnd>) -> Counted {
        Counted {
            inner,
            counter,
            on_end,
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.counter.load(Ordering::Relaxed));
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(Some(Err(_)) | None) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn counts_bytes_and_reports_once_at_the_end() {
        let counter = Arc::new(AtomicU64::new(0));
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = reported.clone();
        let body = Counted::new(
            text("hello, kubelet"),
            counter.clone(),
            Some(Box::new(move |n| sink.lock().unwrap().push(n))),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "hello, kubelet");
        assert_eq!(*reported.lock().unwrap(), [14]);
    }

    #[test]
    fn a_body_dropped_half_way_still_reports() {
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = reported.clone();
        drop(Counted::new(
            text("never read"),
            Arc::default(),
            Some(Box::new(move |n| sink.lock().unwrap().push(n))),
        ));
        assert_eq!(*reported.lock().unwrap(), [0]);
    }
}
