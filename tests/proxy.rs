//! Forwarding end to end: the real binary between a real client and real backends.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{self, until_close};
use common::{closed_port, get, send, split_config, Backend, Cutover};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;

fn count(bodies: &[String], name: &str) -> usize {
    bodies.iter().filter(|b| b.trim() == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_without_sticky_key_is_within_statistical_bounds() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let cutover = Cutover::start(&split_config(
        &[("legacy", &legacy.url(), 90.0), ("new", &new.url(), 10.0)],
        "",
    ));
    let client = common::client();
    let mut bodies = Vec::new();
    for _ in 0..2000 {
        let (status, _, body) = send(&client, cutover.proxy, "GET", "/", &[], Bytes::new()).await;
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    // Binomial(2000, 0.1): mean 200, sd 13.4; five sigma either side.
    let to_new = count(&bodies, "new");
    assert!(
        (133..=267).contains(&to_new),
        "{to_new} of 2000 went to new"
    );
    assert_eq!(to_new + count(&bodies, "legacy"), 2000);
    let series = r#"cutover_requests_total{route="main",backend="new",code="2xx"}"#;
    assert_eq!(cutover.metric(series).await, Some(to_new as f64));
    let series = r#"cutover_requests_total{route="main",backend="legacy",code="2xx"}"#;
    assert_eq!(cutover.metric(series).await, Some((2000 - to_new) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_land_where_the_documented_bucket_says_across_restarts() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let yaml = split_config(
        &[("legacy", &legacy.url(), 70.0), ("new", &new.url(), 30.0)],
        "    sticky:\n      header: x-user-id\n",
    );
    let users: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    let mut first_run = Vec::new();
    {
        let cutover = Cutover::start(&yaml);
        for user in &users {
            let (_, _, a) = get(cutover.proxy, "/", &[("x-user-id", user)]).await;
            let (_, _, b) = get(cutover.proxy, "/", &[("x-user-id", user)]).await;
            assert_eq!(a, b, "{user} moved between two requests");
            // The public algorithm: stable owns buckets 0..7000.
            let bucket = cutover::bucket::bucket("main", user.as_bytes());
            let expected = if bucket < 7000 { "legacy" } else { "new" };
            assert_eq!(a.trim(), expected, "{user} bucket {bucket}");
            first_run.push(a);
        }
    }
    let restarted = Cutover::start(&yaml);
    for (user, before) in users.iter().zip(&first_run) {
        let (_, _, after) = get(restarted.proxy, "/", &[("x-user-id", user)]).await;
        assert_eq!(&after, before, "{user} moved across a restart");
    }
    let to_new = count(&first_run, "new");
    assert!(
        (20..=70).contains(&to_new),
        "{to_new} of 150 users on new at 30%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_502_naming_the_route() {
    let dead = closed_port().await;
    let cutover = Cutover::start(&split_config(
        &[("gone", &format!("http://{dead}"), 100.0)],
        "",
    ));
    let (status, headers, body) = get(cutover.proxy, "/x", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-cutover-error"], "connect");
    assert!(
        body.contains("route main") && body.contains("gone"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    let series = r#"cutover_upstream_failures_total{route="main",backend="gone",reason="connect"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
    let series = r#"cutover_requests_total{route="main",backend="gone",code="error"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_after_request_timeout() {
    let slow = Backend::start("slow").await;
    let cutover = Cutover::start(&split_config(&[("slow", &slow.url(), 100.0)], ""));
    let started = Instant::now();
    let (status, headers, body) = get(cutover.proxy, "/sleep/5000", &[]).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-cutover-error"], "timeout");
    assert!(body.contains("route main"), "{body}");
    // request_timeout is 2s in split_config.
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let series = r#"cutover_upstream_failures_total{route="main",backend="slow",reason="timeout"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404() {
    let legacy = Backend::start("legacy").await;
    let yaml = split_config(&[("legacy", &legacy.url(), 100.0)], "")
        .replace("path_prefix: /\n", "path_prefix: /api\n");
    let cutover = Cutover::start(&yaml);
    let (status, headers, _) = get(cutover.proxy, "/apix", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-cutover-error"], "no-route");
    let (status, _, body) = get(cutover.proxy, "/api/x", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "legacy\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_path_is_prepended_and_strip_prefix_removes_the_match() {
    let backend = Backend::start("v2").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n  v2:\n    url: {}/base\n\
         routes:\n  - name: stripped\n    match:\n      path_prefix: /api/payments\n    strip_prefix: true\n    split:\n      v2: 100\n\
         \x20 - name: kept\n    match:\n      path_prefix: /keep\n    split:\n      v2: 100\n",
        backend.url()
    );
    let cutover = Cutover::start(&yaml);
    let (_, _, body) = get(cutover.proxy, "/api/payments/headers?x=1", &[]).await;
    assert!(body.starts_with("GET /base/headers?x=1 "), "{body}");
    let (_, _, body) = get(cutover.proxy, "/keep/headers", &[]).await;
    assert!(body.starts_with("GET /base/keep/headers "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_chunked_uploads_arrive_intact() {
    let backend = Backend::start("sink").await;
    let cutover = Cutover::start(&split_config(&[("sink", &backend.url(), 100.0)], ""));
    let body: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum = body.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    let (status, _, reply) = send(
        &common::client(),
        cutover.proxy,
        "POST",
        "/upload",
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, format!("len={} sum={sum}", body.len()));

    // Chunked, written by hand so the framing is exactly what a streaming client sends.
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    let mut expected = (0u64, 0u32);
    for chunk in body.chunks(300_000).take(20) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
        expected.0 += chunk.len() as u64;
        expected.1 = chunk
            .iter()
            .fold(expected.1, |s, &b| s.wrapping_add(u32::from(b)));
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = raw::exchange(
        cutover.proxy,
        &request,
        Duration::from_secs(10),
        until_close,
    )
    .await
    .text();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.ends_with(&format!("len={} sum={}", expected.0, expected.1)),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let (addr, echo) = common::websocket_echo().await;
    let cutover = Cutover::start(&split_config(
        &[("ws", &format!("http://{addr}"), 100.0)],
        "",
    ));
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", cutover.proxy))
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "cutover"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), text);
    }
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_from_clients_and_to_backends() {
    let h2_backend = Backend::start_h("h2", true).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n  h2:\n    url: {}\n    http2: true\n\
         routes:\n  - name: grpc\n    match:\n      path_prefix: /\n    split:\n      h2: 100\n",
        h2_backend.url()
    );
    let cutover = Cutover::start(&yaml);
    // HTTP/1.1 in, h2c out.
    let (status, _, body) = get(cutover.proxy, "/headers", &[("te", "trailers")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("HTTP/2.0"), "{body}");
    assert!(body.contains("te: trailers"), "{body}");
    // h2c with prior knowledge in.
    let h2_client: common::TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let (status, _, body) = send(
        &h2_client,
        cutover.proxy,
        "GET",
        "/headers",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&format!("host: {}", cutover.proxy)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_slow_request_finish() {
    let slow = Backend::start("slow").await;
    let mut cutover = Cutover::start(&split_config(&[("slow", &slow.url(), 100.0)], ""));
    let proxy = cutover.proxy;
    let in_flight = tokio::spawn(async move { get(proxy, "/sleep/1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cutover.signal("TERM");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(status) = cutover.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cutover did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(raw::try_connect(proxy).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_histogram_has_one_infinite_bucket() {
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &legacy.url(), 100.0)], ""));
    let client = common::client();
    let (status, _, _) = send(&client, cutover.proxy, "GET", "/", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, metrics) = common::get(cutover.admin, "/metrics", &[]).await;
    let buckets: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cutover_request_duration_seconds_bucket{"))
        .collect();
    let infinite: Vec<&&str> = buckets
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("le=\"+inf\"") || l.contains("le=\"inf\""))
        .collect();
    assert_eq!(infinite.len(), 1, "{buckets:#?}");
    assert!(
        infinite[0].contains("le=\"+Inf\"") && infinite[0].ends_with(" 1"),
        "{infinite:?}"
    );
    assert_eq!(buckets.len(), 16, "15 finite bounds and +Inf: {buckets:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_written_at_once_arrives_whole_and_in_order() {
    // 1 MiB in one write: cutover hands it on in pieces (hyper would otherwise keep a write
    // buffer that large on the client connection), and every byte must arrive, in order.
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut reply =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    reply.extend_from_slice(&body);
    let backend = raw::RawBackend::start(Box::leak(reply.into_boxed_slice())).await;
    let cutover = Cutover::start(&split_config(&[("legacy", &backend.url(), 100.0)], ""));
    let client = common::client();
    let response = client
        .request(
            http::Request::get(format!("http://{}/big", cutover.proxy))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        body.len().to_string().as_str()
    );
    let received = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(received == body, "{} bytes received", received.len());
}
