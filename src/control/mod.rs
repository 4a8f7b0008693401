//! The one writer of the live snapshot. Reloads (startup, file watch, SIGHUP, the admin API)
//! and kill switches (API, CLI, guard) all go through [`Control`], which serializes them,
//! builds the next snapshot off the request path, and publishes it with one swap.

pub mod guard;
pub mod overrides;
pub mod persist;
pub mod ramp;
mod ramp_driver;
pub mod ramp_state;
pub mod reload;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError};
use crate::config::{describe_changes, start_time_changes};
use crate::control::guard::{Trip, TripReceiver};
pub use crate::control::overrides::{flag_ramp_of, ramp_of};
use crate::control::overrides::{Kill, KillSource, Overrides};
use crate::control::persist::{PersistFailure, PersistState, FIRST_RETRY_DELAY, MAX_RETRY_DELAY};
use crate::control::ramp_driver::reconcile_ramps;
pub use crate::control::ramp_driver::{RampAction, RampLive, RampOutcome};
use crate::snapshot::{Carried, Generation, LiveSnapshot, Snapshot};
use crate::telemetry;

#[derive(Debug)]
pub enum ReloadOutcome {
    Applied {
        generation: Generation,
        diff: Vec<String>,
    },
    Rejected {
        errors: Vec<ConfigError>,
    },
    Unchanged {
        generation: Generation,
    },
}

/// The result of the most recent reload attempt, for status displays.
#[derive(Clone, Debug)]
pub struct LastReload {
    pub at: SystemTime,
    pub trigger: &'static str,
    /// `Ok(generation)` or the errors of a rejected file.
    pub result: Result<Generation, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no {0} named {1:?}")]
    Unknown(&'static str, String),
    #[error("{0} {1:?} is killed in the config file; set kill: false there to resume it")]
    KilledInConfig(&'static str, String),
    #[error("{0}")]
    Startup(String),
    #[error("{0} {1:?} has no ramp: in the config")]
    NoRamp(&'static str, String),
    /// The action does not apply in the ramp's state.
    #[error("{0}")]
    Refused(String),
}

/// Which kind of kill switch (and of ramp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Switch {
    Route,
    Flag,
}

impl Switch {
    pub fn noun(self) -> &'static str {
        match self {
            Switch::Route => "route",
            Switch::Flag => "flag",
        }
    }

    fn names(self, config: &crate::config::Config) -> Vec<&str> {
        match self {
            Switch::Route => config.routes.iter().map(|r| r.name.as_str()).collect(),
            Switch::Flag => config.flags.iter().map(|(k, _)| k.as_str()).collect(),
        }
    }

    fn killed_in_yaml(self, config: &crate::config::Config, name: &str) -> bool {
        match self {
            Switch::Route => config.routes.iter().any(|r| r.name == name && r.kill),
            Switch::Flag => config.flags.iter().any(|(k, f)| k == name && f.kill),
        }
    }

    fn killed(self, overrides: &mut Overrides) -> &mut BTreeMap<String, Kill> {
        match self {
            Switch::Route => &mut overrides.routes,
            Switch::Flag => &mut overrides.flags,
        }
    }
}

/// What a kill or resume did, and whether it was written to `state_file`.
#[derive(Debug)]
pub struct OverrideOutcome {
    pub changed: Vec<String>,
    /// `Err` when the change is live but could not be persisted.
    pub persisted: Result<(), String>,
}

struct ControlState {
    /// What the last read found, to skip events that change nothing.
    sources: config::Sources,
    last_errors: Option<Vec<ConfigError>>,
    /// Whether the last read found the same texts as the one before.
    same_sources: bool,
    generation: Generation,
    carried: Carried,
}

impl ControlState {
    /// The outcome of reading what was read last time: as it was then.
    fn same_again(&self) -> ReloadOutcome {
        match &self.last_errors {
            Some(errors) => ReloadOutcome::Rejected {
                errors: errors.clone(),
            },
            None => ReloadOutcome::Unchanged {
                generation: self.generation,
            },
        }
    }
}

/// Announced to flag event subscribers whenever what any flag serves may have changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagChange {
    /// 0 before the first change; then 1, 2, … (the SSE event id).
    pub id: u64,
    pub etag: String,
}

pub struct Control {
    path: PathBuf,
    live: Arc<LiveSnapshot>,
    flag_changes: tokio::sync::watch::Sender<FlagChange>,
    /// The files the config was last read from, for the file watcher.
    watched: tokio::sync::watch::Sender<Vec<PathBuf>>,
    /// Serializes every change; never touched by the request path.
    state: Mutex<ControlState>,
    /// The latest reload's result, readable (by `/api/status`) without waiting for the lock,
    /// which a reload holds while the files settle and a kill while `state_file` is written.
    last: ArcSwap<LastReload>,
    /// Whether `state_file` holds the live kills.
    persist: PersistState,
    /// Whether a config file is being written in place (the watcher keeps it).
    writing: Arc<config::Writing>,
    /// What each ramp is doing now, as the ramp driver last saw it.
    ramps_live: ArcSwap<HashMap<(Switch, String), RampLive>>,
}

