//! The ramps' clock. One task ticks a few times a second: for each running ramp it gathers what
//! `to` did since its step began (from the window's settled periods, so the request path pays
//! nothing for it), asks [`decide`] and applies the answer through [`Control`] like any other
//! change: one swap, then `state_file`. People drive ramps through [`Control::ramp_action`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bucket::format_percent;
use crate::config::{RampSpec, RouteSpec};
use crate::control::overrides::{Kill, KillSource, Overrides};
use crate::control::ramp::{decide, Decision, Readings};
use crate::control::ramp_state::{RampProgress, RampState, Refused};
use crate::control::{write_state, Control, ControlError, ControlState};
use crate::shadow::live::ShadowResult;
use crate::snapshot::LiveRoute;

/// How often ramps are looked at: a failing gate is acted on within this (plus a window slot).
const TICK: Duration = Duration::from_millis(250);
/// How often a running ramp's time at its step is written to `state_file`; a restart loses at
/// most this much of it, never adds to it.
const CHECKPOINT: Duration = Duration::from_secs(5);

/// What a ramp is doing now, beyond what `state_file` holds; for status displays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RampLive {
    /// Time at the current step while running.
    pub spent: Duration,
    /// What the gate has read over the step.
    pub readings: Readings,
    /// Why it holds: "waiting for traffic: 37 of 100", "next step in 4s", "the route is killed".
    pub holding: Option<String>,
    /// Set while the gate holds and only time is missing.
    pub next_step_in: Option<Duration>,
    /// A kill pauses a running ramp without changing its state.
    pub paused_by_kill: bool,
}

/// A person's hand on a ramp.
#[derive(Clone, Debug)]
pub enum RampAction {
    Pause,
    Resume,
    /// The next step now, gate skipped; the reason is recorded.
    Promote {
        reason: String,
    },
    /// Back to the YAML's split; the route is killed too when `kill`.
    Abort {
        reason: String,
        kill: bool,
    },
}

impl RampAction {
    pub fn verb(&self) -> &'static str {
        match self {
            RampAction::Pause => "pause",
            RampAction::Resume => "resume",
            RampAction::Promote { .. } => "promote",
            RampAction::Abort { .. } => "abort",
        }
    }
}

/// What a person's action did.
#[derive(Debug)]
pub struct RampOutcome {
    /// Whether anything changed (pausing a paused ramp does not).
    pub changed: bool,
    pub progress: RampProgress,
    /// `Err` when the change is live but could not be written to `state_file`.
    pub persisted: Result<(), String>,
    /// Set when the route stays killed after a resume, and by whom.
    pub still_killed: Option<Kill>,
}

/// What the schedule decided for one ramp, applied under the control lock.
enum Step {
    /// Only the time spent changes.
    Checkpoint(Duration),
    Advance {
        next: usize,
        evidence: String,
    },
    Complete {
        evidence: String,
    },
    Fail {
        reason: String,
    },
}

/// The driver's memory of one ramp between ticks; rebuilt whenever its epoch changes.
struct Tracker {
    epoch: u64,
    /// Time at the step before `running_since`.
    spent_before: Duration,
    /// `None` while the ramp does not run (paused, or the route is killed).
    running_since: Option<Instant>,
    /// `to`'s window and the last of its periods already counted.
    window: Option<(Arc<crate::control::window::WindowStats>, u64)>,
    requests: u64,
    errors: u64,
    /// Shadow counts (compared, mismatched) when the evidence began.
    shadow_base: (u64, u64),
    last_checkpoint: Instant,
}

impl Tracker {
    fn new(progress: &RampProgress, now: Instant) -> Tracker {
        Tracker {
            epoch: progress.epoch,
            spent_before: progress.spent(),
            running_since: None,
            window: None,
            requests: 0,
            errors: 0,
            shadow_base: (0, 0),
            last_checkpoint: now,
        }
    }

    /// Evidence starts again from now: at a new step, at the start, and after a kill.
    fn restart_evidence(&mut self, route: &LiveRoute, now: Instant) {
        let to = &route.targets[1].window;
        self.window = Some((to.clone(), to.period_at(now)));
        self.requests = 0;
        self.errors = 0;
        self.shadow_base = shadow_counts(route);
        self.running_since = Some(now);
    }

