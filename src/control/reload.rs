//! What triggers a reload (the file's directory changing, SIGHUP). Every trigger calls the
//! one reload path, [`Control::reload`]; [`crate::config::describe_changes`] describes it.
//!
//! The watcher follows each config file's *directory*, never a canonicalized path, so editors'
//! atomic renames and the Kubernetes ConfigMap `..data` symlink swap are both seen.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::Control;

/// How long the file must be quiet before a change is read: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the directory of each file the config is read from (the config file and its
/// `flags_file`) and reloads after changes to one of those files or to a `..data` symlink.
/// The set follows the config: a reload that names another `flags_file` moves the watch.
pub fn watch(control: Arc<Control>) -> notify::Result<()> {
    let (tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut files = control.watched_files();
    let mut watching = Watching::aim(tx.clone(), &files.borrow_and_update())?;
    watching.warn_if_incomplete();
    // The task owns the watcher: dropping it ends the watch.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(paths) = events.recv() => {
                    if !watching.is_relevant(&paths) {
                        continue;
                    }
                    // Editors write in bursts: wait until the files are quiet (unrelated
                    // activity in the directory does not count), but never longer than MAX_WAIT.
                    let give_up = Instant::now() + MAX_WAIT;
                    let mut quiet_at = Instant::now() + DEBOUNCE;
                    while let Ok(Some(paths)) =
                        tokio::time::timeout_at(quiet_at.min(give_up), events.recv()).await
                    {
                        if watching.is_relevant(&paths) {
                            quiet_at = Instant::now() + DEBOUNCE;
                        }
                    }
                    reload(&control).await;
                }
                Ok(()) = files.changed() => {
                    let wanted = files.borrow_and_update().clone();
                    if wanted == watching.files && watching.complete {
                        continue;
                    }
                    match Watching::aim(tx.clone(), &wanted) {
                        Ok(next) => {
                            next.warn_if_incomplete();
                            // A directory watched only now may have changed before the watch
                            // began: read once more so such an edit is not lost.
                            let gained = next.dirs.iter().any(|d| !watching.dirs.contains(d));
                            watching = next;
                            if gained {
                                reload(&control).await;
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "cannot watch the config; reload with SIGHUP"),
                    }
                }
                else => break,
            }
        }
    });
    Ok(())
}

/// Longest a reload waits for a burst of writes to end.
const MAX_WAIT: Duration = Duration::from_secs(1);

async fn reload(control: &Arc<Control>) {
    let control = control.clone();
    let _ = tokio::task::spawn_blocking(move || control.reload("file")).await;
}

/// One watcher on the directories of a set of files, and the file names that matter there.
struct Watching {
    _watcher: notify::RecommendedWatcher,
    files: Vec<PathBuf>,
    /// The directories actually watched.
    dirs: Vec<PathBuf>,
    names: Vec<OsString>,
    /// Every directory could be watched (one that does not exist yet cannot).
    complete: bool,
}

impl Watching {
    /// A fresh watcher each time, rather than re-aiming one: inotify shares one watch between
    /// two spellings of a directory (`.` and its absolute path), so unwatching one would
    /// silently end the other.
    fn aim(tx: mpsc::UnboundedSender<Vec<PathBuf>>, files: &[PathBuf]) -> notify::Result<Watching> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reads (cutover's own included) are not changes; counting them would reload
                // forever.
                match event {
                    Ok(event) if !event.kind.is_access() => {
                        let _ = tx.send(event.paths);
                    }
                    _ => {}
                }
            })?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut complete = true;
        for dir in files.iter().map(|f| directory_of(f)) {
            if dirs.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => dirs.push(dir),
                Err(err) => {
                    tracing::debug!(dir = %dir.display(), error = %err, "cannot watch");
                    complete = false;
                }
            }
        }
        Ok(Watching {
            _watcher: watcher,
            files: files.to_vec(),
            dirs,
            names: files
                .iter()
                .filter_map(|f| f.file_name().map(ToOwned::to_owned))
                .chain([OsString::from("..data")])
                .collect(),
            complete,
        })
    }

    fn warn_if_incomplete(&self) {
        if !self.complete {
            tracing::warn!(
                "cannot watch the directory of every config file; watching {:?}, retried on each reload",
                self.dirs
            );
        }
    }

    /// By name only: a same-named file in another watched directory costs one reload that
    /// finds nothing changed.
    fn is_relevant(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| self.names.iter().any(|n| n == name))
        })
    }
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
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
