//! Every listener (proxy, admin, flags) holds clients to the same limits: a request head within
//! `client_header_timeout`, no more than `client_idle_timeout` with nothing in progress
//! (HTTP/1 keep-alive and HTTP/2 alike), and `max_connections` open at once, past which new
//! connections wait in the kernel's backlog. Raw sockets and the real binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{self, RawConn};
use common::{get, split_config, Backend, Cutover};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame, then an ACK of the server's.
const SETTINGS_AND_ACK: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
const GOAWAY: u8 = 7;

/// One route to `backend_url`, a flags listener, and `top_level` settings.
fn cutover_with(backend_url: &str, top_level: &str) -> Cutover {
    let yaml = split_config(&[("legacy", backend_url, 100.0)], "");
    Cutover::start(&format!(
        "{top_level}flags_api: {{ listen: 127.0.0.1:0 }}\nflags:\n  f: {{ variants: {{ a: 1 }}, default: a }}\n{yaml}"
    ))
}

/// Each listener with a GET it answers.
fn listeners(cutover: &Cutover) -> [(&'static str, SocketAddr, &'static str); 3] {
    [
        ("proxy", cutover.proxy, "/"),
        ("admin", cutover.admin, "/healthz"),
        (
            "flags",
            cutover.flags.expect("a flags listener"),
            "/flags/f",
        ),
    ]
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n").into_bytes()
}