    fn spent(&self, now: Instant) -> Duration {
        self.spent_before
            + self
                .running_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// One look at a ramp: what status shows, and what to change, if anything.
    fn tick(
        &mut self,
        spec: &RampSpec,
        progress: &RampProgress,
        route: &LiveRoute,
        now: Instant,
    ) -> (RampLive, Option<Step>) {
        if progress.state != RampState::Running {
            self.running_since = None;
            let live = RampLive {
                spent: progress.spent(),
                ..RampLive::default()
            };
            return (live, None);
        }
        if route.is_killed() {
            // A kill by anyone stops the clock; a resume continues it with fresh evidence.
            if let Some(since) = self.running_since.take() {
                self.spent_before += now.saturating_duration_since(since);
            }
            let live = RampLive {
                spent: self.spent_before,
                holding: Some("the route is killed: resuming it continues the ramp".to_owned()),
                paused_by_kill: true,
                ..RampLive::default()
            };
            return (live, None);
        }
        let to = &route.targets[1].window;
        match &self.window {
            Some((window, _)) if self.running_since.is_some() && Arc::ptr_eq(window, to) => {}
            // The window was replaced (its length was edited): count from its current period.
            Some(_) if self.running_since.is_some() => {
                self.window = Some((to.clone(), to.period_at(now)))
            }
            _ => self.restart_evidence(route, now),
        }
        if let Some((window, after)) = &mut self.window {
            let (requests, errors, last) = window.settled_since(*after, now);
            self.requests += requests;
            self.errors += errors;
            *after = last;
        }
        let (compared, mismatches) = shadow_counts(route);
        let readings = Readings {
            requests: self.requests,
            errors: self.errors,
            to_p99: to.totals().p99,
            stable_p99: route.targets[0].window.totals().p99,
            compared: compared.saturating_sub(self.shadow_base.0),
            mismatches: mismatches.saturating_sub(self.shadow_base.1),
        };
        let spent = self.spent(now);
        let mut live = RampLive {
            spent,
            readings: readings.clone(),
            ..RampLive::default()
        };
        let step = match decide(&spec.plan, progress.step, spent, &readings) {
            Decision::Hold(why) => {
                if readings.requests >= spec.plan.gate.min_requests {
                    live.next_step_in = spec.plan.every.checked_sub(spent);
                }
                live.holding = Some(why);
                (now.saturating_duration_since(self.last_checkpoint) >= CHECKPOINT).then(|| {
                    self.last_checkpoint = now;
                    Step::Checkpoint(spent)
                })
            }
            Decision::Advance { next } => Some(Step::Advance {
                next,
                evidence: evidence(progress, spent, &readings),
            }),
            Decision::Done => Some(Step::Complete {
                evidence: evidence(progress, spent, &readings),
            }),
            Decision::Abort(reason) => Some(Step::Fail { reason }),
        };
        (live, step)
    }
}

/// Shadow comparisons made so far (match + mismatch) and mismatches, for the gate.
fn shadow_counts(route: &LiveRoute) -> (u64, u64) {
    route.shadow.as_ref().map_or((0, 0), |shadow| {
        let counts = shadow.state.counts();
        let (matched, mismatched) = (
            counts[ShadowResult::Match as usize],
            counts[ShadowResult::Mismatch as usize],
        );
        (matched + mismatched, mismatched)
    })
}

/// "10s at 5% (523 requests, 0.2% errors)": what a step showed, for its history entry.
fn evidence(progress: &RampProgress, spent: Duration, readings: &Readings) -> String {
    let errors = readings.errors as f64 * 100.0 / readings.requests.max(1) as f64;
    format!(
        "{} at {}% ({} requests, {:.2}% errors)",
        humantime::format_duration(Duration::from_secs(spent.as_secs())),
        format_percent(progress.share),
        readings.requests,
        errors
    )
}

impl Control {
    /// Runs every ramp's schedule until the process ends.
    pub async fn drive_ramps(self: Arc<Self>) {
        let mut trackers: HashMap<Arc<str>, Tracker> = HashMap::new();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snapshot = self.live.load_full();
            let now = Instant::now();
            let mut live = HashMap::new();
            let mut steps = Vec::new();
            for (spec, route) in snapshot.config.routes.iter().zip(snapshot.routes.iter()) {
                let Some((ramp, progress)) = ramp_of(spec, &snapshot.overrides) else {
                    continue;
                };
                let tracker = trackers
                    .entry(route.name.clone())
                    .or_insert_with(|| Tracker::new(progress, now));
                if tracker.epoch != progress.epoch {
                    *tracker = Tracker::new(progress, now);
                }
                let (view, step) = tracker.tick(ramp, progress, route, now);
                live.insert(route.name.to_string(), view);
                if let Some(step) = step {
                    steps.push((route.name.clone(), progress.epoch, step));
                }
            }
            trackers.retain(|name, _| live.contains_key(&**name));
            self.ramps_live.store(Arc::new(live));
            for (route, epoch, step) in steps {
                let control = self.clone();
                let applied =
                    tokio::task::spawn_blocking(move || control.ramp_step(&route, epoch, step))
                        .await;
                if let Err(err) = applied {
                    tracing::error!(error = %err, "applying a ramp step failed");
                }
            }
        }
    }

