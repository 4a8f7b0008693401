//! Connections to one backend, reused across requests: a stack of idle HTTP/1 connections, or
//! one shared HTTP/2 connection.
//!
//! The proxy owns its pool instead of using hyper-util's legacy `Client` because that generic
//! one was the largest cost on the request path: under load it measured ~8.2k instructions per
//! request in `send_request` (SipHash of the pool key on checkout and again on return, the
//! checkout machinery, a spawned task per response to return the connection, struct copies,
//! three allocations for an `HttpInfo` extension nothing reads) plus ~10% of CPU in its
//! connection task and channels. Here the key is resolved once per snapshot (each backend holds
//! its pool), so a request costs a short lock to pop a connection and one to push it back.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::future;
use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::ProxyError;
pub use crate::proxy::upstream_body::UpstreamBody;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a pool with idle connections looks for stale ones.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Idle HTTP/1 connections kept per backend (like nginx's `keepalive`): a burst of clients
/// opens as many as it needs, and each one kept costs ~30 KB (hyper's buffers, its task).
const MAX_IDLE: usize = 256;
/// Largest read or write buffer of one backend connection.
const MAX_BUFFER: usize = 64 * 1024;

/// The connections to one backend. Cloning shares them.
#[derive(Clone)]
pub enum Pool {
    Http1(Arc<Http1Pool>),
    Http2(Arc<Http2Pool>),
}

impl Pool {
    pub fn new(authority: &Authority, http2: bool, connect_timeout: Duration) -> Pool {
        let endpoint = Endpoint::new(authority, connect_timeout);
        if http2 {
            Pool::Http2(Arc::new(Http2Pool {
                endpoint,
                shared: Mutex::new(Http2Shared {
                    slot: Slot::Empty,
                    last_used: Instant::now(),
                    sweeping: false,
                }),
            }))
        } else {
            Pool::Http1(Arc::new(Http1Pool {
                endpoint,
                idle: Mutex::new(Http1Idle::default()),
            }))
        }
    }

    /// Sends `req` on a pooled or new connection and waits for the response head. Not an
    /// `async fn`, for the reason `Upstream::send` gives.
    pub fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + '_ {
        match self {
            Pool::Http1(pool) => future::Either::Left(pool.send(req)),
            Pool::Http2(pool) => future::Either::Right(pool.send(req)),
        }
    }
}

/// Where and how to open a connection.
struct Endpoint {
    authority: Authority,
    /// Host without IPv6 brackets, for name resolution.
    host: Box<str>,
    port: u16,
    /// Set when the host is an IP literal: nothing to resolve.
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
    /// `Host` for HTTP/1 requests that came without one (the default port left out).
    host_header: Option<HeaderValue>,
}

impl Endpoint {
    fn new(authority: &Authority, connect_timeout: Duration) -> Endpoint {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host_header = if port == 80 {
            HeaderValue::from_str(authority.host())
        } else {
            HeaderValue::from_str(authority.as_str())
        };
        Endpoint {
            authority: authority.clone(),
            host: host.into(),
            port,
            addr: host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port)),
            connect_timeout,
            host_header: host_header.ok(),
        }
    }

    /// A TCP connection with Nagle off. Resolution is not part of `connect_timeout`.
    async fn connect(&self) -> Result<TokioIo<TcpStream>, ProxyError> {
        let connecting = match self.addr {
            Some(addr) => {
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await
            }
            None => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((&*self.host, self.port))
                    .await
                    .map_err(|err| ProxyError::Connect(err.to_string()))?
                    .collect();
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(&addrs[..])).await
            }
        };
        match connecting {
            Ok(Ok(stream)) => {
                // Request heads are small and written whole; Nagle would only delay them.
                let _ = stream.set_nodelay(true);
                Ok(TokioIo::new(stream))
            }
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                Err(ProxyError::ConnectTimeout)
            }
            Ok(Err(err)) => Err(ProxyError::Connect(err.to_string())),
            Err(_) => Err(ProxyError::ConnectTimeout),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still sound.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- HTTP/1

/// Idle keep-alive connections, most recently used on top (warmest socket, and the ones at the
/// bottom age out when load drops).
pub struct Http1Pool {
    endpoint: Endpoint,
    idle: Mutex<Http1Idle>,
}

#[derive(Default)]
struct Http1Idle {
    conns: Vec<IdleConn>,
    /// A sweeper task is running for this pool.
    sweeping: bool,
}

