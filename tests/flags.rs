//! The flags API against the real binary: OFREP single and bulk evaluation, its errors,
//! ETags, and the GET form.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{admin_post, ADMIN_ENV, TOKEN};
use common::raw::{self, contains};
use common::{get, send, write_by_rename, Cutover};
use http::StatusCode;
use serde_json::{json, Value};

const FLAGS: &str = r#"
flags:
  new-checkout:
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - when: { country: { in: [NL, BE] } }
        serve: "on"
    rollout: { "on": 25, "off": 75 }
  banner-text:
    variants: { short: "Hi", long: "Hello there" }
    default: short
  max-items:
    variants: { few: 3, many: 30 }
    default: few
    rules:
      - when: { plan: pro }
        serve: many
  price-factor:
    variants: { normal: 1.0, discount: 0.85 }
    default: normal
  layout:
    variants: { classic: { columns: 2 }, wide: { columns: 3 } }
    default: wide
"#;

fn config() -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nflags_api:\n  listen: 127.0.0.1:0\n\
         backends:\n  legacy: {{url: 'http://127.0.0.1:9'}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, split: {{legacy: 100}}}}\n{FLAGS}"
    )
}

async fn ofrep(
    cutover: &Cutover,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Value) {
    let (status, headers, body) = send(
        &common::client(),
        cutover.flags.expect("flags API listening"),
        "POST",
        path,
        headers,
        Bytes::from(body.to_owned()),
    )
    .await;
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

async fn evaluate(cutover: &Cutover, key: &str, context: Value) -> (StatusCode, Value) {
    let body = json!({ "context": context }).to_string();
    let (status, _, value) = ofrep(
        cutover,
        &format!("/ofrep/v1/evaluate/flags/{key}"),
        &body,
        &[],
    )
    .await;
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flag_evaluation_follows_the_reason_rules() {
    let cutover = Cutover::start(&config());
    let (status, value) = evaluate(
        &cutover,
        "new-checkout",
        json!({"targetingKey": "u1", "country": "NL"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        value,
        json!({"key": "new-checkout", "reason": "TARGETING_MATCH", "variant": "on", "value": true, "metadata": {}})
    );

    // The rollout, exactly as flagd's fractional v2 would put each key.
    for user in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"] {
        let (_, value) = evaluate(
            &cutover,
            "new-checkout",
            json!({"targetingKey": user, "country": "DE"}),
        )
        .await;
        assert_eq!(value["reason"], "SPLIT");
        let bucket = cutover::bucket::bucket("new-checkout", user.as_bytes());
        assert_eq!(
            value["variant"],
            if bucket < 2500 { "on" } else { "off" },
            "{user}"
        );
    }
    let (_, value) = evaluate(&cutover, "new-checkout", json!({"country": "DE"})).await;
    assert_eq!(
        (value["reason"].as_str(), value["variant"].as_str()),
        (Some("DEFAULT"), Some("off"))
    );
    let (_, value) = evaluate(&cutover, "banner-text", json!({})).await;
    assert_eq!(
        (value["reason"].as_str(), value["value"].as_str()),
        (Some("STATIC"), Some("Hi"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_keep_their_types() {
    let cutover = Cutover::start(&config());
    let (_, value) = evaluate(&cutover, "max-items", json!({"plan": "pro"})).await;
    assert_eq!(value["value"], json!(30));
    let (_, _, raw) = send(
        &common::client(),
        cutover.flags.unwrap(),
        "POST",
        "/ofrep/v1/evaluate/flags/price-factor",
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert!(
        raw.contains("\"value\":1.0"),
        "a float stays a float: {raw}"
    );
    let (_, value) = evaluate(&cutover, "layout", json!({})).await;
    assert_eq!(value["value"], json!({"columns": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_ofrep_errors() {
    let cutover = Cutover::start(&config());
    let (status, value) = evaluate(&cutover, "nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (value["key"].as_str(), value["errorCode"].as_str()),
        (Some("nope"), Some("FLAG_NOT_FOUND"))
    );
    assert!(value["errorDetails"].is_string());
    for body in [
        "{not json",
        r#"[{"context": {}}]"#,
        "5",
        r#"{"context": {}} x"#,
    ] {
        let (status, _, value) =
            ofrep(&cutover, "/ofrep/v1/evaluate/flags/banner-text", body, &[]).await;
        assert_eq!(
            (status, value["errorCode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("PARSE_ERROR")),
            "{body}"
        );
    }
    let (status, _, value) = ofrep(
        &cutover,
        "/ofrep/v1/evaluate/flags/banner-text",
        r#"{"context": 5}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status, value["errorCode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_CONTEXT"))
    );
    // Real clients send an empty body, no context, or no targeting key: all are fine.
    for body in ["", "{}", r#"{"context": {}}"#] {
        let (status, _, value) =
            ofrep(&cutover, "/ofrep/v1/evaluate/flags/banner-text", body, &[]).await;
        assert_eq!(
            (status, value["variant"].as_str()),
            (StatusCode::OK, Some("short")),
            "{body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_evaluation_has_an_etag_that_follows_config_and_context() {
    let cutover = Cutover::start(&config());
    let context = r#"{"context": {"targetingKey": "u1", "country": "NL"}}"#;
    let (status, headers, value) = ofrep(&cutover, "/ofrep/v1/evaluate/flags", context, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let flags = value["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 5);
    assert_eq!(flags[0]["key"], "new-checkout");
    assert_eq!(flags[0]["variant"], "on");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let (status, _, _) = ofrep(
        &cutover,
        "/ofrep/v1/evaluate/flags",
        context,
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    // Another context is never answered 304.
    let other = r#"{"context": {"targetingKey": "u2", "country": "NL"}}"#;
    let (status, headers, _) = ofrep(
        &cutover,
        "/ofrep/v1/evaluate/flags",
        other,
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(headers["etag"].to_str().unwrap(), etag);

    // A flag edit changes it too.
    let edited = config().replace(r#"{ "on": 25, "off": 75 }"#, r#"{ "on": 50, "off": 50 }"#);
    write_by_rename(&cutover.config_path(), &edited);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, headers, _) = ofrep(
            &cutover,
            "/ofrep/v1/evaluate/flags",
            context,
            &[("if-none-match", &etag)],
        )
        .await;
        if status == StatusCode::OK {
            assert_ne!(headers["etag"].to_str().unwrap(), etag);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ETag unchanged after a flag edit"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_form_takes_the_context_from_the_query() {
    let cutover = Cutover::start(&config());
    let flags = cutover.flags.unwrap();
    let (status, _, body) = get(flags, "/flags/new-checkout?targetingKey=u1&country=NL", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (value["reason"].as_str(), value["value"].as_bool()),
        (Some("TARGETING_MATCH"), Some(true))
    );
    let (status, _, _) = get(flags, "/flags/nope", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_kill_serves_the_default_survives_restart_and_is_counted() {
    let cutover = Cutover::start_with_env(&config(), ADMIN_ENV);
    let nl = json!({"targetingKey": "u1", "country": "NL"});
    assert_eq!(
        evaluate(&cutover, "new-checkout", nl.clone()).await.1["variant"],
        "on"
    );

    let admin = format!("http://{}", cutover.admin);
    let output = std::process::Command::new(common::BIN)
        .args([
            "kill",
            "--flag",
            "new-checkout",
            "--reason",
            "checkout errors",
            "--admin",
            &admin,
        ])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, value) = evaluate(&cutover, "new-checkout", nl.clone()).await;
    assert_eq!(
        (value["variant"].as_str(), value["reason"].as_str()),
        (Some("off"), Some("DISABLED"))
    );

    let cutover = cutover.restart(ADMIN_ENV);
    let (_, value) = evaluate(&cutover, "new-checkout", nl.clone()).await;
    assert_eq!(
        value["reason"], "DISABLED",
        "the flag kill did not survive a restart"
    );
    let (_, _, body) = get(cutover.admin, "/api/status", &[]).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    let flag = &status["flags"][0];
    assert_eq!(
        (flag["key"].as_str(), flag["killed"].as_bool()),
        (Some("new-checkout"), Some(true))
    );
    assert_eq!(flag["kill"]["reason"], "checkout errors");
    // One evaluation since the restart, served the default; the rollout shares are listed.
    assert_eq!(flag["evaluations"], 1, "{flag}");
    assert_eq!(
        flag["variants"],
        serde_json::json!([
            {"name": "on", "rollout_percent": 25.0, "evaluations": 0},
            {"name": "off", "rollout_percent": 75.0, "evaluations": 1},
        ])
    );

    let (status, body) =
        admin_post(&cutover, "/api/flags/new-checkout/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        evaluate(&cutover, "new-checkout", nl).await.1["reason"],
        "TARGETING_MATCH"
    );
    let series =
        r#"cutover_flag_evaluations_total{flag="new-checkout",variant="off",reason="DISABLED"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
    let series = r#"cutover_flag_evaluations_total{flag="new-checkout",variant="on",reason="TARGETING_MATCH"}"#;
    assert_eq!(cutover.metric(series).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_edit_is_announced_on_the_event_stream_within_a_second() {
    let cutover = Cutover::start(&config());
    let flags = cutover.flags.unwrap();
    let mut stream = raw::connect(flags).await;
    stream
        .send(b"GET /flags/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    stream
        .read_until(Duration::from_secs(10), |r| contains(r, b"\r\n\r\n"))
        .await;
    assert!(
        contains(&stream.received, b"\r\n\r\n"),
        "no response head before close or 10 s: {:?}",
        stream.text()
    );
    assert!(stream.text().contains("text/event-stream"));

    let saved = Instant::now();
    write_by_rename(
        &cutover.config_path(),
        &config().replace(r#"default: few"#, r#"default: many"#),
    );
    stream
        .read_until(Duration::from_secs(2), |r| {
            contains(r, b"refetchEvaluation")
        })
        .await;
    assert!(!stream.closed, "stream closed");
    let event = stream.text();
    assert!(
        event.contains("refetchEvaluation"),
        "no event after a flag edit"
    );
    assert!(
        saved.elapsed() < Duration::from_secs(1),
        "event after {:?}",
        saved.elapsed()
    );
    assert!(event.contains("id: 1\nevent: message\ndata: {"), "{event}");

    // A subscriber that last saw nothing newer gets the missed event at once.
    let mut late = raw::connect(flags).await;
    late.send(b"GET /flags/events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .unwrap();
    late.read_until(Duration::from_secs(2), |r| {
        contains(r, b"refetchEvaluation")
    })
    .await;
    assert!(!late.closed, "stream closed: {:?}", late.text());
    assert!(
        contains(&late.received, b"refetchEvaluation"),
        "Last-Event-ID was not honoured"
    );

    // Bulk answers advertise the stream.
    let (_, _, bulk) = ofrep(&cutover, "/ofrep/v1/evaluate/flags", "{}", &[]).await;
    assert_eq!(bulk["eventStreams"][0]["type"], "sse");
    assert_eq!(
        bulk["eventStreams"][0]["endpoint"]["requestUri"],
        "/flags/events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flags_token_is_required_when_configured() {
    let yaml = config().replace(
        "flags_api:\n  listen: 127.0.0.1:0\n",
        "flags_api:\n  listen: 127.0.0.1:0\n  token_env: CUTOVER_FLAGS_TOKEN\n",
    );
    let cutover = Cutover::start_with_env(&yaml, &[("CUTOVER_FLAGS_TOKEN", "app-token")]);
    let path = "/ofrep/v1/evaluate/flags/banner-text";
    let (status, _, _) = ofrep(&cutover, path, "{}", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = ofrep(&cutover, path, "{}", &[("authorization", "Bearer nope")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, value) = ofrep(
        &cutover,
        path,
        "{}",
        &[("authorization", "Bearer app-token")],
    )
    .await;
    assert_eq!(
        (status, value["variant"].as_str()),
        (StatusCode::OK, Some("short"))
    );
}

/// Flags in their own file, in their own directory (as a second ConfigMap would be mounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flags_file_is_hot_reloaded_from_its_own_directory_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let team_flags = |banner: &str| {
        format!("# owned by the checkout team\nflags:\n  banner:\n    variants: {{ a: \"{banner}\", b: \"other\" }}\n    default: a\n")
    };
    let main = "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nflags_api:\n  listen: 127.0.0.1:0\n\
                flags_file: team/flags.yaml\n\
                backends:\n  legacy: {url: 'http://127.0.0.1:9'}\n\
                routes:\n  - {name: all, match: {path_prefix: /}, split: {legacy: 100}}\n\
                flags:\n  core:\n    variants: { \"on\": true, \"off\": false }\n    default: \"on\"\n";
    std::fs::write(dir.path().join("cutover.yaml"), main).unwrap();
    let flags_path = dir.path().join("team").join("flags.yaml");
    std::fs::create_dir(dir.path().join("team")).unwrap();
    std::fs::write(&flags_path, team_flags("first")).unwrap();
    let cutover = Cutover::start_in(dir, "cutover.yaml", &[]);

    let (_, value) = evaluate(&cutover, "banner", json!({})).await;
    assert_eq!(value["value"], "first");
    let (_, value) = evaluate(&cutover, "core", json!({})).await;
    assert_eq!(value["value"], true, "flags from both files are served");

    write_by_rename(&flags_path, &team_flags("second"));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, value) = evaluate(&cutover, "banner", json!({})).await;
        if value["value"] == "second" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flags file edit was not applied"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cutover.wait_for_log("flag banner changed", Duration::from_secs(1));

    // A broken flags file is reported at its own line and column; the last good flags serve on.
    let broken = team_flags("third").replace("default: a", "default: a\n    rollout: { a: 50 }");
    std::fs::write(&flags_path, broken).unwrap();
    let expected = format!(
        "{}:6:5: flags.banner.rollout: percentages sum to 50, must be 100",
        flags_path.display()
    );
    cutover.wait_for_log(&expected, Duration::from_secs(3));
    let (_, value) = evaluate(&cutover, "banner", json!({})).await;
    assert_eq!(value["value"], "second");

    // A key defined in both files is an error, not a silent override.
    let twice = format!(
        "{}  core:\n    variants: {{ x: 1 }}\n    default: x\n",
        team_flags("third")
    );
    std::fs::write(&flags_path, twice).unwrap();
    let expected = format!(
        "{}:6:3: flags.core: flag \"core\" is also defined in {}",
        flags_path.display(),
        cutover.config_path().display()
    );
    cutover.wait_for_log(&expected, Duration::from_secs(3));
    assert_eq!(
        cutover
            .metric(r#"cutover_config_reloads_total{result="error"}"#)
            .await,
        Some(2.0)
    );
    let (_, value) = evaluate(&cutover, "core", json!({})).await;
    assert_eq!(value["value"], true);

    // An emptied flags file (a truncated write, a template that rendered nothing) is an
    // error, not "no flags".
    std::fs::write(&flags_path, "").unwrap();
    let expected = format!("{}: flags: missing", flags_path.display());
    cutover.wait_for_log(&expected, Duration::from_secs(3));
    let (_, value) = evaluate(&cutover, "banner", json!({})).await;
    assert_eq!(value["value"], "second");
}

/// A `flags_file` added by a reload is watched from then on, in its own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flags_file_named_by_a_reload_is_watched_too() {
    let cutover = Cutover::start(&config());
    let team = cutover.config_path().parent().unwrap().join("team");
    std::fs::create_dir(&team).unwrap();
    let flags_path = team.join("flags.yaml");
    let team_flags = |banner: &str| {
        format!("flags:\n  team-banner:\n    variants: {{ a: \"{banner}\" }}\n    default: a\n")
    };
    std::fs::write(&flags_path, team_flags("one")).unwrap();
    write_by_rename(
        &cutover.config_path(),
        &format!("flags_file: team/flags.yaml\n{}", config()),
    );
    let wait_for = |expected: &'static str| {
        let cutover = &cutover;
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let (_, value) = evaluate(cutover, "team-banner", json!({})).await;
                if value["value"] == expected {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "never served {expected:?}: {value}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    wait_for("one").await;
    write_by_rename(&flags_path, &team_flags("two"));
    wait_for("two").await;
}

/// `-c cutover.yaml` (directory `.`) and a `flags_file` naming the same directory by its
/// absolute path share one inotify watch: moving the flags file elsewhere must not end the
/// watch on the config itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_flags_file_keeps_watching_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let flags =
        |name: &str| format!("flags:\n  {name}:\n    variants: {{ a: 1 }}\n    default: a\n");
    std::fs::write(dir.path().join("here.yaml"), flags("here")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub").join("there.yaml"), flags("there")).unwrap();
    let main = |flags_file: &str, extra: &str| {
        format!(
            "{}\nflags_file: {flags_file}\n{extra}",
            config().replace(FLAGS, "")
        )
    };
    let absolute = dir.path().join("here.yaml").display().to_string();
    std::fs::write(dir.path().join("cutover.yaml"), main(&absolute, "")).unwrap();
    let config_path = dir.path().join("cutover.yaml");
    let cutover = Cutover::start_relative(dir, "cutover.yaml");
    assert_eq!(
        evaluate(&cutover, "here", json!({})).await.0,
        StatusCode::OK
    );

    let served = |key: &'static str| {
        let cutover = &cutover;
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            while evaluate(cutover, key, json!({})).await.0 != StatusCode::OK {
                assert!(
                    Instant::now() < deadline,
                    "{key} never served:\n{}",
                    cutover.logs()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    write_by_rename(&config_path, &main("sub/there.yaml", ""));
    served("there").await;
    // Give the watcher time to move, then edit the config itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_by_rename(&config_path, &main("sub/there.yaml", &flags("extra")));
    served("extra").await;
}
