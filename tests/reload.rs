//! Hot reload end to end: every way a config file changes on disk, broken files, and
//! reloads under load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, send, split_config, write_by_rename, write_in_place, Backend, Cutover};
use http::StatusCode;

/// Polls until the proxy answers `/` with `body`, or panics after 3 s.
async fn wait_for_body(cutover: &Cutover, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, _, got) = get(cutover.proxy, "/", &[]).await;
        if got.trim() == body {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still answered {got:?}, not {body:?}\n{}",
            cutover.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn two_backends() -> (Backend, Backend) {
    (Backend::start("legacy").await, Backend::start("new").await)
}

fn all_to(legacy: &Backend, new: &Backend, to_new: bool) -> String {
    let (l, n) = if to_new { (0.0, 100.0) } else { (100.0, 0.0) };
    split_config(&[("legacy", &legacy.url(), l), ("new", &new.url(), n)], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_in_place_write() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    wait_for_body(&cutover, "legacy").await;
    write_in_place(&cutover.config_path(), &all_to(&legacy, &new, true));
    wait_for_body(&cutover, "new").await;
    let generation = cutover.metric("cutover_config_generation").await;
    assert_eq!(generation, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_atomic_rename() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    write_by_rename(&cutover.config_path(), &all_to(&legacy, &new, true));
    wait_for_body(&cutover, "new").await;
    write_by_rename(&cutover.config_path(), &all_to(&legacy, &new, false));
    wait_for_body(&cutover, "legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_configmap_symlink_swap() {
    let (legacy, new) = two_backends().await;
    // The layout kubelet makes for a ConfigMap volume.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_11_25_1")).unwrap();
    std::fs::write(
        root.join("..2026_11_25_1/cutover.yaml"),
        all_to(&legacy, &new, false),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_25_1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cutover.yaml", root.join("cutover.yaml")).unwrap();
    let cutover = Cutover::start_in(dir, "cutover.yaml", &[]);
    wait_for_body(&cutover, "legacy").await;

    // kubelet's update: a new timestamped directory, `..data` retargeted by rename, old
    // directory deleted.
    let root = cutover.dir.path();
    std::fs::create_dir(root.join("..2026_11_25_2")).unwrap();
    std::fs::write(
        root.join("..2026_11_25_2/cutover.yaml"),
        all_to(&legacy, &new, true),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_25_2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_25_1")).unwrap();
    wait_for_body(&cutover, "new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_yaml_keeps_the_last_good_config_serving() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    let good = all_to(&legacy, &new, true);
    write_by_rename(
        &cutover.config_path(),
        &good.replace("routes:", "routes: [oops"),
    );
    cutover.wait_for_log("config rejected", Duration::from_secs(3));
    let log = cutover.logs();
    assert!(log.contains("cutover.yaml:"), "error names the file: {log}");
    for _ in 0..20 {
        let (status, _, body) = get(cutover.proxy, "/", &[]).await;
        assert_eq!((status, body.trim()), (StatusCode::OK, "legacy"));
    }
    let errors = r#"cutover_config_reloads_total{result="error"}"#;
    assert_eq!(cutover.metric(errors).await, Some(1.0));
    assert_eq!(cutover.metric("cutover_config_generation").await, Some(1.0));

    // A file that parses but does not validate is rejected the same way.
    write_by_rename(&cutover.config_path(), &good.replace("new: 100", "new: 90"));
    cutover.wait_for_log("shares sum to 90%", Duration::from_secs(3));
    assert_eq!(cutover.metric(errors).await, Some(2.0));

    write_by_rename(&cutover.config_path(), &good);
    wait_for_body(&cutover, "new").await;
    assert_eq!(cutover.metric("cutover_config_generation").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    let unchanged = r#"cutover_config_reloads_total{result="unchanged"}"#;
    assert_eq!(cutover.metric(unchanged).await, None);
    cutover.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while cutover.metric(unchanged).await != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", cutover.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(cutover.metric("cutover_config_generation").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_keeps_the_old_listener_and_says_so() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    let moved =
        all_to(&legacy, &new, true).replacen("listen: 127.0.0.1:0", "listen: 127.0.0.1:1", 1);
    write_by_rename(&cutover.config_path(), &moved);
    cutover.wait_for_log("applies only on restart", Duration::from_secs(3));
    wait_for_body(&cutover, "new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request() {
    let (legacy, new) = two_backends().await;
    let config = |share: u32| {
        split_config(
            &[
                ("legacy", &legacy.url(), f64::from(100 - share)),
                ("new", &new.url(), f64::from(share)),
            ],
            "    sticky:\n      header: x-user-id\n",
        )
    };
    let cutover = Cutover::start(&config(0));
    let proxy = cutover.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = common::client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let user = format!("u{worker}-{i}");
                let headers = [("x-user-id", user.as_str())];
                let request = tokio::time::timeout(
                    Duration::from_secs(5),
                    send(&client, proxy, "GET", "/", &headers, Bytes::new()),
                );
                match request.await {
                    Ok((StatusCode::OK, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for generation in 2..=51u32 {
        write_by_rename(&cutover.config_path(), &config((generation * 2) % 101));
        while cutover.metric("cutover_config_generation").await != Some(f64::from(generation)) {
            assert!(
                Instant::now() < deadline,
                "reload {generation} not applied\n{}",
                cutover.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed, {ok} succeeded");
    assert!(ok > 500, "only {ok} requests during 50 reloads");
    let successes = r#"cutover_config_reloads_total{result="success"}"#;
    assert_eq!(cutover.metric(successes).await, Some(51.0));
}

/// Neighbours reading and writing in the config's directory neither postpone a reload nor
/// make cutover re-read its own file over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_neither_delays_nor_repeats_reloads() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    let dir = cutover.config_path().parent().unwrap().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                std::fs::write(dir.join("other.log"), n.to_string()).unwrap();
                let _ = std::fs::read(dir.join("cutover.yaml"));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    write_in_place(&cutover.config_path(), &all_to(&legacy, &new, true));
    wait_for_body(&cutover, "new").await;

    stop.store(true, Ordering::Relaxed);
    neighbour.join().unwrap();
    // Once the neighbour is gone, cutover's own reads must not keep it re-reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cutover.count_log("config unchanged");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rereads = cutover.count_log("config unchanged") - before;
    assert!(
        rereads == 0,
        "{rereads} reloads in a quiet second found nothing changed:\n{}",
        cutover.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_routeless_file_is_rejected_and_the_last_good_config_serves() {
    let (legacy, new) = two_backends().await;
    let cutover = Cutover::start(&all_to(&legacy, &new, false));
    write_in_place(&cutover.config_path(), "");
    cutover.wait_for_log("no routes", Duration::from_secs(3));
    let head: String = all_to(&legacy, &new, false)
        .split("routes:")
        .next()
        .unwrap()
        .to_owned();
    write_in_place(&cutover.config_path(), &format!("{head}routes: []\n"));
    let deadline = Instant::now() + Duration::from_secs(3);
    let errors = r#"cutover_config_reloads_total{result="error"}"#;
    while cutover.metric(errors).await != Some(2.0) {
        assert!(Instant::now() < deadline, "{}", cutover.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, _, body) = get(cutover.proxy, "/", &[]).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "legacy"));
    assert_eq!(cutover.metric("cutover_config_generation").await, Some(1.0));
}

/// A reload triggered while an editor is halfway through writing the file in place must not
/// serve the half: here the first half parses and validates, but lacks the catch-all route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_caught_mid_write_is_never_applied() {
    let (legacy, new) = two_backends().await;
    let full = all_to(&legacy, &new, false).replace(
        "routes:\n",
        "routes:\n  - name: api\n    match: { path_prefix: /api }\n    split: { new: 100 }\n",
    );
    let cut = full.find("  - name: main").unwrap();
    let cutover = Arc::new(Cutover::start(&full));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (cutover, writing) = (cutover.clone(), writing.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            for _ in 0..15 {
                let mut file = std::fs::File::create(cutover.config_path()).unwrap();
                file.write_all(&full.as_bytes()[..cut]).unwrap();
                // The reload starts while the file holds only its first half.
                cutover.signal("HUP");
                std::thread::sleep(Duration::from_millis(5));
                file.write_all(&full.as_bytes()[cut..]).unwrap();
                drop(file);
                std::thread::sleep(Duration::from_millis(150));
            }
            writing.store(false, Ordering::Release);
        })
    };
    let mut answered = 0;
    while writing.load(Ordering::Acquire) {
        let (status, _, body) = get(cutover.proxy, "/", &[]).await;
        assert_eq!(
            (status, body.trim()),
            (StatusCode::OK, "legacy"),
            "a half-written config was served\n{}",
            cutover.logs()
        );
        answered += 1;
    }
    writer.await.unwrap();
    assert!(answered > 100, "only {answered} requests during the writes");
    assert_eq!(cutover.metric("cutover_config_generation").await, Some(1.0));
}
