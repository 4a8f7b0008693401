//! An HTTP/1 connection that holds no buffers while it waits for its next request.
//!
//! Hyper gives each connection a read and a write buffer (8 KiB each) for its whole life, and
//! they are most of what an idle keep-alive connection costs. So hyper serves a connection only
//! while there is something to serve: once every response is done and the reader has waited
//! [`PARK_AFTER`] for a new head with nothing half-read
//! ([`super::framing::FramingWatch::between_requests`]), the task asks hyper to close, keeps the socket (the shutdown hyper then asks for is not passed on), and waits for
//! the next bytes holding the socket alone. They get a new hyper connection with the same
//! service. A client sees one connection, as before; only the memory of waiting changes.
//!
//! Hyper closes at once only when it is idle itself; if it does not, it was in the middle of
//! something this side could not see, and the connection is left to finish and close.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::framing::Sniffed;
use super::timeouts::CountedService;

/// How long a connection waits for its next request before hyper lets go of it (up to twice
/// this: the timer is checked once per period, not moved by every request). Letting go and
/// taking a new hyper connection costs about a tenth of a small request's CPU (benches/load.sh),
/// so a client that sends requests back to back keeps its hyper connection; one that waits
/// longer sends too few for the cost to count. Short, so a burst of new connections holds
/// hyper's buffers only briefly.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// `waiting_since` before the park timer is first set.
const NOT_WAITING: u64 = u64::MAX;

/// What every HTTP/1 connection of one listener shares.
pub(super) struct Listener {
    builder: http1::Builder,
    idle_timeout: Duration,
    stop: Stop,
    /// `cutover_idle_connections` for this listener.
    idle: metrics::Gauge,
    what: &'static str,
}

impl Listener {
    /// `stop` is set once `shutdown` flips (or its sender is gone).
    pub(super) fn new(
        builder: http1::Builder,
        idle_timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
        what: &'static str,
    ) -> Arc<Listener> {
        let listener = Arc::new(Listener {
            builder,
            idle_timeout,
            stop: Stop::default(),
            idle: metrics::gauge!(crate::telemetry::IDLE_CONNECTIONS, "listener" => what),
            what,
        });
        let stopping = listener.clone();
        tokio::spawn(async move {
            // (The value's read guard is not `Send`: dropped at once.)
            drop(shutdown.wait_for(|&stopping| stopping).await);
            stopping.stop.set.store(true, Ordering::Release);
            stopping.stop.notify.notify_waiters();
        });
        listener
    }
}

