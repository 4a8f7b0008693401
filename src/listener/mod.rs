//! The one accept loop, shared by every listener (proxy, admin API, flags API): HTTP/1 or h2c
//! per connection, one task per connection, the same limits for all three, until shutdown.
//!
//! A slow client cannot hold a connection: a request head must arrive within
//! `client_header_timeout`, counted from the accept (hyper's own header timer starts only once
//! the first bytes are in, and needs a timer set on the builder or it is silently off).

pub mod framing;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use framing::{FramingWatch, Sniffed};

/// Largest request head accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;

/// What every connection on a listener is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request head (and, for a new connection, its first bytes) must arrive within this.
    pub header_timeout: Duration,
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
/// listener in logs. `per_connection` makes each connection's request handler.
///
/// The handler builds the request future itself and hands it to hyper as it is: a layer in
/// between would move the proxy's request future (kilobytes) once more per request.
pub async fn serve<M, H, F, B>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    per_connection: M,
) -> GracefulShutdown
where
    M: Fn(Connection) -> H + Clone + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // One flat write per response: small answers are copied once into the head buffer,
        // and `send` is cheaper in the kernel than `writev` (measured with benches/load.sh).
        .writev(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    loop {
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
        let _ = stream.set_nodelay(true);
        let per_connection = per_connection.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if !first_bytes_arrive(&stream, limits.header_timeout).await {
                return;
            }
            let framing = Arc::new(FramingWatch::default());
            let io = TokioIo::new(Sniffed::new(stream, framing.clone()));
            let service = service_fn(per_connection(Connection {
                peer: Peer::new(addr),
                framing,
            }));
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(err) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(peer = %addr, error = %err, "{what} connection closed with an error");
            }
        });
    }
}

/// Waits until a new connection has sent enough to tell HTTP/1 from HTTP/2. Hyper's header
/// timer starts only after that, so without this a client that connects and stays silent
/// (or stalls inside the HTTP/2 preface) would hold the connection forever.
async fn first_bytes_arrive(stream: &TcpStream, timeout: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || !PREFACE.starts_with(&buf[..n]) => return true,
                // Part of the preface: peek returns at once, so wait a little for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}
