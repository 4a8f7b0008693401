//! What an idle client connection costs: 2,000 keep-alive connections, each after one request,
//! held open against the real binary, and the process's resident memory read from /proc. The
//! same for shadow copies held in flight by a candidate that never answers.
//! The budget is for the debug build the tests run (release is smaller; `benches/memory.sh`
//! measures it against HAProxy).

mod common;

use std::time::Duration;

use common::raw::{self, RawConn};
use common::{split_config, Backend, Cutover};

const CONNECTIONS: usize = 2_000;
/// Per idle keep-alive connection, debug build: 1.1 to 2.6 KB measured. A connection that kept
/// hyper's buffers while it waits would cost over 8 KB.
const BUDGET_BYTES: usize = 4 * 1024;

fn rss_bytes(cutover: &Cutover) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", cutover.child.id())).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn one_request(conn: &mut RawConn) {
    conn.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    conn.read_until(Duration::from_secs(5), |b| b.ends_with(b"legacy\n"))
        .await;
    assert!(conn.text().ends_with("legacy\n"), "{:?}", conn.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_costs_less_than_its_budget() {
    let backend = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    // Warm up: the backend pool, the metric series, the allocator's first arenas.
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut conn = raw::connect(cutover.proxy).await;
        one_request(&mut conn).await;
        warm.push(conn);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(&cutover);

    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut conn = raw::connect(cutover.proxy).await;
        one_request(&mut conn).await;
        idle.push(conn);
    }
    // Past the 50 to 100 ms after which a waiting connection lets go of hyper's buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = rss_bytes(&cutover).saturating_sub(before) / CONNECTIONS;
    eprintln!(
        "{CONNECTIONS} idle keep-alive connections: {per_connection} bytes each (budget {BUDGET_BYTES})"
    );
    assert!(
        per_connection <= BUDGET_BYTES,
        "{per_connection} bytes per idle connection, budget {BUDGET_BYTES}"
    );
    assert_eq!(
        cutover
            .metric(r#"cutover_open_connections{listener="proxy"}"#)
            .await,
        Some(CONNECTIONS as f64)
    );
    // Every one of them waits without hyper's buffers.
    assert_eq!(
        cutover
            .metric(r#"cutover_idle_connections{listener="proxy"}"#)
            .await,
        Some(CONNECTIONS as f64)
    );
}

/// Per shadow copy in flight to a candidate that never answers, debug build: 25 KB measured,
/// and 28.8 KiB for the release build (`benches/shadow_memory.sh`, 10,000 copies): the
/// candidate connection's buffers, the copy's task, the request head and stable's answer.
const COPY_BUDGET_BYTES: usize = 40 * 1024;
const COPIES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_in_flight_stop_at_max_inflight_and_stay_within_their_budget() {
    let backend = Backend::start("legacy").await;
    // Accepts every connection and never answers.
    let candidate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let candidate_addr = candidate.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = candidate.accept().await {
            held.push(stream);
        }
    });
    let yaml = split_config(
        &[
            ("legacy", &backend.url(), 100.0),
            ("v2", &format!("http://{candidate_addr}"), 0.0),
        ],
        &format!("    shadow: {{ to: v2, max_inflight: {COPIES}, timeout: 10m }}\n"),
    );
    let cutover = Cutover::start(&yaml);
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(raw::connect(cutover.proxy).await);
    }
    // Warm up without copies: every request on one path, then measure.
    for conn in &mut conns {
        one_request(conn).await;
    }
    let series = |result: &str| {
        format!("cutover_shadow_requests_total{{route=\"main\",result=\"{result}\"}}")
    };
    // Those 8 took 8 slots; fill the rest and as many again, which are dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(&cutover);
    let started = std::time::Instant::now();
    for i in 0..(2 * COPIES - 8) {
        one_request(&mut conns[i % 8]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cutover.metric(&series("dropped")).await != Some(COPIES as f64)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cutover.metric(&series("dropped")).await,
        Some(COPIES as f64)
    );
    assert_eq!(cutover.metric(&series("timeout")).await, Some(0.0));
    eprintln!(
        "{} requests with copies piling up in {:?}",
        2 * COPIES,
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, diffs) = common::get(cutover.admin, "/api/routes/main/diffs", &[]).await;
    let diffs: serde_json::Value = serde_json::from_str(&diffs).unwrap();
    assert_eq!(diffs["in_flight"], COPIES);
    let per_copy = rss_bytes(&cutover).saturating_sub(before) / COPIES;
    eprintln!(
        "{COPIES} shadow copies in flight: {per_copy} bytes each (budget {COPY_BUDGET_BYTES})"
    );
    assert!(
        per_copy <= COPY_BUDGET_BYTES,
        "{per_copy} bytes per copy in flight, budget {COPY_BUDGET_BYTES}"
    );
}