/// Serves one HTTP/1 connection until it closes, the client goes quiet for the listener's
/// idle timeout, or shutdown begins (after the response in progress). `held` lives as long as
/// the connection.
///
/// An async block rather than an `async fn`, whose arguments would each take room twice in the
/// task (as arguments, then as locals) for the whole life of the connection.
#[allow(clippy::manual_async_fn)]
pub(super) fn serve<H, F, B>(
    listener: Arc<Listener>,
    mut io: TokioIo<Sniffed<TcpStream>>,
    mut service: CountedService<H>,
    held: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + Unpin + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        // Owned by the task until the connection ends.
        let _ = &held;
        // Fields read through `listener` where they are used, not bound here: each binding
        // would take room in the task for the connection's whole life.
        let watch = io.inner().watch().clone();
        let activity = service.activity().clone();
        let mut stopping = pin!(listener.stop.notify.notified());
        let mut listening = false;
        // When to park while served, then when to close while parked.
        let mut deadline = pin!(tokio::time::sleep_until(Instant::now()));
        loop {
            // In a block of its own, so hyper's connection (boxed: a waiting connection's task
            // is not sized for it) is freed before the wait for the next request.
            let parts = {
                let mut conn = Box::new(
                    listener
                        .builder
                        .serve_connection(io, service)
                        .with_upgrades(),
                );
                let mut closing = false;
                // Requests started when the park timer was set (`NOT_WAITING` before that).
                let mut waiting_since = NOT_WAITING;
                let ended = poll_fn(|cx| {
                    // First, so a connection accepted during shutdown is closed unserved.
                    if !closing && listener.stop.is_set(cx, stopping.as_mut(), &mut listening) {
                        closing = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                        return Poll::Ready(Ended::Closed(result));
                    }
                    if closing || !watch.between_requests() || activity.any_open() {
                        return Poll::Pending;
                    }
                    // Waiting for the next request: let go of hyper once no request has come
                    // for a whole PARK_AFTER. The timer is set once per period, not per request.
                    if waiting_since != NOT_WAITING && !deadline.is_elapsed() {
                        return Poll::Pending;
                    }
                    let started = activity.started();
                    if waiting_since != started {
                        // The first wait, or requests came during the last period.
                        waiting_since = started;
                        deadline.as_mut().reset(Instant::now() + PARK_AFTER);
                        // Registers the wake-up; it cannot be due yet.
                        let _ = deadline.as_mut().poll(cx);
                        return Poll::Pending;
                    }
                    watch.set_parking(true);
                    Pin::new(&mut *conn).graceful_shutdown();
                    match Pin::new(&mut *conn).poll(cx) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ended::Parked),
                        Poll::Ready(Err(err)) => {
                            watch.set_parking(false);
                            Poll::Ready(Ended::Closed(Err(err)))
                        }
                        Poll::Pending => {
                            // Not idle after all: hyper finishes what it is doing, then closes.
                            watch.set_parking(false);
                            closing = true;
                            Poll::Pending
                        }
                    }
                })
                .await;
                if let Ended::Closed(result) = ended {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "{} connection closed with an error", listener.what);
                    }
                    return;
                }
                watch.set_parking(false);
                conn.into_parts()
            };
            // `None` only after an upgrade, which never parks.
            let Some(http1::Parts {
                io: returned,
                read_buf,
                service: returned_service,
                ..
            }) = parts
            else {
                return;
            };
            (io, service) = (returned, returned_service);
            io.inner_mut().release_buffers();
            // Hyper can stop with bytes read and not used: only the empty lines a client may
            // send before a request (RFC 9112, section 2.2), since the reader waited at a
            // request boundary. They are dropped, as hyper and the reader would; anything else
            // is handed back before the socket's bytes.
            let unread = read_buf.iter().position(|&b| b != b'\r' && b != b'\n');
            if let Some(start) = unread {
                io.inner_mut().replay(read_buf.slice(start..));
                continue;
            }
            // An empty `Bytes` from hyper can still hold its whole read buffer.
            drop(read_buf);
            listener.idle.increment(1.0);
            // It has waited PARK_AFTER already.
            deadline
                .as_mut()
                .reset(Instant::now() + listener.idle_timeout.saturating_sub(PARK_AFTER));
            let readable = poll_fn(|cx| {
                if listener.stop.is_set(cx, stopping.as_mut(), &mut listening)
                    || deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(false);
                }
                io.inner()
                    .get_ref()
                    .poll_read_ready(cx)
                    .map(|ready| ready.is_ok())
            })
            .await;
            listener.idle.decrement(1.0);
            if !readable {
                return;
            }
        }
    }
}

/// A listener's shutdown as its HTTP/1 connections see it: a flag read on every wake, and a
/// notification each connection registers for once (its task is woken when the flag is set).
/// Cheaper than polling a `watch` receiver on every wake, which takes the channel's lock.
#[derive(Default)]
struct Stop {
    set: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Whether shutdown has begun. The first call registers the task for the wake-up.
    fn is_set(
        &self,
        cx: &mut Context<'_>,
        notified: Pin<&mut Notified<'_>>,
        listening: &mut bool,
    ) -> bool {
        if !*listening {
            *listening = true;
            if notified.poll(cx).is_ready() {
                return true;
            }
        }
        self.set.load(Ordering::Acquire)
    }
}

enum Ended {
    /// Hyper let go of an idle connection; the socket is still open.
    Parked,
    Closed(hyper::Result<()>),
}
