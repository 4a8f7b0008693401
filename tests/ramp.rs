//! Guarded ramps end to end (issue 15): the real binary raises `v2`'s share of route `main` step
//! by step on evidence from traffic the test sends, stops at the first bad sign, keeps its place
//! across a restart and config edits, and obeys a person through the CLI and the admin API.
//! Backends are on 127.0.0.1 and answer as the test steers them while it runs.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{admin_post, json, status_json, ADMIN_ENV, TOKEN};
use common::{client, write_by_rename, Cutover, TestClient, BIN};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const STEP_METRIC: &str = "cutover_ramp_step_percent{route=\"main\"}";
/// Requests per second the background traffic sends to the proxy.
const RATE: u64 = 200;
/// Background traffic stops by itself after this, whatever the test does.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(60);
/// Requests of the background traffic in flight at once, at most.
const MAX_IN_FLIGHT: usize = 64;

/// A backend the test steers while it runs: it answers `body` (its name and a newline unless
/// changed) with `x-backend: NAME`; 500 while `fail` is set; after `delay_ms` when that is not 0.
struct Steered {
    addr: SocketAddr,
    knobs: Arc<Knobs>,
    task: JoinHandle<()>,
}

struct Knobs {
    fail: AtomicBool,
    delay_ms: AtomicU64,
    body: Mutex<String>,
    /// Requests answered (shadow copies included).
    served: AtomicU64,
}

