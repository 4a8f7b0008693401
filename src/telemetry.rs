//! Metric names, their registration, and logging setup.
//!
//! Label values come only from config names (route, backend) or static strings, never from a
//! request. Per-request counters are resolved to handles when a snapshot is built, so the
//! request path does one atomic add per metric and no registry lookup.

use anyhow::Context;
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::FailureReason;

pub const REQUESTS_TOTAL: &str = "cutover_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "cutover_request_duration_seconds";
pub const GUARD_TRIPS_TOTAL: &str = "cutover_guard_trips_total";
pub const FALLBACKS_TOTAL: &str = "cutover_fallbacks_total";
pub const UPSTREAM_FAILURES_TOTAL: &str = "cutover_upstream_failures_total";
pub const ROUTE_WEIGHT: &str = "cutover_route_weight";
pub const ROUTE_KILLED: &str = "cutover_route_killed";
pub const CONFIG_RELOADS_TOTAL: &str = "cutover_config_reloads_total";
pub const CONFIG_GENERATION: &str = "cutover_config_generation";
pub const FLAG_EVALUATIONS_TOTAL: &str = "cutover_flag_evaluations_total";
pub const STATE_PERSIST_FAILURES_TOTAL: &str = "cutover_state_persist_failures_total";
pub const OPEN_CONNECTIONS: &str = "cutover_open_connections";
pub const IDLE_CONNECTIONS: &str = "cutover_idle_connections";
pub const SHADOW_REQUESTS_TOTAL: &str = "cutover_shadow_requests_total";
pub const RAMP_STEP_PERCENT: &str = "cutover_ramp_step_percent";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "cutover_access_log_dropped_total";
pub const FLAG_RAMP_STEP_PERCENT: &str = "cutover_flag_ramp_step_percent";

/// Installs the process-wide Prometheus recorder, before any snapshot is built. Later calls
/// (a second server in one test process) get the same recorder.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
            &DURATION_BUCKETS,
        )
        .context("setting histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from receiving a request to the end of the backend's response body (or cutover's own error)."
    );
    describe_counter!(
        GUARD_TRIPS_TOTAL,
        "Times a route's guard killed it for the error rate of a non-stable backend."
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        "Requests replayed on the stable backend after a non-stable one could not be reached."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "Proxied requests by route, backend and status class (error: no response from the backend)."
    );
    describe_counter!(
        UPSTREAM_FAILURES_TOTAL,
        "Requests a backend did not answer, by reason."
    );
    describe_gauge!(
        ROUTE_WEIGHT,
        "Effective share of a route's traffic per backend, in percent."
    );
    describe_gauge!(ROUTE_KILLED, "1 when the route's kill switch is on.");
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped because the writer was behind (never waited for)."
    );
    describe_gauge!(
        RAMP_STEP_PERCENT,
        "Percent of the route's traffic its ramp gives `to` now (the YAML's share once aborted)."
    );
    describe_gauge!(
        FLAG_RAMP_STEP_PERCENT,
        "Percent of targeting keys the flag's ramp gives its variant now."
    );
    describe_counter!(
        SHADOW_REQUESTS_TOTAL,
        "Shadow copies by result: match, mismatch, error, timeout, dropped."
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Config loads by result.");
    describe_gauge!(CONFIG_GENERATION, "Generation of the config being served.");
    describe_counter!(
        STATE_PERSIST_FAILURES_TOTAL,
        "Writes of state_file that failed; the control plane retries until one succeeds."
    );
    counter!(STATE_PERSIST_FAILURES_TOTAL).absolute(0);
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Client connections open, by listener (at most max_connections each)."
    );
    describe_gauge!(
        IDLE_CONNECTIONS,
        "Of the open HTTP/1 connections, those waiting for their next request (after 50 to 100 ms, \
         holding no buffers), by listener."
    );
    describe_counter!(
        FLAG_EVALUATIONS_TOTAL,
        "Flag evaluations served, by flag, variant and OFREP reason."
    );
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// 0.5 ms to 10 s, roughly ×2 per bucket. The exporter adds the `+Inf` bucket itself; listing
/// infinity here too would export it twice (`le="inf"` beside `le="+Inf"`).
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Counter handles for one backend of one route.
#[derive(Clone)]
pub struct TargetTelemetry {
    requests: [Counter; 6],
    failures: [Counter; 4],
    duration: Histogram,
}