    /// What status shows of each ramp beyond its place, by route name. Never waits.
    pub fn ramps_live(&self) -> Arc<HashMap<String, RampLive>> {
        self.ramps_live.load_full()
    }

    /// Applies what the schedule decided, unless a person changed the ramp since (its epoch).
    fn ramp_step(&self, route: &str, epoch: u64, step: Step) {
        let state = self.lock();
        let _ = self.change_ramp(&state, route, |progress, spec| {
            if progress.epoch != epoch {
                return Ok(None);
            }
            let before = progress.percent();
            let mut kill = None;
            match step {
                Step::Checkpoint(spent) => {
                    progress.spent_ms = u64::try_from(spent.as_millis()).unwrap_or(u64::MAX);
                    return Ok(Some(None));
                }
                Step::Advance { next, evidence } => {
                    progress.advance(next, &evidence);
                    tracing::info!(
                        route,
                        "ramp: {} {before}% → {}% after {evidence}",
                        spec.plan.to,
                        progress.percent()
                    );
                }
                Step::Complete { evidence } => {
                    progress.complete(&evidence);
                    tracing::info!(
                        route,
                        "ramp: {} complete at {}% after {evidence}",
                        spec.plan.to,
                        progress.percent()
                    );
                }
                Step::Fail { reason } => {
                    progress.fail(&reason);
                    tracing::warn!(route, "ramp aborted, route killed: {reason}");
                    kill = Some(Kill::now(KillSource::Ramp, reason));
                }
            }
            Ok(Some(kill))
        });
    }

    /// A person pauses, resumes, promotes or aborts the ramp of `route`.
    pub fn ramp_action(
        &self,
        route: &str,
        action: RampAction,
        by: KillSource,
    ) -> Result<RampOutcome, ControlError> {
        let state = self.lock();
        let spent = self.ramps_live().get(route).map(|live| live.spent);
        let by_name = by.as_str();
        let mut lift_own_kill = false;
        let outcome = self.change_ramp(&state, route, |progress, spec| {
            let kill = match &action {
                RampAction::Pause => {
                    let spent = spent.unwrap_or(progress.spent());
                    if !progress.pause(by_name, spent)? {
                        return Ok(None);
                    }
                    None
                }
                RampAction::Resume => {
                    // The ramp lifts the kill its own gate made; other kills stay.
                    lift_own_kill = true;
                    if !progress.resume(by_name)? {
                        return Ok(None);
                    }
                    None
                }
                RampAction::Promote { reason } => {
                    progress.promote(by_name, reason)?;
                    None
                }
                RampAction::Abort { reason, kill } => {
                    let changed = progress.abort(by_name, reason);
                    if !changed && !kill {
                        return Ok(None);
                    }
                    kill.then(|| Kill::now(by, format!("ramp aborted: {reason}")))
                }
            };
            tracing::warn!(
                route,
                by = by_name,
                "ramp {}: {} at {}%",
                action.verb(),
                spec.plan.to,
                progress.percent()
            );
            Ok(Some(kill))
        })?;
        let outcome = if lift_own_kill {
            self.lift_ramp_kill(&state, route, outcome)
        } else {
            outcome
        };
        drop(state);
        Ok(outcome)
    }

    /// After a resume: removes the route's kill if its ramp made it.
    fn lift_ramp_kill(
        &self,
        held: &std::sync::MutexGuard<'_, ControlState>,
        route: &str,
        mut outcome: RampOutcome,
    ) -> RampOutcome {
        let current = self.live.load_full();
        let killed_by_ramp = current
            .overrides
            .routes
            .get(route)
            .is_some_and(|kill| kill.by == KillSource::Ramp);
        if killed_by_ramp {
            if let Some(live) = current.route(route) {
                live.runtime.clear_trip();
            }
            if let Ok(resumed) = self.change(
                held,
                super::Switch::Route,
                Some(&[route]),
                |killed, name| killed.remove(name).is_some(),
            ) {
                outcome.changed |= !resumed.changed.is_empty();
                if resumed.persisted.is_err() {
                    outcome.persisted = resumed.persisted;
                }
            }
        }
        let current = self.live.load_full();
        outcome.still_killed = current.route(route).and_then(|r| r.kill.clone());
        outcome
    }