impl Drop for Steered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Steered {
    async fn start(name: &'static str) -> Steered {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let knobs = Arc::new(Knobs {
            fail: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            body: Mutex::new(format!("{name}\n")),
            served: AtomicU64::new(0),
        });
        let shared = knobs.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let knobs = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let knobs = knobs.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            let delay = knobs.delay_ms.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            knobs.served.fetch_add(1, Ordering::SeqCst);
                            let body = knobs.body.lock().unwrap().clone();
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            if knobs.fail.load(Ordering::SeqCst) {
                                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            response
                                .headers_mut()
                                .insert("x-backend", HeaderValue::from_static(name));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Steered { addr, knobs, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> u64 {
        self.knobs.served.load(Ordering::SeqCst)
    }
}

/// What answered the requests sent: counts by (`x-backend`, status); "none" for answers
/// without the header, and `failed` for requests that got no answer.
#[derive(Clone, Debug, Default)]
struct Tally {
    answers: HashMap<(String, u16), u64>,
    failed: u64,
}

impl Tally {
    fn from(&self, backend: &str) -> u64 {
        self.answers
            .iter()
            .filter(|((b, _), _)| b == backend)
            .map(|(_, n)| n)
            .sum()
    }

    fn with_status(&self, status: u16) -> u64 {
        self.answers
            .iter()
            .filter(|((_, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One GET of `/` through the proxy: (the answer's `x-backend`, status).
async fn one_request(client: &TestClient, proxy: SocketAddr) -> Result<(String, u16), String> {
    let req = Request::get(format!("http://{proxy}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    let status = answer.status().as_u16();
    let backend = answer
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let _ = answer.into_body().collect().await;
    Ok((backend, status))
}

/// `n` requests one after the other, tallied.
async fn requests(proxy: SocketAddr, n: usize) -> Tally {
    let client = client();
    let mut tally = Tally::default();
    for _ in 0..n {
        match one_request(&client, proxy).await {
            Ok(key) => *tally.answers.entry(key).or_default() += 1,
            Err(_) => tally.failed += 1,
        }
    }
    tally
}

/// Requests to the proxy at a steady rate from background tasks, until stopped (or after
/// [`TRAFFIC_LIMIT`]), tallied.
struct Traffic {
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    in_flight: Arc<Semaphore>,
    tally: Arc<Mutex<Tally>>,
}

impl Traffic {
    fn start(proxy: SocketAddr, per_second: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let ticker = tokio::spawn({
            let (stop, in_flight, tally) = (stop.clone(), in_flight.clone(), tally.clone());
            async move {
                let client = client();
                let mut ticks =
                    tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let deadline = Instant::now() + TRAFFIC_LIMIT;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    ticks.tick().await;
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, tally) = (client.clone(), tally.clone());
                    tokio::spawn(async move {
                        let answer = one_request(&client, proxy).await;
                        let mut tally = tally.lock().unwrap();
                        match answer {
                            Ok(key) => *tally.answers.entry(key).or_default() += 1,
                            Err(_) => tally.failed += 1,
                        }
                        drop(permit);
                    });
                }
            }
        });
        Traffic {
            stop,
            ticker: Some(ticker),
            in_flight,
            tally,
        }
    }

    /// Stops sending, waits for the requests in flight and returns what answered.
    async fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.in_flight.acquire_many(MAX_IN_FLIGHT as u32),
        )
        .await;
        let tally = self.tally.lock().unwrap().clone();
        tally
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

/// The lines under `ramp:` (to `v2`), indented for [`config`].
fn ramp(steps: &str, every: &str, gate: &str) -> String {
    format!("      to: v2\n      steps: {steps}\n      every: {every}\n      gate: {gate}\n")
}

/// Backends `legacy` and `v2`; the routes in `before` (whole entries, matched first); then
/// route `main` (everything) split `{ legacy: 100, v2: 0 }`, with `ramp` under `ramp:` and
/// `more` (lines of the route, indented 4).
fn config(legacy: &Steered, v2: &Steered, before: &str, ramp: &str, more: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n  legacy:\n    url: {}\n  v2:\n    url: {}\nroutes:\n{before}  - name: main\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 100, v2: 0 }}\n{more}    ramp:\n{ramp}",
        legacy.url(),
        v2.url()
    )
}

/// cutover with route `main` ramping `v2` over `steps`, `every`, behind `gate`.
fn start_ramping(legacy: &Steered, v2: &Steered, steps: &str, every: &str, gate: &str) -> Cutover {
    let yaml = config(legacy, v2, "", &ramp(steps, every, gate), "");
    Cutover::start_with_env(&yaml, ADMIN_ENV)
}

/// Waits until route `main`'s ramp gives `v2` `percent`; route `main` then.
async fn wait_for_percent(cutover: &Cutover, percent_wanted: f64, timeout: Duration) -> Value {
    wait_main(cutover, &format!("step {percent_wanted}%"), timeout, |r| {
        percent(r) == percent_wanted
    })
    .await
}

/// Route `main` in `/api/status`.
async fn main_route(cutover: &Cutover) -> Value {
    let status = status_json(cutover).await;
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["name"] == "main")
        .cloned()
        .expect("route main in /api/status")
}

fn percent(route: &Value) -> f64 {
    route["ramp"]["percent"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ramp percent: {route:#}"))
}

fn state(route: &Value) -> &str {
    route["ramp"]["state"].as_str().unwrap_or("?")
}

/// `v2`'s share in force, in percent.
fn effective_v2(route: &Value) -> f64 {
    route["backends"][1]["effective"].as_f64().unwrap()
}

fn history(route: &Value) -> Vec<(f64, String)> {
    route["ramp"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["percent"].as_f64().unwrap(),
                e["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The last lines of the process's log, for failure messages.
fn log_tail(cutover: &Cutover) -> String {
    let logs = cutover.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls route `main` every 100 ms until `done` holds for it and returns it; panics with the
/// last one seen after `timeout`.
async fn wait_main(
    cutover: &Cutover,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let route = main_route(cutover).await;
        if done(&route) {
            return route;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; route main is now {route:#}\nlog:\n{}",
            log_tail(cutover)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `cutover ARGS --admin URL` with the admin token: (exit code, stdout, stderr).
async fn cli(cutover: &Cutover, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args(["--admin", &format!("http://{}", cutover.admin)])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// POST to the admin API with the token: (status, answer as JSON).
async fn post(cutover: &Cutover, path: &str, body: &str) -> (StatusCode, Value) {
    let (status, body) = admin_post(cutover, path, Some(TOKEN), body).await;
    (status, json(&body))
}

/// Asserts that the ramp's own gate killed route `main` at `step` (1-based) and stopped the
/// ramp, with a reason that contains each of `says`; returns the reason.
fn assert_killed_by_its_gate(route: &Value, step: u64, says: &[&str]) -> String {
    assert_eq!(state(route), "aborted", "{route:#}");
    assert_eq!(route["killed"], true, "{route:#}");
    assert_eq!(route["kill"]["by"], "ramp", "{route:#}");
    let reason = route["kill"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("ramp: v2 "), "{reason}");
    for part in says {
        assert!(reason.contains(part), "{reason:?} should say {part:?}");
    }
    assert_eq!(route["ramp"]["reason"].as_str(), Some(reason.as_str()));
    assert_eq!(route["ramp"]["step"], step, "{route:#}");
    // Aborted: the YAML's split again, and killed besides: nothing for v2.
    assert_eq!(percent(route), 0.0, "{route:#}");
    assert_eq!(effective_v2(route), 0.0, "{route:#}");
    let (_, last) = history(route).pop().unwrap();
    assert_eq!(last, format!("aborted: {reason}"));
    reason
}

/// Watches route `main` for `watch` after its ramp was aborted at `at` percent: it stays
/// aborted and killed, and neither status, nor its history, nor the metric ever shows more.
async fn assert_stays_aborted(cutover: &Cutover, at: f64, watch: Duration) {
    let until = Instant::now() + watch;
    while Instant::now() < until {
        let route = main_route(cutover).await;
        assert_eq!(state(&route), "aborted", "{route:#}");
        assert_eq!(route["kill"]["by"], "ramp", "{route:#}");
        assert!(percent(&route) <= at, "{route:#}");
        assert!(history(&route).iter().all(|(p, _)| *p <= at), "{route:#}");
        let metric = cutover.metric(STEP_METRIC).await;
        assert!(metric.is_some_and(|m| m <= at), "metric {metric:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends `value` unless it repeats the last one.
fn push_changed<T: PartialEq>(seen: &mut Vec<T>, value: T) {
    if seen.last() != Some(&value) {
        seen.push(value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_climbs_1_5_25_100_in_order_and_completes() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let cutover = start_ramping(&legacy, &v2, "[1, 5, 25, 100]", "2s", "{ min_requests: 5 }");
    let traffic = Traffic::start(cutover.proxy, RATE);
    let (mut percents, mut metrics) = (Vec::new(), Vec::new());
    // When each percent, then the completion, was first seen.
    let mut changes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let route = main_route(&cutover).await;
        let now = percent(&route);
        // The split in force is the ramp's; the YAML's stays as written.
        assert_eq!(effective_v2(&route), now, "{route:#}");
        assert_eq!(route["backends"][0]["effective"], 100.0 - now, "{route:#}");
        assert_eq!(route["backends"][1]["configured"], 0.0, "{route:#}");
        push_changed(&mut percents, now);
        push_changed(&mut metrics, cutover.metric(STEP_METRIC).await);
        if state(&route) == "complete" {
            changes.push(Instant::now());
            break route;
        }
        if changes.len() < percents.len() {
            changes.push(Instant::now());
        }
        assert_eq!(state(&route), "running", "{route:#}");
        assert!(
            Instant::now() < deadline,
            "not complete in time; seen {percents:?}, now {route:#}\nlog:\n{}",
            log_tail(&cutover)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(percents, [1.0, 5.0, 25.0, 100.0]);
    // Every step from 5% on lasted `every` (2s), less what polling blurs. (The first one
    // began before the first poll.)
    let lasted: Vec<Duration> = changes.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        lasted[1..]
            .iter()
            .all(|d| *d >= Duration::from_millis(1700)),
        "steps lasted {lasted:?}"
    );
    let expected: Vec<Option<f64>> = [1.0, 5.0, 25.0, 100.0].into_iter().map(Some).collect();
    assert_eq!(metrics, expected, "{STEP_METRIC}");
    assert_eq!(done["ramp"]["step"], 4);
    assert_eq!(
        done["ramp"]["steps"],
        serde_json::json!([1.0, 5.0, 25.0, 100.0])
    );
    // One history entry per step, then the completion.
    let history = history(&done);
    let percents: Vec<f64> = history.iter().map(|(p, _)| *p).collect();
    assert_eq!(percents, [1.0, 5.0, 25.0, 100.0, 100.0], "{history:?}");
    assert!(
        history[0].1.starts_with("ramp started at 1%"),
        "{history:?}"
    );
    for (entry, step) in history[1..4].iter().zip(["5%", "25%", "100%"]) {
        assert!(
            entry.1.starts_with(&format!("step {step} after ")),
            "{history:?}"
        );
    }
    assert!(history[4].1.starts_with("complete after "), "{history:?}");
    // One log line per step change.
    for change in [
        "v2 1% → 5% after ",
        "v2 5% → 25% after ",
        "v2 25% → 100% after ",
        "v2 complete at 100% after ",
    ] {
        assert_eq!(cutover.count_log(change), 1, "{change}\n{}", cutover.logs());
    }
    let tally = traffic.stop().await;
    assert!(
        tally.from("v2") > 0 && tally.from("legacy") > 0,
        "{tally:?}"
    );
    assert_eq!(tally.with_status(200), tally.answers.values().sum::<u64>());
    // Complete stays at the last step: everyone on v2.
    let after = requests(cutover.proxy, 20).await;
    assert_eq!(after.from("v2"), 20, "{after:?}");
    let route = main_route(&cutover).await;
    assert_eq!((state(&route), percent(&route)), ("complete", 100.0));
    assert_eq!(cutover.metric(STEP_METRIC).await, Some(100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_at_25_percent_is_killed_at_that_step_and_never_goes_higher() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let cutover = start_ramping(
        &legacy,
        &v2,
        "[10, 25, 50, 100]",
        "2s",
        "{ min_requests: 20, max_error_rate: 1 }",
    );
    let traffic = Traffic::start(cutover.proxy, RATE);
    wait_for_percent(&cutover, 25.0, Duration::from_secs(20)).await;
    v2.knobs.fail.store(true, Ordering::SeqCst);
    let failing_since = Instant::now();
    let route = wait_main(&cutover, "the gate fails", Duration::from_secs(10), |r| {
        state(r) != "running"
    })
    .await;
    let took = failing_since.elapsed();
    eprintln!("killed {took:?} after v2 started failing");
    assert_killed_by_its_gate(&route, 2, &["errors > 1% at step 25%"]);
    assert!(took < Duration::from_secs(5), "killed after {took:?}");
    assert_stays_aborted(&cutover, 25.0, Duration::from_secs(3)).await;
    let tally = traffic.stop().await;
    assert!(tally.with_status(500) > 0, "{tally:?}");
    // Killed: every request goes to stable, none to v2.
    let v2_before = v2.served();
    let after = requests(cutover.proxy, 30).await;
    assert_eq!(
        after.answers.get(&("legacy".into(), 200)),
        Some(&30),
        "{after:?}"
    );
    assert_eq!(v2.served(), v2_before);

    // v2 fixed, a person resumes the ramp: the kill its gate made is lifted, the step runs
    // again and the ramp moves on from it.
    v2.knobs.fail.store(false, Ordering::SeqCst);
    let (status, resumed) = post(&cutover, "/api/routes/main/ramp/resume", "").await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["changed"], true, "{resumed}");
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert_eq!(resumed["step"], 2, "{resumed}");
    assert_eq!(resumed["still_killed"], Value::Null, "{resumed}");
    let route = main_route(&cutover).await;
    assert_eq!(route["kill"], Value::Null, "{route:#}");
    assert_eq!(
        (percent(&route), effective_v2(&route)),
        (25.0, 25.0),
        "{route:#}"
    );
    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_main(&cutover, "step 50%", Duration::from_secs(15), |r| {
        percent(r) != 25.0
    })
    .await;
    assert_eq!(
        (state(&route), percent(&route)),
        ("running", 50.0),
        "{route:#}"
    );
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_holds_the_step_until_there_is_enough() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let cutover = start_ramping(&legacy, &v2, "[50, 100]", "2s", "{ min_requests: 50 }");
    // The ramp counts whole 1 s periods after its step began: send after the first one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let few = requests(cutover.proxy, 10).await;
    let to_v2 = few.from("v2");
    assert_eq!(to_v2 + few.from("legacy"), 10, "{few:?}");
    // More than twice `every`, and a second for the last requests' period to end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let route = main_route(&cutover).await;
    assert_eq!(state(&route), "running", "{route:#}");
    assert_eq!(route["ramp"]["step"], 1, "{route:#}");
    assert_eq!(percent(&route), 50.0, "{route:#}");
    assert_eq!(
        route["ramp"]["holding"].as_str(),
        Some(format!("waiting for traffic: {to_v2} of 50").as_str()),
        "{route:#}"
    );
    assert_eq!(route["ramp"]["next_step_in_seconds"], Value::Null);
    let requests_gate = &route["ramp"]["gate"][0];
    assert_eq!(requests_gate["name"], "requests");
    assert_eq!(requests_gate["value"], to_v2 as f64);
    assert_eq!(requests_gate["threshold"], 50.0);
    assert_eq!(requests_gate["ok"], false);
    assert_eq!(history(&route).len(), 1, "{route:#}");
    let (code, out, err) = cli(&cutover, &["ramp", "status", "main"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route main: ramp to v2, running"), "{out}");
    assert!(out.contains("steps [50%] → 100% every 2s"), "{out}");
    assert!(
        out.contains(&format!("holding: waiting for traffic: {to_v2} of 50")),
        "{out}"
    );
    // With enough of v2's requests, the same step moves on.
    let mut sent = 0;
    while v2.served() < 50 + to_v2 + 5 {
        requests(cutover.proxy, 10).await;
        sent += 10;
        assert!(sent < 1000, "v2 got {} of {sent}", v2.served());
    }
    let route = wait_for_percent(&cutover, 100.0, Duration::from_secs(10)).await;
    assert_eq!(route["ramp"]["step"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_step_and_the_ramp_continues_from_it() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let cutover = start_ramping(
        &legacy,
        &v2,
        "[10, 25, 50, 100]",
        "2s",
        "{ min_requests: 40 }",
    );
    let traffic = Traffic::start(cutover.proxy, RATE);
    wait_for_percent(&cutover, 25.0, Duration::from_secs(20)).await;
    // Without traffic the step waits for its requests, so the place cannot move meanwhile.
    traffic.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = main_route(&cutover).await;
    assert_eq!(
        (before["ramp"]["step"].clone(), percent(&before)),
        (2.into(), 25.0)
    );
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(cutover.dir.path().join("cutover-state.json")).unwrap(),
    )
    .unwrap();
    let place = &saved["ramps"]["main"];
    assert_eq!(place["step"], 1, "{saved:#}");
    assert_eq!(place["share"], 2500, "{saved:#}");
    assert_eq!(place["state"], "running", "{saved:#}");

    let cutover = cutover.restart(ADMIN_ENV);
    let after = main_route(&cutover).await;
    assert_eq!(state(&after), "running", "{after:#}");
    assert_eq!(after["ramp"]["step"], 2, "{after:#}");
    assert_eq!(percent(&after), 25.0, "{after:#}");
    assert_eq!(effective_v2(&after), 25.0, "{after:#}");
    assert_eq!(history(&after), history(&before));
    assert_eq!(cutover.metric(STEP_METRIC).await, Some(25.0));
    assert_eq!(cutover.count_log("ramp started"), 0, "{}", cutover.logs());
    let after_restart = requests(cutover.proxy, 200).await;
    assert!(after_restart.from("v2") > 20, "{after_restart:?}");

    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_main(&cutover, "step 50%", Duration::from_secs(15), |r| {
        percent(r) != 25.0
    })
    .await;
    assert_eq!(
        (route["ramp"]["step"].clone(), percent(&route)),
        (3.into(), 50.0)
    );
    let history = history(&route);
    assert!(
        history.last().unwrap().1.starts_with("step 50% after "),
        "{history:?}"
    );
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_pauses_promotes_aborts_and_resumes_through_the_cli_and_the_api() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let plain = "  - name: plain\n    match: { path_prefix: /plain }\n    split: { legacy: 100 }\n";
    let yaml = config(
        &legacy,
        &v2,
        plain,
        &ramp("[10, 25, 50, 100]", "3s", "{ min_requests: 10 }"),
        "",
    );
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let traffic = Traffic::start(cutover.proxy, RATE);

    // Pause (CLI) once the step has its evidence, so only the pause keeps it from moving on.
    wait_main(&cutover, "enough requests", Duration::from_secs(15), |r| {
        r["ramp"]["gate"][0]["ok"] == true
    })
    .await;
    let (code, out, err) = cli(&cutover, &["ramp", "pause", "main"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("main: pause: ramp paused, step "), "{out}");
    let paused = main_route(&cutover).await;
    assert_eq!(state(&paused), "paused", "{paused:#}");
    assert_eq!(paused["ramp"]["reason"], "paused by cli");
    let (step, at) = (paused["ramp"]["step"].as_u64().unwrap(), percent(&paused));
    let spent = paused["ramp"]["time_at_step_seconds"].as_f64().unwrap();
    // Pausing again changes nothing.
    let (status, again) = post(&cutover, "/api/routes/main/ramp/pause", "").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["changed"], false, "{again}");
    // More than twice `every` with traffic: no step, and the clock stands still.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let still = main_route(&cutover).await;
    assert_eq!(state(&still), "paused", "{still:#}");
    assert_eq!(
        (still["ramp"]["step"].as_u64().unwrap(), percent(&still)),
        (step, at)
    );
    // The driver stops the clock at its next look, up to a quarter second after the kill.
    let still_spent = still["ramp"]["time_at_step_seconds"].as_f64().unwrap();
    assert!((still_spent - spent).abs() <= 0.5, "{spent} then {still:#}");
    assert_eq!(still["ramp"]["holding"], Value::Null, "{still:#}");

    // Promote (API) with a reason: the next step at once, gate skipped, reason recorded.
    let (status, promoted) = post(
        &cutover,
        "/api/routes/main/ramp/promote",
        r#"{"reason": "dashboards look fine"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{promoted}");
    assert_eq!(promoted["action"], "promote");
    assert_eq!(promoted["route"], "main");
    assert_eq!(promoted["changed"], true);
    assert_eq!(promoted["step"], step + 1, "{promoted}");
    let next = promoted["percent"].as_f64().unwrap();
    assert!(next > at, "{promoted}");
    assert_eq!(promoted["persisted"], true);
    let route = main_route(&cutover).await;
    assert_eq!(percent(&route), next);
    assert_eq!(effective_v2(&route), next);
    assert_eq!(cutover.metric(STEP_METRIC).await, Some(next));
    let last = history(&route).pop().unwrap();
    assert_eq!(
        last,
        (
            next,
            format!("step {next}% promoted by api: dashboards look fine")
        )
    );

    // Abort (CLI) with --kill: back to the YAML's split, and the route killed.
    let (code, out, err) = cli(
        &cutover,
        &[
            "ramp",
            "abort",
            "main",
            "--kill",
            "--reason",
            "rollback drill",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("main: abort: ramp aborted"), "{out}");
    let aborted = main_route(&cutover).await;
    assert_eq!(state(&aborted), "aborted", "{aborted:#}");
    assert_eq!(percent(&aborted), 0.0, "{aborted:#}");
    assert_eq!(aborted["kill"]["by"], "cli", "{aborted:#}");
    let kill_reason = aborted["kill"]["reason"].as_str().unwrap();
    assert!(kill_reason.contains("rollback drill"), "{kill_reason}");
    assert_eq!(cutover.metric(STEP_METRIC).await, Some(0.0));
    let tally = traffic.stop().await;
    assert!(tally.from("v2") > 0, "{tally:?}");
    let v2_before = v2.served();
    let after = requests(cutover.proxy, 20).await;
    assert_eq!(after.from("legacy"), 20, "{after:?}");
    assert_eq!(v2.served(), v2_before);

    // What does not apply is refused; what is not there is not found; no token, no change.
    for action in ["promote", "pause"] {
        let (status, body) = post(&cutover, &format!("/api/routes/main/ramp/{action}"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {body}");
    }
    let (code, _, err) = cli(&cutover, &["ramp", "promote", "main"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("aborted"), "{err}");
    for route in ["plain", "nope"] {
        let (status, body) = post(&cutover, &format!("/api/routes/{route}/ramp/pause"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{route}: {body}");
    }
    let (code, _, err) = cli(&cutover, &["ramp", "status", "plain"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no ramp"), "{err}");
    let (status, _) = admin_post(&cutover, "/api/routes/main/ramp/resume", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin_post(&cutover, "/api/routes/main/ramp/resume", Some("wrong"), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(state(&main_route(&cutover).await), "aborted");

    // Resume (API): runs again at its step; the CLI's kill is not the ramp's to lift.
    let (status, resumed) = post(&cutover, "/api/routes/main/ramp/resume", "").await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert_eq!(resumed["step"], step + 1, "{resumed}");
    assert_eq!(resumed["still_killed"]["by"], "cli", "{resumed}");
    let route = wait_main(
        &cutover,
        "paused by the kill",
        Duration::from_secs(3),
        |r| state(r) == "paused",
    )
    .await;
    let why = route["ramp"]["reason"].as_str().unwrap();
    assert!(why.contains("killed by cli"), "{why}");
    assert_eq!(percent(&route), next, "{route:#}");
    // The route resumed: the ramp runs and moves on from where it was.
    let (status, body) = admin_post(&cutover, "/api/routes/main/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_main(&cutover, "the next step", Duration::from_secs(15), |r| {
        percent(r) > next
    })
    .await;
    assert_eq!(state(&route), "running", "{route:#}");
    assert_eq!(route["ramp"]["step"], step + 2, "{route:#}");
    traffic.stop().await;
    let (code, out, err) = cli(&cutover, &["ramp", "status", "main"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route main: ramp to v2, running"), "{out}");
    assert!(
        out.contains("promoted by api: dashboards look fine"),
        "{out}"
    );
    assert!(out.contains("resumed by api"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_fails_max_latency_ratio() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    v2.knobs.delay_ms.store(120, Ordering::SeqCst);
    let cutover = start_ramping(
        &legacy,
        &v2,
        "[10, 25, 50, 100]",
        "2s",
        "{ min_requests: 10, max_latency_ratio: 1.5 }",
    );
    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_main(&cutover, "the gate fails", Duration::from_secs(15), |r| {
        state(r) != "running"
    })
    .await;
    let reason = assert_killed_by_its_gate(&route, 1, &["p99 ", "× stable's > 1.5× at step 10%"]);
    let to_p99: u64 = reason["ramp: v2 p99 ".len()..]
        .split("ms")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{reason}"));
    assert!(to_p99 >= 120, "{reason}");
    assert_stays_aborted(&cutover, 10.0, Duration::from_secs(1)).await;

    // Fixed and resumed: the step is judged on what v2 does from then on, not on the slow
    // answers before it, which are still in the route's window.
    v2.knobs.delay_ms.store(0, Ordering::SeqCst);
    let (status, body) =
        admin_post(&cutover, "/api/routes/main/ramp/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let route = wait_main(&cutover, "the next step", Duration::from_secs(15), |r| {
        percent(r) != 10.0 || state(r) != "running"
    })
    .await;
    assert_eq!(
        (state(&route), percent(&route)),
        ("running", 25.0),
        "{route:#}"
    );
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mismatches_fail_max_mismatch_rate() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    // The same answers at first: the ramp moves on.
    for backend in [&legacy, &v2] {
        *backend.knobs.body.lock().unwrap() = "the same answer\n".into();
    }
    let shadow =
        "    shadow: { to: v2, percent: 100, compare: { ignore_headers: [date, x-backend] } }\n";
    let yaml = config(
        &legacy,
        &v2,
        "",
        &ramp(
            "[10, 25, 50, 100]",
            "2s",
            "{ min_requests: 10, max_mismatch_rate: 0.5 }",
        ),
        shadow,
    );
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_for_percent(&cutover, 25.0, Duration::from_secs(20)).await;
    assert!(
        route["shadow"]["counts"]["match"].as_u64().unwrap() > 0,
        "{route:#}"
    );
    assert_eq!(route["shadow"]["counts"]["mismatch"], 0, "{route:#}");
    *v2.knobs.body.lock().unwrap() = "another answer\n".into();
    let route = wait_main(&cutover, "the gate fails", Duration::from_secs(10), |r| {
        state(r) != "running"
    })
    .await;
    assert_killed_by_its_gate(
        &route,
        2,
        &["of shadow comparisons mismatched > 0.5% at step 25%"],
    );
    assert_stays_aborted(&cutover, 25.0, Duration::from_secs(1)).await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_elsewhere_keeps_the_place_and_new_steps_never_lower_the_share() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let gate = "{ min_requests: 40 }";
    let yaml = config(&legacy, &v2, "", &ramp("[10, 25, 50, 100]", "2s", gate), "");
    let cutover = Cutover::start_with_env(&yaml, ADMIN_ENV);
    let traffic = Traffic::start(cutover.proxy, RATE);
    wait_for_percent(&cutover, 25.0, Duration::from_secs(20)).await;
    // Without traffic the step waits for its requests: only the edits could move it.
    traffic.stop().await;
    let before = main_route(&cutover).await;
    assert_eq!(percent(&before), 25.0);
    assert_eq!(status_json(&cutover).await["generation"], 1);

    // Another route, another backend setting, another error threshold: the same place.
    let other = "  - name: other\n    match: { path_prefix: /other }\n    split: { legacy: 100 }\n";
    let edited = config(
        &legacy,
        &v2,
        other,
        &ramp(
            "[10, 25, 50, 100]",
            "2s",
            "{ min_requests: 40, max_error_rate: 5 }",
        ),
        "",
    )
    .replace(
        &format!("    url: {}\n", v2.url()),
        &format!("    url: {}\n    request_timeout: 7s\n", v2.url()),
    );
    assert_ne!(edited, yaml);
    write_by_rename(&cutover.config_path(), &edited);
    wait_for_generation(&cutover, 2).await;
    let route = main_route(&cutover).await;
    assert_eq!(state(&route), "running", "{route:#}");
    assert_eq!(route["ramp"]["step"], 2, "{route:#}");
    assert_eq!(percent(&route), 25.0, "{route:#}");
    assert_eq!(effective_v2(&route), 25.0, "{route:#}");
    assert_eq!(history(&route), history(&before));
    let gate = &route["ramp"]["gate"][1];
    assert_eq!(
        (gate["name"].as_str(), gate["threshold"].as_f64()),
        (Some("error_rate"), Some(5.0))
    );

    // New steps: held at the 25% users have (never back to 10%, never up to 50% without the
    // gate), then the first new step above it.
    let steps_edited = edited.replace("steps: [10, 25, 50, 100]", "steps: [10, 50, 100]");
    write_by_rename(&cutover.config_path(), &steps_edited);
    wait_for_generation(&cutover, 3).await;
    let route = main_route(&cutover).await;
    assert_eq!(
        route["ramp"]["steps"],
        serde_json::json!([10.0, 50.0, 100.0])
    );
    assert_eq!(route["ramp"]["step"], 2, "{route:#}");
    assert_eq!(percent(&route), 25.0, "{route:#}");
    assert_eq!(effective_v2(&route), 25.0, "{route:#}");
    assert_eq!(cutover.metric(STEP_METRIC).await, Some(25.0));
    let last = history(&route).pop().unwrap();
    assert_eq!(
        last,
        (
            25.0,
            "steps changed: schedule restarted at 25%, what users have, before the step to 50%"
                .to_owned()
        )
    );

    // And the ramp goes on from there, through 50%.
    let traffic = Traffic::start(cutover.proxy, RATE);
    let route = wait_main(&cutover, "step 50%", Duration::from_secs(15), |r| {
        percent(r) != 25.0
    })
    .await;
    assert_eq!(
        (route["ramp"]["step"].clone(), percent(&route)),
        (2.into(), 50.0)
    );
    let route = wait_main(&cutover, "step 100%", Duration::from_secs(15), |r| {
        percent(r) != 50.0
    })
    .await;
    assert_eq!(
        (route["ramp"]["step"].clone(), percent(&route)),
        (3.into(), 100.0)
    );
    traffic.stop().await;
}

/// Waits until `/api/status` shows config generation `generation`.
async fn wait_for_generation(cutover: &Cutover, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status_json(cutover).await;
        if status["generation"] == generation {
            assert_eq!(status["last_reload"]["ok"], true, "{status:#}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} not applied: {status:#}\nlog:\n{}",
            log_tail(cutover)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_pauses_the_ramp_and_resuming_the_route_continues_it() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let cutover = start_ramping(
        &legacy,
        &v2,
        "[10, 25, 50, 100]",
        "3s",
        "{ min_requests: 10 }",
    );
    let traffic = Traffic::start(cutover.proxy, RATE);
    // Kill once the step has its evidence, so only the kill keeps it from moving on.
    wait_main(&cutover, "enough requests", Duration::from_secs(15), |r| {
        r["ramp"]["gate"][0]["ok"] == true
    })
    .await;
    let (status, body) = admin_post(
        &cutover,
        "/api/routes/main/kill",
        Some(TOKEN),
        r#"{"reason": "paging"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let killed = wait_main(
        &cutover,
        "paused by the kill",
        Duration::from_secs(3),
        |r| state(r) == "paused",
    )
    .await;
    let why = killed["ramp"]["reason"].as_str().unwrap();
    assert!(why.contains("killed by api: paging"), "{why}");
    assert_eq!(killed["kill"]["by"], "api");
    let (step, at) = (killed["ramp"]["step"].as_u64().unwrap(), percent(&killed));
    let spent = killed["ramp"]["time_at_step_seconds"].as_f64().unwrap();
    assert!(spent < 3.0, "{killed:#}");
    // More than twice `every` with traffic: no step, and the step's time is not running (the
    // driver sets it back to zero at its next look: what came before the kill does not count).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let still = main_route(&cutover).await;
    assert_eq!(state(&still), "paused", "{still:#}");
    assert_eq!(
        (still["ramp"]["step"].as_u64().unwrap(), percent(&still)),
        (step, at)
    );
    let still_spent = still["ramp"]["time_at_step_seconds"].as_f64().unwrap();
    assert!(still_spent <= spent, "{spent} then {still:#}");
    assert_eq!(history(&still), history(&killed));
    // Resuming the route continues the ramp at its step, its time from zero.
    let (status, body) = admin_post(&cutover, "/api/routes/main/resume", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resumed = wait_main(&cutover, "running again", Duration::from_secs(3), |r| {
        state(r) == "running"
    })
    .await;
    assert_eq!(percent(&resumed), at);
    assert!(
        resumed["ramp"]["time_at_step_seconds"].as_f64().unwrap() < 1.5,
        "{resumed:#}"
    );
    let route = wait_main(&cutover, "the next step", Duration::from_secs(15), |r| {
        percent(r) > at
    })
    .await;
    assert_eq!(route["ramp"]["step"], step + 1, "{route:#}");
    assert_eq!(state(&route), "running", "{route:#}");
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_edited_out_of_range_in_state_file_starts_the_ramp_again_instead_of_crashing() {
    let legacy = Steered::start("legacy").await;
    let v2 = Steered::start("v2").await;
    let yaml = config(
        &legacy,
        &v2,
        "",
        &ramp("[1, 5, 25, 100]", "1h", "{ min_requests: 10 }"),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cutover.yaml"), &yaml).unwrap();
    // The right schedule, but a step past the last and a share over 100%.
    let saved = serde_json::json!({
        "routes": {},
        "flags": {},
        "ramps": { "main": {
            "to": "v2", "steps": [100, 500, 2500, 10000], "step": 9, "share": 20000,
            "spent_ms": 0, "state": "running", "reason": null, "epoch": 3, "history": []
        } }
    });
    std::fs::write(
        dir.path().join("cutover-state.json"),
        serde_json::to_vec(&saved).unwrap(),
    )
    .unwrap();
    let cutover = Cutover::start_in(dir, "cutover.yaml", ADMIN_ENV);
    let route = main_route(&cutover).await;
    assert_eq!(
        (state(&route), percent(&route)),
        ("running", 1.0),
        "{route:#}"
    );
    assert_eq!(effective_v2(&route), 1.0, "{route:#}");
    cutover.wait_for_log("is not one this ramp can be at", Duration::from_secs(5));
    // It serves: every request is answered by one backend or the other.
    let (status, headers, _) = common::get(cutover.proxy, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-backend"));
}
