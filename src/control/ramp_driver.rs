//! The ramps' clock. One task ticks a few times a second: for each running ramp of a route it
//! gathers what `to` did since its step began (from the window's settled periods, so the request
//! path pays nothing for it), asks [`decide`] and applies the answer through [`Control`] like any
//! other change: one swap, then `state_file`. A flag's ramp has no gate: time moves it. People
//! drive ramps through [`Control::ramp_action`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use crate::bucket::format_percent;
use crate::config::Config;
use crate::control::overrides::{flag_ramp_of, ramp_of, Kill, KillSource, Overrides};
use crate::control::ramp::{decide, Decision, Plan, Readings};
use crate::control::ramp_state::{RampProgress, RampState, Refused};
use crate::control::window::{Settled, WindowStats};
use crate::control::{write_state, Control, ControlError, ControlState, Switch};
use crate::shadow::live::ShadowResult;
use crate::snapshot::{LiveRoute, Snapshot};

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
    /// The place this view is of: a person's action since makes it stale.
    pub epoch: u64,
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
    /// `to`'s percent now: the ramp's, or the YAML's once aborted.
    pub percent: f64,
    /// `Err` when the change is live but could not be written to `state_file`.
    pub persisted: Result<(), String>,
    /// Set when the route stays killed after a resume, and by whom.
    pub still_killed: Option<Kill>,
}

/// What the schedule decided for one ramp, applied under the control lock.
enum Step {
    /// Only the time spent changes.
    Checkpoint(Duration),
    /// The step held: the next one, or complete after the last.
    Advance {
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
    /// What `to` and stable did over the step, read from their windows.
    to: Option<Cursor>,
    stable: Option<Cursor>,
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
            to: None,
            stable: None,
            shadow_base: (0, 0),
            last_checkpoint: now,
        }
    }

    /// Evidence starts again from now: at a new step, at the start, and after a kill.
    fn restart_evidence(&mut self, route: Option<&LiveRoute>, now: Instant) {
        self.to = route.map(|route| Cursor::new(&route.targets[1].window, now));
        self.stable = route.map(|route| Cursor::new(&route.targets[0].window, now));
        self.shadow_base = route.map_or((0, 0), shadow_counts);
        self.running_since = Some(now);
    }

    fn spent(&self, now: Instant) -> Duration {
        self.spent_before
            + self
                .running_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// One look at a ramp: what status shows, and what to change, if anything.
    fn tick(&mut self, ramp: &Ramped<'_>, now: Instant) -> (RampLive, Option<Step>) {
        let progress = ramp.progress;
        if progress.state != RampState::Running {
            self.running_since = None;
            let live = RampLive {
                spent: progress.spent(),
                epoch: progress.epoch,
                ..RampLive::default()
            };
            return (live, None);
        }
        if ramp.killed {
            // A kill by anyone holds the ramp at its step; what came before the kill cannot
            // vouch for what comes after, so a resume starts the step's time and evidence again.
            self.running_since = None;
            self.spent_before = Duration::ZERO;
            let live = RampLive {
                spent: self.spent_before,
                holding: Some(format!(
                    "the {} is killed: resuming it continues the ramp",
                    ramp.switch.noun()
                )),
                epoch: progress.epoch,
                ..RampLive::default()
            };
            return (live, None);
        }
        if self.running_since.is_none() {
            self.restart_evidence(ramp.route, now);
        }
        let readings = ramp
            .route
            .map_or_else(Readings::default, |route| self.gather(route, now));
        let spent = self.spent(now);
        let mut live = RampLive {
            spent,
            readings: readings.clone(),
            epoch: progress.epoch,
            ..RampLive::default()
        };
        let last = progress.next_step().is_none();
        let step = match decide(ramp.plan, progress.share, last, spent, &readings) {
            Decision::Hold(why) => {
                if readings.requests >= ramp.plan.gate.min_requests {
                    live.next_step_in = ramp.plan.every.checked_sub(spent);
                }
                live.holding = Some(why);
                (now.saturating_duration_since(self.last_checkpoint) >= CHECKPOINT).then(|| {
                    self.last_checkpoint = now;
                    Step::Checkpoint(spent)
                })
            }
            // The place knows whether a step follows; past the last, the ramp completes.
            Decision::Advance | Decision::Done => Some(Step::Advance {
                evidence: evidence(progress, spent, &readings, ramp.route.is_some()),
            }),
            Decision::Abort(reason) => Some(Step::Fail { reason }),
        };
        (live, step)
    }

    /// Adds what `to` and stable did in their windows' newly settled periods; reads the rest
    /// of the gate.
    fn gather(&mut self, route: &LiveRoute, now: Instant) -> Readings {
        let to = Cursor::read(&mut self.to, &route.targets[1].window, now);
        let stable = Cursor::read(&mut self.stable, &route.targets[0].window, now);
        let (compared, mismatches) = shadow_counts(route);
        Readings {
            requests: to.requests,
            errors: to.errors,
            to_p99: to.p99(),
            // Stable serves nothing at 100%: its recent window is the baseline then.
            stable_p99: stable
                .p99()
                .or_else(|| route.targets[0].window.totals().p99),
            compared: compared.saturating_sub(self.shadow_base.0),
            mismatches: mismatches.saturating_sub(self.shadow_base.1),
        }
    }
}

