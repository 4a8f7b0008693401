//! Storms of config rewrites under load, each rewrite followed by SIGHUP: in place with pauses
//! longer than the settle interval between pieces, atomic renames, invalid YAML and emptied
//! files; then ConfigMap `..data` swaps. Not one request may be answered from a half-read
//! config, and once a storm is over cutover serves what the file holds.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{send, Backend, Cutover};

const REWRITES: usize = 200;

/// Version `n` of the config: twenty prefix routes, then the catch-all, all to one backend
/// (legacy for even `n`, new for odd). Any prefix of it that parses lacks the catch-all, so a
/// half-read file shows up as a 404 on `/other`.
fn version(n: usize, legacy: &str, new: &str) -> String {
    let backend = if n % 2 == 0 { "legacy" } else { "new" };
    let mut yaml = format!(
        "# version {n}\nlisten: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
         backends:\n  legacy:\n    url: {legacy}\n  new:\n    url: {new}\nroutes:\n"
    );
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /r{i} }}\n    split: {{ {backend}: 100 }}\n"
        ));
    }
    yaml.push_str(&format!(
        "  - name: everything-else\n    match: {{ path_prefix: / }}\n    split: {{ {backend}: 100 }}\n"
    ));
    yaml
}

/// The ConfigMap layout kubelet makes: `cutover.yaml -> ..data/cutover.yaml`,
/// `..data -> ..v{n}`.
struct ConfigMap {
    root: PathBuf,
    swaps: usize,
}

impl ConfigMap {
    fn new(root: &Path, first: &str) -> ConfigMap {
        let mut map = ConfigMap {
            root: root.to_path_buf(),
            swaps: 0,
        };
        map.swap(first);
        std::os::unix::fs::symlink("..data/cutover.yaml", root.join("cutover.yaml")).unwrap();
        map
    }

