//! Shared test harness: real backends on 127.0.0.1:0, the real `cutover` binary as a child
//! process on ports it picks itself (read back from its startup line), and plain clients.
//! Raw sockets (client and backend) are in `raw`, admin API writes in `admin`.
#![allow(dead_code)]

pub mod admin;
pub mod raw;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// A backend started by the test. Its default handler answers by path:
/// - `/sleep/{ms}`: waits, then answers like the default;
/// - `/status/{code}`: answers with that status;
/// - `/upload`: reads the whole body and answers `len=N sum=S` (S: byte sum mod 2^32);
/// - `.../headers`: answers with the request head, one `name: value` per line;
/// - anything else: answers with its name.
///
/// Every response carries `x-backend: NAME`.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Backend::start_h(name, false).await
    }

    /// `http2_only`: serve h2c with prior knowledge only.
    pub async fn start_h(name: &'static str, http2_only: bool) -> Backend {
        Backend::serve(name, http2_only, None).await
    }

    /// A backend whose every response has `status`.
    pub async fn always(name: &'static str, status: u16) -> Backend {
        Backend::serve(name, false, Some(status)).await
    }

    async fn serve(name: &'static str, http2_only: bool, always: Option<u16>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req| async move {
                        let mut response = handle(name, req).await?;
                        if let Some(status) = always {
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let builder = if http2_only {
                        auto::Builder::new(TokioExecutor::new()).http2_only()
                    } else {
                        auto::Builder::new(TokioExecutor::new())
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { name, addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let body = if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        format!("{name}\n")
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        format!("{name}\n")
    } else if path == "/upload" {
        let mut body = req.into_body();
        let (mut len, mut sum) = (0u64, 0u32);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                len += data.len() as u64;
                sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u32::from(b)));
            }
        }
        format!("len={len} sum={sum}")
    } else if path.ends_with("/headers") {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        out
    } else {
        format!("{name}\n")
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", http::HeaderValue::from_static(name));
    Ok(response)
}

/// A WebSocket server that echoes every text and binary message.
pub async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A free-to-use address on which nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The real binary, serving a config written to a temporary directory.
pub struct Cutover {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The flags API, when the config has a `flags_api` listener.
    pub flags: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Cutover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cutover {
    /// Writes `yaml` as `cutover.yaml` in a new temporary directory and runs `cutover run`.
    pub fn start(yaml: &str) -> Cutover {
        Cutover::start_with_env(yaml, &[])
    }

    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Cutover {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cutover.yaml"), yaml).unwrap();
        Cutover::start_in(dir, "cutover.yaml", env)
    }

    /// Stops the process and starts it again on the same directory (config and state file).
    pub fn restart(self, env: &[(&str, &str)]) -> Cutover {
        let mut this = self;
        let _ = this.child.kill();
        let _ = this.child.wait();
        let dir = std::mem::replace(&mut this.dir, tempfile::tempdir().unwrap());
        Cutover::start_in(dir, "cutover.yaml", env)
    }

    /// Runs `cutover run -c DIR/FILE` on a config already in `dir`.
    pub fn start_in(dir: tempfile::TempDir, file: &str, env: &[(&str, &str)]) -> Cutover {
        let config = dir.path().join(file);
        Cutover::spawn(dir, &config, env, 2)
    }

    /// Like [`Cutover::start_with_env`], with `--threads 1`: one worker thread, so anything
    /// that blocks it stalls every request.
    pub fn start_one_thread(yaml: &str, env: &[(&str, &str)]) -> Cutover {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cutover.yaml");
        std::fs::write(&config, yaml).unwrap();
        Cutover::spawn(dir, &config, env, 1)
    }

    /// Runs `cutover run -c FILE` from inside `dir`, with the relative path as given.
    pub fn start_relative(dir: tempfile::TempDir, file: &str) -> Cutover {
        Cutover::spawn(dir, Path::new(file), &[], 2)
    }

    /// Like [`Cutover::start_with_env`], with cutover's stdout a pipe nobody reads: once the
    /// pipe's buffer is full, every write to stdout waits.
    pub fn start_with_unread_stdout(yaml: &str, env: &[(&str, &str)]) -> Cutover {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cutover.yaml");
        std::fs::write(&config, yaml).unwrap();
        Cutover::spawn_with(dir, &config, env, 2, Stdio::piped())
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: &Path,
        env: &[(&str, &str)],
        threads: usize,
    ) -> Cutover {
        Cutover::spawn_with(dir, config, env, threads, Stdio::null())
    }

    fn spawn_with(
        dir: tempfile::TempDir,
        config: &Path,
        env: &[(&str, &str)],
        threads: usize,
        stdout: Stdio,
    ) -> Cutover {
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .args(["run", "--config"])
            .arg(config)
            .args(["--threads", &threads.to_string()])
            .env("RUST_LOG", "info,cutover=debug")
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let line = loop {
            if let Some(line) = logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("cutover listening"))
            {
                break line.clone();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cutover exited with {status}:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "cutover did not start in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        Cutover {
            child,
            proxy: field(&line, "proxy="),
            admin: field(&line, "admin="),
            flags: line.contains("flags=127.").then(|| field(&line, "flags=")),
            dir,
            logs,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cutover.yaml")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line with {needle:?} in {timeout:?}:\n{}",
            self.logs()
        );
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The value of a Prometheus sample, e.g. `cutover_requests_total{route="a",...}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, _, body) = get(self.admin, "/metrics", &[]).await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

fn field(line: &str, key: &str) -> SocketAddr {
    let start = line.find(key).unwrap() + key.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// Writes a file the way an editor saving in place does (truncate + write).
pub fn write_in_place(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

/// Writes a file the way atomic-save editors do (write a temporary file, rename over).
pub fn write_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `path` on `addr` with extra headers: (status, headers, body).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    send(&client(), addr, "GET", path, headers, Bytes::new()).await
}

pub async fn send(
    client: &TestClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A config with one catch-all route split between `backends` (name, url, percent).
pub fn split_config(backends: &[(&str, &str, f64)], extra_route_yaml: &str) -> String {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nshutdown_timeout: 10s\nbackends:\n",
    );
    for (name, url, _) in backends {
        yaml.push_str(&format!(
            "  {name}:\n    url: {url}\n    request_timeout: 2s\n"
        ));
    }
    yaml.push_str("routes:\n  - name: main\n    match:\n      path_prefix: /\n    split:\n");
    for (name, _, percent) in backends {
        yaml.push_str(&format!("      {name}: {percent}\n"));
    }
    yaml.push_str(extra_route_yaml);
    yaml
}