/// A reader of one backend's window over a step: each settled period counted once.
struct Cursor {
    window: Arc<WindowStats>,
    /// The last period already counted.
    after: u64,
    seen: Settled,
}

impl Cursor {
    fn new(window: &Arc<WindowStats>, now: Instant) -> Cursor {
        Cursor {
            window: window.clone(),
            after: window.period_at(now),
            seen: Settled::default(),
        }
    }

    /// Brings `cursor` up to `now` on `window` (a replaced window, after an edit of its
    /// length, is read from its current period on) and returns what the step has seen.
    fn read<'a>(
        cursor: &'a mut Option<Cursor>,
        window: &Arc<WindowStats>,
        now: Instant,
    ) -> &'a Settled {
        if !cursor
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.window, window))
        {
            let seen = cursor.take().map(|c| c.seen).unwrap_or_default();
            *cursor = Some(Cursor {
                seen,
                ..Cursor::new(window, now)
            });
        }
        let cursor = cursor.get_or_insert_with(|| Cursor::new(window, now));
        let (settled, last) = cursor.window.settled_since(cursor.after, now);
        cursor.seen.add(&settled);
        cursor.after = last;
        &cursor.seen
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
fn evidence(progress: &RampProgress, spent: Duration, readings: &Readings, gated: bool) -> String {
    let time = format!(
        "{} at {}%",
        humantime::format_duration(Duration::from_secs(spent.as_secs())),
        format_percent(progress.share),
    );
    if !gated {
        return time;
    }
    let errors = readings.errors as f64 * 100.0 / readings.requests.max(1) as f64;
    format!(
        "{time} ({} requests, {errors:.2}% errors)",
        readings.requests
    )
}

/// One ramp in a snapshot, route or flag, as the driver reads it.
struct Ramped<'a> {
    switch: Switch,
    name: &'a str,
    plan: &'a Plan,
    progress: &'a RampProgress,
    /// Killed in the YAML, at runtime, or tripped by the guard a moment ago.
    killed: bool,
    /// The route whose window is the evidence; a flag's ramp has no gate.
    route: Option<&'a LiveRoute>,
}

