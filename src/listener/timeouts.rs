//! How long a client connection may wait: for a request head once it started
//! ([`HeadTimer`], HTTP/1), and with no request in progress, which [`CountedService`] tells by
//! counting requests until their response bodies end ([`StreamActivity`]).
//!
//! An idle HTTP/1 keep-alive connection is closed by [`super::h1`] after `client_idle_timeout`
//! (hyper's header timer, set to the same, covers the moments hyper holds it), and
//! [`HeadTimer`] cuts a head that takes longer than `client_header_timeout` from its first
//! byte. Hyper's HTTP/2 server has no idle timer at all, so the listener closes a connection
//! that had no open stream for `client_idle_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Cuts an HTTP/1 connection whose request head is not complete `header_timeout` after its
/// first byte (after the accept, for the first head). The connection's reader
/// ([`super::framing::Sniffed`], which knows where heads begin and end) asks it after each
/// read. Costs nothing for a head that arrives in one read, which is nearly all of them: the
/// timer runs only while a head is partial.
pub struct HeadTimer {
    header_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl HeadTimer {
    pub fn new(header_timeout: Duration, accepted: Instant) -> HeadTimer {
        HeadTimer {
            header_timeout,
            deadline: Some(Box::pin(tokio::time::sleep_until(
                accepted + header_timeout,
            ))),
        }
    }

    /// After bytes arrived: runs on while a head is on its way, stops once none is.
    pub fn after_read(&mut self, reading_head: bool) {
        if !reading_head {
            self.deadline = None;
        } else if self.deadline.is_none() {
            let at = Instant::now() + self.header_timeout;
            self.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
        }
    }

    /// While waiting for bytes: the error to end the connection with once the head is late.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete within client_header_timeout",
            )
        })
    }
}

/// Requests in progress on one connection (streams, on HTTP/2), how many have started, and (when
/// `timed`) when the last one ended.
pub struct StreamActivity {
    born: Instant,
    open: AtomicUsize,
    started: AtomicU64,
    /// Whether ends are timed: a clock read per request, which only HTTP/2's idle timer needs.
    timed: bool,
    /// Milliseconds after `born` when the last stream ended.
    last_end_ms: AtomicU64,
}

impl StreamActivity {
    pub fn new(timed: bool) -> Arc<StreamActivity> {
        Arc::new(StreamActivity {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            timed,
            last_end_ms: AtomicU64::new(0),
        })
    }

    /// Counts a stream as open until the returned guard is dropped (with its response body).
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// Requests started on this connection so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// True while a request is being answered (its response body not yet done).
    pub fn any_open(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    /// When the connection will have been idle for `timeout`, if nothing opens meanwhile;
    /// `None` while a stream is open. Only for a `timed` activity.
    pub fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.born + last_end + timeout)
    }
}

pub struct OpenStream(Arc<StreamActivity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.timed {
            let now = activity.born.elapsed().as_millis() as u64;
            activity.last_end_ms.store(now, Ordering::Release);
        }
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's request handler, with each response counted as open until its body is
/// done (or dropped), so the task knows when nothing is in progress.
pub struct CountedService<H> {
    handler: H,
    activity: Arc<StreamActivity>,
}

impl<H> CountedService<H> {
    /// `timed`: see [`StreamActivity`].
    pub fn new(handler: H, timed: bool) -> CountedService<H> {
        CountedService {
            handler,
            activity: StreamActivity::new(timed),
        }
    }

    pub fn activity(&self) -> &Arc<StreamActivity> {
        &self.activity
    }
}

impl<H, F, B> hyper::service::Service<Request<Incoming>> for CountedService<H>
where
    H: Fn(Request<Incoming>) -> F,
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Response = Response<Counted<B>>;
    type Error = Infallible;
    type Future = CountedResponse<F>;

    fn call(&self, request: Request<Incoming>) -> CountedResponse<F> {
        let stream = self.activity.open();
        CountedResponse {
            response: (self.handler)(request),
            stream: Some(stream),
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's response future, its body wrapped in [`Counted`] when it is ready.
    pub struct CountedResponse<F> {
        #[pin]
        response: F,
        stream: Option<OpenStream>,
    }
}

impl<F, B> Future for CountedResponse<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<Counted<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Once it has completed, the guard is gone and it stays pending (never polls `response`
        // again, which may panic).
        if this.stream.is_none() {
            return Poll::Pending;
        }
        let Ok(response) = std::task::ready!(this.response.poll(cx));
        match this.stream.take() {
            Some(stream) => Poll::Ready(Ok(response.map(|body| Counted::new(body, stream)))),
            None => Poll::Pending, // checked above
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted as open until it is dropped.
    pub struct Counted<B> {
        #[pin]
        body: B,
        stream: OpenStream,
    }
}

impl<B> Counted<B> {
    pub fn new(body: B, stream: OpenStream) -> Counted<B> {
        Counted { body, stream }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
