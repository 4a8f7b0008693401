//! A guarded ramp's decisions (issue 15), as pure functions of the time spent at a step and what
//! the route measured over it: whether the step holds, moves on, or fails and kills the route.
//! The control plane keeps the progress (`ramp_state`), feeds the readings and applies what is
//! decided (`ramp_driver`); this module reads no clock and takes no lock, so every rule is
//! tested here on its own.

use std::fmt;
use std::time::Duration;

use crate::bucket::format_percent;
pub use crate::schedule::{Gate, Plan};

/// What the route measured since the current step began.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    /// `to`'s responses and failures.
    pub requests: u64,
    /// `to`'s 5xx responses and failures.
    pub errors: u64,
    pub to_p99: Option<Duration>,
    pub stable_p99: Option<Duration>,
    /// Shadow comparisons (match + mismatch) and mismatches.
    pub compared: u64,
    pub mismatches: u64,
}

/// How a gate reads against its thresholds.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Too few requests to judge: the step is extended.
    Waiting {
        requests: u64,
        needed: u64,
    },
    Pass,
    /// With enough requests, a threshold is passed: the route is killed with this reason.
    Fail(String),
}

/// What to do at this point of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Stay at the step; the text says why ("waiting for traffic: 37 of 100", "next step in
    /// 4m 12s").
    Hold(String),
    /// Move to the next step.
    Advance,
    /// Kill the route with this reason and stop the ramp.
    Abort(String),
    /// The last step is reached and held its time: nothing more to do.
    Done,
}

/// A latency ratio counts only when `to` is also this much slower than stable: between a 1 ms
/// and a 3 ms p99, a busy host and timer noise decide the ratio, not the service.
pub const LATENCY_FLOOR: Duration = Duration::from_millis(5);

/// The gate over one step's readings. `step` is `to`'s share at it, for the reason.
pub fn judge(plan: &Plan, step: u32, readings: &Readings) -> Verdict {
    let gate = &plan.gate;
    if readings.requests < gate.min_requests {
        return Verdict::Waiting {
            requests: readings.requests,
            needed: gate.min_requests,
        };
    }
    let at = format!("at step {}%", format_percent(step));
    let to = &plan.to;
    let rate = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;
    if let Some(max) = gate.max_error_rate {
        let errors = rate(readings.errors, readings.requests);
        if errors > max {
            return Verdict::Fail(format!(
                "ramp: {to} {} errors > {}% {at} ({} of {} requests)",
                Percent(errors),
                max,
                readings.errors,
                readings.requests
            ));
        }
    }
    if let (Some(max), Some(to_p99), Some(stable_p99)) =
        (gate.max_latency_ratio, readings.to_p99, readings.stable_p99)
    {
        let ratio = to_p99.as_secs_f64() / stable_p99.as_secs_f64().max(1e-6);
        if ratio > max && to_p99.saturating_sub(stable_p99) >= LATENCY_FLOOR {
            return Verdict::Fail(format!(
                "ramp: {to} p99 {}ms = {ratio:.1}× stable's > {max}× {at}",
                to_p99.as_millis()
            ));
        }
    }
    if let (Some(max), true) = (gate.max_mismatch_rate, readings.compared > 0) {
        let mismatches = rate(readings.mismatches, readings.compared);
        if mismatches > max {
            return Verdict::Fail(format!(
                "ramp: {to} {} of shadow comparisons mismatched > {}% {at} ({} of {})",
                Percent(mismatches),
                max,
                readings.mismatches,
                readings.compared
            ));
        }
    }
    Verdict::Pass
}

/// The schedule's decision at `share` (`to`'s basis points now; `last` when no step is above
/// it), after `spent` there, given the readings over that time. A failing gate aborts at once,
/// whatever the time; a passing one moves on once `every` has passed; too few requests hold
/// the step however long it has lasted.
pub fn decide(
    plan: &Plan,
    share: u32,
    last: bool,
    spent: Duration,
    readings: &Readings,
) -> Decision {
    match judge(plan, share, readings) {
        Verdict::Fail(reason) => Decision::Abort(reason),
        Verdict::Waiting { requests, needed } => {
            Decision::Hold(format!("waiting for traffic: {requests} of {needed}"))
        }
        Verdict::Pass if spent < plan.every => Decision::Hold(format!(
            "next step in {}",
            humantime::format_duration(round_to_seconds(plan.every - spent))
        )),
        Verdict::Pass if last => Decision::Done,
        Verdict::Pass => Decision::Advance,
    }
}

