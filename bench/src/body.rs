//! Response bodies: a fixed buffer, or `N` bytes streamed in 64 KiB chunks
//! with no length (so HTTP/1.1 sends them chunked, like a followed log).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty};

pub type Body = BoxBody<Bytes, Infallible>;

pub const CHUNK: usize = 64 * 1024;

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

pub fn empty() -> Body {
    Empty::new().boxed()
}

/// `remaining` bytes of `chunk`, repeated.
pub struct Chunked {
    chunk: Bytes,
    remaining: u64,
    /// Whether to pause after every chunk: hyper writes out what it has
    /// when the body is not ready, so each chunk leaves on its own, as a
    /// flushed log line does.
    flush_each: bool,
    paused: bool,
}

impl Chunked {
    pub fn body(chunk: Bytes, total: u64) -> Body {
        Chunked {
            chunk,
            remaining: total,
            flush_each: false,
            paused: false,
        }
        .boxed()
    }

    pub fn flushed(chunk: Bytes, total: u64) -> Body {
        Chunked {
            chunk,
            remaining: total,
            flush_each: true,
            paused: false,
        }
        .boxed()
    }
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.flush_each {
            self.paused = !self.paused;
            if self.paused {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    // No exact size on purpose: the response must be chunked.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
