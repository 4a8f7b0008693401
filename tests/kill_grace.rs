//! A kill also ends long-lived streams to the killed route's non-stable backend, after
//! `kill_grace`: WebSocket tunnels and streamed responses opened before the kill.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{send, Backend, Cutover};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "grace-token";

fn config(legacy: &str, new: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nkill_grace: 1s\nbackends:\n  legacy:\n    url: {legacy}\n  new:\n    url: {new}\n\
         routes:\n  - name: main\n    match:\n      path_prefix: /\n    split:\n      legacy: 0\n      new: 100\n"
    )
}

async fn kill(cutover: &Cutover) {
    let (status, _, body) = send(
        &common::client(),
        cutover.admin,
        "POST",
        "/api/routes/main/kill",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_the_killed_backend_closes_after_kill_grace() {
    let (addr, echo) = common::websocket_echo().await;
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start_with_env(
        &config(&legacy.url(), &format!("http://{addr}")),
        &[("CUTOVER_ADMIN_TOKEN", TOKEN)],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", cutover.proxy))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "before"
    );

    kill(&cutover).await;
    let killed = Instant::now();
    // Within the grace period the tunnel still works.
    ws.send(Message::text("during grace")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "during grace");
    // Then it is closed.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived kill_grace by seconds");
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before kill_grace"
    );
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_from_the_killed_backend_ends_after_kill_grace() {
    // A backend that streams a chunk every 100 ms for up to 20 s.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streamer = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                for _ in 0..200 {
                    if stream.write_all(b"5\r\ntick\n\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start_with_env(
        &config(&legacy.url(), &format!("http://{addr}")),
        &[("CUTOVER_ADMIN_TOKEN", TOKEN)],
    );
    let mut client = tokio::net::TcpStream::connect(cutover.proxy).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("tick") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        received.extend_from_slice(&buf[..n]);
    }
    kill(&cutover).await;
    let killed = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived kill_grace by seconds");
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "ended after {after:?}, before kill_grace"
    );
    streamer.abort();
}
