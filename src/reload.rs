//! The one reload path. Startup, file changes, SIGHUP and the admin API all call
//! [`Reloader::reload`], which parses, validates and compiles a complete snapshot off the
//! request path and publishes it with a single swap, or changes nothing and says why.
//!
//! The watcher follows the config file's *directory*, never a canonicalized path, so editors'
//! atomic renames and the Kubernetes ConfigMap `..data` symlink swap are both seen.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, format_percent, Config, ConfigError};
use crate::forward::UpstreamCache;
use crate::snapshot::{Generation, LiveSnapshot, Snapshot};
use crate::telemetry;

/// How long the file must be quiet before a change is read: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

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

struct ReloadState {
    /// Content of the last file read, to skip events that change nothing.
    last_text: String,
    last_errors: Option<Vec<ConfigError>>,
    generation: Generation,
    upstreams: UpstreamCache,
    last: LastReload,
}

pub struct Reloader {
    path: PathBuf,
    live: Arc<LiveSnapshot>,
    /// Serializes reloads; never touched by the request path.
    state: Mutex<ReloadState>,
}

impl Reloader {
    /// Loads the config for the first time. Fails with every error if it is not valid.
    pub fn start(path: &Path) -> Result<Reloader, Vec<ConfigError>> {
        let text = read(path)?;
        let config = config::compile_text(path, &text).inspect_err(|_| {
            telemetry::config_reload("error");
        })?;
        for warning in &config.warnings {
            tracing::warn!("{}: {warning}", path.display());
        }
        let mut upstreams = UpstreamCache::default();
        let snapshot = Snapshot::build(config, 1, &mut upstreams);
        snapshot.export_gauges();
        telemetry::config_reload("success");
        Ok(Reloader {
            path: path.to_path_buf(),
            live: Arc::new(LiveSnapshot::from_pointee(snapshot)),
            state: Mutex::new(ReloadState {
                last_text: text,
                last_errors: None,
                generation: 1,
                upstreams,
                last: LastReload {
                    at: SystemTime::now(),
                    trigger: "startup",
                    result: Ok(1),
                },
            }),
        })
    }

    pub fn live(&self) -> Arc<LiveSnapshot> {
        self.live.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last(&self) -> LastReload {
        self.lock().last.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        // A panic mid-reload leaves the old snapshot live; the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the file and applies it if it is valid and different.
    pub fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let mut state = self.lock();
        let outcome = self.reload_locked(&mut state, trigger);
        let (result, label) = match &outcome {
            ReloadOutcome::Applied { generation, diff } => {
                tracing::info!(
                    trigger,
                    generation,
                    "config applied: {}",
                    if diff.is_empty() {
                        "no routing change".to_owned()
                    } else {
                        diff.join("; ")
                    }
                );
                (Ok(*generation), "success")
            }
            ReloadOutcome::Rejected { errors } => {
                for error in errors {
                    tracing::error!(
                        trigger,
                        "config rejected, still serving generation {}: {error}",
                        state.generation
                    );
                }
                (
                    Err(errors.iter().map(ToString::to_string).collect()),
                    "error",
                )
            }
            ReloadOutcome::Unchanged { generation } => {
                tracing::debug!(trigger, generation, "config unchanged");
                (Ok(*generation), "unchanged")
            }
        };
        telemetry::config_reload(label);
        state.last = LastReload {
            at: SystemTime::now(),
            trigger,
            result,
        };
        outcome
    }

    fn reload_locked(&self, state: &mut ReloadState, trigger: &'static str) -> ReloadOutcome {
        let text = match read(&self.path) {
            Ok(text) => text,
            Err(errors) => return ReloadOutcome::Rejected { errors },
        };
        if text == state.last_text {
            return match &state.last_errors {
                Some(errors) => ReloadOutcome::Rejected {
                    errors: errors.clone(),
                },
                None => ReloadOutcome::Unchanged {
                    generation: state.generation,
                },
            };
        }
        state.last_text = text;
        let config = match config::compile_text(&self.path, &state.last_text) {
            Ok(config) => config,
            Err(errors) => {
                state.last_errors = Some(errors.clone());
                return ReloadOutcome::Rejected { errors };
            }
        };
        state.last_errors = None;
        let current = self.live.load_full();
        let mut diff = describe_changes(&current.config, &config);
        for warning in &config.warnings {
            tracing::warn!(trigger, "{}: {warning}", self.path.display());
        }
        for (what, old, new) in [
            ("listen", current.config.listen, config.listen),
            (
                "admin.listen",
                current.config.admin.listen,
                config.admin.listen,
            ),
        ] {
            if old != new {
                tracing::warn!("{what} changed from {old} to {new}: listeners change only on restart, still serving on {old}");
                diff.push(format!("{what} {old} → {new} (needs a restart)"));
            }
        }
        state.generation += 1;
        let snapshot = Snapshot::build(config, state.generation, &mut state.upstreams);
        self.live.store(Arc::new(snapshot));
        self.live.load().export_gauges();
        ReloadOutcome::Applied {
            generation: state.generation,
            diff,
        }
    }
}

fn read(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigError {
            file: path.to_path_buf(),
            location: None,
            path: String::new(),
            message: format!("cannot read: {err}"),
        }]
    })
}

