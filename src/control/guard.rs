//! The automatic kill switch. A route's guard watches each non-stable backend's window and
//! trips when, with at least `min_requests` responses in the window, more than
//! `max_error_rate` percent of them were 5xx or failed. It never trips on the stable backend
//! (there is nowhere safer to send traffic) nor before `min_requests`, so a cold start with a
//! few early errors cannot roll back a ramp.
//!
//! [`Guard::observe`] is a few atomic loads and runs on the request path after an error; what
//! a trip *does* (publish the kill, write `state_file`) is the control plane's, reached over a
//! channel, so no request ever waits for a lock or a disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::GuardSpec;
use crate::control::window::WindowStats;

/// A route's guard, compiled from its `guard:` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// Percent, 0–100.
    pub max_error_rate: f64,
    pub min_requests: u64,
    pub window: Duration,
}

/// A guard that decided to kill its route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trip {
    pub route: Arc<str>,
    /// For the kill record and logs, e.g. `guard: v2 37.5% errors > 5% over 30s (18 of 48 requests)`.
    pub reason: String,
}

/// Where the request path sends trips; the control plane applies them.
pub type TripSender = mpsc::UnboundedSender<Trip>;
pub type TripReceiver = mpsc::UnboundedReceiver<Trip>;

impl From<&GuardSpec> for Guard {
    fn from(spec: &GuardSpec) -> Guard {
        Guard {
            max_error_rate: spec.max_error_rate,
            min_requests: spec.min_requests,
            window: spec.window,
        }
    }
}

impl Guard {
    /// Whether `backend`'s window of `route` is over the threshold now.
    pub fn observe(&self, route: &Arc<str>, backend: &str, window: &WindowStats) -> Option<Trip> {
        self.observe_at(route, backend, window, Instant::now())
    }

    pub fn observe_at(
        &self,
        route: &Arc<str>,
        backend: &str,
        window: &WindowStats,
        at: Instant,
    ) -> Option<Trip> {
        let (requests, errors) = window.counts_at(at);
        if requests < self.min_requests
            || (errors as f64) * 100.0 <= self.max_error_rate * requests as f64
        {
            return None;
        }
        Some(Trip {
            route: route.clone(),
            reason: format!(
                "guard: {backend} {:.1}% errors > {}% over {} ({errors} of {requests} requests)",
                errors as f64 * 100.0 / requests as f64,
                self.max_error_rate,
                humantime::format_duration(self.window),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            max_error_rate: 5.0,
            min_requests: 20,
            window: Duration::from_secs(30),
        }
    }

    fn record(window: &WindowStats, at: Instant, ok: u64, failed: u64) {
        for i in 0..ok + failed {
            window.record_at(at, Duration::from_millis(1), i < failed);
        }
    }

    #[test]
    fn cold_start_holds_until_min_requests() {
        let route: Arc<str> = "payments".into();
        let window = WindowStats::new(Duration::from_secs(30));
        let at = Instant::now();
        // Every response so far failed, but there are only 19 of them.
        record(&window, at, 0, 19);
        assert_eq!(guard().observe_at(&route, "v2", &window, at), None);
        record(&window, at, 0, 1);
        let trip = guard().observe_at(&route, "v2", &window, at).unwrap();
        assert_eq!(trip.route, route);
        assert_eq!(
            trip.reason,
            "guard: v2 100.0% errors > 5% over 30s (20 of 20 requests)"
        );
    }

    #[test]
    fn trips_above_the_rate_not_at_it() {
        let route: Arc<str> = "payments".into();
        let window = WindowStats::new(Duration::from_secs(30));
        let at = Instant::now();
        // Exactly 5%: holds.
        record(&window, at, 95, 5);
        assert_eq!(guard().observe_at(&route, "v2", &window, at), None);
        // One more error: 6 of 101 is 5.9%.
        record(&window, at, 0, 1);
        let trip = guard().observe_at(&route, "v2", &window, at).unwrap();
        assert!(
            trip.reason.contains("(6 of 101 requests)"),
            "{}",
            trip.reason
        );
    }

    #[test]
    fn errors_that_left_the_window_do_not_count() {
        let route: Arc<str> = "payments".into();
        let window = WindowStats::new(Duration::from_secs(30));
        let start = Instant::now();
        record(&window, start, 0, 50);
        let later = start + Duration::from_secs(40);
        record(&window, later, 50, 0);
        assert_eq!(guard().observe_at(&route, "v2", &window, later), None);
    }
}
