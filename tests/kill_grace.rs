//! A kill also ends long-lived streams to the killed route's non-stable backend, after
//! `kill_grace`: WebSocket tunnels and streamed responses opened before the kill.

mod common;

use std::time::{Duration, Instant};

use common::admin::{admin_post, ADMIN_ENV, TOKEN};
use common::raw::{self, contains, until_close, RawBackend};
use common::{Backend, Cutover};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

fn config(legacy: &str, new: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nkill_grace: 1s\nbackends:\n  legacy:\n    url: {legacy}\n  new:\n    url: {new}\n\
         routes:\n  - name: main\n    match:\n      path_prefix: /\n    split:\n      legacy: 0\n      new: 100\n"
    )
}

async fn kill(cutover: &Cutover) {
    let (status, body) = admin_post(cutover, "/api/routes/main/kill", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_the_killed_backend_closes_after_kill_grace() {
    let (addr, echo) = common::websocket_echo().await;
    let legacy = Backend::start("legacy").await;
    let cutover =
        Cutover::start_with_env(&config(&legacy.url(), &format!("http://{addr}")), ADMIN_ENV);
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

    // The grace starts when the kill is published, which is before the API answers (the answer
    // waits for `state_file`): time it from the request, the earliest the kill can start.
    let killed = Instant::now();
    kill(&cutover).await;
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
    let streamer = RawBackend::streaming(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\ntick\n\r\n",
        200,
        Duration::from_millis(100),
    )
    .await;
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start_with_env(&config(&legacy.url(), &streamer.url()), ADMIN_ENV);
    let mut client = raw::connect(cutover.proxy).await;
    client
        .send(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    client
        .read_until(Duration::from_secs(10), |r| contains(r, b"tick"))
        .await;
    assert!(
        contains(&client.received, b"tick"),
        "no tick before close or 10 s: {:?}",
        client.text()
    );
    // The grace starts when the kill is published, which is before the API answers (the answer
    // waits for `state_file`): time it from the request, the earliest the kill can start.
    let killed = Instant::now();
    kill(&cutover).await;
    client.read_until(Duration::from_secs(5), until_close).await;
    assert!(client.closed, "the stream outlived kill_grace by seconds");
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "ended after {after:?}, before kill_grace"
    );
    drop(streamer);
}
