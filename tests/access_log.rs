//! The access log against the real binary: what a line holds (and never holds), a destination
//! that stops reading, and logrotate's move-then-SIGUSR1.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, closed_port, send, Backend, Cutover};
use http::StatusCode;
use serde_json::Value;

fn config(legacy: &Backend, v2: &str, access_log: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\naccess_log: {access_log}\n\
         backends:\n  legacy: {{ url: \"{}\" }}\n  v2: {{ url: \"{v2}\", connect_timeout: 1s }}\n\
         routes:\n  - name: main\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 50, v2: 50 }}\n    \
         sticky: {{ header: x-user-id }}\n",
        legacy.url()
    )
}

/// The file's lines, as JSON, once it has at least `count` of them.
fn lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {count}:\n{text}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A user whose bucket on route `main` falls on `stable` (below 5000) or not.
fn user_on(stable: bool) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|user| (cutover::bucket::bucket("main", user.as_bytes()) < 5_000) == stable)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_holds_the_request_and_its_outcome_and_no_secret() {
    let legacy = Backend::start("legacy").await;
    let down = closed_port().await;
    let cutover = Cutover::start(&config(
        &legacy,
        &format!("http://{down}"),
        "{ path: access.log }",
    ));
    let (stable_user, v2_user) = (user_on(true), user_on(false));
    let (status, _, body) = send(
        &client(),
        cutover.proxy,
        "POST",
        "/orders/42?token=s3cret-query",
        &[
            ("x-user-id", &stable_user),
            ("x-request-id", "req-one"),
            ("authorization", "Bearer s3cret-auth"),
            ("cookie", "session=s3cret-cookie"),
        ],
        Bytes::from_static(b"hello"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &client(),
        cutover.proxy,
        "GET",
        "/orders",
        &[("x-user-id", &v2_user), ("x-request-id", "req-two")],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    let path = cutover.dir.path().join("access.log");
    let lines = lines(&path, 2);
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
            .clone()
    };
    let ok = by_id("req-one");
    assert_eq!(ok["route"], "main");
    assert_eq!(ok["backend"], "legacy");
    assert_eq!(
        ok["bucket"],
        cutover::bucket::bucket("main", stable_user.as_bytes())
    );
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/orders/42");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"], body.len());
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(
        (ok["fallback"].clone(), ok["shadow"].clone()),
        (false.into(), false.into())
    );
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert!(ok["ts"].as_str().unwrap().ends_with('Z'), "{ok}");

    let failed = by_id("req-two");
    assert_eq!(failed["backend"], "v2");
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["error"], "connect");

    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["s3cret-query", "s3cret-auth", "s3cret-cookie", "token="] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stops_reading_drops_lines_instead_of_stalling_requests() {
    let legacy = Backend::start("legacy").await;
    // stdout is a pipe nobody reads: once its buffer is full, the writer waits for ever.
    let cutover = Cutover::start_with_unread_stdout(
        &config(&legacy, &legacy.url(), "{ path: stdout, buffer: 16 }"),
        &[],
    );
    let client = client();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..2_000 {
        let sent = Instant::now();
        let path = format!("/item/{i}");
        let request = send(
            &client,
            cutover.proxy,
            "GET",
            &path,
            &[("x-user-id", "someone")],
            Bytes::new(),
        );
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), request)
            .await
            .expect("a request waited for the log");
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(sent.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} for the log"
    );
    let dropped = cutover
        .metric("cutover_access_log_dropped_total")
        .await
        .unwrap_or(0.0);
    // The pipe holds a few hundred lines and the buffer 16; the rest were dropped.
    assert!(dropped >= 1_000.0, "{dropped} dropped");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_a_move_writes_to_a_new_file() {
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start(&config(&legacy, &legacy.url(), "{ path: access.log }"));
    let get = |id: &'static str| {
        let proxy = cutover.proxy;
        async move {
            let (status, _, _) = send(
                &client(),
                proxy,
                "GET",
                "/",
                &[("x-request-id", id)],
                Bytes::new(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    get("before-the-move").await;
    let path = cutover.dir.path().join("access.log");
    lines(&path, 1);
    let moved = cutover.dir.path().join("access.log.1");
    std::fs::rename(&path, &moved).unwrap();
    // Until the signal, lines go on to the moved file (the one cutover has open).
    get("after-the-move").await;
    assert_eq!(lines(&moved, 2)[1]["request_id"], "after-the-move");
    cutover.signal("USR1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    get("after-the-signal").await;
    let new = lines(&path, 1);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["request_id"], "after-the-signal");
    assert_eq!(lines(&moved, 2).len(), 2);
    cutover.wait_for_log("access log reopened", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_logged_as_499() {
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start(&config(&legacy, &legacy.url(), "{ path: access.log }"));
    // The backend takes 3 s; the client gives up after 300 ms.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        send(
            &client(),
            cutover.proxy,
            "GET",
            "/sleep/3000",
            &[("x-request-id", "impatient")],
            Bytes::new(),
        ),
    )
    .await;
    assert!(gave_up.is_err(), "the backend answered too soon");
    let path = cutover.dir.path().join("access.log");
    let line = lines(&path, 1).remove(0);
    assert_eq!(line["request_id"], "impatient");
    assert_eq!(line["status"], 499);
    assert_eq!(line["error"], "client-closed");
    assert_eq!(line["upstream_ms"], Value::Null, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() < 3_000.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_lines_are_written_before_cutover_exits_on_sigterm() {
    let legacy = Backend::start("legacy").await;
    let mut cutover = Cutover::start(&config(&legacy, &legacy.url(), "{ path: access.log }"));
    for i in 0..50 {
        let id = format!("last-{i}");
        let (status, _, _) = send(
            &client(),
            cutover.proxy,
            "GET",
            "/",
            &[("x-request-id", &id)],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // At once: the writer may still hold the last lines, or be between two batches.
    cutover.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cutover.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cutover did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(cutover.dir.path().join("access.log")).unwrap();
    assert_eq!(text.lines().count(), 50, "{text}");
    assert!(text.contains("\"request_id\":\"last-49\""), "{text}");
}
