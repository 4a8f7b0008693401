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
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::bucket::format_percent;
use crate::config::Config;
use crate::control::reload;
use crate::control::Control;
use crate::flags_api::{self, FlagsApi};
use crate::listener::framing::{FramingWatch, Sniffed};
use crate::proxy::headers::Peer;
use crate::proxy::Proxy;
use crate::telemetry;

/// Largest request head accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

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

    let proxy_listener = bind("proxy", config.listen).await?;
    let admin_listener = bind("admin", config.admin.listen).await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let flags_listener = match &config.flags_api {
        Some(api) => Some(bind("flags API", api.listen).await?),
        None => None,
    };
    let flags_addr = match &flags_listener {
        Some(listener) => listener.local_addr()?.to_string(),
        None => "off".to_owned(),
    };

    if let Err(err) = reload::watch(control.clone()) {
        tracing::warn!(error = %err, "cannot watch the config directory; reload with SIGHUP");
    }
    reload::reload_on_sighup(control.clone()).context("installing the SIGHUP handler")?;

    if token.is_none() {
        tracing::warn!(
            "${} is not set: the admin API is read-only (kill, resume and reload need a token)",
            config.admin.token_env
        );
    }
    let admin = Arc::new(Admin {
        control: control.clone(),
        metrics: metrics.clone(),
        token,
        ready: AtomicBool::new(false),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let proxy = Arc::new(Proxy::new(control.clone()));
    let proxy_task = tokio::spawn(serve_proxy(
        proxy_listener,
        proxy,
        config.client_header_timeout,
        shutdown_rx.clone(),
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
        });
        tokio::spawn(flags_api::serve(listener, api, shutdown_rx.clone()));
    }
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin.clone(), shutdown_rx));
    // Histograms keep raw samples until upkeep; draining them every second bounds that memory
    // to about one second of requests.
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
        flags = %flags_addr,
        generation = live.load().generation,
        "cutover listening; routes: {}",
        describe_routes(&config)
    );

    wait_for_shutdown_signal().await?;
    admin.ready.store(false, Ordering::Release);
    let grace = live.load().config.shutdown_timeout;
    tracing::info!("shutting down: finishing in-flight requests (up to {grace:?})");
    let _ = shutdown_tx.send(true);
    if let Ok(graceful) = proxy_task.await {
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown_timeout passed with requests still in flight; closing them");
        }
    }
    let _ = admin_task.await;
    Ok(())
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

fn describe_routes(config: &Config) -> String {
    if config.routes.is_empty() {
        return "none".to_owned();
    }
    config
        .routes
        .iter()
        .map(|route| {
            let split: Vec<String> = route
                .split
                .iter()
                .map(|&(b, share)| {
                    format!("{} {}%", config.backends[b].name, format_percent(share))
                })
                .collect();
            format!("{} [{}]", route.name, split.join(", "))
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

/// Waits until a new connection has sent enough to tell HTTP/1 from HTTP/2. Hyper's header
/// timer starts only after that, so without this a client that connects and stays silent
/// (or stalls inside the HTTP/2 preface) would hold the connection forever.
async fn first_bytes_arrive(stream: &TcpStream, timeout: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || !PREFACE.starts_with(&buf[..n]) => return true,
                // Part of the preface: peek returns at once, so wait a little for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}

/// Accepts proxy connections until `shutdown` flips, then hands back the tracker of the
/// connections still open so the caller can drain them.
async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> GracefulShutdown {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // One flat write per response: small answers are copied once into the head buffer,
        // and `send` is cheaper in the kernel than `writev` (measured with benches/load.sh).
        .writev(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return graceful,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if !first_bytes_arrive(&stream, header_timeout).await {
                return;
            }
            let watch = Arc::new(FramingWatch::default());
            let io = TokioIo::new(Sniffed::new(stream, watch.clone()));
            let client = Peer::new(peer);
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let proxy = proxy.clone();
                let client = client.clone();
                let ambiguous = watch.next_request_is_ambiguous();
                async move { Ok::<_, Infallible>(proxy.handle(req, client, ambiguous).await) }
            });
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(err) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection closed with an error");
            }
        });
    }
}
