//! `state_file` on a slow disk: every fsync takes 1.5 s (an LD_PRELOAD shim, built here with the
//! system C compiler), and cutover runs on one worker thread. A guard trip and an admin kill
//! both write `state_file`; requests on other routes must not wait for either.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{post_to, ADMIN_ENV, TOKEN};
use common::{get, Backend, Cutover};
use http::StatusCode;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

static void slow(void) { usleep(1500000); }

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
"#;

/// Builds the shim into `dir` and returns its path.
fn slow_fsync_shim(dir: &Path) -> String {
    let source = dir.join("slow_fsync.c");
    let library = dir.join("libslow_fsync.so");
    std::fs::write(&source, SHIM).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("cc (the C compiler Rust links with) runs");
    assert!(status.success(), "building the fsync shim failed");
    library.to_str().unwrap().to_owned()
}

/// The slowest of `n` requests to `/other`, one after another.
async fn slowest_of(cutover: &Cutover, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let (status, _, body) = get(cutover.proxy, "/other", &[]).await;
        assert_eq!((status, body.trim()), (StatusCode::OK, "legacy"));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_routes_never_wait_for_a_slow_state_file() {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = slow_fsync_shim(shim_dir.path());
    let legacy = Backend::start("legacy").await;
    let failing = common::raw::RawBackend::start(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfail",
    )
    .await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n  legacy: {{ url: \"{}\" }}\n  v2: {{ url: \"{}\" }}\n\
         routes:\n\
         \x20 - name: pay\n    match: {{ path_prefix: /pay }}\n    split: {{ legacy: 0, v2: 100 }}\n\
         \x20   guard: {{ max_error_rate: 5, min_requests: 3, window: 30s }}\n\
         \x20 - name: other\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 100 }}\n",
        legacy.url(),
        failing.url()
    );
    let mut env = ADMIN_ENV.to_vec();
    env.push(("LD_PRELOAD", &shim));
    let cutover = Cutover::start_one_thread(&yaml, &env);
    let state_file = cutover.dir.path().join("cutover-state.json");

    // A guard trip: its kill is written (two fsyncs, 3 s) while requests are served, the one
    // that tripped it included.
    for _ in 0..2 {
        let (status, _, _) = get(cutover.proxy, "/pay", &[]).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let tripping = {
        let proxy = cutover.proxy;
        tokio::spawn(async move {
            let started = Instant::now();
            let (status, _, _) = get(proxy, "/pay", &[]).await;
            (status, started.elapsed())
        })
    };
    let slowest = slowest_of(&cutover, 20).await;
    let (status, took) = tripping.await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        took < Duration::from_millis(500),
        "the request that tripped the guard waited {took:?} for its kill to be written"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a request waited {slowest:?} while the guard's kill was written\n{}",
        cutover.logs()
    );
    let (status, _, body) = get(cutover.proxy, "/pay", &[]).await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::OK, "legacy"),
        "tripped: stable"
    );

    // An admin resume waits for its own write; nobody else does.
    let resume = {
        let admin = cutover.admin;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = post_to(admin, "/api/routes/pay/resume", Some(TOKEN), "").await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slowest = slowest_of(&cutover, 20).await;
    assert!(
        slowest < Duration::from_millis(500),
        "a request waited {slowest:?} while an admin resume was written"
    );
    let ((status, body), took) = resume.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took >= Duration::from_millis(1500),
        "the shim slowed nothing: {took:?}"
    );
    let state = std::fs::read_to_string(&state_file).unwrap();
    assert!(
        !state.contains("guard:"),
        "the resume was not written: {state}"
    );
}
