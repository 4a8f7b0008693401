//! What triggers a reload (the file's directory changing, SIGHUP) and how a reload is
//! described. Every trigger calls the one reload path, [`Control::reload`].
//!
//! The watcher follows the config file's *directory*, never a canonicalized path, so editors'
//! atomic renames and the Kubernetes ConfigMap `..data` symlink swap are both seen.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{format_percent, Config};
use crate::control::Control;

/// How long the file must be quiet before a change is read: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

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
pub fn watch(control: Arc<Control>) -> notify::Result<notify::RecommendedWatcher> {
    let path = control.path().to_path_buf();
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
            let control = control.clone();
            let _ = tokio::task::spawn_blocking(move || control.reload("file")).await;
        }
    });
    Ok(watcher)
}

/// Reloads on every SIGHUP.
pub fn reload_on_sighup(control: Arc<Control>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let control = control.clone();
            let _ = tokio::task::spawn_blocking(move || control.reload("sighup")).await;
        }
    });
    Ok(())
}
