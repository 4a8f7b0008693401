//! `cutover demo`: two built-in backends that answer with their name, and the proxy in
//! front of them on the embedded `config/demo.yaml`, written to a temporary file so that
//! editing it shows a hot reload.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const DEMO_YAML: &str = include_str!("../config/demo.yaml");

#[derive(Clone, Copy, Debug)]
pub struct DemoPorts {
    pub proxy: u16,
    pub admin: u16,
    pub legacy: u16,
    pub new: u16,
}

pub async fn run(ports: DemoPorts) -> anyhow::Result<()> {
    let legacy = start_backend("legacy", ports.legacy).await?;
    let new = start_backend("new", ports.new).await?;
    // Ports may be 0 (tests): the config names the ports actually bound.
    let path = write_config(DemoPorts {
        legacy: legacy.port(),
        new: new.port(),
        ..ports
    })?;
    let proxy = ports.proxy;
    let token = std::env::var("CUTOVER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("demo-{:08x}", rand::random::<u32>()));
    println!(
        "cutover demo: backends legacy on {legacy} and new on {new}, proxy on 127.0.0.1:{proxy}\n\
         config: {config} (edit it; a saved change applies within a second)\n\n\
         try:\n  \
         curl -s localhost:{proxy}/api/checkout -H 'x-user-id: alice'   # sticky: alice always lands on the same backend\n  \
         for i in $(seq 100); do curl -s localhost:{proxy}/api/checkout; done | sort | uniq -c   # about 75 legacy, 25 new\n  \
         curl -s localhost:{proxy}/anything/else                        # 100% legacy\n  \
         curl -s localhost:{admin}/metrics | grep cutover_requests_total\n\n\
         status page: http://127.0.0.1:{admin}/ (actions ask for the token below)\n\n\
         roll back and forward, from another shell:\n  \
         export CUTOVER_ADMIN_TOKEN={token}\n  \
         cutover kill checkout --admin http://127.0.0.1:{admin}      # checkout: 100% legacy, now\n  \
         cutover status --admin http://127.0.0.1:{admin}\n  \
         cutover resume checkout --admin http://127.0.0.1:{admin}\n",
        config = path.display(),
        admin = ports.admin,
    );
    crate::server::serve_with_token(&path, Some(token)).await
}

fn write_config(ports: DemoPorts) -> anyhow::Result<PathBuf> {
    let yaml = DEMO_YAML
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", ports.proxy))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", ports.admin))
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", ports.legacy))
        .replace("127.0.0.1:9002", &format!("127.0.0.1:{}", ports.new));
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("demo.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A backend that answers every request with `"{name}: {method} {path}"`.
async fn start_backend(name: &'static str, port: u16) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the demo {name} backend on port {port} (choose another with --{name}-port)"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(move |req: Request<Incoming>| async move {
                let body = format!("{name}: {} {}\n", req.method(), req.uri().path());
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert("x-backend", http::HeaderValue::from_static(name));
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
