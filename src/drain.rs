//! The one shutdown signal. Everything long-lived observes the same
//! [`Drain`], which moves forward through three phases and never back:
//!
//! 1. **draining** ([`Drain::begin`]): the listener stops accepting, every
//!    connection finishes its in-flight requests and takes no new ones,
//!    `/readyz` answers 503; upgraded streams keep running.
//! 2. **closing** ([`Drain::close_now`]): the grace period is over; open
//!    connections and upgraded streams are closed.
//! 3. **stopped** ([`Drain::stop`]): serving is done; background tasks (the
//!    admin listener, the file reloader, the CSR issuer) return.
//!
//! Upgraded streams outlive the request that opened them, so they are
//! spawned here ([`Drain::spawn_stream`]) for the server to wait on.

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt as _;
use tokio_util::future::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone: clones share the signal.
#[derive(Clone, Debug, Default)]
pub struct Drain(Arc<Phases>);

#[derive(Debug, Default)]
struct Phases {
    draining: CancellationToken,
    closing: CancellationToken,
    stopped: CancellationToken,
    streams: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Drain::default()
    }

    /// Enters phase 1: take nothing new, finish what is in flight.
    pub fn begin(&self) {
        self.0.draining.cancel();
    }

    /// Enters phase 2 (and so phase 1): close everything still open.
    pub fn close_now(&self) {
        self.begin();
        self.0.closing.cancel();
    }

    /// Enters phase 3 (and so phases 1 and 2): background tasks return.
    pub fn stop(&self) {
        self.close_now();
        self.0.stopped.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.draining.cancelled()
    }

    /// Resolves once open connections and streams must close.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.closing.cancelled()
    }

    /// Resolves once background tasks must return.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.stopped.cancelled()
    }

    /// Runs an upgraded stream: `stream` is dropped at phase 2 if it has
    /// not ended by then, and `on_closed` gets `None` in that case.
    pub fn spawn_stream<F, T>(&self, stream: F, on_closed: impl FnOnce(Option<T>) + Send + 'static)
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.0
            .streams
            .spawn(until_closing(stream, self.0.closing.clone(), on_closed));
    }

    /// The upgraded streams still open.
    pub fn open_streams(&self) -> usize {
        self.0.streams.len()
    }

    /// Waits until every upgraded stream has ended; call once draining has
    /// begun (no stream starts after that can be waited for otherwise).
    pub async fn streams_ended(&self) {
        self.0.streams.close();
        self.0.streams.wait().await;
    }
}

/// `stream` until it ends or `closing` is cancelled, then `on_closed`.
/// Combinators rather than an `async` block: a block keeps the captured
/// `stream` and the one it awaits in two slots of its state, which doubled
/// the task of every idle upgraded stream (bench/PROFILE.md, "Idle upgraded
/// streams").
fn until_closing<F, T>(
    stream: F,
    closing: CancellationToken,
    on_closed: impl FnOnce(Option<T>) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    stream.with_cancellation_token_owned(closing).map(on_closed)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn phases_follow_each_other_and_streams_close_at_phase_two() {
        let drain = Drain::new();
        assert!(!drain.is_draining());
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let record = |outcomes: &Arc<Mutex<Vec<Option<u8>>>>| {
            let outcomes = outcomes.clone();
            move |outcome| outcomes.lock().unwrap().push(outcome)
        };
        drain.spawn_stream(async { 1u8 }, record(&outcomes));
        drain.spawn_stream(std::future::pending::<u8>(), record(&outcomes));

        drain.begin();
        assert!(drain.is_draining());
        drain.draining().await;
        // Draining alone does not end a stream.
        let waited = tokio::time::timeout(Duration::from_millis(100), drain.streams_ended()).await;
        assert!(waited.is_err(), "a stream ended before phase 2");
        assert_eq!(drain.open_streams(), 1);
        assert_eq!(*outcomes.lock().unwrap(), [Some(1)]);

        drain.close_now();
        drain.streams_ended().await;
        assert_eq!(*outcomes.lock().unwrap(), [Some(1), None]);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), drain.stopped())
                .await
                .is_err(),
            "phase 3 before stop()"
        );
        drain.stop();
        drain.stopped().await;
    }

    #[test]
    fn a_stream_task_holds_its_stream_once() {
        // A stream whose state is 4 KiB: the task around it may add a
        // cancellation waiter and the callback, not a second copy.
        let stream = async {
            let buffer = [7u8; 4096];
            std::future::ready(()).await;
            buffer.len()
        };
        let stream_size = std::mem::size_of_val(&stream);
        assert!(stream_size >= 4096, "{stream_size}");
        let task = until_closing(stream, CancellationToken::new(), |_: Option<usize>| ());
        let task_size = std::mem::size_of_val(&task);
        assert!(
            task_size < stream_size + 256,
            "task {task_size} bytes for a {stream_size}-byte stream"
        );
    }
}
