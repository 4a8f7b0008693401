//! Process lifecycle: load the config, bind listeners, serve until SIGTERM/SIGINT, then stop
//! accepting and let in-flight requests finish for up to `shutdown_timeout`.
//! Listeners live for the process; reloads swap data only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::FutureExt as _;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::admin::{self, Admin};
use crate::bucket::format_percent;
use crate::config::AccessLogSettings;
use crate::config::Config;
use crate::control::reload;
use crate::control::Control;
use crate::flags_api::{self, FlagsApi};
use crate::listener::{self, Connection, Limits};
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::telemetry;

/// Builds the tokio runtime (`threads` workers, default: one per core) and serves.
pub fn run_blocking<F>(threads: Option<usize>, serve: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match threads {
        // One thread: no work stealing to pay for.
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(serve)
}

/// Serves the config at `path` until SIGTERM or SIGINT, with the admin token read from the
/// environment variable the config names.
pub async fn serve(path: &Path) -> anyhow::Result<()> {
    serve_with_token(path, None).await
}

/// Like [`serve`]; `token` (when given) replaces the environment's admin token.
pub async fn serve_with_token(path: &Path, token: Option<String>) -> anyhow::Result<()> {
    let server = Server::start(path, token).await?;
    wait_for_shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

/// A running cutover: the control plane started, every listener bound and serving.
pub struct Server {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub flags_addr: Option<SocketAddr>,
    pub control: Arc<Control>,
    admin: Arc<Admin>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<GracefulShutdown>,
    /// Applies guard trips; ends once the proxy (which sends them) is gone.
    trips_task: JoinHandle<()>,
    /// Writes access log lines; ends once the proxy and its exchanges are gone.
    access_writer: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the config, binds the listeners it names and starts serving on them.
    pub async fn start(path: &Path, token: Option<String>) -> anyhow::Result<Server> {
        let metrics = telemetry::install_recorder()?;
        let control = match Control::start(path) {
            Ok(control) => Arc::new(control),
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                bail!("invalid config:\n{}", list.join("\n"));
            }
        };
        let live = control.live();
        let config = live.load_full().config.clone();
        let token = token.or_else(|| read_token(&config.admin.token_env));
        check_admin_exposure(&config, token.is_some())?;
        ensure_file_descriptors(&config);

        let proxy_listener = bind("proxy", config.listen).await?;
        let admin_listener = bind("admin", config.admin.listen).await?;
        let flags_listener = match &config.flags_api {
            Some(api) => Some(bind("flags API", api.listen).await?),
            None => None,
        };
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let flags_addr = match &flags_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };

        if let Err(err) = reload::watch(control.clone()) {
            tracing::warn!(error = %err, "cannot watch the config directory; reload with SIGHUP");
        }
        reload::reload_on_sighup(control.clone()).context("installing the SIGHUP handler")?;
        let (trips, tripped) = tokio::sync::mpsc::unbounded_channel();
        let trips_task = tokio::spawn(control.clone().apply_trips(tripped));
        tokio::spawn(control.clone().keep_state_file_written());
        tokio::spawn(supervise_ramps(control.clone()));

        if token.is_none() {
            tracing::warn!(
                "${} is not set: the admin API is read-only (kill, resume and reload need a token)",
                config.admin.token_env
            );
        }
        let limits = Limits {
            header_timeout: config.client_header_timeout,
            idle_timeout: config.client_idle_timeout,
            max_connections: config.max_connections,
        };
        let admin = Arc::new(Admin {
            control: control.clone(),
            metrics: metrics.clone(),
            token,
            ready: AtomicBool::new(false),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (access_log, access_writer) = match start_access_log(config.access_log.clone())? {
            Some((log, writer)) => (Some(log), Some(writer)),
            None => (None, None),
        };
        let proxy = Arc::new(Proxy::new(live.clone(), trips, access_log));
        let proxy_task = tokio::spawn(listener::serve(
            proxy_listener,
            "proxy",
            limits,
            shutdown_rx.clone(),
            move |conn: Connection| {
                let proxy = proxy.clone();
                move |req| {
                    let proxy = proxy.clone();
                    let peer = conn.peer.clone();
                    let ambiguous = conn.next_request_is_ambiguous();
                    proxy.handle(req, peer, ambiguous).map(Ok::<_, Infallible>)
                }
            },
        ));
        if let Some(listener) = flags_listener {
            let token = config
                .flags_api
                .as_ref()
                .and_then(|api| api.token_env.as_deref())
                .and_then(read_token);
            let api = Arc::new(FlagsApi {
                live: live.clone(),
                changes: control.flag_changes(),
                token,
                subscribers: Arc::new(Semaphore::new(config.max_connections)),
            });
            tokio::spawn(flags_api::serve(listener, limits, api, shutdown_rx.clone()));
        }
        tokio::spawn(admin::serve(
            admin_listener,
            limits,
            admin.clone(),
            shutdown_rx,
        ));
        // Histograms keep raw samples until upkeep; draining them every second bounds that
        // memory to about one second of requests.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        });
        admin.ready.store(true, Ordering::Release);
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            flags = %flags_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            generation = live.load().generation,
            "cutover listening; routes: {}",
            describe_routes(&live.load())
        );
        Ok(Server {
            proxy_addr,
            admin_addr,
            flags_addr,
            control,
            admin,
            shutdown,
            proxy_task,
            trips_task,
            access_writer,
        })
    }

    /// Stops accepting on every listener and lets proxied requests in flight finish, then the
    /// guard trips they caused be applied and written, all within `shutdown_timeout`. Admin and
    /// flag connections (event streams never end) are not waited for.
    pub async fn shutdown(self) {
        self.admin.ready.store(false, Ordering::Release);
        let grace = self.control.live().load().config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!("shutting down: finishing in-flight requests (up to {grace:?})");
        let _ = self.shutdown.send(true);
        if let Ok(graceful) = self.proxy_task.await {
            if tokio::time::timeout_at(deadline, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "shutdown_timeout passed with requests still in flight; closing them"
                );
            }
        }
        if tokio::time::timeout_at(deadline, self.trips_task)
            .await
            .is_err()
        {
            tracing::warn!("shutdown_timeout passed before every guard trip was applied");
        }
        // The last requests' lines, written before the process ends; a second past the
        // deadline at most (a destination that takes nothing would hold it for ever).
        if let Some(writer) = self.access_writer {
            let written = tokio::task::spawn_blocking(move || writer.join());
            let until = deadline.max(tokio::time::Instant::now()) + Duration::from_secs(1);
            if tokio::time::timeout_at(until, written).await.is_err() {
                tracing::warn!("access log lines still unwritten at exit");
            }
        }
    }
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does), and warns when
/// even that cannot hold every listener full: `max_connections` is meant to make clients wait
/// in the backlog, and an fd error on one listener would otherwise fail the others.
fn ensure_file_descriptors(config: &Config) {
    let listeners = if config.flags_api.is_some() { 3 } else { 2 };
    // A proxied connection may hold one to a backend as well; then the files, logs, watches.
    let needed = (config.max_connections as u64) * (listeners + 1) + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            "max_connections {} on {listeners} listeners may need {needed} file descriptors, \
             but the limit is {limit} (ulimit -n): lower max_connections or raise the limit",
            config.max_connections
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-file limit"),
    }
}

