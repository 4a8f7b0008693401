//! One request's way through the phases ([`Exchange`]) and the record phase: how an attempt
//! at a backend ended is counted for it (metrics, the live window) and, after a failure,
//! shown to the route's guard. Called when a response is complete, or when a failure leaves
//! none to relay.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;

use crate::access_log::{AccessLog, Entry};
use crate::control::guard::TripSender;
use crate::error::ProxyError;
use crate::snapshot::{LiveRoute, LiveTarget, Snapshot};

/// Filled in as the phases run; recorded once, at the end.
pub struct Exchange {
    pub started: Instant,
    /// The one view of the config this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    /// Index into `snapshot.routes`.
    pub route: usize,
    /// Index into the route's targets: the backend picked, then the one that served (stable
    /// after a fallback).
    pub target: usize,
    /// Served by a replay on stable after the picked backend could not be reached.
    pub fell_back: bool,
    /// The request's bucket (`None` when the route is killed).
    pub bucket: Option<u16>,
    /// The access log line being filled in, and where it goes, when there is an access log.
    pub access: Option<(Box<Entry>, AccessLog)>,
}

impl Exchange {
    pub fn route(&self) -> &LiveRoute {
        &self.snapshot.routes[self.route]
    }

    pub fn target(&self) -> &LiveTarget {
        &self.route().targets[self.target]
    }

    /// Notes, for the access log, how long the backend took to answer since `sent` (taken
    /// only when there is an access log).
    pub fn note_upstream(&mut self, sent: Option<Instant>) {
        if let (Some((entry, _)), Some(sent)) = (&mut self.access, sent) {
            entry.upstream = Some(sent.elapsed());
        }
    }

    /// Whether a failure here can trip a guard: a guarded route, a non-stable backend.
    pub fn guarded(&self) -> bool {
        self.target != 0 && self.route().guard.is_some()
    }
}

/// An exchange dropped with its access log line still unsent: the client went away (or the
/// connection was closed at shutdown) before any answer; logged as nginx does, with 499.
impl Drop for Exchange {
    fn drop(&mut self) {
        if self.access.is_some() {
            let client_closed = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            log(self, client_closed, Some("client-closed"), 0, true);
        }
    }
}

/// Ends the exchange's access log line, if it has one, and hands it to the writer. `backend`
/// is false when no backend was reached.
pub fn log(
    exchange: &mut Exchange,
    status: StatusCode,
    error: Option<&'static str>,
    bytes_out: u64,
    backend: bool,
) {
    let Some((mut entry, log)) = exchange.access.take() else {
        return;
    };
    entry.route = Some(exchange.route().name.clone());
    entry.backend = backend.then(|| exchange.target().backend.name.clone());
    entry.bucket = exchange.bucket;
    entry.status = status.as_u16();
    entry.error = error;
    entry.bytes_out = bytes_out;
    entry.duration = exchange.started.elapsed();
    entry.fallback = exchange.fell_back;
    log.send(*entry);
}

/// How an attempt at a backend ended.
#[derive(Clone, Copy)]
pub enum Outcome<'a> {
    /// A complete response (or one the client stopped reading).
    Answered(StatusCode),
    Failed(&'a ProxyError),
}

/// Counts one attempt at `target`: metrics, the live window and, after an error, the guard
/// (`trips` is needed only when the exchange is [`Exchange::guarded`]). A failure the client
/// caused is counted by status only: it says nothing of the backend.
#[inline]
pub fn observe(
    trips: Option<&TripSender>,
    exchange: &Exchange,
    target: usize,
    outcome: Outcome<'_>,
) {
    let route = exchange.route();
    let served = &route.targets[target];
    let now = Instant::now();
    let elapsed = now - exchange.started;
    let failed = match outcome {
        Outcome::Answered(status) => {
            served.telemetry.response(status, elapsed);
            status.is_server_error()
        }
        Outcome::Failed(err) => match err.reason() {
            Some(reason) => {
                served.telemetry.failure(reason, elapsed);
                true
            }
            None => {
                served.telemetry.response(err.status(), elapsed);
                return;
            }
        },
    };
    served.window.record_at(now, elapsed, failed);
    if let (true, Some(trips)) = (failed, trips) {
        check_guard(trips, route, target);
    }
}

/// After an error from a non-stable backend: if the guard trips, the route sends the very
/// next request to stable, and the control plane is told to publish and persist the kill.
fn check_guard(trips: &TripSender, route: &LiveRoute, target: usize) {
    let Some(guard) = &route.guard else { return };
    if target == 0 || route.is_killed() {
        return;
    }
    let target = &route.targets[target];
    if let Some(trip) = guard.observe(&route.name, &target.backend.name, &target.window) {
        if route.runtime.trip() && trips.send(trip).is_err() {
            tracing::error!(route = %route.name, "guard tripped but the control plane is gone");
        }
    }
}
