//! A ramp's schedule as configured: the steps (basis points for the ramped backend or
//! variant), the time at each, and the gate a route's step must pass. Plain data and the two
//! parsers routes and flags share; what a ramp *does* with it is `control::ramp`.

use std::time::Duration;

use crate::bucket::{basis_points, format_percent};

/// What may stop a step, over the time spent at it. Rates are percents, 0–100.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// Fewer of `to`'s requests than this: the step waits, it never moves on blind.
    pub min_requests: u64,
    pub max_error_rate: Option<f64>,
    /// `to`'s p99 over stable's.
    pub max_latency_ratio: Option<f64>,
    /// Of the shadow comparisons over the step (routes with `shadow:`).
    pub max_mismatch_rate: Option<f64>,
}

/// A ramp: `to`'s share at each step, ascending, and the time at each before the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub to: String,
    /// Basis points of the route's traffic for `to`, one per step.
    pub steps: Vec<u32>,
    pub every: Duration,
    pub gate: Gate,
}

/// Most steps a ramp may have.
pub const MAX_STEPS: usize = 100;
/// Shortest and longest time at a step.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
pub const MAX_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);

/// `steps:` as basis points: ascending percentages above 0. Errors come with the index of the
/// step they are about (`None`: the whole list).
pub fn parse_steps(raw: &[f64]) -> (Vec<u32>, Vec<(Option<usize>, String)>) {
    let mut errors = Vec::new();
    if raw.is_empty() || raw.len() > MAX_STEPS {
        errors.push((None, format!("needs 1 to {MAX_STEPS} steps")));
        return (Vec::new(), errors);
    }
    let mut steps: Vec<u32> = Vec::with_capacity(raw.len());
    for (i, &percent) in raw.iter().enumerate() {
        let share = match basis_points(percent) {
            Ok(share) => share,
            Err(message) => {
                errors.push((Some(i), message));
                continue;
            }
        };
        match steps.last() {
            _ if share == 0 => errors.push((Some(i), "a step gives more than 0%".to_owned())),
            Some(&before) if share <= before => errors.push((
                Some(i),
                format!(
                    "{}% after {}%: steps only go up",
                    format_percent(share),
                    format_percent(before)
                ),
            )),
            _ => steps.push(share),
        }
    }
    (steps, errors)
}

/// `every:`: a duration from 1 s to 30 days.
pub fn parse_every(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(every) if (MIN_EVERY..=MAX_EVERY).contains(&every) => Ok(every),
        Ok(_) => Err("must be between 1s and 30 days".to_owned()),
        Err(_) => Err(format!("{raw:?} is not a duration like 30s, 10m or 1h")),
    }
}