/// Reads one response head and its `Content-Length` body; returns its status line.
async fn read_response(conn: &mut RawConn) -> String {
    let complete = |bytes: &[u8]| {
        let Some(end) = raw::find(bytes, b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        bytes.len() >= end + 4 + length
    };
    conn.read_until(Duration::from_secs(5), complete).await;
    let text = conn.text();
    conn.received.clear();
    text.lines().next().unwrap_or_default().to_owned()
}

/// Whether an HTTP/2 GOAWAY frame is among the frames in `bytes` (after the server's preface,
/// which is frames too).
fn has_goaway(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        if bytes[at + 3] == GOAWAY {
            return true;
        }
        at += 9 + len;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_idle_until_client_idle_timeout_on_every_listener() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(
        &backend.url(),
        "client_header_timeout: 1s\nclient_idle_timeout: 3s\n",
    );
    let checks = listeners(&cutover).map(|(name, addr, path)| async move {
        let mut conn = raw::connect(addr).await;
        conn.send(&request(path)).await.unwrap();
        let first = read_response(&mut conn).await;
        assert!(first.starts_with("HTTP/1.1 "), "{name}: {first:?}");
        // Idle for longer than the header timeout: still open, still served.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        conn.send(&request(path)).await.unwrap();
        let second = read_response(&mut conn).await;
        assert_eq!(second, first, "{name}: the idle connection was not served");
        let idle_from = Instant::now();
        conn.read_until(Duration::from_secs(8), raw::until_close)
            .await;
        let idle = idle_from.elapsed();
        assert!(conn.closed, "{name}: still open after 8 s idle");
        assert!(
            idle >= Duration::from_millis(2500) && idle <= Duration::from_millis(4500),
            "{name}: closed after {idle:?} idle, client_idle_timeout is 3s"
        );
    });
    futures_util::future::join_all(checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_is_held_to_client_header_timeout_from_its_first_byte() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(
        &backend.url(),
        "client_header_timeout: 1s\nclient_idle_timeout: 30s\n",
    );
    let checks = listeners(&cutover).map(|(name, addr, path)| async move {
        let mut conn = raw::connect(addr).await;
        conn.send(&request(path)).await.unwrap();
        read_response(&mut conn).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: a.exa").await.unwrap();
        let started = Instant::now();
        conn.read_until(Duration::from_secs(8), raw::until_close)
            .await;
        let elapsed = started.elapsed();
        assert!(conn.closed, "{name}: a stalled head held the connection");
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_millis(2500),
            "{name}: stalled head cut after {elapsed:?}, client_header_timeout is 1s"
        );
    });
    futures_util::future::join_all(checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_get_goaway_at_client_idle_timeout_on_every_listener() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(
        &backend.url(),
        "client_header_timeout: 1s\nclient_idle_timeout: 2s\n",
    );
    let checks = listeners(&cutover).map(|(name, addr, _)| async move {
        let mut conn = raw::connect(addr).await;
        let started = Instant::now();
        conn.send(PREFACE).await.unwrap();
        conn.send(SETTINGS_AND_ACK).await.unwrap();
        // Never answers the server's PING after GOAWAY: cut anyway, after client_header_timeout.
        conn.read_until(Duration::from_secs(8), raw::until_close)
            .await;
        let elapsed = started.elapsed();
        assert!(
            conn.closed,
            "{name}: an idle h2c connection was never closed"
        );
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed <= Duration::from_millis(4500),
            "{name}: idle h2c closed after {elapsed:?}, client_idle_timeout is 2s (+1s to go)"
        );
        assert!(
            has_goaway(&conn.received),
            "{name}: closed without a GOAWAY"
        );
    });
    futures_util::future::join_all(checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_longer_than_the_idle_timeout_is_not_cut() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(&backend.url(), "client_idle_timeout: 1s\n");
    let stream = tokio::net::TcpStream::connect(cutover.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let request = Request::get("http://a.example/sleep/1800")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(1700));
    // Idle from here: the server closes the connection about a second later.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle h2c connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_wait_and_other_listeners_serve() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(&backend.url(), "max_connections: 4\n");
    // Four silent clients fill the proxy listener (they would be cut at 10 s).
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(raw::connect(cutover.proxy).await);
    }
    // The kernel completes the fifth handshake; cutover does not accept it yet.
    let mut waiting = raw::connect(cutover.proxy).await;
    waiting.send(&request("/")).await.unwrap();
    waiting
        .read_until(Duration::from_millis(800), |b| !b.is_empty())
        .await;
    assert!(
        waiting.received.is_empty() && !waiting.closed,
        "served past max_connections: {:?}",
        waiting.text()
    );
    // Other listeners have their own limit.
    let (status, _, _) = get(cutover.admin, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cutover
            .metric("cutover_open_connections{listener=\"proxy\"}")
            .await,
        Some(4.0)
    );
    // One slot frees: the waiting client is served.
    drop(holders.pop());
    let status = read_response(&mut waiting).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_the_admin_and_flags_listeners_leaves_the_proxy_serving() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(&backend.url(), "max_connections: 50\n");
    let flags = cutover.flags.unwrap();
    let fds_before = open_files(&cutover);
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(raw::connect(flags).await);
        flood.push(raw::connect(cutover.admin).await);
    }
    for _ in 0..20 {
        let (status, _, body) = get(cutover.proxy, "/", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "legacy\n"));
    }
    // 300 clients, at most 50 accepted on each listener (and a few for the proxy requests).
    let fds_during = open_files(&cutover);
    assert!(
        fds_during <= fds_before + 2 * 50 + 10,
        "{fds_before} open files before the flood, {fds_during} during it"
    );
    cutover.wait_for_log("flags API: max_connections reached", Duration::from_secs(2));
    cutover.wait_for_log("admin API: max_connections reached", Duration::from_secs(2));
    drop(flood);
    assert_eq!(cutover.count_log("accept failed"), 0, "{}", cutover.logs());
}

/// How many files the cutover process has open.
fn open_files(cutover: &Cutover) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", cutover.child.id()))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscribers_are_capped_at_max_connections_even_on_one_h2c_connection() {
    let backend = Backend::start("legacy").await;
    let cutover = cutover_with(&backend.url(), "max_connections: 3\n");
    let stream = tokio::net::TcpStream::connect(cutover.flags.unwrap())
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..4 {
        let request = Request::get("http://a.example/flags/events")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.clone().send_request(request).await.unwrap();
        statuses.push(response.status().as_u16());
        open.push(response);
    }
    assert_eq!(statuses, [200, 200, 200, 503]);
    assert!(open[3].headers().contains_key("retry-after"));
    // A subscriber that leaves frees its place.
    drop(open.remove(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = Request::get("http://a.example/flags/events")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.clone().send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
