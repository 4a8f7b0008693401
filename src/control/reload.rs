//! What triggers a reload (the file's directory changing, SIGHUP). Every trigger calls the
//! one reload path, [`Control::reload`]; [`crate::config::describe_changes`] describes it.
//!
//! The watcher follows each config file's *directory*, never a canonicalized path, so editors'
//! atomic renames and the Kubernetes ConfigMap `..data` symlink swap are both seen.
//!
//! A file written in place is read only once its writer closed it ([`Writing`]): a writer that
//! pauses mid-file for longer than the settle interval would otherwise show two reads the same
//! half-written YAML. Every trigger, SIGHUP included, waits for that close (up to
//! [`WRITER_WAIT`]); then the reload's own settle check still applies.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Writing;
use crate::control::Control;

/// How long the file must be quiet before a change is read: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Longest a reload triggered by the watcher or SIGHUP waits for a writer to close a config
/// file it is writing in place, before it starts reading (the reload itself waits up to 2 s
/// more for the file to settle).
pub const WRITER_WAIT: Duration = Duration::from_secs(5);

/// What an event says of in-place writing: a data write means a writer has the file open; its
/// close (inotify's `IN_CLOSE_WRITE`), or a create or rename that replaces the file, ends that.
fn note(writing: &Writing, kind: &EventKind) {
    match kind {
        EventKind::Modify(ModifyKind::Data(_)) => writing.set(true),
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Name(_)) => writing.set(false),
        _ => {}
    }
}

/// Resolves once no writer has a config file open, or after [`WRITER_WAIT`].
async fn writers_closed(writing: &Writing) {
    let give_up = Instant::now() + WRITER_WAIT;
    while writing.in_progress() {
        if Instant::now() >= give_up {
            tracing::warn!(
                "a config file is still open for writing after {WRITER_WAIT:?}; reading it anyway"
            );
            writing.set(false);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Watches the directory of each file the config is read from (the config file and its
/// `flags_file`) and reloads after changes to one of those files or to a `..data` symlink.
/// The set follows the config: a reload that names another `flags_file` moves the watch.
/// The same events tell [`Control::writing`] when a file is being written in place.
pub fn watch(control: Arc<Control>) -> notify::Result<()> {
    let (tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let writing = control.writing();
    let mut files = control.watched_files();
    let mut watching = Watching::aim(tx.clone(), writing.clone(), &files.borrow_and_update())?;
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
                    writers_closed(&writing).await;
                    reload(&control).await;
                }
                Ok(()) = files.changed() => {
                    let wanted = files.borrow_and_update().clone();
                    if wanted == watching.files && watching.complete {
                        continue;
                    }
                    match Watching::aim(tx.clone(), writing.clone(), &wanted) {
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
    fn aim(
        tx: mpsc::UnboundedSender<Vec<PathBuf>>,
        writing: Arc<Writing>,
        files: &[PathBuf],
    ) -> notify::Result<Watching> {
        let names = watched_names(files);
        let relevant = names.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // Noted here, on the watcher's thread, so a reload already reading sees it.
                if is_relevant(&relevant, &event.paths) {
                    note(&writing, &event.kind);
                }
                // Reads (cutover's own included) are not changes; counting them would reload
                // forever.
                if !event.kind.is_access() {
                    let _ = tx.send(event.paths);
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
            names,
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

    fn is_relevant(&self, paths: &[PathBuf]) -> bool {
        is_relevant(&self.names, paths)
    }
}

/// The file names that matter in the watched directories: the files, and `..data`.
fn watched_names(files: &[PathBuf]) -> Vec<OsString> {
    files
        .iter()
        .filter_map(|f| f.file_name().map(ToOwned::to_owned))
        .chain([OsString::from("..data")])
        .collect()
}

/// By name only: a same-named file in another watched directory costs one reload that finds
/// nothing changed.
fn is_relevant(names: &[OsString], paths: &[PathBuf]) -> bool {
    paths.iter().any(|path| {
        path.file_name()
            .is_some_and(|name| names.iter().any(|n| n == name))
    })
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reloads on every SIGHUP, once no config file is being written in place.
pub fn reload_on_sighup(control: Arc<Control>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let writing = control.writing();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            writers_closed(&writing).await;
            let control = control.clone();
            let _ = tokio::task::spawn_blocking(move || control.reload("sighup")).await;
        }
    });
    Ok(())
}
