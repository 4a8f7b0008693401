//! A ramp as status shows it: where it stands, why it holds, each gate reading against its
//! threshold, and its history. Part of `/api/status` (routes and flags); `cutover ramp status`
//! and `cutover status` print it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::overrides::Kill;
use crate::control::ramp::{Plan, Readings, LATENCY_FLOOR};
use crate::control::ramp_state::{RampEvent, RampProgress, RampState};
use crate::control::RampLive;

#[derive(Debug, Serialize, Deserialize)]
pub struct RampStatus {
    pub to: String,
    /// `running`, `paused`, `aborted` or `complete`; a running ramp on a killed route is
    /// `paused`.
    pub state: String,
    /// Why it is paused or aborted.
    pub reason: Option<String>,
    /// 1-based, of `steps.len()`.
    pub step: usize,
    /// `to`'s percent at each step.
    pub steps: Vec<f64>,
    /// `to`'s percent from the ramp now (the YAML's once aborted).
    pub percent: f64,
    pub every_seconds: f64,
    pub time_at_step_seconds: f64,
    /// Set while the gate holds and only time is missing.
    pub next_step_in_seconds: Option<f64>,
    /// Why a running ramp has not moved on: "waiting for traffic: 37 of 100", "next step in 4s".
    pub holding: Option<String>,
    pub gate: Vec<GateReading>,
    pub history: Vec<RampEvent>,
}

/// One gate reading over the current step. `value` is `None` when it cannot be read yet.
#[derive(Debug, Serialize, Deserialize)]
pub struct GateReading {
    /// `requests` (at least), `error_rate`, `latency_ratio`, `mismatch_rate` (at most).
    pub name: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub ok: bool,
}

impl RampStatus {
    /// `kill` is the route's or flag's kill in force; `noun` says which it is.
    pub fn of(
        plan: &Plan,
        progress: &RampProgress,
        live: Option<&RampLive>,
        kill: Option<&Kill>,
        noun: &str,
        yaml_share: u32,
    ) -> RampStatus {
        // The driver's view is of the place it last looked at; after a person's action, until
        // its next look, what `state_file` holds is all there is.
        let live = live
            .filter(|live| live.epoch == progress.epoch)
            .cloned()
            .unwrap_or_else(|| RampLive {
                spent: progress.spent(),
                ..RampLive::default()
            });
        let paused_by_kill = kill.is_some() && progress.state == RampState::Running;
        let (state, reason) = match (kill, paused_by_kill) {
            (Some(kill), true) => (
                "paused".to_owned(),
                Some(format!(
                    "the {noun} is killed by {}: {}; resuming it continues the ramp",
                    kill.by.as_str(),
                    kill.reason
                )),
            ),
            _ => (progress.state.as_str().to_owned(), progress.reason.clone()),
        };
        let running = progress.state == RampState::Running && !paused_by_kill;
        RampStatus {
            to: plan.to.clone(),
            state,
            reason,
            step: progress.step + 1,
            steps: plan.steps.iter().map(|&s| f64::from(s) / 100.0).collect(),
            percent: f64::from(progress.share_in_force(yaml_share)) / 100.0,
            every_seconds: plan.every.as_secs_f64(),
            time_at_step_seconds: round1(live.spent.as_secs_f64()),
            next_step_in_seconds: live
                .next_step_in
                .filter(|_| running)
                .map(|d| round1(d.as_secs_f64())),
            holding: live.holding.filter(|_| running),
            gate: gate_readings(plan, &live.readings),
            history: progress.history.clone(),
        }
    }

    /// `step 2 of 4: payments-v2 5%, running, next step in 4s`: one line for `cutover status`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "step {} of {}: {} {}%, {}",
            self.step,
            self.steps.len(),
            self.to,
            self.percent,
            self.state
        );
        match (&self.holding, &self.reason) {
            (Some(holding), _) => line.push_str(&format!(" ({holding})")),
            (None, Some(reason)) => line.push_str(&format!(" ({reason})")),
            (None, None) => {}
        }
        line
    }

    /// The whole ramp for `cutover ramp status`; `what` names it ("route checkout").
    pub fn render(&self, what: &str) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, &s)| match i + 1 == self.step {
                true if s == self.percent => format!("[{s}%]"),
                // Held where users were (a start or an edit between steps).
                true => format!("[{}%] → {s}%", self.percent),
                false => format!("{s}%"),
            })
            .collect();
        let mut out = format!(
            "{what}: ramp to {}, {}\nsteps {} every {}\nnow {}% for {}, {}s at this step\n",
            self.to,
            self.state,
            steps.join(" → "),
            humantime::format_duration(Duration::from_secs_f64(self.every_seconds)),
            self.percent,
            self.to,
            self.time_at_step_seconds,
        );
        if let Some(reason) = &self.reason {
            out.push_str(&format!("why: {reason}\n"));
        }
        if let Some(holding) = &self.holding {
            out.push_str(&format!("holding: {holding}\n"));
        }
        if !self.gate.is_empty() {
            out.push_str("\ngate over this step:\n");
        }
        for reading in &self.gate {
            let (relation, unit) = match reading.name.as_str() {
                "requests" => ("at least", ""),
                "latency_ratio" => ("at most", "×"),
                _ => ("at most", "%"),
            };
            let value = reading
                .value
                .map_or("-".to_owned(), |v| format!("{}{unit}", round2(v)));
            out.push_str(&format!(
                "  {:<14} {:>10}  {relation} {}{unit}  {}\n",
                reading.name,
                value,
                reading.threshold,
                if reading.ok { "ok" } else { "NOT MET" }
            ));
        }
        out.push_str("\nhistory:\n");
        for event in &self.history {
            out.push_str(&format!(
                "  {}  {:>6}%  {}\n",
                event.at, event.percent, event.event
            ));
        }
        out
    }
}

/// A flag's ramp has no gate (its `min_requests` is 0 and no threshold is set): no readings.
fn gate_readings(plan: &Plan, readings: &Readings) -> Vec<GateReading> {
    let gate = &plan.gate;
    if gate.min_requests == 0 {
        return Vec::new();
    }
    let percent = |part: u64, whole: u64| (whole > 0).then(|| part as f64 * 100.0 / whole as f64);
    let at_most = |name: &str, value: Option<f64>, threshold: f64| GateReading {
        name: name.to_owned(),
        ok: value.is_none_or(|v| v <= threshold),
        value: value.map(round2),
        threshold,
    };
    let mut out = vec![GateReading {
        name: "requests".to_owned(),
        value: Some(readings.requests as f64),
        threshold: gate.min_requests as f64,
        ok: readings.requests >= gate.min_requests,
    }];
    if let Some(max) = gate.max_error_rate {
        out.push(at_most(
            "error_rate",
            percent(readings.errors, readings.requests),
            max,
        ));
    }
    if let Some(max) = gate.max_latency_ratio {
        let (ratio, within_floor) = match (readings.to_p99, readings.stable_p99) {
            (Some(to), Some(stable)) => (
                Some(to.as_secs_f64() / stable.as_secs_f64().max(1e-6)),
                to.saturating_sub(stable) < LATENCY_FLOOR,
            ),
            _ => (None, true),
        };
        let mut reading = at_most("latency_ratio", ratio, max);
        // Within a few milliseconds of stable, a ratio is noise and never fails the gate.
        reading.ok |= within_floor;
        out.push(reading);
    }
    if let Some(max) = gate.max_mismatch_rate {
        out.push(at_most(
            "mismatch_rate",
            percent(readings.mismatches, readings.compared),
            max,
        ));
    }
    out
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