/// One line per routing change, e.g. `payments: payments-v2 10% → 25%, legacy 90% → 75%`.
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let split_of = |config: &Config, index: usize| -> Vec<(String, u32)> {
        config.routes[index]
            .split
            .iter()
            .map(|&(b, share)| (config.backends[b].name.clone(), share))
            .collect()
    };
    for (i, route) in new.routes.iter().enumerate() {
        let Some(j) = old.routes.iter().position(|r| r.name == route.name) else {
            lines.push(format!("route {} added", route.name));
            continue;
        };
        let (before, after) = (split_of(old, j), split_of(new, i));
        let mut changes: Vec<String> = after
            .iter()
            .filter_map(|(backend, share)| {
                let previous = before
                    .iter()
                    .find(|(b, _)| b == backend)
                    .map_or(0, |(_, s)| *s);
                (previous != *share).then(|| {
                    format!(
                        "{backend} {}% → {}%",
                        format_percent(previous),
                        format_percent(*share)
                    )
                })
            })
            .collect();
        changes.extend(
            before
                .iter()
                .filter(|(b, _)| after.iter().all(|(a, _)| a != b))
                .map(|(b, s)| format!("{b} {}% → removed", format_percent(*s))),
        );
        let old_route = &old.routes[j];
        if old_route.kill != route.kill {
            changes.push(format!("kill {} → {}", old_route.kill, route.kill));
        }
        if old_route.matcher != route.matcher {
            changes.push("match changed".to_owned());
        }
        if !changes.is_empty() {
            lines.push(format!("{}: {}", route.name, changes.join(", ")));
        }
    }
    for route in &old.routes {
        if new.routes.iter().all(|r| r.name != route.name) {
            lines.push(format!("route {} removed", route.name));
        }
    }
    for backend in &new.backends {
        match old.backends.iter().find(|b| b.name == backend.name) {
            None => lines.push(format!("backend {} added", backend.name)),
            Some(b) if b != backend => lines.push(format!("backend {} changed", backend.name)),
            Some(_) => {}
        }
    }
    lines
}

/// Watches the config's directory and reloads after changes to the file or `..data`.
/// The returned watcher must be kept alive.
pub fn watch(reloader: Arc<Reloader>) -> notify::Result<notify::RecommendedWatcher> {
    let path = reloader.path().to_path_buf();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(ToOwned::to_owned);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| {
            let name = p.file_name();
            name == file_name.as_deref() || name == Some("..data".as_ref())
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload("file")).await;
        }
    });
    Ok(watcher)
}

/// Reloads on every SIGHUP.
pub fn reload_on_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload("sighup")).await;
        }
    });
    Ok(())
}