/// Every ramp in force in `snapshot`.
fn ramps_in(snapshot: &Snapshot) -> Vec<Ramped<'_>> {
    let routes = snapshot
        .config
        .routes
        .iter()
        .zip(snapshot.routes.iter())
        .filter_map(|(spec, route)| {
            let (ramp, progress) = ramp_of(spec, &snapshot.overrides)?;
            Some(Ramped {
                switch: Switch::Route,
                name: &spec.name,
                plan: &ramp.plan,
                progress,
                killed: route.is_killed(),
                route: Some(route),
            })
        });
    let flags = snapshot.config.flags.iter().filter_map(|(key, flag)| {
        let (ramp, progress) = flag_ramp_of(key, flag, &snapshot.overrides)?;
        Some(Ramped {
            switch: Switch::Flag,
            name: key,
            plan: &ramp.plan,
            progress,
            killed: flag.kill || snapshot.overrides.flags.contains_key(key),
            route: None,
        })
    });
    routes.chain(flags).collect()
}

impl Control {
    /// Runs every ramp's schedule until the process ends.
    pub async fn drive_ramps(self: Arc<Self>) {
        let mut trackers: HashMap<(Switch, String), Tracker> = HashMap::new();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snapshot = self.live.load_full();
            let now = Instant::now();
            let mut live = HashMap::new();
            let mut steps = Vec::new();
            for ramp in ramps_in(&snapshot) {
                let id = (ramp.switch, ramp.name.to_owned());
                let tracker = trackers
                    .entry(id.clone())
                    .or_insert_with(|| Tracker::new(ramp.progress, now));
                if tracker.epoch != ramp.progress.epoch {
                    *tracker = Tracker::new(ramp.progress, now);
                }
                let (view, step) = tracker.tick(&ramp, now);
                if let Some(step) = step {
                    steps.push((id.clone(), ramp.progress.epoch, step));
                }
                live.insert(id, view);
            }
            trackers.retain(|id, _| live.contains_key(id));
            self.ramps_live.store(Arc::new(live));
            for ((switch, name), epoch, step) in steps {
                let control = self.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    control.ramp_step(switch, &name, epoch, step)
                })
                .await;
                if let Err(err) = applied {
                    tracing::error!(error = %err, "applying a ramp step failed");
                }
            }
        }
    }

    /// What status shows of each ramp beyond its place. Never waits.
    pub fn ramps_live(&self) -> Arc<HashMap<(Switch, String), RampLive>> {
        self.ramps_live.load_full()
    }

    /// Applies what the schedule decided, unless a person changed the ramp since (its epoch).
    fn ramp_step(&self, switch: Switch, name: &str, epoch: u64, step: Step) {
        let state = self.lock();
        let noun = switch.noun();
        let _ = self.change_ramp(&state, switch, name, |progress, plan, _| {
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
                Step::Advance { evidence } => {
                    progress.advance(&evidence);
                    let moved = match progress.state {
                        RampState::Complete => format!("complete at {}%", progress.percent()),
                        _ => format!("{before}% → {}%", progress.percent()),
                    };
                    tracing::info!(
                        "ramp of {noun} {name}: {} {moved} after {evidence}",
                        plan.to
                    );
                }
                Step::Fail { reason } => {
                    progress.fail(&reason);
                    tracing::warn!("ramp of {noun} {name} aborted, {noun} killed: {reason}");
                    kill = Some(Kill::now(KillSource::Ramp, reason));
                }
            }
            Ok(Some(kill))
        });
    }

    /// A person pauses, resumes, promotes or aborts the ramp of a route or flag.
    pub fn ramp_action(
        &self,
        switch: Switch,
        name: &str,
        action: RampAction,
        by: KillSource,
    ) -> Result<RampOutcome, ControlError> {
        let state = self.lock();
        let live = self.ramps_live().get(&(switch, name.to_owned())).cloned();
        let by_name = by.as_str();
        let noun = switch.noun();
        let outcome = self.change_ramp(&state, switch, name, |progress, _, yaml_share| {
            let kill = match &action {
                RampAction::Pause => {
                    // The driver's time, unless it is of another step than this one.
                    let spent = live
                        .filter(|live| live.epoch == progress.epoch)
                        .map_or(progress.spent(), |live| live.spent);
                    if !progress.pause(by_name, spent)? {
                        return Ok(None);
                    }
                    None
                }
                RampAction::Resume => {
                    if !progress.resume(by_name, yaml_share)? {
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
            Ok(Some(kill))
        })?;
        if outcome.changed {
            tracing::warn!(
                "ramp of {noun} {name}: {} by {by_name}, {} at {}%",
                action.verb(),
                outcome.progress.to,
                outcome.percent
            );
        }
        // A resume lifts the kill the ramp's own gate made; other kills stay.
        let outcome = if matches!(action, RampAction::Resume) {
            self.lift_ramp_kill(&state, switch, name, outcome)
        } else {
            outcome
        };
        Ok(outcome)
    }

    /// After a resume: removes the kill of `name` if its ramp made it, and reports any other.
    fn lift_ramp_kill(
        &self,
        held: &MutexGuard<'_, ControlState>,
        switch: Switch,
        name: &str,
        mut outcome: RampOutcome,
    ) -> RampOutcome {
        let current = self.live.load_full();
        let kills = match switch {
            Switch::Route => &current.overrides.routes,
            Switch::Flag => &current.overrides.flags,
        };
        if kills
            .get(name)
            .is_some_and(|kill| kill.by == KillSource::Ramp)
        {
            if let Some(route) = current.route(name).filter(|_| switch == Switch::Route) {
                route.runtime.clear_trip();
            }
            let lifted = self.change(held, switch, Some(&[name]), |killed, name| {
                killed.remove(name).is_some()
            });
            if let Ok(lifted) = lifted {
                outcome.changed |= !lifted.changed.is_empty();
                if lifted.persisted.is_err() {
                    outcome.persisted = lifted.persisted;
                }
            }
        }
        let current = self.live.load_full();
        outcome.still_killed = match switch {
            Switch::Route => current.route(name).and_then(|r| r.kill.clone()),
            Switch::Flag => current
                .config
                .flags
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(key, flag)| {
                    if flag.kill {
                        Some(Kill::in_config())
                    } else {
                        current.overrides.flags.get(key).cloned()
                    }
                }),
        };
        outcome
    }

    /// Applies `change` to the ramp of `name` under the lock `_held`, publishes the result and
    /// writes `state_file`. `change` answers `None` for no change, or the kill to add.
    fn change_ramp(
        &self,
        _held: &MutexGuard<'_, ControlState>,
        switch: Switch,
        name: &str,
        change: impl FnOnce(&mut RampProgress, &Plan, u32) -> Result<Option<Option<Kill>>, Refused>,
    ) -> Result<RampOutcome, ControlError> {
        let current = self.live.load_full();
        let (plan, progress, yaml_share) = match switch {
            Switch::Route => {
                let spec = current.config.routes.iter().find(|r| r.name == name);
                let spec = spec.ok_or_else(|| ControlError::Unknown("route", name.to_owned()))?;
                ramp_of(spec, &current.overrides)
                    .map(|(ramp, progress)| (&ramp.plan, progress, spec.split[1].1))
            }
            Switch::Flag => {
                let (key, flag) = current
                    .config
                    .flags
                    .iter()
                    .find(|(key, _)| key == name)
                    .ok_or_else(|| ControlError::Unknown("flag", name.to_owned()))?;
                flag_ramp_of(key, flag, &current.overrides)
                    .map(|(ramp, progress)| (&ramp.plan, progress, ramp.configured))
            }
        }
        .ok_or_else(|| ControlError::NoRamp(switch.noun(), name.to_owned()))?;
        let mut progress = progress.clone();
        let change = change(&mut progress, plan, yaml_share);
        let percent = f64::from(progress.share_in_force(yaml_share)) / 100.0;
        let kill = match change {
            Err(refused) => return Err(ControlError::Refused(refused.0)),
            Ok(None) => {
                return Ok(RampOutcome {
                    changed: false,
                    progress,
                    percent,
                    persisted: Ok(()),
                    still_killed: None,
                })
            }
            Ok(Some(kill)) => kill,
        };
        let mut overrides = (*current.overrides).clone();
        let (ramps, kills) = match switch {
            Switch::Route => (&mut overrides.ramps, &mut overrides.routes),
            Switch::Flag => (&mut overrides.flag_ramps, &mut overrides.flags),
        };
        ramps.insert(name.to_owned(), progress.clone());
        let killed_now = match kill {
            Some(kill) if !kills.contains_key(name) => {
                kills.insert(name.to_owned(), kill);
                true
            }
            _ => false,
        };
        let snapshot = Arc::new(current.with_overrides(Arc::new(overrides)));
        self.live.store(snapshot.clone());
        snapshot.export_gauges();
        self.announce_flag_changes(&current, &snapshot);
        if let (true, Some(route)) = (killed_now, snapshot.route(name)) {
            if switch == Switch::Route {
                route.runtime.kill_signal.send_modify(|n| *n += 1);
            }
        }
        let persisted = write_state(&snapshot);
        self.persist.record(&persisted);
        Ok(RampOutcome {
            changed: true,
            progress,
            percent,
            persisted,
            still_killed: None,
        })
    }
}

/// The ramps' places after a config load: kept, started, restarted by an edit of `to` or
/// `steps`, or dropped with their `ramp:`. Logs each start and restart.
pub(crate) fn reconcile_ramps(config: &Config, overrides: &Overrides) -> Overrides {
    let routes = config.routes.iter().filter_map(|spec| {
        let ramp = spec.ramp.as_ref()?;
        Some((spec.name.as_str(), &ramp.plan, spec.split[1].1))
    });
    let flags = config.flags.iter().filter_map(|(key, flag)| {
        let ramp = flag.ramp.as_ref()?;
        Some((key.as_str(), &ramp.plan, ramp.configured))
    });
    Overrides {
        ramps: reconcile(Switch::Route, routes, &overrides.ramps),
        flag_ramps: reconcile(Switch::Flag, flags, &overrides.flag_ramps),
        ..overrides.clone()
    }
}

fn reconcile<'a>(
    switch: Switch,
    ramps: impl Iterator<Item = (&'a str, &'a Plan, u32)>,
    places: &BTreeMap<String, RampProgress>,
) -> BTreeMap<String, RampProgress> {
    let noun = switch.noun();
    let reconciled: BTreeMap<String, RampProgress> = ramps
        .map(|(name, plan, yaml_share)| {
            let progress = match places.get(name) {
                Some(progress) if !progress.is_sane() => {
                    tracing::warn!(
                        "ramp of {noun} {name}: the place in state_file is not one this ramp can be at (step {}, share {}): starting again from the config",
                        progress.step,
                        progress.share
                    );
                    let mut fresh = RampProgress::start(plan, yaml_share);
                    if progress.state == RampState::Aborted {
                        fresh.state = RampState::Aborted;
                        fresh.reason = progress.reason.clone();
                    }
                    fresh
                }
                Some(progress) if progress.follows(plan) => progress.clone(),
                Some(progress) => {
                    let progress = progress.clone().follow_edit(plan, yaml_share);
                    tracing::info!("ramp of {noun} {name}: {}", last_event(&progress));
                    progress
                }
                None => {
                    let progress = RampProgress::start(plan, yaml_share);
                    tracing::info!("ramp of {noun} {name}: {}", last_event(&progress));
                    progress
                }
            };
            (name.to_owned(), progress)
        })
        .collect();
    for name in places.keys().filter(|name| !reconciled.contains_key(*name)) {
        tracing::info!("ramp of {noun} {name}: removed from the config, its YAML share applies");
    }
    reconciled
}

fn last_event(progress: &RampProgress) -> String {
    progress.history.last().map_or_else(String::new, |event| {
        format!("{} {}", progress.to, event.event)
    })
}
