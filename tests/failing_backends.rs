//! Backends that fail after their response head: a body cut short, a body that stalls past
//! `read_timeout`. Each is counted as the failure it is (`code="error"`, reason `reset` or
//! `timeout`), feeds the guard, and the client sees the truncation. Raw backends, raw
//! clients and the real binary.

mod common;

use std::time::{Duration, Instant};

use common::admin::{status_json, ADMIN_ENV};
use common::raw::{self, RawBackend};
use common::{get, split_config, Backend, Cutover};

/// A head promising 100 bytes, then 10 of them.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
const TEN: &[u8] = b"0123456789";

/// All traffic to `broken` (stable `legacy` at 0%), `read_timeout: 1s`, with `extra` on the route.
fn to_broken(legacy: &str, broken: &str, extra: &str) -> String {
    split_config(&[("legacy", legacy, 0.0), ("broken", broken, 100.0)], extra).replace(
        "request_timeout: 2s\n",
        "request_timeout: 2s\n    read_timeout: 1s\n",
    )
}

/// Sends a GET on a fresh connection and reads until the proxy closes it (or 6 s pass).
async fn fetch_truncated(cutover: &Cutover) -> (raw::RawConn, Duration) {
    let started = Instant::now();
    let conn = raw::exchange(
        cutover.proxy,
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        Duration::from_secs(6),
        raw::until_close,
    )
    .await;
    (conn, started.elapsed())
}

async fn failures(cutover: &Cutover, reason: &str) -> Option<f64> {
    cutover
        .metric(&format!(
            "cutover_upstream_failures_total{{route=\"main\",backend=\"broken\",reason=\"{reason}\"}}"
        ))
        .await
}

async fn errors(cutover: &Cutover) -> Option<f64> {
    cutover
        .metric(r#"cutover_requests_total{route="main",backend="broken",code="error"}"#)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_a_reset_and_the_client_sees_the_truncation() {
    let legacy = Backend::start("legacy").await;
    let broken = RawBackend::streaming(HEAD, TEN, 1, Duration::ZERO).await;
    let cutover = Cutover::start(&to_broken(&legacy.url(), &broken.url(), ""));
    let (conn, _) = fetch_truncated(&cutover).await;
    let text = conn.text();
    assert!(conn.closed, "the client's connection stayed open: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text:?}");
    assert_eq!(errors(&cutover).await, Some(1.0));
    assert_eq!(failures(&cutover, "reset").await, Some(1.0));
    assert_eq!(
        cutover
            .metric(r#"cutover_requests_total{route="main",backend="broken",code="2xx"}"#)
            .await,
        Some(0.0),
        "a truncated body was also counted as a success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_read_timeout_is_a_timeout_and_the_client_is_cut() {
    let legacy = Backend::start("legacy").await;
    // Ten bytes, then nothing for 5 s: read_timeout (1 s) ends it.
    let broken = RawBackend::streaming(HEAD, TEN, 2, Duration::from_secs(5)).await;
    let cutover = Cutover::start(&to_broken(&legacy.url(), &broken.url(), ""));
    let (conn, elapsed) = fetch_truncated(&cutover).await;
    assert!(conn.closed, "the client was held: {:?}", conn.text());
    assert!(
        conn.text().ends_with("\r\n\r\n0123456789"),
        "{:?}",
        conn.text()
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_millis(3000),
        "cut after {elapsed:?}, read_timeout is 1s"
    );
    assert_eq!(errors(&cutover).await, Some(1.0));
    assert_eq!(failures(&cutover, "timeout").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_body_is_not_cut() {
    let legacy = Backend::start("legacy").await;
    // 10 × 10 bytes, 300 ms apart: 3 s in all, never 1 s without a read.
    let steady = RawBackend::streaming(HEAD, TEN, 10, Duration::from_millis(300)).await;
    let cutover = Cutover::start(&to_broken(&legacy.url(), &steady.url(), ""));
    let started = Instant::now();
    let conn = raw::exchange(
        cutover.proxy,
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        Duration::from_secs(6),
        |bytes| bytes.ends_with(&TEN.repeat(10)),
    )
    .await;
    assert!(
        conn.text().ends_with(&"0123456789".repeat(10)),
        "{:?}",
        conn.text()
    );
    assert!(started.elapsed() >= Duration::from_millis(2500));
    // Recorded when the body ended, with the whole time it took.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        cutover
            .metric(r#"cutover_requests_total{route="main",backend="broken",code="2xx"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(errors(&cutover).await, Some(0.0));
    let (_, _, metrics) = get(cutover.admin, "/metrics", &[]).await;
    let under_2_5_seconds = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"cutover_request_duration_seconds_bucket{route="main",backend="broken",le="2.5"}"#,
            )
        })
        .unwrap_or_default()
        .to_owned();
    assert!(under_2_5_seconds.ends_with(" 0"), "{under_2_5_seconds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_trip_the_guard() {
    let legacy = Backend::start("legacy").await;
    let broken = RawBackend::streaming(HEAD, TEN, 1, Duration::ZERO).await;
    let guard = "    guard: { max_error_rate: 50, min_requests: 3, window: 30s }\n";
    let cutover =
        Cutover::start_with_env(&to_broken(&legacy.url(), &broken.url(), guard), ADMIN_ENV);
    for _ in 0..3 {
        let (conn, _) = fetch_truncated(&cutover).await;
        assert!(
            conn.text().starts_with("HTTP/1.1 200 OK"),
            "{:?}",
            conn.text()
        );
    }
    cutover.wait_for_log("guard tripped", Duration::from_secs(2));
    let status = status_json(&cutover).await;
    assert_eq!(status["routes"][0]["kill"]["by"], "guard", "{status}");
    // Everything goes to stable from now on.
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");
}
