//! Shadow traffic end to end: the real binary, a stable backend and a candidate (and a second
//! stable instance for noise) on 127.0.0.1, each answering as the test scripts it and
//! recording what it received.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, get, send, Cutover, BIN};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What a scripted backend received.
#[derive(Clone)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An answer: status, content type, body.
type Answer = (u16, &'static str, String);
type Script = dyn Fn(&Seen, u64) -> Answer + Send + Sync;

/// A backend answering with `script(request, n)` (n counts its requests from 0), recording
/// every request it received.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: impl Fn(&Seen, u64) -> Answer + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let count = Arc::new(AtomicU64::new(0));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, count, log) = (script.clone(), count.clone(), log.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (script, count, log) = (script.clone(), count.clone(), log.clone());
                        async move {
                            let (head, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: head.method.to_string(),
                                target: head.uri.to_string(),
                                headers: head.headers,
                                body,
                            };
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            let (status, content_type, body) = script(&seen, n);
                            log.lock().unwrap().push(seen);
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            let headers = response.headers_mut();
                            headers.insert("content-type", content_type.parse().unwrap());
                            // Fixed, so that two answers in different seconds are alike.
                            headers
                                .insert("date", "Fri, 04 Dec 2026 00:00:00 GMT".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

const JSON: &str = "application/json";

/// An order as JSON; `total` and `generated_at` vary between the tests' backends.
fn order(path: &str, total: &str, generated_at: u64) -> Answer {
    (
        200,
        JSON,
        format!(
            r#"{{"path": "{path}", "total": {total}, "items": [{{"sku": "a", "qty": 1}}], "meta": {{"generated_at": {generated_at}}}}}"#
        ),
    )
}

/// A config with route `main` (everything) on `legacy` only, shadowed to `v2` with `shadow`
/// (YAML lines under `shadow:`, indented 6), and more backends from `extra`.
fn config(legacy: &str, v2: &str, extra: &[(&str, String)], shadow: &str) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n  legacy:\n    url: {legacy}\n  v2:\n    url: {v2}\n"
    );
    for (name, url) in extra {
        yaml.push_str(&format!("  {name}:\n    url: {url}\n"));
    }
    yaml.push_str(&format!(
        "routes:\n  - name: main\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 100, v2: 0 }}\n    shadow:\n      to: v2\n{shadow}"
    ));
    yaml
}

/// Waits until route `main`'s shadow counter for `result` reaches `at_least`, and returns it.
async fn wait_for_result(cutover: &Cutover, result: &str, at_least: f64) -> f64 {
    wait_for_route_result(cutover, "main", result, at_least).await
}

/// [`wait_for_result`] for any route.
async fn wait_for_route_result(cutover: &Cutover, route: &str, result: &str, at_least: f64) -> f64 {
    let series = format!("cutover_shadow_requests_total{{route=\"{route}\",result=\"{result}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = cutover.metric(&series).await.unwrap_or(0.0);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn diffs(cutover: &Cutover) -> serde_json::Value {
    let (status, _, body) = get(cutover.admin, "/api/routes/main/diffs", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn identical_answers_match_and_the_copy_carries_the_shadow_header_and_request_id() {
    let legacy = Scripted::start(|seen, _| order(&seen.target, "12.5", 1)).await;
    // The same document with keys in another order and 12.5 written as 1.25e1.
    let v2 = Scripted::start(|seen, _| {
        (
            200,
            JSON,
            format!(
                r#"{{"meta": {{"generated_at": 1}}, "items": [{{"qty": 1, "sku": "a"}}], "total": 1.25e1, "path": "{}"}}"#,
                seen.target
            ),
        )
    })
    .await;
    let cutover = Cutover::start(&config(&legacy.url(), &v2.url(), &[], ""));
    for i in 0..20 {
        // A client cannot pass a real request off as a copy: cutover removes the mark.
        let forged = [("x-cutover-shadow", "1")];
        let (status, _, body) =
            get(cutover.proxy, &format!("/orders/{i}?user=u{i}"), &forged).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#""total": 12.5"#),
            "the client gets stable's answer: {body}"
        );
    }
    assert_eq!(wait_for_result(&cutover, "match", 20.0).await, 20.0);
    for result in ["mismatch", "error", "timeout", "dropped"] {
        assert_eq!(
            wait_for_result(&cutover, result, 0.0).await,
            0.0,
            "{result}"
        );
    }
    let (stable_seen, copies) = (legacy.seen(), v2.seen());
    assert_eq!(copies.len(), 20);
    for copy in &copies {
        assert_eq!(copy.headers["x-cutover-shadow"], "1");
        let id = &copy.headers["x-request-id"];
        let primary = stable_seen
            .iter()
            .find(|s| s.headers["x-request-id"] == id)
            .expect("the copy has the primary's request id");
        assert_eq!(primary.target, copy.target);
        assert!(!primary.headers.contains_key("x-cutover-shadow"));
    }
    // Copies are no traffic of the candidate's: no requests counted, no window.
    assert_eq!(
        cutover
            .metric("cutover_requests_total{route=\"main\",backend=\"v2\",code=\"2xx\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    let status = common::admin::status_json(&cutover).await;
    let route = &status["routes"][0];
    assert_eq!(route["backends"][1]["requests"], 0);
    assert_eq!(route["shadow"]["counts"]["match"], 20);
    assert_eq!(route["shadow"]["match_percent"], 100.0);
    assert_eq!(route["shadow"]["diffs"], "/api/routes/main/diffs");
}

#[tokio::test]
async fn a_differing_field_is_a_mismatch_with_its_pointer_unless_ignored() {
    let legacy = Scripted::start(|seen, _| order(&seen.target, "12.5", 1)).await;
    let v2 = Scripted::start(|seen, _| {
        let total = if seen.target.starts_with("/orders/7") {
            "12.51"
        } else {
            "12.5"
        };
        order(&seen.target, total, 1)
    })
    .await;
    let yaml = config(&legacy.url(), &v2.url(), &[], "      samples: 2\n")
        + "  - name: ignored\n    match: { path_prefix: /ignored }\n    split: { legacy: 100 }\n";
    // `ignored` comes after the catch-all in this order, so swap them: ignored first.
    let yaml = yaml.replace(
        "routes:\n",
        "routes:\n  - name: ignoring\n    match: { path_prefix: /ignoring }\n    split: { legacy: 100, v2: 0 }\n    shadow: { to: v2, compare: { ignore_json: [/total] } }\n",
    );
    let yaml = yaml.replace(
        "  - name: ignored\n    match: { path_prefix: /ignored }\n    split: { legacy: 100 }\n",
        "",
    );
    let cutover = Cutover::start(&yaml);
    for path in [
        "/orders/1",
        "/orders/7?secret=s3",
        "/orders/2",
        "/orders/7",
        "/orders/7",
    ] {
        get(cutover.proxy, path, &[]).await;
    }
    assert_eq!(wait_for_result(&cutover, "mismatch", 3.0).await, 3.0);
    assert_eq!(wait_for_result(&cutover, "match", 2.0).await, 2.0);
    let found = diffs(&cutover).await;
    assert_eq!(found["counts"]["mismatch"], 3);
    let samples = found["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "samples: 2 keeps the last two");
    for sample in samples {
        assert_eq!(sample["path"], "/orders/7", "no query string is kept");
        assert_eq!(sample["method"], "GET");
        assert_eq!(sample["primary_status"], 200);
        assert_eq!(sample["candidate_status"], 200);
        assert_eq!(sample["differences_total"], 1);
        assert_eq!(
            sample["differences"][0],
            serde_json::json!({"pointer": "/body/total", "primary": "12.5", "candidate": "12.51"})
        );
        let id = sample["request_id"].as_str().unwrap();
        assert!(legacy
            .seen()
            .iter()
            .any(|s| s.headers["x-request-id"] == id));
    }
    assert!(!found.to_string().contains("s3"), "{found}");

    // The same difference under ignore_json is a match.
    for _ in 0..3 {
        get(cutover.proxy, "/ignoring/orders/7", &[]).await;
    }
    assert_eq!(
        wait_for_route_result(&cutover, "ignoring", "match", 3.0).await,
        3.0
    );
    assert_eq!(
        cutover
            .metric("cutover_shadow_requests_total{route=\"ignoring\",result=\"mismatch\"}")
            .await,
        Some(0.0)
    );

    // `cutover diffs` prints the same, as a person reads it.
    let output = std::process::Command::new(BIN)
        .args([
            "diffs",
            "main",
            "--admin",
            &format!("http://{}", cutover.admin),
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("match 40% of 5 compared · mismatch 3"),
        "{printed}"
    );
    assert!(printed.contains("GET /orders/7"), "{printed}");
    assert!(
        printed.contains("/body/total\n      stable:    12.5\n      v2:        12.51"),
        "{printed}"
    );
    let output = std::process::Command::new(BIN)
        .args([
            "diffs",
            "nowhere",
            "--admin",
            &format!("http://{}", cutover.admin),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no route named \"nowhere\""));
}

#[tokio::test]
async fn noise_learned_from_a_second_stable_instance_is_ignored_and_real_differences_still_count() {
    // Every answer has its own generated_at; v2 also differs in total on /real.
    let clock = Arc::new(AtomicU64::new(1_000));
    let tick = move || clock.fetch_add(1, Ordering::SeqCst);
    let (t1, t2, t3) = (tick.clone(), tick.clone(), tick);
    let legacy = Scripted::start(move |seen, _| order(&seen.target, "10", t1())).await;
    let legacy_b = Scripted::start(move |seen, _| order(&seen.target, "10", t2())).await;
    let v2 = Scripted::start(move |seen, _| {
        let total = if seen.target == "/real" { "11" } else { "10" };
        order(&seen.target, total, t3())
    })
    .await;
    let with_noise = config(
        &legacy.url(),
        &v2.url(),
        &[("legacy-b", legacy_b.url())],
        "      compare: { noise: legacy-b }\n",
    );
    let cutover = Cutover::start(&with_noise);
    for _ in 0..10 {
        get(cutover.proxy, "/items", &[]).await;
    }
    assert_eq!(wait_for_result(&cutover, "match", 10.0).await, 10.0);
    for _ in 0..5 {
        get(cutover.proxy, "/real", &[]).await;
    }
    assert_eq!(wait_for_result(&cutover, "mismatch", 5.0).await, 5.0);
    let found = diffs(&cutover).await;
    assert_eq!(
        found["learned_noise"],
        serde_json::json!(["/body/meta/generated_at"])
    );
    for sample in found["samples"].as_array().unwrap() {
        let pointers: Vec<&str> = sample["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(pointers, ["/body/total"]);
    }
    assert_eq!(
        legacy_b.seen().len(),
        15,
        "the noise instance gets every copy"
    );
    drop(cutover);

    // The control: without noise, the varying field is a mismatch every time.
    let cutover = Cutover::start(&config(&legacy.url(), &v2.url(), &[], ""));
    for _ in 0..10 {
        get(cutover.proxy, "/items", &[]).await;
    }
    assert_eq!(wait_for_result(&cutover, "mismatch", 10.0).await, 10.0);
    assert_eq!(wait_for_result(&cutover, "match", 0.0).await, 0.0);
}

/// A candidate that accepts connections and never answers.
async fn stalled() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_stalled_candidate_costs_the_client_nothing_and_copies_past_max_inflight_are_dropped() {
    let legacy = Scripted::start(|seen, _| order(&seen.target, "1", 1)).await;
    let (v2, _task) = stalled().await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &format!("http://{v2}"),
        &[],
        "      timeout: 1500ms\n      max_inflight: 3\n",
    ));
    let started = Instant::now();
    for i in 0..10 {
        let asked = Instant::now();
        let (status, _, _) = get(cutover.proxy, &format!("/o/{i}"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "request {i} took {:?}",
            asked.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "all ten before the first copy timed out"
    );
    assert_eq!(wait_for_result(&cutover, "dropped", 7.0).await, 7.0);
    assert_eq!(diffs(&cutover).await["in_flight"], 3);
    assert_eq!(wait_for_result(&cutover, "timeout", 3.0).await, 3.0);
    assert_eq!(diffs(&cutover).await["in_flight"], 0);
    // The slots are free again.
    get(cutover.proxy, "/o/again", &[]).await;
    assert_eq!(wait_for_result(&cutover, "timeout", 4.0).await, 4.0);
}

#[tokio::test]
async fn a_candidate_that_is_down_or_answers_garbage_counts_as_error() {
    let legacy = Scripted::start(|seen, _| order(&seen.target, "1", 1)).await;
    let down = common::closed_port().await;
    let cutover = Cutover::start(&config(&legacy.url(), &format!("http://{down}"), &[], ""));
    for _ in 0..5 {
        let (status, _, body) = get(cutover.proxy, "/o", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"total\": 1"));
    }
    assert_eq!(wait_for_result(&cutover, "error", 5.0).await, 5.0);
    drop(cutover);

    let garbage = common::raw::RawBackend::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    let cutover = Cutover::start(&config(&legacy.url(), &garbage.url(), &[], ""));
    for _ in 0..3 {
        let (status, _, _) = get(cutover.proxy, "/o", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(wait_for_result(&cutover, "error", 3.0).await, 3.0);
}

#[tokio::test]
async fn writes_are_copied_only_when_listed_and_their_body_is_teed() {
    let legacy =
        Scripted::start(|seen, _| (200, "text/plain", format!("{} bytes", seen.body.len()))).await;
    let v2 =
        Scripted::start(|seen, _| (200, "text/plain", format!("{} bytes", seen.body.len()))).await;
    let cutover = Cutover::start(&config(&legacy.url(), &v2.url(), &[], ""));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (status, _, answer) = send(
        &client(),
        cutover.proxy,
        "POST",
        "/orders",
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!((status, answer.as_str()), (StatusCode::OK, "200000 bytes"));
    get(cutover.proxy, "/orders", &[]).await;
    assert_eq!(wait_for_result(&cutover, "match", 1.0).await, 1.0);
    let copies = v2.seen();
    assert_eq!(copies.len(), 1, "only the GET is copied by default");
    assert_eq!(copies[0].method, "GET");
    drop(cutover);

    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[],
        "      methods: [GET, POST]\n      max_body: 256KiB\n",
    ));
    assert!(
        cutover
            .logs()
            .contains("POST requests are copied to \"v2\""),
        "{}",
        cutover.logs()
    );
    // Streamed in chunks, with no Content-Length: the copy is taken as it passes.
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
        .chunks(16 * 1024)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let chunked_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let response = chunked_client
        .request(
            Request::post(format!("http://{}/orders", cutover.proxy))
                .body(streamed)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(wait_for_result(&cutover, "match", 1.0).await, 1.0);
    let posted: Vec<Seen> = v2
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posted.len(), 1);
    assert_eq!(
        posted[0].body,
        Bytes::from(body.clone()),
        "the candidate got the same bytes"
    );
    let stable_posts: Vec<Seen> = legacy
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(stable_posts.last().unwrap().body, Bytes::from(body.clone()));

    // A body over max_body goes to stable whole and is not copied.
    let big = Bytes::from(vec![7u8; 300 * 1024]);
    let (_, _, answer) = send(&client(), cutover.proxy, "POST", "/orders", &[], big).await;
    assert_eq!(answer, "307200 bytes");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(v2.seen().iter().filter(|s| s.method == "POST").count(), 1);
}

#[tokio::test]
async fn with_a_sticky_key_the_same_users_are_copied_every_time() {
    let legacy = Scripted::start(|_, _| (200, "text/plain", "ok".into())).await;
    let v2 = Scripted::start(|_, _| (200, "text/plain", "ok".into())).await;
    let yaml = config(&legacy.url(), &v2.url(), &[], "      percent: 50\n").replace(
        "    shadow:\n",
        "    sticky: { header: x-user }\n    shadow:\n",
    );
    let cutover = Cutover::start(&yaml);
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    for _ in 0..3 {
        for user in &users {
            get(cutover.proxy, "/", &[("x-user", user)]).await;
        }
    }
    let total = wait_for_result(&cutover, "match", 1.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let copies = v2.seen();
    assert_eq!(
        copies.len() as f64,
        wait_for_result(&cutover, "match", total).await
    );
    let copied: Vec<&String> = users
        .iter()
        .filter(|u| copies.iter().any(|c| c.headers["x-user"] == u.as_str()))
        .collect();
    for user in &copied {
        let times = copies
            .iter()
            .filter(|c| c.headers["x-user"] == user.as_str())
            .count();
        assert_eq!(times, 3, "{user} is copied every time or never");
    }
    assert!(
        (8..=32).contains(&copied.len()),
        "about half of 40 users: {}",
        copied.len()
    );
}

#[tokio::test]
async fn large_answers_compare_by_length_and_digest() {
    let big = |last: char| {
        let mut body = "x".repeat(4095);
        body.push(last);
        body
    };
    let legacy = Scripted::start(move |_, _| (200, "text/plain", big('a'))).await;
    let v2 = Scripted::start(move |seen, _| {
        (
            200,
            "text/plain",
            big(if seen.target == "/differs" { 'b' } else { 'a' }),
        )
    })
    .await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[],
        "      max_body: 1KiB\n",
    ));
    let (_, _, body) = get(cutover.proxy, "/same", &[]).await;
    assert_eq!(body.len(), 4096);
    assert_eq!(wait_for_result(&cutover, "match", 1.0).await, 1.0);
    get(cutover.proxy, "/differs", &[]).await;
    assert_eq!(wait_for_result(&cutover, "mismatch", 1.0).await, 1.0);
    let difference = &diffs(&cutover).await["samples"][0]["differences"][0];
    assert_eq!(difference["pointer"], "/body");
    assert!(
        difference["primary"]
            .as_str()
            .unwrap()
            .starts_with("\"4096 bytes, sha256 "),
        "{difference}"
    );
    assert_ne!(difference["primary"], difference["candidate"]);
}

#[tokio::test]
async fn credentials_and_ignored_headers_are_never_kept() {
    let legacy = Scripted::start(|_, n| (200, "text/plain", format!("a{n}"))).await;
    let v2 = Scripted::start(|_, _| (201, "text/plain", "b".into())).await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[],
        "      compare: { ignore_headers: [x-trace] }\n",
    ));
    get(
        cutover.proxy,
        "/me",
        &[
            ("authorization", "Bearer hunter2"),
            ("cookie", "session=hunter3"),
            ("x-trace", "t-1"),
        ],
    )
    .await;
    assert_eq!(wait_for_result(&cutover, "mismatch", 1.0).await, 1.0);
    let found = diffs(&cutover).await.to_string();
    assert!(found.contains("/status"), "{found}");
    for secret in ["hunter2", "hunter3", "t-1"] {
        assert!(!found.contains(secret), "{secret} in {found}");
        assert!(!cutover.logs().contains(secret));
    }
    // A route without shadow has no diffs.
    let (status, _, body) = get(cutover.admin, "/api/routes/elsewhere/diffs", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn large_json_answers_are_compared_structurally_too() {
    // About 16 KiB each, together past what is compared inline: the blocking pool compares them.
    let document = |total: &str| {
        let items: Vec<String> = (0..400)
            .map(|i| format!(r#"{{"id": {i}, "sku": "SKU-{i:05}", "qty": 1}}"#))
            .collect();
        format!(r#"{{"items": [{}], "total": {total}}}"#, items.join(", "))
    };
    let legacy = Scripted::start(move |_, _| (200, JSON, document("10"))).await;
    let v2 = Scripted::start(move |seen, _| {
        let total = if seen.target == "/differs" {
            "11"
        } else {
            "1e1"
        };
        (200, JSON, document(total))
    })
    .await;
    let cutover = Cutover::start(&config(&legacy.url(), &v2.url(), &[], ""));
    let (_, _, body) = get(cutover.proxy, "/same", &[]).await;
    assert!(body.len() > 12 * 1024);
    assert_eq!(wait_for_result(&cutover, "match", 1.0).await, 1.0);
    get(cutover.proxy, "/differs", &[]).await;
    assert_eq!(wait_for_result(&cutover, "mismatch", 1.0).await, 1.0);
    assert_eq!(
        diffs(&cutover).await["samples"][0]["differences"][0],
        serde_json::json!({"pointer": "/body/total", "primary": "10", "candidate": "11"})
    );
}

#[tokio::test]
async fn a_noise_instance_gets_no_writes_and_a_slow_one_costs_the_comparison_nothing() {
    let legacy = Scripted::start(|seen, _| order(&seen.target, "1", 1)).await;
    let v2 = Scripted::start(|seen, _| order(&seen.target, "1", 1)).await;
    let legacy_b = Scripted::start(|seen, _| order(&seen.target, "1", 1)).await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[("legacy-b", legacy_b.url())],
        "      methods: [GET, POST]\n      compare: { noise: legacy-b }\n",
    ));
    send(
        &client(),
        cutover.proxy,
        "POST",
        "/orders",
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    get(cutover.proxy, "/orders", &[]).await;
    assert_eq!(wait_for_result(&cutover, "match", 2.0).await, 2.0);
    let methods = |seen: Vec<Seen>| seen.into_iter().map(|s| s.method).collect::<Vec<_>>();
    assert_eq!(methods(v2.seen()), ["POST", "GET"]);
    assert_eq!(
        methods(legacy_b.seen()),
        ["GET"],
        "the POST was not sent to the noise instance"
    );
    drop(cutover);

    let (stuck, _task) = stalled().await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[("legacy-b", format!("http://{stuck}"))],
        "      timeout: 500ms\n      compare: { noise: legacy-b }\n",
    ));
    for _ in 0..3 {
        get(cutover.proxy, "/orders", &[]).await;
    }
    assert_eq!(wait_for_result(&cutover, "match", 3.0).await, 3.0);
    assert_eq!(wait_for_result(&cutover, "timeout", 0.0).await, 0.0);
}

#[tokio::test]
async fn a_copy_whose_request_body_is_not_whole_within_timeout_is_dropped() {
    let legacy =
        Scripted::start(|seen, _| (200, "text/plain", format!("{} bytes", seen.body.len()))).await;
    let v2 =
        Scripted::start(|seen, _| (200, "text/plain", format!("{} bytes", seen.body.len()))).await;
    let cutover = Cutover::start(&config(
        &legacy.url(),
        &v2.url(),
        &[],
        "      methods: [POST]\n      timeout: 300ms\n",
    ));
    // Four chunks, 200 ms apart: the whole body takes longer than the copy may.
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..4 {
            let chunk = http_body::Frame::data(Bytes::from_static(b"0123456789"));
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let slow = http_body_util::StreamBody::new(tokio_stream_from(receiver));
    let chunked = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let response = chunked
        .request(
            Request::post(format!("http://{}/upload", cutover.proxy))
                .body(slow)
                .unwrap(),
        )
        .await
        .unwrap();
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        answer, "40 bytes",
        "stable gets the whole body, at the client's pace"
    );
    assert_eq!(wait_for_result(&cutover, "dropped", 1.0).await, 1.0);
    assert!(v2.seen().is_empty(), "no copy was sent");
}

/// A stream of what `receiver` yields.
fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn stable_over_http2_and_head_requests_are_compared_too() {
    // (Over h2c the target is in absolute form, so the answers do not echo it.)
    let legacy = Scripted::start(|_, _| order("/orders/1", "3", 1)).await;
    let v2 = Scripted::start(|_, _| order("/orders/1", "3", 1)).await;
    // Stable spoken to over h2c: its answer ends with a flag, not a length or a last chunk.
    let yaml = config(&legacy.url(), &v2.url(), &[], "").replace(
        &format!("  legacy:\n    url: {}\n", legacy.url()),
        &format!("  legacy:\n    url: {}\n    http2: true\n", legacy.url()),
    );
    assert!(yaml.contains("http2: true"), "{yaml}");
    let cutover = Cutover::start(&yaml);
    for _ in 0..3 {
        let (status, _, body) = get(cutover.proxy, "/orders/1", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"total\": 3"));
    }
    let (status, _, body) = send(
        &client(),
        cutover.proxy,
        "HEAD",
        "/orders/1",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let matched = wait_for_result(&cutover, "match", 4.0).await;
    assert_eq!(matched, 4.0, "{}", diffs(&cutover).await["counts"]);
    assert_eq!(wait_for_result(&cutover, "dropped", 0.0).await, 0.0);
    let methods: Vec<String> = v2.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["GET", "GET", "GET", "HEAD"]);
}
