//! The request path against real sockets: backends and a client on 127.0.0.1, the proxy behind
//! the real accept loop, the real control plane beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt as _;

use http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::control::Control;
use crate::listener::{self, Limits};
use crate::snapshot::compile_for_test;
use crate::testing::{backend, closed_port, get, OneThread};

struct Running {
    proxy: SocketAddr,
    _runtime: OneThread,
    control: Arc<Control>,
    state_file: PathBuf,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// The proxy on `routes_yaml` (backends and routes), as `cutover run --threads 1` wires it:
/// on a runtime with one thread of its own.
async fn start(routes_yaml: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_file: state.json\n{routes_yaml}"),
    )
    .unwrap();
    let control = Arc::new(Control::start(&path).unwrap());
    let (trips, tripped) = mpsc::unbounded_channel();
    let runtime = OneThread::start();
    runtime.handle.spawn(control.clone().apply_trips(tripped));
    let proxy = Arc::new(Proxy::new(control.live(), trips, None));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let limits = Limits {
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_connections: 100,
    };
    let _guard = runtime.handle.enter();
    let listener = TcpListener::from_std(listener).unwrap();
    runtime.handle.spawn(listener::serve(
        listener,
        "proxy",
        limits,
        stopped,
        move |conn: listener::Connection| {
            let proxy = proxy.clone();
            move |req| {
                let proxy = proxy.clone();
                let peer = conn.peer.clone();
                let ambiguous = conn.next_request_is_ambiguous();
                proxy
                    .handle(req, peer, ambiguous)
                    .map(Ok::<_, std::convert::Infallible>)
            }
        },
    ));
    drop(_guard);
    Running {
        proxy: addr,
        _runtime: runtime,
        control,
        state_file: dir.path().join("state.json"),
        _stop: stop,
        _dir: dir,
    }
}

/// The proxy runs on one thread, as with `cutover run --threads 1`: anything on the request path
/// that waited for the control plane would stall every request (and fail this test's timeouts).
#[tokio::test]
async fn a_guard_trip_waits_for_no_lock_and_no_disk() {
    let legacy = backend(200, "legacy").await;
    let v2 = backend(500, "v2").await;
    let running = start(&format!(
        "backends:\n  legacy: {{ url: \"http://{legacy}\" }}\n  v2: {{ url: \"http://{v2}\" }}\n\
         routes:\n\
         \x20 - name: payments\n    match: {{ path_prefix: /pay }}\n    split: {{ legacy: 0, v2: 100 }}\n\
         \x20   guard: {{ max_error_rate: 5, min_requests: 3, window: 30s }}\n\
         \x20 - name: other\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 100 }}\n"
    ))
    .await;
    // The control plane is busy (a slow disk, a long reload) for the whole exchange below.
    let busy = running.control.hold();
    for _ in 0..3 {
        assert_eq!(get(running.proxy, "/pay").await.0, 500);
    }
    // The third error tripped the guard: the very next request goes to stable, before the
    // kill is published or written anywhere.
    let (status, answer) = get(running.proxy, "/pay").await;
    assert_eq!(status, 200);
    assert!(answer.ends_with("legacy"), "{answer}");
    assert_eq!(get(running.proxy, "/other").await.0, 200);
    let live = running.control.live();
    assert!(live.load().route("payments").unwrap().kill.is_none());
    assert!(!running.state_file.exists());

    drop(busy);
    let mut waited = Duration::ZERO;
    while !running.state_file.exists() {
        assert!(
            waited < Duration::from_secs(5),
            "the kill was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let snapshot = live.load();
    let kill = snapshot.route("payments").unwrap().kill.clone().unwrap();
    assert_eq!(
        kill.reason,
        "guard: v2 100.0% errors > 5% over 30s (3 of 3 requests)"
    );
    let state = std::fs::read_to_string(&running.state_file).unwrap();
    assert!(state.contains("guard: v2"), "{state}");
    assert_eq!(get(running.proxy, "/pay").await.0, 200);
}

#[tokio::test]
async fn a_fallback_counts_the_failure_where_it_happened() {
    let legacy = backend(200, "legacy").await;
    let gone = closed_port().await;
    let running = start(&format!(
        "backends:\n  legacy: {{ url: \"http://{legacy}\" }}\n  v2: {{ url: \"http://{gone}\" }}\n\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 0, v2: 100 }}\n    fallback: true\n"
    ))
    .await;
    let (status, answer) = get(running.proxy, "/x").await;
    assert_eq!(status, 200);
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-cutover-fallback: 1"),
        "{answer}"
    );
    let snapshot = running.control.live().load_full();
    let route = snapshot.route("all").unwrap();
    assert_eq!(
        route.targets[1].window.counts(),
        (1, 1),
        "v2: one failed attempt"
    );
    assert_eq!(route.stable().window.counts(), (1, 0), "legacy: one answer");
}

#[test]
fn pick_follows_the_first_matching_route_and_its_kill() {
    let snapshot = Arc::new(compile_for_test(
        "backends:\n  legacy: { url: \"http://127.0.0.1:9\" }\n  v2: { url: \"http://127.0.0.1:10\" }\n\
         routes:\n\
         \x20 - name: api\n    match: { path_prefix: /api, methods: [POST] }\n    split: { legacy: 0, v2: 100 }\n\
         \x20 - name: killed\n    match: { path_prefix: /api }\n    split: { legacy: 0, v2: 100 }\n    kill: true\n",
    ));
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let now = Instant::now();
    let post = Request::post("/api/x").body(()).unwrap();
    let (exchange, _) = pick(snapshot.clone(), &post, None, ip, now).unwrap();
    assert_eq!((exchange.route, exchange.target), (0, 1));
    assert_eq!(&*exchange.target().backend.name, "v2");
    let get = Request::get("/api/x").body(()).unwrap();
    let (exchange, _) = pick(snapshot.clone(), &get, None, ip, now).unwrap();
    assert_eq!((exchange.route, exchange.target), (1, 0), "killed: stable");
    let elsewhere = Request::get("/other").body(()).unwrap();
    assert!(pick(snapshot, &elsewhere, None, ip, now).is_none());
}

#[test]
fn only_requests_stable_serves_are_copied_and_a_kill_stops_the_copies() {
    let yaml = |split: &str, kill: bool| {
        format!(
            "backends:\n  legacy: {{ url: \"http://127.0.0.1:9\" }}\n  v2: {{ url: \"http://127.0.0.1:10\" }}\n\
             routes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    split: {{ {split} }}\n    kill: {kill}\n    shadow: {{ to: v2 }}\n"
        )
    };
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let now = Instant::now();
    let copies = |yaml: String, req: &Request<()>| {
        let snapshot = Arc::new(compile_for_test(&yaml));
        pick(snapshot, req, None, ip, now).unwrap().1.is_some()
    };
    let get = Request::get("/api/x").body(()).unwrap();
    let post = Request::post("/api/x").body(()).unwrap();
    assert!(copies(yaml("legacy: 100, v2: 0", false), &get));
    assert!(
        !copies(yaml("legacy: 100, v2: 0", false), &post),
        "GET and HEAD only by default"
    );
    assert!(
        !copies(yaml("legacy: 0, v2: 100", false), &get),
        "v2 already serves it"
    );
    assert!(!copies(yaml("legacy: 100, v2: 0", true), &get), "killed");
}

#[test]
fn rewrite_head_leaves_the_backend_a_clean_head() {
    let request = Request::get("http://shop.test:8080/a")
        .header("host", "other.test")
        .header("connection", "upgrade, x-secret")
        .header("upgrade", "websocket")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .body(())
        .unwrap();
    // An absolute-form target names the host; `Host` is only a duplicate then.
    let addressed = hygiene::inspect(&request).unwrap();
    let mut head = request.into_parts().0;
    let peer = Peer::new(SocketAddr::from(([192, 0, 2, 1], 5555)));
    rewrite_head(
        &mut head,
        Some(HeaderValue::from_static("websocket")),
        addressed.as_ref(),
        &peer,
        false,
    );
    let h: &HeaderMap = &head.headers;
    assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["host"], "shop.test:8080");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
    assert_eq!(h["x-forwarded-host"], "shop.test:8080");
    assert!(h.contains_key("x-request-id"));
}