struct IdleConn {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

impl IdleConn {
    /// Not closed, not mid-response (hyper wants the next request), and not idle too long.
    fn usable(&self, now: Instant) -> bool {
        self.sender.is_ready() && now.saturating_duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl Http1Pool {
    async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.prepare(&mut req);
        let (mut sender, mut pooled) = match self.checkout() {
            Some(sender) => (sender, true),
            // Boxed, here and below: a connect is rare under keep-alive, and inline it would
            // make every request's future (moved with each request) larger.
            None => (Box::pin(self.connect()).await?, false),
        };
        loop {
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.release(sender);
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    // The pooled connection died before the request was written: the backend
                    // never saw it, so it is safe to send once more on a fresh connection.
                    Some(unsent) if pooled => {
                        req = unsent;
                        sender = Box::pin(self.connect()).await?;
                        pooled = false;
                    }
                    _ => return Err(ProxyError::from_hyper(err.error())),
                },
            }
        }
    }

    /// HTTP/1 wants origin-form targets (the backend is not a forward proxy) and a `Host`.
    /// The proxy's requests already come in origin form (`Upstream::uri_for`).
    fn prepare(&self, req: &mut Request<UpstreamBody>) {
        if req.method() == Method::CONNECT {
            *req.uri_mut() = Uri::from(self.endpoint.authority.clone());
        } else if req.uri().scheme().is_some() {
            let origin = match req.uri().path_and_query() {
                Some(path) => Uri::from(path.clone()),
                None => Uri::default(),
            };
            *req.uri_mut() = origin;
        }
        if let Some(host) = &self.endpoint.host_header {
            req.headers_mut()
                .entry(HOST)
                .or_insert_with(|| host.clone());
        }
    }

    fn checkout(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.conns.pop() {
            if conn.usable(now) {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
        let io = self.endpoint.connect().await?;
        // A flat write, as on the server side.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            // Hyper grows a connection's read buffer with large bodies, up to ~400 KB, and
            // keeps it while the connection idles in the pool; 64 KiB reads stream as well.
            // A response head must fit too (nginx's limit is its 4–8 KiB proxy_buffer_size).
            .max_buf_size(MAX_BUFFER)
            .handshake(io)
            .await
            .map_err(|err| ProxyError::from_hyper(&err))?;
        tokio::spawn(async move {
            // With upgrades, so a 101 hands the socket over to the WebSocket tunnel.
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(error = %err, "backend connection closed with an error");
            }
        });
        Ok(sender)
    }

    /// Back to the pool once hyper says the connection can take another request.
    fn release(self: &Arc<Self>, mut sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_ready() {
            // The usual case: the whole response was read with its head.
            self.put(sender);
        } else if !sender.is_closed() {
            // The body is still streaming (or the connection was upgraded): wait for it in the
            // background. Holding only a weak reference lets a dropped pool go.
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    if let Some(pool) = pool.upgrade() {
                        pool.put(sender);
                    }
                }
            });
        }
    }

    fn put(self: &Arc<Self>, sender: http1::SendRequest<UpstreamBody>) {
        let since = Instant::now();
        let start_sweeper = {
            let mut idle = lock(&self.idle);
            if idle.conns.len() >= MAX_IDLE {
                // Dropping the sender closes the connection.
                return;
            }
            idle.conns.push(IdleConn { sender, since });
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if start_sweeper {
            tokio::spawn(sweep_http1(Arc::downgrade(self)));
        }
    }
}