impl Control {
    /// Loads the config and the runtime overrides for the first time, through the same
    /// [`Control::reload`] every later change takes.
    pub fn start(path: &Path) -> Result<Control, Vec<ConfigError>> {
        let control = Control {
            path: path.to_path_buf(),
            live: Arc::new(LiveSnapshot::from_pointee(Snapshot::before_first_load())),
            flag_changes: tokio::sync::watch::Sender::new(FlagChange::default()),
            watched: tokio::sync::watch::Sender::new(Vec::new()),
            state: Mutex::new(ControlState {
                sources: config::Sources::default(),
                last_errors: None,
                same_sources: false,
                generation: 0,
                carried: Carried::default(),
            }),
            last: ArcSwap::from_pointee(LastReload {
                at: SystemTime::now(),
                trigger: "startup",
                result: Ok(0),
            }),
            persist: PersistState::default(),
            writing: Arc::default(),
            ramps_live: ArcSwap::default(),
        };
        // A first load has read nothing before, so it is applied or rejected.
        match control.reload("startup") {
            ReloadOutcome::Rejected { errors } => Err(errors),
            _ => Ok(control),
        }
    }

    pub fn live(&self) -> Arc<LiveSnapshot> {
        self.live.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the file watcher notes in-place writes, which a reload waits out.
    pub fn writing(&self) -> Arc<config::Writing> {
        self.writing.clone()
    }

    pub fn last_reload(&self) -> Arc<LastReload> {
        self.last.load_full()
    }

    /// Keeps the control plane busy (as a slow disk or a long reload would) until dropped.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> impl Sized + '_ {
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A panic mid-change leaves the old snapshot live; the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the file and applies it if it is valid and different.
    pub fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let mut state = self.lock();
        let outcome = self.reload_locked(&mut state, trigger);
        // The watcher can report one save as several events; a rejected file read again
        // unchanged was already reported. SIGHUP and the API re-report it on purpose.
        if trigger == "file"
            && state.same_sources
            && matches!(outcome, ReloadOutcome::Rejected { .. })
        {
            return outcome;
        }
        let (result, label) = match &outcome {
            ReloadOutcome::Applied { generation, .. } => (Ok(*generation), "success"),
            ReloadOutcome::Rejected { errors } => (
                Err(errors.iter().map(ToString::to_string).collect()),
                "error",
            ),
            ReloadOutcome::Unchanged { generation } => (Ok(*generation), "unchanged"),
        };
        // Count before logging, so whoever sees the log line also sees the count.
        telemetry::config_reload(label);
        self.last.store(Arc::new(LastReload {
            at: SystemTime::now(),
            trigger,
            result,
        }));
        match &outcome {
            // Startup reports for itself: the server logs what it serves, `main` the errors.
            _ if trigger == "startup" => {}
            ReloadOutcome::Applied { generation, diff } => {
                let summary = if diff.is_empty() {
                    "no routing or flag change".to_owned()
                } else {
                    diff.join("; ")
                };
                tracing::info!(trigger, generation, "config applied: {summary}");
            }
            ReloadOutcome::Rejected { errors } => {
                for error in errors {
                    tracing::error!(
                        trigger,
                        "config rejected, still serving generation {}: {error}",
                        state.generation
                    );
                }
            }
            ReloadOutcome::Unchanged { generation } => {
                tracing::debug!(trigger, generation, "config unchanged");
            }
        }
        outcome
    }

