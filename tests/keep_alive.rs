//! A keep-alive HTTP/1 connection that waits between requests is one connection to its client:
//! whatever happens in the gaps (cutover lets go of hyper's buffers while it waits), every
//! request is answered, in order, with nothing lost, nothing answered twice and no
//! `Connection: close`. Raw sockets and the real binary.

mod common;

use std::time::Duration;

use common::raw::{self, RawBackend, RawConn};
use common::{split_config, Backend, Cutover};

/// Long enough for cutover to let go of hyper's connection between requests (it does after
/// 50 to 100 ms without one).
const GAP: Duration = Duration::from_millis(200);

/// The length of the first complete response in `bytes` (head and its sized or chunked body),
/// if it is all there. `head_only`: the answer to a HEAD request.
fn response_len(bytes: &[u8], head_only: bool) -> Option<usize> {
    let head_end = raw::find(bytes, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    if head_only {
        return Some(head_end);
    }
    if head.contains("transfer-encoding: chunked") {
        let end = raw::find(&bytes[head_end..], b"\r\n0\r\n\r\n")?;
        return Some(head_end + end + 7);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

/// Reads the next `count` responses and takes them off the connection's bytes.
async fn responses(conn: &mut RawConn, count: usize, head_only: bool) -> Vec<String> {
    let complete = |bytes: &[u8]| {
        let mut at = 0;
        for _ in 0..count {
            match response_len(&bytes[at..], head_only) {
                Some(len) => at += len,
                None => return false,
            }
        }
        true
    };
    conn.read_until(Duration::from_secs(5), complete).await;
    let mut out = Vec::new();
    let mut at = 0;
    for n in 0..count {
        let len = response_len(&conn.received[at..], head_only).unwrap_or_else(|| {
            panic!(
                "response {} of {count} incomplete; closed: {}, got {:?}",
                n + 1,
                conn.closed,
                conn.text()
            )
        });
        out.push(String::from_utf8_lossy(&conn.received[at..at + len]).into_owned());
        at += len;
    }
    conn.received.drain(..at);
    out
}

/// Proxy connections waiting without hyper's buffers, from `/metrics`.
async fn idle_connections(cutover: &Cutover) -> f64 {
    cutover
        .metric(r#"cutover_idle_connections{listener="proxy"}"#)
        .await
        .unwrap_or(-1.0)
}

/// Waits out the gap after which a waiting connection lets go of hyper, then checks it did.
async fn gap(cutover: &Cutover, waiting: f64, at: u32) {
    tokio::time::sleep(GAP).await;
    assert_eq!(
        idle_connections(cutover).await,
        waiting,
        "idle connections after the gap at line {at}"
    );
}

/// Sends `request`, checks its one answer kept the connection alive, then waits out a gap
/// and checks the connection let go of hyper.
async fn answered_then_idle(
    cutover: &Cutover,
    conn: &mut RawConn,
    request: &str,
    expect_status: &str,
    expect_body: &str,
) {
    conn.send(request.as_bytes()).await.unwrap();
    let response = &responses(conn, 1, false).await[0];
    assert_kept_alive(response, expect_status, expect_body);
    gap(cutover, 1.0, line!()).await;
}

fn assert_kept_alive(response: &str, expect_status: &str, expect_body: &str) {
    let lower = response.to_ascii_lowercase();
    assert!(
        response.starts_with(&format!("HTTP/1.1 {expect_status}")),
        "{response:?}"
    );
    assert!(response.ends_with(expect_body), "{response:?}");
    assert!(!lower.contains("connection: close"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_waits_between_requests_serves_every_kind_in_order() {
    let backend = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    let mut conn = raw::connect(cutover.proxy).await;
    let host = "Host: a.example\r\n";

    let get = format!("GET / HTTP/1.1\r\n{host}\r\n");
    answered_then_idle(&cutover, &mut conn, &get, "200", "legacy\n").await;

    // A sized body, then a chunked one with a trailer.
    let sized = format!("POST /upload HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello");
    answered_then_idle(&cutover, &mut conn, &sized, "200", "len=5 sum=532").await;
    let chunked = format!(
        "POST /upload HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n\
         3\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n"
    );
    answered_then_idle(&cutover, &mut conn, &chunked, "200", "len=5 sum=532").await;

    // HEAD: a length, and no body to wait for.
    conn.send(format!("HEAD / HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let head = &responses(&mut conn, 1, true).await[0];
    assert_kept_alive(head, "200", "\r\n\r\n");
    gap(&cutover, 1.0, line!()).await;

    // Pipelined: two requests in one write, the first slower to answer.
    conn.send(
        format!("GET /sleep/50 HTTP/1.1\r\n{host}\r\nGET /status/404 HTTP/1.1\r\n{host}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let pair = responses(&mut conn, 2, false).await;
    assert_kept_alive(&pair[0], "200", "legacy\n");
    assert_kept_alive(&pair[1], "404", "legacy\n");
    gap(&cutover, 1.0, line!()).await;

    // A request and half of the next head in one write; the rest after a gap.
    conn.send(format!("GET /a HTTP/1.1\r\n{host}\r\nGET /b HTTP/1.1\r\nHo").as_bytes())
        .await
        .unwrap();
    assert_kept_alive(&responses(&mut conn, 1, false).await[0], "200", "legacy\n");
    // Half a head read: hyper keeps the connection (and its buffer) until the head is whole.
    gap(&cutover, 0.0, line!()).await;
    conn.send(b"st: a.example\r\n\r\n").await.unwrap();
    assert_kept_alive(&responses(&mut conn, 1, false).await[0], "200", "legacy\n");
    gap(&cutover, 1.0, line!()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_is_never_taken_for_a_request() {
    let backend = Backend::start("legacy").await;
    let yaml = split_config(&[("legacy", &backend.url(), 100.0)], "")
        .replace("path_prefix: /\n", "path_prefix: /app\n");
    let cutover = Cutover::start(&yaml);
    let mut conn = raw::connect(cutover.proxy).await;
    // A route miss is answered without reading the body; the body looks like a request.
    let smuggled = "GET /app/smuggled/headers HTTP/1.1\r\nHost: a.example\r\n\r\n";
    for round in 0..3 {
        conn.send(
            format!(
                "POST /elsewhere HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let missed = &responses(&mut conn, 1, false).await[0];
        assert!(
            missed.starts_with("HTTP/1.1 404"),
            "round {round}: {missed:?}"
        );
        gap(&cutover, 1.0, line!()).await;
        conn.send(b"GET /app/ok/headers HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        let ok = &responses(&mut conn, 1, false).await[0];
        assert_kept_alive(ok, "200", "\n");
        assert!(ok.contains("GET /app/ok/headers"), "round {round}: {ok:?}");
        gap(&cutover, 1.0, line!()).await;
    }
    conn.read_until(Duration::from_millis(300), |b| !b.is_empty())
        .await;
    assert!(conn.received.is_empty(), "{:?}", conn.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_socket_buffers_then_an_idle_gap_then_more() {
    // 32 MiB, more than the kernel buffers on both ends hold, read late: cutover's writes
    // block, and the connection must finish the body before it goes idle.
    const CHUNK: &[u8] = &[b'x'; 64 * 1024];
    let big = RawBackend::streaming(
        b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n",
        CHUNK,
        512,
        Duration::ZERO,
    )
    .await;
    let cutover = Cutover::start(&split_config(&[("big", &big.url(), 100.0)], ""));
    let mut conn = raw::connect(cutover.proxy).await;
    for round in 0..3 {
        conn.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = &responses(&mut conn, 1, false).await[0];
        assert!(response.starts_with("HTTP/1.1 200"), "round {round}");
        assert_eq!(
            response.len() - response.find("\r\n\r\n").unwrap() - 4,
            32 << 20
        );
        gap(&cutover, 1.0, line!()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_a_waiting_connection_closes_at_once_and_a_busy_one_finishes() {
    let backend = Backend::start("legacy").await;
    // shutdown_timeout is 10 s: an exit within a few seconds means nothing waited for it.
    let mut cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    let mut waiting = raw::connect(cutover.proxy).await;
    waiting
        .send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    assert_kept_alive(
        &responses(&mut waiting, 1, false).await[0],
        "200",
        "legacy\n",
    );
    let mut busy = raw::connect(cutover.proxy).await;
    busy.send(b"GET /sleep/1000 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    gap(&cutover, 1.0, line!()).await;

    let signalled = std::time::Instant::now();
    cutover.signal("TERM");
    waiting
        .read_until(Duration::from_secs(5), raw::until_close)
        .await;
    assert!(
        waiting.closed && waiting.received.is_empty(),
        "{:?}",
        waiting.text()
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(600),
        "the waiting connection closed {:?} after SIGTERM",
        signalled.elapsed()
    );
    let answer = &responses(&mut busy, 1, false).await[0];
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("legacy\n"),
        "{answer:?}"
    );
    let exit = loop {
        if let Some(status) = cutover.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(4),
            "cutover did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_after_a_request_do_not_end_the_connection() {
    // RFC 9112 section 2.2: a server ignores empty lines before a request line; some clients
    // send a CRLF after a body.
    let backend = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    let mut conn = raw::connect(cutover.proxy).await;
    let requests: [&[u8]; 2] = [
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n\r\n\r\n",
    ];
    for request in requests {
        conn.send(request).await.unwrap();
        let answer = &responses(&mut conn, 1, false).await[0];
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        gap(&cutover, 1.0, line!()).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        assert_kept_alive(&responses(&mut conn, 1, false).await[0], "200", "legacy\n");
        gap(&cutover, 1.0, line!()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_park_delay_keeps_the_connection() {
    // While the backend takes its time the reader waits at a request boundary, but a response
    // is in progress: the connection must not let go of hyper (which would end keep-alive).
    let backend = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    let mut conn = raw::connect(cutover.proxy).await;
    let slow = "GET /sleep/400 HTTP/1.1\r\nHost: a.example\r\n\r\n";
    answered_then_idle(&cutover, &mut conn, slow, "200", "legacy\n").await;
    let next = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
    answered_then_idle(&cutover, &mut conn, next, "200", "legacy\n").await;
}