impl TargetTelemetry {
    /// Shared names make registering a large config cheap: no label string is copied.
    pub fn new(route: &Arc<str>, backend: &Arc<str>) -> TargetTelemetry {
        let labels = |extra: (&'static str, &'static str)| {
            [
                ("route", SharedString::from(route.clone())),
                ("backend", SharedString::from(backend.clone())),
                (extra.0, SharedString::const_str(extra.1)),
            ]
        };
        TargetTelemetry {
            requests: CODE_CLASSES.map(|code| counter!(REQUESTS_TOTAL, &labels(("code", code)))),
            failures: FailureReason::ALL
                .map(|r| counter!(UPSTREAM_FAILURES_TOTAL, &labels(("reason", r.as_str())))),
            duration: histogram!(
                REQUEST_DURATION_SECONDS,
                "route" => SharedString::from(route.clone()),
                "backend" => SharedString::from(backend.clone())
            ),
        }
    }

    pub fn response(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    pub fn failure(&self, reason: FailureReason, elapsed: Duration) {
        self.requests[5].increment(1);
        self.failures[reason as usize].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Counter handles for one flag: per variant, per reason.
pub struct FlagTelemetry {
    by_variant: Vec<[Counter; 5]>,
    /// Evaluations per variant since start, for `/api/status` (metric handles cannot be
    /// read back). Kept across reloads by flag key and variant name.
    pub served: Vec<Arc<AtomicU64>>,
}

impl FlagTelemetry {
    pub fn new(flag: &Arc<str>, variants: &[&str], served: Vec<Arc<AtomicU64>>) -> FlagTelemetry {
        FlagTelemetry {
            served,
            by_variant: variants
                .iter()
                .map(|variant| {
                    let variant: Arc<str> = (*variant).into();
                    crate::flags::Reason::ALL.map(|reason| {
                        counter!(
                            FLAG_EVALUATIONS_TOTAL,
                            "flag" => SharedString::from(flag.clone()),
                            "variant" => SharedString::from(variant.clone()),
                            "reason" => SharedString::const_str(reason.as_str())
                        )
                    })
                })
                .collect(),
        }
    }

    pub fn record(&self, variant: usize, reason: crate::flags::Reason) {
        if let Some(counters) = self.by_variant.get(variant) {
            counters[reason as usize].increment(1);
        }
        if let Some(served) = self.served.get(variant) {
            served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counter handles for one route.
#[derive(Clone)]
pub struct RouteTelemetry {
    pub guard_trips: Counter,
    pub fallbacks: Counter,
}

impl RouteTelemetry {
    pub fn new(route: &Arc<str>) -> RouteTelemetry {
        RouteTelemetry {
            guard_trips: counter!(GUARD_TRIPS_TOTAL, "route" => SharedString::from(route.clone())),
            fallbacks: counter!(FALLBACKS_TOTAL, "route" => SharedString::from(route.clone())),
        }
    }
}

pub fn route_weight(route: &str, backend: &str, basis_points: u32) {
    gauge!(ROUTE_WEIGHT, "route" => route.to_owned(), "backend" => backend.to_owned())
        .set(f64::from(basis_points) / 100.0);
}

pub fn route_killed(route: &str, killed: bool) {
    gauge!(ROUTE_KILLED, "route" => route.to_owned()).set(if killed { 1.0 } else { 0.0 });
}

/// Looked up once: it is counted when the system is busiest.
pub fn access_log_dropped_counter() -> Counter {
    counter!(ACCESS_LOG_DROPPED_TOTAL)
}

/// `share` in basis points.
pub fn ramp_step_percent(route: &str, share: u32) {
    gauge!(RAMP_STEP_PERCENT, "route" => route.to_owned()).set(f64::from(share) / 100.0);
}

/// `share` in basis points.
pub fn flag_ramp_step_percent(flag: &str, share: u32) {
    gauge!(FLAG_RAMP_STEP_PERCENT, "flag" => flag.to_owned()).set(f64::from(share) / 100.0);
}

pub fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

pub fn state_persist_failure() {
    counter!(STATE_PERSIST_FAILURES_TOTAL).increment(1);
}

pub fn config_generation(generation: u64) {
    gauge!(CONFIG_GENERATION).set(generation as f64);
}