/// Closes connections idle for [`IDLE_TIMEOUT`] or closed by the backend, until none are
/// left idle or the pool is gone.
async fn sweep_http1(pool: Weak<Http1Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = lock(&pool.idle);
        idle.conns.retain(|conn| conn.usable(now));
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

// ---------------------------------------------------------------- HTTP/2

/// One multiplexed connection, opened on first use and again after it closes.
pub struct Http2Pool {
    endpoint: Endpoint,
    shared: Mutex<Http2Shared>,
}

struct Http2Shared {
    slot: Slot,
    last_used: Instant,
    /// A sweeper task is running for this pool.
    sweeping: bool,
}

enum Slot {
    Empty,
    /// One request is connecting; the others wait for its outcome rather than each opening
    /// a connection of their own.
    Connecting(watch::Receiver<Option<Result<Http2Conn, ProxyError>>>),
    Ready(Http2Conn),
}

#[derive(Clone)]
struct Http2Conn {
    /// Tells a connection that just failed from one that replaced it meanwhile.
    id: u64,
    sender: http2::SendRequest<UpstreamBody>,
}

static NEXT_HTTP2_ID: AtomicU64 = AtomicU64::new(0);

impl Http2Pool {
    async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut conn, shared) = self.checkout(None).await?;
        let mut err = match conn.sender.try_send_request(req).await {
            Ok(response) => return Ok(response),
            Err(err) => err,
        };
        match err.take_message() {
            // The shared connection went away before this stream was opened: the backend never
            // saw the request, so send it once more on a new connection.
            Some(unsent) if shared => {
                let (mut conn, _) = self.checkout(Some(conn.id)).await?;
                conn.sender
                    .send_request(unsent)
                    .await
                    .map_err(|err| ProxyError::from_hyper(&err))
            }
            _ => Err(ProxyError::from_hyper(err.error())),
        }
    }

    /// The shared connection, opened if there is none (or only `dead`). The flag is true when
    /// the connection was already open, so a failure on it may be worth one retry.
    async fn checkout(
        self: &Arc<Self>,
        dead: Option<u64>,
    ) -> Result<(Http2Conn, bool), ProxyError> {
        loop {
            let (leader, mut outcome) = {
                let mut shared = lock(&self.shared);
                shared.last_used = Instant::now();
                match &shared.slot {
                    Slot::Ready(conn) if !conn.sender.is_closed() && Some(conn.id) != dead => {
                        return Ok((conn.clone(), true));
                    }
                    // `has_changed` fails once the connecting request gave up (timed out).
                    Slot::Connecting(outcome) if outcome.has_changed().is_ok() => {
                        (None, outcome.clone())
                    }
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        shared.slot = Slot::Connecting(rx.clone());
                        (Some(tx), rx)
                    }
                }
            };
            let Some(leader) = leader else {
                if let Ok(result) = outcome.wait_for(Option::is_some).await {
                    if let Some(result) = result.clone() {
                        return result.map(|conn| (conn, false));
                    }
                }
                // The connecting request was dropped before it finished; try again.
                continue;
            };
            // Boxed: rare, and inline it would make every request's future larger.
            let result = Box::pin(self.connect()).await;
            let start_sweeper = {
                let mut shared = lock(&self.shared);
                if matches!(&shared.slot, Slot::Connecting(rx) if rx.same_channel(&outcome)) {
                    shared.slot = match &result {
                        Ok(conn) => Slot::Ready(conn.clone()),
                        Err(_) => Slot::Empty,
                    };
                }
                result.is_ok() && !std::mem::replace(&mut shared.sweeping, true)
            };
            if start_sweeper {
                tokio::spawn(sweep_http2(Arc::downgrade(self)));
            }
            leader.send_replace(Some(result.clone()));
            return result.map(|conn| (conn, false));
        }
    }

    async fn connect(&self) -> Result<Http2Conn, ProxyError> {
        let io = self.endpoint.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|err| ProxyError::from_hyper(&err))?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "backend HTTP/2 connection closed with an error");
            }
        });
        Ok(Http2Conn {
            id: NEXT_HTTP2_ID.fetch_add(1, Ordering::Relaxed),
            sender,
        })
    }
}

/// Lets go of the shared connection after [`IDLE_TIMEOUT`] without requests (streams still
/// open on it finish first), then stops.
async fn sweep_http2(pool: Weak<Http2Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut shared = lock(&pool.shared);
        let keep = match &shared.slot {
            Slot::Ready(conn) => {
                shared.last_used.elapsed() < IDLE_TIMEOUT && !conn.sender.is_closed()
            }
            Slot::Connecting(outcome) => outcome.has_changed().is_ok(),
            Slot::Empty => false,
        };
        if !keep {
            shared.slot = Slot::Empty;
            shared.sweeping = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A blocking backend on its own thread that answers each connection once, reports the
    /// request head, and closes the connection (without announcing it) when told to.
    fn one_shot_backend() -> (Authority, mpsc::Receiver<String>, mpsc::Sender<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let (heads, received) = mpsc::channel();
        let (close, closing) = mpsc::channel();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let mut socket = socket.unwrap();
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                let _ = closing.recv_timeout(Duration::from_secs(1));
            }
        });
        (authority, received, close)
    }

    fn get(uri: &str) -> Request<UpstreamBody> {
        Request::get(uri)
            .body(UpstreamBody::Buffered(Full::new(Bytes::new())))
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http1_sends_origin_form_with_host_and_resends_once_when_a_pooled_connection_died() {
        let (authority, heads, close) = one_shot_backend();
        let pool = Pool::new(&authority, false, Duration::from_secs(1));
        let response = pool.send(get(&format!("http://{authority}/a?b=1"))).await;
        let body = response.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "ok");
        let head = heads.recv().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /a?b=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nhost: {authority}\r\n")),
            "{head}"
        );

        // Have the next request taken from the pool before hyper sees the backend's FIN: this
        // task is woken by `nudge`, which becomes readable just before the FIN lands, so it runs
        // ahead of the connection task in the same turn of the reactor.
        let (nudge, woken) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(async move {
            nudge.try_write(b"!").unwrap();
            close.send(()).unwrap();
            // Blocks the runtime until the FIN has arrived.
            std::thread::sleep(Duration::from_millis(100));
        });
        woken.readable().await.unwrap();
        let response = pool.send(get(&format!("http://{authority}/again"))).await;
        assert_eq!(response.unwrap().status(), 200);
        let resent = heads.recv().unwrap().to_ascii_lowercase();
        assert!(resent.starts_with("get /again http/1.1\r\n"), "{resent}");
    }
}
