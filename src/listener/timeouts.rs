//! How long a client connection may wait: for a request head once it started
//! ([`HeadTimer`], HTTP/1) and with no request in progress ([`StreamActivity`], HTTP/2).
//!
//! An idle HTTP/1 keep-alive connection is hyper's to close: its header timer starts when the
//! connection goes idle, so it is set to `client_idle_timeout`, and [`HeadTimer`] cuts a head
//! that takes longer than `client_header_timeout` from its first byte. Hyper's HTTP/2 server
//! has no idle timer at all, so the listener counts open streams and closes a connection that
//! had none for `client_idle_timeout`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::Sniffed;

/// Cuts an HTTP/1 connection whose request head is not complete `header_timeout` after its
/// first byte (after the accept, for the first head). Costs nothing for a head that arrives
/// in one read, which is nearly all of them: the timer is armed only while a head is partial.
pub struct HeadTimer<S> {
    inner: Sniffed<S>,
    header_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> HeadTimer<S> {
    pub fn new(inner: Sniffed<S>, header_timeout: Duration, accepted: Instant) -> HeadTimer<S> {
        HeadTimer {
            inner,
            header_timeout,
            deadline: Some(Box::pin(tokio::time::sleep_until(
                accepted + header_timeout,
            ))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadTimer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                if !this.inner.reading_head() {
                    this.deadline = None;
                } else if this.deadline.is_none() {
                    let at = Instant::now() + this.header_timeout;
                    this.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
                }
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within client_header_timeout",
                        )));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadTimer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Open streams on one HTTP/2 connection, and when the last one ended.
pub struct StreamActivity {
    born: Instant,
    open: AtomicUsize,
    /// Milliseconds after `born` when the last stream ended.
    last_end_ms: AtomicU64,
}

impl StreamActivity {
    pub fn new() -> Arc<StreamActivity> {
        Arc::new(StreamActivity {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    /// Counts a stream as open until the returned guard is dropped (with its response body).
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }

    /// When the connection will have been idle for `timeout`, if nothing opens meanwhile;
    /// `None` while a stream is open.
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
        let now = activity.born.elapsed().as_millis() as u64;
        activity.last_end_ms.store(now, Ordering::Release);
        activity.open.fetch_sub(1, Ordering::AcqRel);
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
