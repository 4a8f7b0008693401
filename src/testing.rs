//! Real sockets for unit tests: small backends and a raw client on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every request with `status` and its own name as the body.
pub async fn backend(status: u16, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |_req: Request<Incoming>| async move {
                let mut response = Response::new(Full::new(Bytes::from(name)));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// GET `path` on a fresh connection: status, head and body as text. Fails the test after
/// five seconds rather than hanging it.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// An empty POST to `path` with a bearer token, as `get` does it.
pub async fn post(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    send(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: admin.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Sends a raw request head on a fresh connection and reads the answer until the server closes.
async fn send(addr: SocketAddr, request: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let first_line = request.lines().next().unwrap_or_default();
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("{first_line} got no answer within 5 s"));
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

/// A runtime with one thread of its own, as `cutover run --threads 1` has: code under test that
/// blocks its worker stalls this runtime, never the test, which then fails on its timeouts
/// instead of hanging.
pub struct OneThread {
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OneThread {
    pub fn start() -> OneThread {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = runtime.block_on(stopped);
        });
        OneThread {
            handle,
            stop: Some(stop),
        }
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        // A stalled runtime is left to the process exit rather than joined.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