    /// Applies `change` to the ramp of `route` under the lock `_held`, publishes the result
    /// and writes `state_file`. `change` answers `None` for no change, or the kill to add.
    fn change_ramp(
        &self,
        _held: &std::sync::MutexGuard<'_, ControlState>,
        route: &str,
        change: impl FnOnce(&mut RampProgress, &RampSpec) -> Result<Option<Option<Kill>>, Refused>,
    ) -> Result<RampOutcome, ControlError> {
        let current = self.live.load_full();
        let Some(spec) = current.config.routes.iter().find(|r| r.name == route) else {
            return Err(ControlError::Unknown("route", route.to_owned()));
        };
        let Some((ramp, progress)) = ramp_of(spec, &current.overrides) else {
            return Err(ControlError::NoRamp(route.to_owned()));
        };
        let mut progress = progress.clone();
        let kill = match change(&mut progress, ramp) {
            Err(refused) => return Err(ControlError::Refused(refused.0)),
            Ok(None) => {
                return Ok(RampOutcome {
                    changed: false,
                    progress,
                    persisted: Ok(()),
                    still_killed: None,
                })
            }
            Ok(Some(kill)) => kill,
        };
        let mut overrides = (*current.overrides).clone();
        overrides.ramps.insert(route.to_owned(), progress.clone());
        let killed_now = match kill {
            Some(kill) if !overrides.routes.contains_key(route) => {
                overrides.routes.insert(route.to_owned(), kill);
                true
            }
            _ => false,
        };
        let snapshot = Arc::new(current.with_overrides(Arc::new(overrides)));
        self.live.store(snapshot.clone());
        snapshot.export_gauges();
        if killed_now {
            if let Some(live) = snapshot.route(route) {
                live.runtime.kill_signal.send_modify(|n| *n += 1);
            }
        }
        let persisted = write_state(&snapshot);
        self.persist.record(&persisted);
        Ok(RampOutcome {
            changed: true,
            progress,
            persisted,
            still_killed: None,
        })
    }
}

/// A route's ramp and where it stands, when it has one.
pub fn ramp_of<'a>(
    spec: &'a RouteSpec,
    overrides: &'a Overrides,
) -> Option<(&'a RampSpec, &'a RampProgress)> {
    let ramp = spec.ramp.as_ref()?;
    let progress = overrides.ramps.get(&spec.name)?;
    progress.follows(&ramp.plan).then_some((ramp, progress))
}

/// The ramps' places after a config load: kept, started, restarted by an edit of `to` or
/// `steps`, or dropped with their `ramp:`. Logs each start and restart.
pub(crate) fn reconcile_ramps(routes: &[RouteSpec], overrides: &Overrides) -> Overrides {
    let mut reconciled = overrides.clone();
    reconciled.ramps = routes
        .iter()
        .filter_map(|spec| {
            let ramp = spec.ramp.as_ref()?;
            let yaml_share = spec.split[1].1;
            let progress = match overrides.ramps.get(&spec.name) {
                Some(progress) if progress.follows(&ramp.plan) => progress.clone(),
                Some(progress) => {
                    let progress = progress.clone().follow_edit(&ramp.plan, yaml_share);
                    tracing::info!(route = spec.name, "ramp: {}", last_event(&progress));
                    progress
                }
                None => {
                    let progress = RampProgress::start(&ramp.plan, yaml_share);
                    tracing::info!(route = spec.name, "ramp: {}", last_event(&progress));
                    progress
                }
            };
            Some((spec.name.clone(), progress))
        })
        .collect();
    for name in overrides.ramps.keys() {
        if !reconciled.ramps.contains_key(name) {
            tracing::info!(
                route = name,
                "ramp: removed from the config, the split applies"
            );
        }
    }
    reconciled
}

fn last_event(progress: &RampProgress) -> String {
    progress.history.last().map_or_else(String::new, |event| {
        format!("{} {}", progress.to, event.event)
    })
}
