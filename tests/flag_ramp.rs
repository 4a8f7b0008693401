//! A flag's ramp against the real binary: one variant's share of the rollout raised on a
//! schedule, keys only ever moving toward it, a kill pausing it, a person's hand through the
//! CLI, and its place kept across a restart.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{admin_post, json, status_json, ADMIN_ENV, TOKEN};
use common::{send, Cutover, BIN};
use http::StatusCode;
use serde_json::{json, Value};

const KEYS: usize = 400;

fn config(steps: &str, every: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nflags_api:\n  listen: 127.0.0.1:0\n\
         backends:\n  legacy: {{url: 'http://127.0.0.1:9'}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, split: {{legacy: 100}}}}\n\
         flags:\n  new-search:\n    variants: {{ \"new\": true, \"old\": false }}\n    default: \"old\"\n    \
         rollout: {{ \"old\": 100, \"new\": 0 }}\n    ramp: {{ to: \"new\", steps: {steps}, every: {every} }}\n"
    )
}

/// The keys among `user-0..KEYS` that OFREP serves `new`, in one bulk pass per key.
async fn keys_on_new(cutover: &Cutover) -> BTreeSet<usize> {
    let client = common::client();
    let mut on = BTreeSet::new();
    for i in 0..KEYS {
        let body = json!({ "context": { "targetingKey": format!("user-{i}") } }).to_string();
        let (status, _, answer) = send(
            &client,
            cutover.flags.expect("flags API listening"),
            "POST",
            "/ofrep/v1/evaluate/flags/new-search",
            &[],
            Bytes::from(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        if answer["variant"] == "new" {
            on.insert(i);
        }
    }
    on
}

async fn flag_ramp(cutover: &Cutover) -> Value {
    let status = status_json(cutover).await;
    status["flags"][0]["ramp"].clone()
}

async fn wait_for_percent(cutover: &Cutover, percent: f64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let ramp = flag_ramp(cutover).await;
        if ramp["percent"].as_f64() == Some(percent) {
            return ramp;
        }
        assert!(
            Instant::now() < deadline,
            "no {percent}% within {within:?}: {ramp:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cli(cutover: &Cutover, args: &[&str]) -> (bool, String) {
    let admin = format!("http://{}", cutover.admin);
    let output = std::process::Command::new(BIN)
        .args(args)
        .args(["--admin", &admin])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_ramps_on_its_schedule_and_keys_only_move_toward_the_ramped_variant() {
    let cutover = Cutover::start_with_env(&config("[10, 50, 100]", "2s"), ADMIN_ENV);
    let mut seen = Vec::new();
    let mut before: BTreeSet<usize> = BTreeSet::new();
    for percent in [10.0, 50.0, 100.0] {
        let ramp = wait_for_percent(&cutover, percent, Duration::from_secs(10)).await;
        assert_eq!(ramp["gate"], json!([]), "a flag's ramp has no gate");
        let on = keys_on_new(&cutover).await;
        // Another step may have begun while the keys were asked; the share read before and
        // after bounds what was served.
        let share = on.len() as f64 * 100.0 / KEYS as f64;
        assert!(
            (share - percent).abs() < 12.0 || flag_ramp(&cutover).await["percent"] != percent,
            "{share}% of keys on new at step {percent}%"
        );
        assert!(
            before.is_subset(&on),
            "keys on new at an earlier step went back: {:?}",
            before.difference(&on).collect::<Vec<_>>()
        );
        seen.push(percent);
        before = on;
    }
    assert_eq!(before.len(), KEYS, "at 100% everyone gets new");
    let ramp = flag_ramp(&cutover).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ramp = ramp;
    while ramp["state"] != "complete" {
        assert!(Instant::now() < deadline, "never completed: {ramp:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        ramp = flag_ramp(&cutover).await;
    }
    let events: Vec<&str> = ramp["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[0].starts_with("ramp started at 10%"), "{events:?}");
    assert!(events[1].starts_with("step 50% after"), "{events:?}");
    assert!(events[3].starts_with("complete after"), "{events:?}");
    assert_eq!(
        cutover
            .metric("cutover_flag_ramp_step_percent{flag=\"new-search\"}")
            .await,
        Some(100.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_pauses_a_flag_ramp_and_a_person_drives_it_through_the_cli() {
    let cutover = Cutover::start_with_env(&config("[10, 50, 100]", "2s"), ADMIN_ENV);
    // The kill stops the clock: no step while the flag serves its default.
    let (status, body) = admin_post(&cutover, "/api/flags/new-search/kill", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ramp = flag_ramp(&cutover).await;
    assert_eq!(
        (ramp["percent"].as_f64(), ramp["state"].as_str()),
        (Some(10.0), Some("paused"))
    );
    assert!(
        ramp["reason"]
            .as_str()
            .unwrap()
            .contains("the flag is killed"),
        "{ramp:#}"
    );
    assert!(
        keys_on_new(&cutover).await.is_empty(),
        "killed: the default for all"
    );
    let (status, body) =
        admin_post(&cutover, "/api/flags/new-search/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_percent(&cutover, 50.0, Duration::from_secs(6)).await;

    // A person's pause holds the step; promote moves it at once, the reason recorded.
    let (ok, out) = cli(&cutover, &["ramp", "pause", "--flag", "new-search"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("new-search: pause: ramp paused, step 2 at 50%"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(flag_ramp(&cutover).await["percent"], 50.0);
    let (ok, out) = cli(
        &cutover,
        &[
            "ramp",
            "promote",
            "--flag",
            "new-search",
            "--reason",
            "search team says go",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&cutover, &["ramp", "status", "--flag", "new-search"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("flag new-search: ramp to new, paused"),
        "{out}"
    );
    assert!(
        out.contains("promoted by cli: search team says go"),
        "{out}"
    );
    assert_eq!(keys_on_new(&cutover).await.len(), KEYS);

    // Abort: back to the YAML's rollout, everyone on old; a restart keeps that.
    let (ok, out) = cli(&cutover, &["ramp", "abort", "--flag", "new-search"]);
    assert!(ok, "{out}");
    assert!(keys_on_new(&cutover).await.is_empty());
    let (status, body) = admin_post(
        &cutover,
        "/api/flags/new-search/ramp/promote",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("aborted"),
        "{body}"
    );
    let cutover = cutover.restart(ADMIN_ENV);
    let ramp = flag_ramp(&cutover).await;
    assert_eq!(
        (ramp["state"].as_str(), ramp["percent"].as_f64()),
        (Some("aborted"), Some(0.0))
    );
    // Resume runs it again from the step it stopped at.
    let (ok, out) = cli(&cutover, &["ramp", "resume", "--flag", "new-search"]);
    assert!(ok, "{out}");
    let ramp = flag_ramp(&cutover).await;
    assert_eq!(
        (ramp["state"].as_str(), ramp["percent"].as_f64()),
        (Some("running"), Some(100.0))
    );
    let (ok, out) = cli(&cutover, &["ramp", "status", "--flag", "nope"]);
    assert!(!ok && out.contains("no flag named \"nope\""), "{out}");
}

#[test]
fn check_refuses_a_flag_ramp_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let yaml = "backends:\n  legacy: {url: 'http://127.0.0.1:9'}\n\
        routes:\n  - {name: all, match: {path_prefix: /}, split: {legacy: 100}}\n\
        flags:\n  three:\n    variants: { a: 1, b: 2, c: 3 }\n    default: a\n    \
        rollout: { a: 50, b: 25, c: 25 }\n    ramp: { to: b, steps: [50, 40], every: 1ms }\n";
    std::fs::write(&path, yaml).unwrap();
    let output = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "flags.three.ramp.to: \"b\" must be one of exactly two variants in this flag's rollout",
        "flags.three.ramp.steps[1]: 40% after 50%: steps only go up",
        "flags.three.ramp.every: must be between 1s and 30 days",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