fn round_to_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

/// A percent with at most two decimals, as people write it: `37.5%`.
struct Percent(f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", (self.0 * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            to: "payments-v2".into(),
            steps: vec![100, 500, 2_500, 5_000, 10_000],
            every: Duration::from_secs(600),
            gate: Gate {
                min_requests: 100,
                max_error_rate: Some(1.0),
                max_latency_ratio: Some(1.5),
                max_mismatch_rate: Some(0.5),
            },
        }
    }

    fn healthy(requests: u64) -> Readings {
        Readings {
            requests,
            errors: 0,
            to_p99: Some(Duration::from_millis(100)),
            stable_p99: Some(Duration::from_millis(90)),
            compared: 0,
            mismatches: 0,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_healthy_step_moves_on_only_after_its_time_and_the_last_one_ends_the_ramp() {
        let plan = plan();
        assert_eq!(
            decide(&plan, 100, false, 4 * MINUTE, &healthy(500)),
            Decision::Hold("next step in 6m".into())
        );
        assert_eq!(
            decide(&plan, 100, false, 10 * MINUTE, &healthy(500)),
            Decision::Advance
        );
        assert_eq!(
            decide(&plan, 10_000, true, 10 * MINUTE, &healthy(500)),
            Decision::Done
        );
    }

    #[test]
    fn too_little_traffic_holds_the_step_however_long_it_lasts() {
        assert_eq!(
            decide(&plan(), 2_500, false, 600 * MINUTE, &healthy(37)),
            Decision::Hold("waiting for traffic: 37 of 100".into())
        );
        // Even failing readings do not fail a gate without enough requests.
        let failing = Readings {
            errors: 30,
            ..healthy(37)
        };
        assert_eq!(
            judge(&plan(), 2_500, &failing),
            Verdict::Waiting {
                requests: 37,
                needed: 100
            }
        );
    }

    #[test]
    fn a_failing_gate_aborts_at_once_with_a_reason_that_names_the_reading() {
        let errors = Readings {
            errors: 3,
            ..healthy(200)
        };
        assert_eq!(
            decide(&plan(), 2_500, false, MINUTE, &errors),
            Decision::Abort(
                "ramp: payments-v2 1.5% errors > 1% at step 25% (3 of 200 requests)".into()
            )
        );
        let slow = Readings {
            to_p99: Some(Duration::from_millis(412)),
            stable_p99: Some(Duration::from_millis(179)),
            ..healthy(200)
        };
        assert_eq!(
            decide(&plan(), 2_500, false, MINUTE, &slow),
            Decision::Abort(
                "ramp: payments-v2 p99 412ms = 2.3× stable's > 1.5× at step 25%".into()
            )
        );
        let mismatching = Readings {
            compared: 1_000,
            mismatches: 6,
            ..healthy(200)
        };
        assert_eq!(
            decide(&plan(), 100, false, MINUTE, &mismatching),
            Decision::Abort(
                "ramp: payments-v2 0.6% of shadow comparisons mismatched > 0.5% at step 1% (6 of 1000)"
                    .into()
            )
        );
    }

    #[test]
    fn a_latency_ratio_on_a_few_milliseconds_is_noise_not_a_regression() {
        let fast = Readings {
            to_p99: Some(Duration::from_millis(3)),
            stable_p99: Some(Duration::from_micros(1_500)),
            ..healthy(200)
        };
        assert_eq!(judge(&plan(), 2_500, &fast), Verdict::Pass);
        let slower = Readings {
            to_p99: Some(Duration::from_millis(8)),
            stable_p99: Some(Duration::from_millis(2)),
            ..healthy(200)
        };
        assert!(matches!(judge(&plan(), 2_500, &slower), Verdict::Fail(_)));
    }

    #[test]
    fn thresholds_that_are_not_set_or_cannot_be_read_do_not_fail() {
        let mut plan = plan();
        plan.gate.max_error_rate = None;
        let readings = Readings {
            errors: 200,
            to_p99: None,
            ..healthy(200)
        };
        assert_eq!(judge(&plan, 100, &readings), Verdict::Pass);
        assert_eq!(
            decide(&plan, 10_000, true, 10 * MINUTE, &readings),
            Decision::Done
        );
    }
}
