//! A kill that cannot be written to `state_file` still applies, says so everywhere (API, CLI
//! exit code 3, `/api/status`, the status page's data, the metric) and is written once the
//! disk lets it, so a restart keeps it. The state directory is a regular file here: writing
//! under it fails with ENOTDIR even as root.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{admin_post, status_json, ADMIN_ENV, TOKEN};
use common::{get, split_config, Backend, Cutover, BIN};
use http::StatusCode;

/// Runs `cutover ARGS --admin URL` with the admin token: (exit code, stdout, stderr).
fn cli(cutover: &Cutover, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .args(["--admin", &format!("http://{}", cutover.admin)])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_that_cannot_be_saved_applies_says_so_everywhere_and_is_saved_once_it_can_be() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let yaml = split_config(
        &[("legacy", &legacy.url(), 0.0), ("new", &new.url(), 100.0)],
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.yaml"),
        format!("state_file: state/kills.json\n{yaml}"),
    )
    .unwrap();
    // Where the state directory should be, a regular file.
    std::fs::write(dir.path().join("state"), "not a directory").unwrap();
    let cutover = Cutover::start_in(dir, "cutover.yaml", ADMIN_ENV);
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "new\n");

    // The CLI: applied, exit code 3, the reason.
    let (code, stdout, stderr) = cli(&cutover, &["kill", "main"]);
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("main: killed"), "{stdout}");
    assert!(stderr.contains("NOT saved to state_file"), "{stderr}");
    assert!(stderr.contains("Not a directory"), "{stderr}");
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");

    // The API answer for a second change says the same.
    let (status, answer) = admin_post(
        &cutover,
        "/api/routes/main/resume",
        Some(TOKEN),
        r#"{"source":"api"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["persisted"], false, "{answer}");
    assert!(
        answer["persist_error"]
            .as_str()
            .unwrap()
            .contains("Not a directory"),
        "{answer}"
    );
    let (code, _, _) = cli(&cutover, &["kill", "main"]);
    assert_eq!(code, 3);

    // /api/status (what the status page and `cutover status` show) and the metric.
    let status = status_json(&cutover).await;
    let state_file = &status["state_file"];
    assert_eq!(state_file["saved"], false, "{status}");
    assert!(
        state_file["failure"]["error"]
            .as_str()
            .unwrap()
            .contains("Not a directory"),
        "{status}"
    );
    assert!(state_file["failure"]["attempts"].as_u64().unwrap() >= 3);
    let (code, table, _) = cli(&cutover, &["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("RUNTIME KILLS NOT SAVED"), "{table}");
    let first = failures(&cutover).await;
    assert!(first >= 3.0, "{first}");
    // Retried on its own: the count keeps growing while the disk says no.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(failures(&cutover).await > first);

    // The disk is fixed: the next retry writes the kill, and everything says so.
    let state = cutover.dir.path().join("state");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_json(&cutover).await;
        if status["state_file"]["saved"] == true {
            assert!(status["state_file"]["failure"].is_null(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "never saved: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cutover.wait_for_log("state_file written", Duration::from_secs(1));
    let saved = std::fs::read_to_string(state.join("kills.json")).unwrap();
    assert!(saved.contains("\"main\""), "{saved}");

    // And a restart keeps the kill.
    let cutover = cutover.restart(ADMIN_ENV);
    assert_eq!(get(cutover.proxy, "/", &[]).await.2, "legacy\n");
    let status = status_json(&cutover).await;
    assert_eq!(status["routes"][0]["kill"]["by"], "cli", "{status}");
    assert_eq!(status["state_file"]["saved"], true);
}

async fn failures(cutover: &Cutover) -> f64 {
    cutover
        .metric("cutover_state_persist_failures_total")
        .await
        .unwrap_or(0.0)
}
