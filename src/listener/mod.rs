//! The one accept loop, shared by every listener (proxy, admin API, flags API): HTTP/1 or h2c
//! per connection, one task per connection, the same limits for all three, until shutdown.
//!
//! A client cannot hold more than its share: at most `max_connections` are accepted at once
//! (the rest wait in the kernel's backlog), a request head must arrive within
//! `client_header_timeout` (from the accept, then from each head's first byte), and a
//! connection with nothing in progress is closed after `client_idle_timeout` (see
//! [`timeouts`]). On shutdown every connection is asked to finish (HTTP/1 after its current
//! response, HTTP/2 with GOAWAY) and the caller's drain waits for them.

pub mod framing;
mod h1;
mod timeouts;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use framing::{FramingWatch, Sniffed};
use timeouts::{CountedService, HeadTimer};

/// Largest request head accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;

/// What every connection on a listener is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request head (and, for a new connection, its first bytes) must arrive within this.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones wait in the kernel's accept backlog.
    pub max_connections: usize,
}

/// The client end of a connection, with its address rendered once per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` entry.
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
        }
    }
}

/// One accepted connection, as its handler sees it.
pub struct Connection {
    pub peer: Peer,
    framing: Arc<FramingWatch>,
}

impl Connection {
    /// Called once per request, in order: true when the raw head of this request had
    /// conflicting length fields that hyper resolved on its own (see [`framing`]). Such a
    /// request must be refused, never served.
    pub fn next_request_is_ambiguous(&self) -> bool {
        self.framing.next_request_is_ambiguous()
    }
}

/// Serves `listener` until `shutdown` flips, then hands back the tracker of the connections
/// still open so the caller can drain them (or drop it to cut them). `what` names the
/// listener in logs and metrics. `per_connection` makes each connection's request handler.
///
/// The handler builds the request future itself and hands it to hyper as it is: a layer in
/// between would move the proxy's request future (kilobytes) once more per request. Only
/// HTTP/2 connections get one, to count open streams for the idle timeout.
pub async fn serve<M, H, F, B>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    per_connection: M,
) -> GracefulShutdown
where
    M: Fn(Connection) -> H + Clone + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + Unpin + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own builders, not hyper-util's `auto`: `first_bytes` already tells HTTP/1 from
    // HTTP/2, and `auto` would read the first bytes again through a rewind buffer, which also
    // doubles hyper's read buffer on every connection (measured with benches/memory.sh).
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Hyper starts this timer when a keep-alive connection goes idle, so it is the idle
        // timeout; `HeadTimer` holds a head that has started to `header_timeout`.
        .header_read_timeout(limits.idle_timeout)
        // One flat write per response: small answers are copied once into the head buffer,
        // and `send` is cheaper in the kernel than `writev` (measured with benches/load.sh).
        .writev(false)
        .max_buf_size(MAX_HEAD_BYTES)
        // A head over this gets 431 however its bytes arrive (the buffer limit alone
        // depends on how much one read brings).
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let h1 = h1::Listener::new(h1, limits.idle_timeout, shutdown.clone(), what);
    let h2 = Arc::new(h2);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics::gauge!(crate::telemetry::OPEN_CONNECTIONS, "listener" => what);
    let mut full_since_logged: Option<std::time::Instant> = None;
    loop {
        // A slot first, then the accept: past the limit, clients wait in the kernel's
        // backlog instead of costing a file descriptor the other listeners need.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if full_since_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "{what}: max_connections reached; new connections wait"
                    );
                    full_since_logged = Some(std::time::Instant::now());
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return graceful,
                    },
                    _ = shutdown.changed() => return graceful,
                }
            }
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return graceful,
        };
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let per_connection = per_connection.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        let slot = Slot::taken(slot, open.clone());
        tokio::spawn(async move {
            let peer = Peer::new(addr);
            match first_bytes(&stream, limits.header_timeout).await {
                FirstBytes::None => {}
                FirstBytes::Http1 => {
                    let framing = Arc::new(FramingWatch::default());
                    let head_timer = HeadTimer::new(limits.header_timeout, accepted);
                    let sniffed = Sniffed::new(stream, framing.clone()).with_head_timer(head_timer);
                    let handler = per_connection(Connection { peer, framing });
                    // A task of its own, so what a waiting connection costs is `h1::serve`'s
                    // state alone, not this task's too. Holding the watcher makes the drain
                    // wait for the connection.
                    tokio::spawn(h1::serve(
                        h1,
                        TokioIo::new(sniffed),
                        CountedService::new(handler, false),
                        (slot, watcher),
                    ));
                }
                FirstBytes::Http2 => {
                    let handler = per_connection(Connection {
                        peer,
                        framing: Arc::new(FramingWatch::default()),
                    });
                    // Holding the watcher makes the drain wait for this connection, too. Boxed:
                    // the task is as large as its largest state, and most connections are h1.
                    Box::pin(serve_h2(
                        &h2, stream, handler, limits, shutdown, watcher, what,
                    ))
                    .await;
                }
            }
        });
    }
}

/// One HTTP/2 connection, closed (GOAWAY, then the streams finish) on shutdown or once it
/// has had no open stream for `idle_timeout`.
async fn serve_h2<H, F, B>(
    builder: &http2::Builder<TokioExecutor>,
    stream: TcpStream,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    _drained_with: Watcher,
    what: &'static str,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + Unpin + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = CountedService::new(handler, true);
    let activity = service.activity().clone();
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    // After an idle GOAWAY, a client that never answers hyper's closing PING would keep the
    // connection open: it gets `header_timeout` to go.
    let mut cut_at: Option<Instant> = None;
    loop {
        let idle_at = activity.idle_deadline(limits.idle_timeout);
        // With a stream open, look again in one idle period.
        let wake_at = idle_at.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "{what} HTTP/2 connection closed with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake_at), if !closing => {
                if idle_at.is_some() && activity.idle_deadline(limits.idle_timeout) == idle_at {
                    tracing::debug!("{what}: closing an HTTP/2 connection idle for client_idle_timeout");
                    closing = true;
                    cut_at = Some(Instant::now() + limits.header_timeout);
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => {
                return;
            }
        }
    }
}

/// A connection's place under `max_connections`, shown in `cutover_open_connections`.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit, open: metrics::Gauge) -> Slot {
        open.increment(1.0);
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

enum FirstBytes {
    /// Closed, or silent past the timeout.
    None,
    Http1,
    Http2,
}

/// Waits until a new connection has sent enough to tell HTTP/1 from HTTP/2. Hyper's timers
/// start only after that, so without this a client that connects and stays silent (or
/// stalls inside the HTTP/2 preface) would hold the connection forever.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> FirstBytes {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return FirstBytes::None,
                Ok(n) if n == PREFACE.len() && buf == *PREFACE => return FirstBytes::Http2,
                Ok(n) if !PREFACE.starts_with(&buf[..n]) || n == PREFACE.len() => {
                    return FirstBytes::Http1
                }
                // Part of the preface: peek returns at once, so wait a little for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(FirstBytes::None)
}
