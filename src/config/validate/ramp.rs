//! A route's `ramp:`: which backend is ramped, its steps and time per step, and the gate each
//! step must pass.

use super::Validator;
use crate::config::model::{BackendSpec, RampSpec, ShadowSpec};
use crate::config::raw::RawRamp;
use crate::schedule::{parse_every, parse_steps, Gate, Plan, MIN_EVERY};

/// Never advance blind: a step needs this many of `to`'s requests unless the gate says.
const DEFAULT_MIN_REQUESTS: u64 = 100;
/// A ramp with no error threshold would carry a failing backend to 100%.
const DEFAULT_MAX_ERROR_RATE: f64 = 1.0;

impl Validator<'_> {
    /// `split` is the route's validated split, stable first.
    pub(super) fn ramp(
        &mut self,
        path: &str,
        raw: &RawRamp,
        split: &[(usize, u32)],
        shadow: Option<&ShadowSpec>,
        backends: &[BackendSpec],
    ) -> Option<RampSpec> {
        let errors_before = self.errors.len();
        let to_path = format!("{path}.to");
        let to = backends.iter().position(|b| b.name == raw.to);
        let in_split = to.is_some_and(|to| split.iter().any(|&(index, _)| index == to));
        if split.is_empty() {
            // The split's own error says what is wrong.
        } else if !in_split {
            self.error(
                &to_path,
                format!(
                    "{:?} must be in this route's split (with any share, 0 is fine): the ramp raises its share",
                    raw.to
                ),
            );
        } else if to == Some(split[0].0) {
            self.error(
                &to_path,
                format!(
                    "{:?} is this route's stable backend: a ramp moves traffic away from stable",
                    raw.to
                ),
            );
        } else if split.len() != 2 {
            self.error(
                path,
                "a ramped route splits between its stable backend and `to` only, so raising `to` moves users from stable and no one else".to_owned(),
            );
        }
        let steps = self.ramp_steps(&format!("{path}.steps"), &raw.steps);
        let every = parse_every(&raw.every).unwrap_or_else(|message| {
            self.error(&format!("{path}.every"), message);
            MIN_EVERY
        });
        let gate_path = format!("{path}.gate");
        let min_requests = raw.gate.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
        if min_requests == 0 {
            self.error(
                &format!("{gate_path}.min_requests"),
                "must be at least 1: a step never moves on without evidence".to_owned(),
            );
        }
        let max_error_rate = Some(self.rate(
            &format!("{gate_path}.max_error_rate"),
            raw.gate.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE),
        ));
        let max_latency_ratio = raw.gate.max_latency_ratio.inspect(|&ratio| {
            if !ratio.is_finite() || ratio < 1.0 {
                self.error(
                    &format!("{gate_path}.max_latency_ratio"),
                    format!("{ratio} must be at least 1 (`to`'s p99 over stable's)"),
                );
            }
        });
        let max_mismatch_rate = raw.gate.max_mismatch_rate.map(|rate| {
            let at = format!("{gate_path}.max_mismatch_rate");
            if shadow.is_none_or(|s| Some(s.to) != to) {
                self.error(
                    &at,
                    format!(
                        "needs `shadow:` to {:?} on this route: the rate is of its comparisons",
                        raw.to
                    ),
                );
            }
            self.rate(&at, rate)
        });
        if self.errors.len() > errors_before {
            return None;
        }
        Some(RampSpec {
            to: to?,
            plan: Plan {
                to: raw.to.clone(),
                steps,
                every,
                gate: Gate {
                    min_requests,
                    max_error_rate,
                    max_latency_ratio,
                    max_mismatch_rate,
                },
            },
        })
    }

    fn ramp_steps(&mut self, path: &str, raw: &[f64]) -> Vec<u32> {
        let (steps, errors) = parse_steps(raw);
        for (index, message) in errors {
            match index {
                Some(i) => self.error(&format!("{path}[{i}]"), message),
                None => self.error(path, message),
            }
        }
        steps
    }

    fn rate(&mut self, path: &str, rate: f64) -> f64 {
        if !rate.is_finite() || !(0.0..=100.0).contains(&rate) {
            self.error(path, format!("{rate} is not a percentage from 0 to 100"));
        }
        rate
    }
}