/// An admin API reachable from other hosts must have a token.
fn check_admin_exposure(config: &Config, has_token: bool) -> anyhow::Result<()> {
    if !config.admin.listen.ip().is_loopback() && !has_token {
        bail!(
            "admin.listen {} is not loopback and ${} is empty: refusing to expose the admin API without a token",
            config.admin.listen,
            config.admin.token_env
        );
    }
    Ok(())
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Runs the ramps' driver, and runs it again should it ever end (a panic in a tick): ramps
/// must not stop moving, or stop stopping, in silence.
async fn supervise_ramps(control: Arc<Control>) {
    loop {
        let ended = tokio::spawn(control.clone().drive_ramps()).await;
        tracing::error!(?ended, "the ramp driver stopped; starting it again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Starts the access log's writer, when the config has one, and reopens its file on every
/// SIGUSR1 (logrotate's `postrotate`). The signal is handled even without an access log: a
/// `postrotate` left in place after the log is turned off must not kill cutover.
fn start_access_log(
    settings: Option<AccessLogSettings>,
) -> anyhow::Result<Option<(AccessLog, std::thread::JoinHandle<()>)>> {
    let reopen = Arc::new(AtomicBool::new(false));
    let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("installing the SIGUSR1 handler")?;
    let flag = reopen.clone();
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            flag.store(true, Ordering::Release);
        }
    });
    let Some(settings) = settings else {
        return Ok(None);
    };
    tracing::info!(path = %settings.target, buffer = settings.buffer, "access log on");
    AccessLog::start(settings, reopen)
        .map(Some)
        .context("opening the access log")
}

/// Each route's backends with the share in force (a ramp's, or all to stable when killed).
fn describe_routes(snapshot: &Snapshot) -> String {
    if snapshot.routes.is_empty() {
        return "none".to_owned();
    }
    snapshot
        .routes
        .iter()
        .map(|route| {
            let split: Vec<String> = route
                .targets
                .iter()
                .zip(route.effective_shares())
                .map(|(target, share)| {
                    format!("{} {}%", target.backend.name, format_percent(share))
                })
                .collect();
            let killed = if route.kill.is_some() { " KILLED" } else { "" };
            format!("{} [{}]{killed}", route.name, split.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bearer token from the environment; unset or blank means none.
fn read_token(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::testing::{backend, get, post, OneThread};

    /// A config in a new directory: route `pay` sends everything to `v2`, which answers
    /// `v2_status`; `legacy` (200) is stable; `state_file` is `state.json` beside it.
    async fn all_to_v2(v2_status: u16, route_extra: &str) -> (tempfile::TempDir, PathBuf) {
        let legacy = backend(200, "legacy").await;
        let v2 = backend(v2_status, "v2").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_file: state.json\n\
                 backends:\n  legacy: {{ url: \"http://{legacy}\" }}\n  v2: {{ url: \"http://{v2}\" }}\n\
                 routes:\n  - name: pay\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 0, v2: 100 }}\n{route_extra}"
            ),
        )
        .unwrap();
        (dir, path)
    }

    /// A server started on `runtime`, where its listeners and tasks then run.
    async fn start_on(runtime: &OneThread, path: PathBuf, token: Option<&str>) -> Server {
        let token = token.map(str::to_owned);
        runtime
            .handle
            .spawn(async move { Server::start(&path, token).await })
            .await
            .unwrap()
            .unwrap()
    }

    /// A trip still queued behind a busy control plane when SIGTERM comes is applied and
    /// written before the process exits: a restart must not send traffic back to v2.
    #[tokio::test]
    async fn shutdown_applies_and_writes_a_queued_guard_trip() {
        let (dir, path) = all_to_v2(
            500,
            "    guard: { max_error_rate: 5, min_requests: 2, window: 30s }\n",
        )
        .await;
        let server = Server::start(&path, None).await.unwrap();
        let control = server.control.clone();
        let proxy = server.proxy_addr;
        let busy = control.hold();
        for _ in 0..2 {
            assert_eq!(get(proxy, "/").await.0, 500);
        }
        let shutdown = tokio::spawn(server.shutdown());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !shutdown.is_finished(),
            "shut down with a guard trip still queued"
        );
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown never finished")
            .unwrap();
        let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(state.contains("guard: v2"), "{state}");
    }

    /// An admin kill waits for the control plane (here held busy, as by a slow disk) on a
    /// blocking thread: on one worker thread, proxied requests keep being answered meanwhile.
    #[tokio::test]
    async fn an_admin_kill_waits_for_the_disk_off_the_request_path() {
        let (_dir, path) = all_to_v2(200, "").await;
        let runtime = OneThread::start();
        let server = start_on(&runtime, path, Some("test-token")).await;
        let (proxy, admin) = (server.proxy_addr, server.admin_addr);
        let busy = server.control.hold();
        let kill =
            tokio::spawn(async move { post(admin, "/api/routes/pay/kill", "test-token").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !kill.is_finished(),
            "the kill did not wait for the control plane"
        );
        let (status, answer) = get(proxy, "/").await;
        assert_eq!(status, 200);
        assert!(answer.ends_with("v2"), "{answer}");
        drop(busy);
        let (status, answer) = tokio::time::timeout(Duration::from_secs(5), kill)
            .await
            .expect("the kill never finished")
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        let (_, answer) = get(proxy, "/").await;
        assert!(answer.ends_with("legacy"), "killed, yet: {answer}");
        runtime.handle.spawn(server.shutdown()).await.unwrap();
    }

    /// `/api/status` reads the last reload without the control plane's lock: on one worker
    /// thread, a status call while a reload or a kill holds it must not stall the proxy.
    #[tokio::test]
    async fn status_does_not_wait_for_a_busy_control_plane() {
        let (_dir, path) = all_to_v2(200, "").await;
        let runtime = OneThread::start();
        let server = start_on(&runtime, path, None).await;
        let busy = server.control.hold();
        let (status, answer) = get(server.admin_addr, "/api/status").await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("\"trigger\": \"startup\""), "{answer}");
        assert_eq!(get(server.proxy_addr, "/").await.0, 200);
        drop(busy);
        runtime.handle.spawn(server.shutdown()).await.unwrap();
    }
}