    /// kubelet's update: a new directory, `..data` retargeted by one rename.
    fn swap(&mut self, contents: &str) {
        self.swaps += 1;
        let name = format!("..v{}", self.swaps);
        std::fs::create_dir(self.root.join(&name)).unwrap();
        std::fs::write(self.root.join(&name).join("cutover.yaml"), contents).unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

/// Truncates, then writes in three pieces, each ending at a line break, 120 ms apart: longer
/// than a reload's settle interval, so two reads in between agree on a prefix that is valid
/// YAML with routes missing. Only the writer's close says the file is whole.
fn write_slowly(path: &Path, contents: &str) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut rest = contents;
    while !rest.is_empty() {
        let third = (contents.len() / 3).min(rest.len());
        let end = rest[third..]
            .find('\n')
            .map_or(rest.len(), |i| third + i + 1);
        file.write_all(&rest.as_bytes()[..end]).unwrap();
        file.flush().unwrap();
        rest = &rest[end..];
        if !rest.is_empty() {
            std::thread::sleep(Duration::from_millis(120));
        }
    }
}

fn write_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Two clients, each alternating between a prefix route and the catch-all, recording every
/// answer that is not a backend's 200.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    wrong: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..2)
            .map(|_| {
                let (stop, answered, wrong) = (stop.clone(), answered.clone(), wrong.clone());
                tokio::spawn(async move {
                    let client = common::client();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 200_000 {
                        let path = if n % 2 == 0 { "/r7/x" } else { "/other" };
                        let (status, _, body) =
                            send(&client, proxy, "GET", path, &[], Bytes::new()).await;
                        if status != 200 || !(body == "legacy\n" || body == "new\n") {
                            wrong
                                .lock()
                                .unwrap()
                                .push(format!("{path}: {status} {body:?}"));
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            wrong,
            clients,
        }
    }

    /// Stops the clients and checks that every answer came from a whole config.
    async fn assert_all_whole(self, what: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let answered = self.answered.load(Ordering::Relaxed);
        let wrong = self.wrong.lock().unwrap();
        assert!(
            answered > 500,
            "{what}: too little load to mean anything: {answered}"
        );
        assert!(
            wrong.is_empty(),
            "{what}: {} of {answered} requests answered from a half-read config, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        answered
    }
}

fn hup(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
}

/// Waits until cutover serves `version` (what the file holds once the storm is over).
async fn assert_serves(cutover: &Cutover, version: usize) {
    let expected = if version % 2 == 0 {
        "legacy\n"
    } else {
        "new\n"
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (_, _, body) = common::get(cutover.proxy, "/other", &[]).await;
        if body == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file holds version {version} ({expected:?}) but cutover serves {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reloads(cutover: &Cutover, result: &str) -> f64 {
    cutover
        .metric(&format!(
            "cutover_config_reloads_total{{result=\"{result}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_in_place_writes_renames_and_broken_files_never_serves_a_half_read_config() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let (legacy_url, new_url) = (legacy.url(), new.url());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.yaml");
    std::fs::write(&path, version(0, &legacy_url, &new_url)).unwrap();
    let cutover = Cutover::start_in(dir, "cutover.yaml", &[]);
    let pid = cutover.child.id();
    let load = Load::start(cutover.proxy);

    let last = tokio::task::spawn_blocking(move || {
        for n in 1..=REWRITES {
            let good = version(n, &legacy_url, &new_url);
            match n % 4 {
                0 => write_slowly(&path, &good),
                1 => write_by_rename(&path, &good),
                // Broken YAML, then (next rewrite) a good one: the last good config stays.
                2 => std::fs::write(&path, "routes:\n  - name: [unclosed\n").unwrap(),
                // Emptied: no routes is an error, so nothing changes.
                _ => std::fs::write(&path, "").unwrap(),
            }
            hup(pid);
            // Mostly faster than a reload settles, every third rewrite long enough.
            let pause = if n % 3 == 0 { 150 } else { 20 };
            std::thread::sleep(Duration::from_millis(pause));
        }
        // End on a good version, written in place.
        let last = REWRITES + 1;
        write_slowly(&path, &version(last, &legacy_url, &new_url));
        hup(pid);
        last
    })
    .await
    .unwrap();

    assert_serves(&cutover, last).await;
    let answered = load.assert_all_whole("in-place storm").await;
    let (applied, rejected) = (
        reloads(&cutover, "success").await,
        reloads(&cutover, "error").await,
    );
    eprintln!(
        "in-place storm: {REWRITES} rewrites (slow in place, rename, invalid, empty), \
         {answered} requests, {applied} reloads applied, {rejected} rejected"
    );
    assert!(applied >= 5.0, "{applied} reloads applied");
    assert!(rejected >= 5.0, "{rejected} reloads rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_configmap_swaps_never_serves_a_half_read_config() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let (legacy_url, new_url) = (legacy.url(), new.url());
    let dir = tempfile::tempdir().unwrap();
    let mut map = ConfigMap::new(dir.path(), &version(0, &legacy_url, &new_url));
    let cutover = Cutover::start_in(dir, "cutover.yaml", &[]);
    let pid = cutover.child.id();
    let load = Load::start(cutover.proxy);

    let last = tokio::task::spawn_blocking(move || {
        let swaps = 80;
        for n in 1..=swaps {
            // Every fourth ConfigMap holds a config with a typo.
            let contents = if n % 4 == 2 {
                version(n, &legacy_url, &new_url).replace("split: { ", "splitt: { ")
            } else {
                version(n, &legacy_url, &new_url)
            };
            map.swap(&contents);
            hup(pid);
            std::thread::sleep(Duration::from_millis(if n % 3 == 0 { 150 } else { 20 }));
        }
        map.swap(&version(swaps + 1, &legacy_url, &new_url));
        swaps + 1
    })
    .await
    .unwrap();

    assert_serves(&cutover, last).await;
    let answered = load.assert_all_whole("ConfigMap storm").await;
    eprintln!("ConfigMap storm: 80 swaps, {answered} requests");
}