    fn reload_locked(&self, state: &mut ControlState, trigger: &'static str) -> ReloadOutcome {
        state.same_sources = state.sources.unchanged();
        if state.same_sources {
            return state.same_again();
        }
        let (loaded, sources) = config::read_settled(&self.path, &self.writing);
        // Announced on every read, so the watcher also retries a directory it could not watch.
        self.watched.send_replace(sources.paths());
        // Caught mid-write, the files may have settled back to what is already served.
        state.same_sources = sources == state.sources;
        if state.same_sources {
            return state.same_again();
        }
        state.sources = sources;
        let config = match loaded {
            Ok(config) => config,
            Err(errors) => {
                state.last_errors = Some(errors.clone());
                return ReloadOutcome::Rejected { errors };
            }
        };
        state.last_errors = None;
        let current = self.live.load_full();
        for warning in &config.warnings {
            tracing::warn!(trigger, "{}: {warning}", self.path.display());
        }
        if current.generation == 0 {
            // The first load: runtime kills come from `state_file`; later loads keep them.
            let overrides = match Overrides::load(&config.state_file) {
                Ok(overrides) => overrides,
                Err(message) => {
                    let errors = vec![ConfigError {
                        file: self.path.clone(),
                        location: None,
                        path: "state_file".to_owned(),
                        message,
                    }];
                    state.last_errors = Some(errors.clone());
                    return ReloadOutcome::Rejected { errors };
                }
            };
            for (route, kill) in &overrides.routes {
                tracing::warn!(route, by = kill.by.as_str(), at = %kill.at, "route is killed: {}", kill.reason);
            }
            let reconciled = reconcile_ramps(&config, &overrides);
            let ramps_changed = reconciled != overrides;
            state.generation = 1;
            let snapshot = Snapshot::build(config, 1, &mut state.carried, Arc::new(reconciled));
            self.publish(snapshot);
            if ramps_changed {
                self.persist.record(&write_state(&self.live.load()));
            }
            return ReloadOutcome::Applied {
                generation: 1,
                diff: Vec::new(),
            };
        }
        let mut diff = describe_changes(&current.config, &config);
        for (what, old, new) in start_time_changes(&current.config, &config) {
            tracing::warn!(
                "{what} changed from {old} to {new}: it applies only on restart, still {old}"
            );
            diff.push(format!("{what} {old} → {new} (needs a restart)"));
        }
        state.generation += 1;
        let reconciled = reconcile_ramps(&config, &current.overrides);
        let ramps_changed = reconciled != *current.overrides;
        let overrides = if ramps_changed {
            Arc::new(reconciled)
        } else {
            current.overrides.clone()
        };
        let snapshot = Snapshot::build(config, state.generation, &mut state.carried, overrides);
        self.publish(snapshot);
        if ramps_changed {
            self.persist.record(&write_state(&self.live.load()));
        }
        ReloadOutcome::Applied {
            generation: state.generation,
            diff,
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        let previous = self.live.swap(snapshot.clone());
        snapshot.export_gauges();
        // Flag subscribers can only connect once the first load is done.
        if previous.generation != 0 {
            self.announce_flag_changes(&previous, &snapshot);
        }
    }

    /// The files the config is read from (the config file and its `flags_file`), updated
    /// whenever a reload reads a different set.
    pub fn watched_files(&self) -> tokio::sync::watch::Receiver<Vec<PathBuf>> {
        self.watched.subscribe()
    }

    /// Subscribes to flag changes (the flags API's event stream).
    pub fn flag_changes(&self) -> tokio::sync::watch::Receiver<FlagChange> {
        self.flag_changes.subscribe()
    }

    fn announce_flag_changes(&self, before: &Snapshot, after: &Snapshot) {
        if before.config.flags == after.config.flags
            && before.overrides.flags == after.overrides.flags
            && before.ramped_flags == after.ramped_flags
        {
            return;
        }
        self.flag_changes.send_modify(|change| {
            change.id += 1;
            change.etag = format!("\"{:x}-{:x}\"", after.generation, change.id);
        });
    }

    /// Pulls the kill switch of the named routes or flags (all of them for `None`): a route
    /// sends everything to stable, a flag serves its default, from the next request on.
    pub fn kill(
        &self,
        switch: Switch,
        names: Option<&[&str]>,
        kill: Kill,
    ) -> Result<OverrideOutcome, ControlError> {
        let state = self.lock();
        self.change(&state, switch, names, add(kill))
    }

    /// Removes runtime kills (all for `None`); the YAML applies again. A kill written in the
    /// YAML is undone in the YAML, so resuming one is refused. A guard trip not yet applied is
    /// called off too: the operator has the last word.
    pub fn resume(
        &self,
        switch: Switch,
        names: Option<&[&str]>,
    ) -> Result<OverrideOutcome, ControlError> {
        if let Some(names) = names {
            let current = self.live.load();
            if let Some(name) = names
                .iter()
                .find(|n| switch.killed_in_yaml(&current.config, n))
            {
                return Err(ControlError::KilledInConfig(
                    switch.noun(),
                    (*name).to_owned(),
                ));
            }
        }
        let state = self.lock();
        if switch == Switch::Route {
            // Before the resumed snapshot is published, so no request finds neither the kill
            // nor the mark.
            let current = self.live.load();
            current
                .routes
                .iter()
                .filter(|route| names.is_none_or(|names| names.contains(&&*route.name)))
                .for_each(|route| route.runtime.clear_trip());
        }
        self.change(&state, switch, names, |killed, name| {
            killed.remove(name).is_some()
        })
    }

    /// Applies `change` to the named switches' runtime kills, under the lock `_held`.
    fn change(
        &self,
        _held: &MutexGuard<'_, ControlState>,
        switch: Switch,
        names: Option<&[&str]>,
        mut change: impl FnMut(&mut BTreeMap<String, Kill>, &str) -> bool,
    ) -> Result<OverrideOutcome, ControlError> {
        let current = self.live.load_full();
        let all = switch.names(&current.config);
        let names = match names {
            Some(names) => {
                if let Some(unknown) = names.iter().find(|n| !all.contains(n)) {
                    return Err(ControlError::Unknown(switch.noun(), (*unknown).to_owned()));
                }
                names.to_vec()
            }
            None => all,
        };
        let mut overrides = (*current.overrides).clone();
        let killed = switch.killed(&mut overrides);
        let changed: Vec<String> = names
            .into_iter()
            .filter(|name| change(killed, name))
            .map(str::to_owned)
            .collect();
        if changed.is_empty() {
            return Ok(OverrideOutcome {
                changed,
                persisted: Ok(()),
            });
        }
        // Publish first: the switch must hold from the next request, before the disk write.
        let snapshot = Arc::new(current.with_overrides(Arc::new(overrides)));
        self.live.store(snapshot.clone());
        snapshot.export_gauges();
        self.announce_flag_changes(&current, &snapshot);
        if let Switch::Route = switch {
            for route in changed.iter().filter_map(|name| snapshot.route(name)) {
                if route.kill.is_some() {
                    route.runtime.kill_signal.send_modify(|n| *n += 1);
                }
            }
        }
        let persisted = write_state(&snapshot);
        self.persist.record(&persisted);
        Ok(OverrideOutcome { changed, persisted })
    }

    /// Set while the live kills are not all in `state_file`.
    pub fn persist_failure(&self) -> Option<Arc<PersistFailure>> {
        self.persist.failure()
    }

    /// After a failed write of `state_file`, writes the current state again with backoff
    /// until a write succeeds; then waits for the next failure. Runs as long as the server.
    pub async fn keep_state_file_written(self: Arc<Self>) {
        loop {
            self.persist.retry_wanted().await;
            let mut delay = FIRST_RETRY_DELAY;
            while self.persist.failure().is_some() {
                tokio::time::sleep(delay).await;
                let control = self.clone();
                let _ = tokio::task::spawn_blocking(move || control.write_state_again()).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }

    fn write_state_again(&self) {
        let _state = self.lock();
        // A kill or resume may have written it meanwhile.
        if self.persist.failure().is_some() {
            self.persist.record(&write_state(&self.live.load()));
        }
    }

    /// Applies guard trips as the request path reports them, one at a time and off the
    /// runtime's workers: each kill is published with one swap, then written to `state_file`.
    /// Returns once every sender is gone (the proxy has drained) and the queue is empty.
    pub async fn apply_trips(self: Arc<Self>, mut trips: TripReceiver) {
        while let Some(trip) = trips.recv().await {
            let control = self.clone();
            let route = trip.route.clone();
            if let Err(err) = tokio::task::spawn_blocking(move || control.guard_trip(trip)).await {
                // Let the route serve its split again, and its guard trip again, rather than
                // hold it on stable with nothing to show for it.
                tracing::error!(%route, error = %err, "applying a guard trip failed");
                if let Some(route) = self.live.load().route(&route) {
                    route.runtime.clear_trip();
                }
            }
        }
    }

    /// Kills the tripped route, unless it is gone, already killed, or was resumed since the
    /// trip. The trip's mark stays until a resume: it and the kill both hold the route on
    /// stable, so no request slips through between the two.
    fn guard_trip(&self, trip: Trip) -> bool {
        let state = self.lock();
        let current = self.live.load_full();
        let Some(route) = current.route(&trip.route) else {
            return false;
        };
        if !route.runtime.is_tripped() {
            return false;
        }
        let kill = Kill::now(KillSource::Guard, trip.reason.clone());
        match self.change(&state, Switch::Route, Some(&[&trip.route]), add(kill)) {
            Ok(outcome) if !outcome.changed.is_empty() => {
                route.telemetry.guard_trips.increment(1);
                tracing::warn!(route = %trip.route, "guard tripped, route killed: {}", trip.reason);
                true
            }
            _ => false,
        }
    }
}

/// Writes the snapshot's runtime kills, all of them, to its `state_file`.
fn write_state(snapshot: &Snapshot) -> Result<(), String> {
    let path = &snapshot.config.state_file;
    snapshot
        .overrides
        .save(path)
        .map_err(|err| format!("writing {}: {err}", path.display()))
}

/// A change that kills whatever is not killed yet.
fn add(kill: Kill) -> impl FnMut(&mut BTreeMap<String, Kill>, &str) -> bool {
    move |killed, name| {
        if killed.contains_key(name) {
            return false;
        }
        killed.insert(name.to_owned(), kill.clone());
        true
    }
}
