//! Kill switch, guard, fallback, admin API auth and the numbers that report them, against
//! the real binary with real backends.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{admin_post, json, status_json, ADMIN_ENV, TOKEN};
use common::{closed_port, get, send, split_config, write_by_rename, Backend, Cutover, BIN};
use http::StatusCode;
use serde_json::Value;

fn half_and_half(legacy: &Backend, new: &Backend, extra: &str) -> String {
    split_config(
        &[("legacy", &legacy.url(), 50.0), ("new", &new.url(), 50.0)],
        extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_needs_the_bearer_token() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let cutover = Cutover::start_with_env(&half_and_half(&legacy, &new, ""), ADMIN_ENV);
    for path in [
        "/api/routes/main/kill",
        "/api/routes/main/resume",
        "/api/kill",
        "/api/resume",
        "/api/reload",
        "/api/routes/nope/kill",
    ] {
        let (status, body) = admin_post(&cutover, path, None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        let (status, body) = admin_post(&cutover, path, Some("wrong"), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let (status, body) = admin_post(&cutover, path, Some(TOKEN), "").await;
        let expected = if path.contains("nope") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{path}: {body}");
    }
    assert!(!cutover.logs().contains(TOKEN), "the token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_is_read_only() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let cutover = Cutover::start(&half_and_half(&legacy, &new, ""));
    let (status, body) = admin_post(&cutover, "/api/kill", Some("anything"), "").await;
    let body = json(&body);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"].as_str().unwrap().contains("no admin token"),
        "{body}"
    );
    assert_eq!(status_json(&cutover).await["routes"][0]["killed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_returns_no_request_reaches_the_new_backend() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let cutover = Cutover::start_with_env(&half_and_half(&legacy, &new, ""), ADMIN_ENV);
    let proxy = cutover.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (stop, seen) = (stop.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let client = common::client();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, _, body) = send(&client, proxy, "GET", "/", &[], Bytes::new()).await;
                assert_eq!(status, StatusCode::OK);
                seen.lock().unwrap().push((started, body.trim().to_owned()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = admin_post(
        &cutover,
        "/api/routes/main/kill",
        Some(TOKEN),
        r#"{"reason":"p99 too high"}"#,
    )
    .await;
    let killed_at = Instant::now();
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let before = seen
        .iter()
        .filter(|(t, b)| *t < killed_at && b == "new")
        .count();
    let after: Vec<_> = seen.iter().filter(|(t, _)| *t >= killed_at).collect();
    assert!(before > 0, "the split never reached new before the kill");
    assert!(
        after.len() > 20,
        "only {} requests after the kill",
        after.len()
    );
    assert!(
        after.iter().all(|(_, b)| b == "legacy"),
        "a request reached new after the kill"
    );
    let series = r#"cutover_route_killed{route="main"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
    let series = r#"cutover_route_weight{route="main",backend="new"}"#;
    assert_eq!(cutover.metric(series).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_survives_reload_and_restart_and_resume_restores_the_yaml_split() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let all_new = split_config(
        &[("legacy", &legacy.url(), 0.0), ("new", &new.url(), 100.0)],
        "",
    );
    let cutover = Cutover::start_with_env(&all_new, ADMIN_ENV);
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "new\n");
    let (status, _) = admin_post(&cutover, "/api/routes/main/kill", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");

    // A YAML edit changes the configured split, not the kill.
    let mostly_new = all_new
        .replace("legacy: 0", "legacy: 10")
        .replace("new: 100", "new: 90");
    write_by_rename(&cutover.config_path(), &mostly_new);
    cutover.wait_for_log("config applied", Duration::from_secs(3));
    for _ in 0..20 {
        assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");
    }

    let cutover = cutover.restart(ADMIN_ENV);
    for _ in 0..20 {
        assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");
    }
    let status = status_json(&cutover).await;
    let route = &status["routes"][0];
    assert_eq!(route["killed"], true);
    assert_eq!(route["kill"]["by"], "api");
    assert_eq!(route["backends"][1]["configured"], 90.0);
    assert_eq!(route["backends"][1]["effective"], 0.0);

    let (status, body) = admin_post(&cutover, "/api/routes/main/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut to_new = 0;
    for _ in 0..200 {
        to_new += usize::from(get(cutover.proxy, "/", &[]).await.2 == "new\n");
    }
    assert!(
        (160..=199).contains(&to_new),
        "{to_new} of 200 to new at 90%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_kills_a_route_whose_new_backend_fails() {
    let legacy = Backend::start("legacy").await;
    let broken = Backend::always("broken", 500).await;
    let guard = "    guard:\n      max_error_rate: 5\n      min_requests: 20\n      window: 30s\n";
    let yaml = split_config(
        &[
            ("legacy", &legacy.url(), 50.0),
            ("broken", &broken.url(), 50.0),
        ],
        guard,
    );
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let client = common::client();
    let mut errors = 0;
    for _ in 0..300 {
        let (status, _, _) = send(&client, cutover.proxy, "GET", "/", &[], Bytes::new()).await;
        errors += usize::from(status.is_server_error());
    }
    assert!(
        (20..40).contains(&errors),
        "{errors} errors reached clients"
    );
    let status = status_json(&cutover).await;
    let kill = &status["routes"][0]["kill"];
    assert_eq!(kill["by"], "guard", "{status}");
    let reason = kill["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("guard: broken 100.0% errors > 5% over 30s"),
        "{reason}"
    );
    assert_eq!(
        cutover
            .metric(r#"cutover_guard_trips_total{route="main"}"#)
            .await,
        Some(1.0)
    );
    cutover.wait_for_log("guard tripped", Duration::from_secs(1));
    // It stays tripped: the next requests all go to legacy.
    for _ in 0..20 {
        assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_replays_on_stable_when_the_new_backend_is_down() {
    let legacy = Backend::start("legacy").await;
    let dead = closed_port().await;
    let yaml = split_config(
        &[
            ("legacy", &legacy.url(), 50.0),
            ("dead", &format!("http://{dead}"), 50.0),
        ],
        "    fallback: true\n",
    );
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let mut fell_back = 0;
    for _ in 0..100 {
        let (status, headers, body) = get(cutover.proxy, "/", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "legacy\n"));
        fell_back += usize::from(headers.get("x-cutover-fallback").is_some_and(|v| v == "1"));
    }
    assert!(
        (25..=75).contains(&fell_back),
        "{fell_back} of 100 fell back"
    );
    let fallbacks = cutover
        .metric(r#"cutover_fallbacks_total{route="main"}"#)
        .await;
    assert_eq!(fallbacks, Some(fell_back as f64));
    let failures =
        r#"cutover_upstream_failures_total{route="main",backend="dead",reason="connect"}"#;
    assert_eq!(cutover.metric(failures).await, Some(fell_back as f64));
    // A POST is not idempotent: never replayed, so the client sees the 502.
    let mut bad_gateways = 0;
    for _ in 0..40 {
        let (status, headers, _) = send(
            &common::client(),
            cutover.proxy,
            "POST",
            "/",
            &[],
            Bytes::new(),
        )
        .await;
        assert!(headers.get("x-cutover-fallback").is_none());
        bad_gateways += usize::from(status == StatusCode::BAD_GATEWAY);
    }
    assert!(
        bad_gateways > 0,
        "no POST reached the dead backend in 40 tries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_total_counts_every_request_by_backend_and_class() {
    let ok = Backend::start("ok").await;
    let failing = Backend::always("failing", 503).await;
    let cutover = Cutover::start_with_env(
        &split_config(
            &[("ok", &ok.url(), 70.0), ("failing", &failing.url(), 30.0)],
            "",
        ),
        ADMIN_ENV,
    );
    let client = common::client();
    let (mut oks, mut fails) = (0, 0);
    for _ in 0..400 {
        let (status, _, _) = send(&client, cutover.proxy, "GET", "/", &[], Bytes::new()).await;
        if status == StatusCode::OK {
            oks += 1
        } else {
            fails += 1
        }
    }
    let series = |backend: &str, code: &str| {
        format!(r#"cutover_requests_total{{route="main",backend="{backend}",code="{code}"}}"#)
    };
    assert_eq!(cutover.metric(&series("ok", "2xx")).await, Some(oks as f64));
    assert_eq!(
        cutover.metric(&series("failing", "5xx")).await,
        Some(fails as f64)
    );
    let count = r#"cutover_request_duration_seconds_count{route="main",backend="failing"}"#;
    assert_eq!(cutover.metric(count).await, Some(fails as f64));
    let status = status_json(&cutover).await;
    assert_eq!(status["routes"][0]["backends"][1]["requests"], fails);
    assert_eq!(status["routes"][0]["backends"][1]["error_percent"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_over_the_api_applies_or_lists_every_error() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let yaml = half_and_half(&legacy, &new, "");
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let (status, body) = admin_post(&cutover, "/api/reload", Some(TOKEN), "").await;
    let body = json(&body);
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("unchanged"))
    );
    std::fs::write(
        cutover.config_path(),
        yaml.replace("new: 50", "new: 40")
            .replace("legacy: 50", "legacy: 60"),
    )
    .unwrap();
    let (status, body) = admin_post(&cutover, "/api/reload", Some(TOKEN), "").await;
    let body = json(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["generation"].as_u64().unwrap() >= 2, "{body}");
    std::fs::write(cutover.config_path(), yaml.replace("new: 50", "v3: 50")).unwrap();
    let (status, body) = admin_post(&cutover, "/api/reload", Some(TOKEN), "").await;
    let body = json(&body);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("unknown backend \"v3\"")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_kills_resumes_and_shows_status() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let cutover = Cutover::start_with_env(&half_and_half(&legacy, &new, ""), ADMIN_ENV);
    let admin = format!("http://{}", cutover.admin);
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = std::process::Command::new(BIN);
        command
            .args(args)
            .args(["--admin", &admin])
            .env_remove("CUTOVER_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("CUTOVER_ADMIN_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) = cli(&["kill", "main"], None);
    assert!(!ok && out.contains("set $CUTOVER_ADMIN_TOKEN"), "{out}");
    let (ok, out) = cli(&["kill", "main"], Some("wrong"));
    assert!(!ok && out.contains("wrong bearer token"), "{out}");
    let (ok, out) = cli(&["kill", "nope"], Some(TOKEN));
    assert!(!ok && out.contains("no route named \"nope\""), "{out}");
    let (ok, out) = cli(
        &["kill", "main", "--reason", "errors on checkout"],
        Some(TOKEN),
    );
    assert!(ok && out.contains("main: killed"), "{out}");
    let (ok, out) = cli(&["status"], None);
    assert!(ok, "{out}");
    assert!(
        out.contains("KILLED by cli") && out.contains("errors on checkout"),
        "{out}"
    );
    assert!(out.contains("50→0"), "{out}");
    let (ok, out) = cli(&["resume", "--all"], Some(TOKEN));
    assert!(ok && out.contains("main: resumed"), "{out}");
    assert_eq!(status_json(&cutover).await["routes"][0]["killed"], false);

    let dead = closed_port().await;
    let output = std::process::Command::new(BIN)
        .args(["status", "--admin", &format!("http://{dead}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("cannot reach the admin API"),
        "{stderr}"
    );
}

/// Names are any printable text: markup and slashes go through the CLI, the admin API (percent
/// encoded) and OFREP, and come back unchanged in the status JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_markup_and_slashes_work_through_cli_api_and_ofrep() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let route = "<img src=x onerror=alert(1)>";
    let flag = "checkout/new <b>";
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nflags_api:\n  listen: 127.0.0.1:0\n\
         backends:\n  legacy: {{url: '{}'}}\n  new: {{url: '{}'}}\n\
         routes:\n  - name: '{route}'\n    match: {{path_prefix: /}}\n    split: {{legacy: 0, new: 100}}\n    stable: legacy\n\
         flags:\n  '{flag}':\n    variants: {{ a: 1, b: 2 }}\n    default: a\n",
        legacy.url(),
        new.url()
    );
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let output = std::process::Command::new(BIN)
        .args([
            "kill",
            route,
            "--admin",
            &format!("http://{}", cutover.admin),
        ])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let (_, _, body) = get(cutover.proxy, "/", &[]).await;
    assert_eq!(body, "legacy\n", "the kill by that name took effect");
    let status = status_json(&cutover).await;
    assert_eq!(
        (
            status["routes"][0]["name"].as_str(),
            status["routes"][0]["killed"].as_bool()
        ),
        (Some(route), Some(true))
    );

    let encoded = "checkout%2Fnew%20%3Cb%3E";
    let (code, body) = admin_post(
        &cutover,
        &format!("/api/flags/{encoded}/kill"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(status_json(&cutover).await["flags"][0]["killed"], true);
    let (code, _, body) = send(
        &common::client(),
        cutover.flags.unwrap(),
        "POST",
        &format!("/ofrep/v1/evaluate/flags/{encoded}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (value["key"].as_str(), value["reason"].as_str()),
        (Some(flag), Some("DISABLED"))
    );

    // Refused: bidirectional formatting, dot segments (a browser would turn
    // `/api/routes/../kill` into `/api/kill`) and backslashes (lost in Prometheus labels).
    for bad in ["pay\u{202E}ments", "..", ".", "a\\\\b"] {
        std::fs::write(cutover.config_path(), yaml.replace(route, bad)).unwrap();
        let (code, body) = admin_post(&cutover, "/api/reload", Some(TOKEN), "").await;
        let body = json(&body);
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(
            body.to_string().contains("without control characters"),
            "{body}"
        );
    }
}
