//! Raw sockets, for what a client library would tidy up or hide: the one raw client
//! (`connect`, or `exchange` for a whole request on a fresh connection) and the one raw
//! backend (`RawBackend`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw client connection and everything read on it so far.
pub struct RawConn {
    stream: TcpStream,
    /// Every byte read, in order.
    pub received: Vec<u8>,
    /// The peer closed the connection (EOF or reset).
    pub closed: bool,
}

/// Opens a raw connection; panics if nothing accepts it.
pub async fn connect(addr: SocketAddr) -> RawConn {
    try_connect(addr).await.unwrap()
}

/// Opens a raw connection, or says why it could not.
pub async fn try_connect(addr: SocketAddr) -> io::Result<RawConn> {
    Ok(RawConn {
        stream: TcpStream::connect(addr).await?,
        received: Vec::new(),
        closed: false,
    })
}

/// Sends `request` on a fresh connection, then reads until `done(bytes read so far)`, until
/// the peer closes, or until `timeout` passes. The connection stays open if it still is.
pub async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
    done: impl FnMut(&[u8]) -> bool,
) -> RawConn {
    let mut conn = connect(addr).await;
    // The peer may stop reading early (431, 400): a failed write is part of the answer.
    let _ = conn.send(request).await;
    conn.read_until(timeout, done).await;
    conn
}

/// Opens a connection, sends `sent`, and times how long until the peer closes it; panics if
/// it is still open after 8 s.
pub async fn time_until_closed(addr: SocketAddr, sent: &[u8]) -> Duration {
    let mut conn = connect(addr).await;
    let started = std::time::Instant::now();
    conn.send(sent).await.unwrap();
    conn.read_until(Duration::from_secs(8), until_close).await;
    assert!(
        conn.closed,
        "connection still open after 8 s (read so far: {:?})",
        conn.text()
    );
    started.elapsed()
}

/// A `done` for `exchange` and `read_until` that reads until the peer closes or time is up.
pub fn until_close(_: &[u8]) -> bool {
    false
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl RawConn {
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads until `done(received)`, until the peer closes (`closed` is then set), or until
    /// `timeout` passes.
    pub async fn read_until(&mut self, timeout: Duration, mut done: impl FnMut(&[u8]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        while !done(&self.received) {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    return;
                }
                Ok(Ok(n)) => self.received.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Everything read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// A raw TCP backend. On every connection it reads the request head, records every byte it
/// received, answers with fixed bytes, and closes.
pub struct RawBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// Answers every request with `reply`, then closes.
    pub async fn start(reply: &'static [u8]) -> RawBackend {
        RawBackend::streaming(reply, b"", 0, Duration::ZERO).await
    }

    /// Answers every request with `head`, then sends `chunk` `times` times, `every` apart,
    /// then closes.
    pub async fn streaming(
        head: &'static [u8],
        chunk: &'static [u8],
        times: usize,
        every: Duration,
    ) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    let mut buf = [0u8; 16 * 1024];
                    while !contains(&mine, b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                                mine.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                    if stream.write_all(head).await.is_err() {
                        return;
                    }
                    for _ in 0..times {
                        if stream.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawBackend { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received so far, on all connections, as text.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}