#[test]
fn responses_that_could_be_read_two_ways_are_refused() {
    let both = Response::builder()
        .header("transfer-encoding", "chunked")
        .header("content-length", "5")
        .body(())
        .unwrap();
    assert!(matches!(
        valid_response(&both, false),
        Err(ProxyError::Protocol(_))
    ));
    let unasked = Response::builder().status(101).body(()).unwrap();
    assert!(matches!(
        valid_response(&unasked, false),
        Err(ProxyError::Protocol(_))
    ));
    let asked = Response::builder().status(101).body(()).unwrap();
    assert!(valid_response(&asked, true).is_ok());
}

#[test]
fn percent_is_of_the_requests_stable_serves_and_follows_the_sticky_key() {
    let snapshot = Arc::new(compile_for_test(
        "backends:\n  legacy: { url: \"http://127.0.0.1:9\" }\n  v2: { url: \"http://127.0.0.1:10\" }\n\
         routes:\n  - name: api\n    match: { path_prefix: / }\n    split: { legacy: 50, v2: 50 }\n\
         \x20   sticky: { header: x-user }\n    shadow: { to: v2, percent: 10 }\n",
    ));
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let decide = |user: &str| {
        let req = Request::get("/x").header("x-user", user).body(()).unwrap();
        let (exchange, copy) = pick(snapshot.clone(), &req, None, ip, Instant::now()).unwrap();
        (exchange.target, copy.is_some())
    };
    let (mut stable, mut copied) = (0, 0);
    for i in 0..4000 {
        let user = format!("user-{i}");
        let (target, copy) = decide(&user);
        assert_eq!(decide(&user), (target, copy), "{user}: the same every time");
        assert!(
            !copy || target == 0,
            "{user}: only what stable serves is copied"
        );
        stable += usize::from(target == 0);
        copied += usize::from(copy);
    }
    let share = copied as f64 / stable as f64;
    assert!(
        (0.07..0.13).contains(&share),
        "{copied} of {stable} stable requests copied"
    );
}
