//! The command line as a user runs it: `check`, `run` refusing bad input, and `demo`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, BIN};

fn check(path: &Path) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["config/cutover.yaml", "config/demo.yaml"] {
        let (ok, stdout, stderr) = check(&root.join(file));
        assert!(ok, "{file}: {stderr}");
        assert!(stdout.contains(": ok:"), "{stdout}");
    }
    let (_, stdout, _) = check(&root.join("config/cutover.yaml"));
    assert!(
        stdout.contains(
            "payments: /api/payments* → legacy 90%, payments-v2 10%; sticky on header x-user-id"
        ),
        "{stdout}"
    );
}

#[test]
fn check_lists_every_error_with_file_line_column_and_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "\
backends:
  legacy:
    url: http://127.0.0.1:9001
routes:
  - name: payments
    match:
      path_prefix: /api/payments
    split:
      legacy: 90
      v2: 10
  - name: payments
    match:
      path_prefix: /api
    split:
      legacy: 99.999
    stable: v9
    sticky:
      header: x-user
      cookie: uid
",
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&path);
    assert!(!ok);
    assert_eq!(stdout, "");
    let file = path.display();
    for expected in [
        format!("{file}:10:7: routes[0].split: unknown backend \"v2\""),
        format!("{file}:11:5: routes[1].name: duplicate route name \"payments\""),
        format!("{file}:15:7: routes[1].split.legacy: 99.999 has more than 2 decimals"),
        format!("{file}:16:5: routes[1].stable: \"v9\" is not in this route's split"),
        format!("{file}:17:5: routes[1].sticky: at most one sticky source"),
        format!("{file}: 5 errors"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_reports_unknown_keys_and_yaml_syntax_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "routes:\n  - name: a\n    colour: red\n").unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains(":3:5: routes[0]: unknown field `colour`"),
        "{stderr}"
    );
    std::fs::write(&path, "routes: [\n").unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_a_route_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "backends: {a: {url: 'http://127.0.0.1:1'}}\nroutes:\n\
         - {name: api, match: {path_prefix: /api}, split: {a: 100}}\n\
         - {name: api-users, match: {path_prefix: /api/users, methods: [GET]}, split: {a: 100}}\n\
         - {name: apix, match: {path_prefix: /apix}, split: {a: 100}}\n\
         - {name: exact, match: {path_exact: /x}, split: {a: 100}}\n\
         - {name: exact2, match: {path_exact: /x}, split: {a: 100}}\n\
         - {name: host, match: {host: a.example}, split: {a: 100}}\n\
         - {name: host-z, match: {host: a.example, path_prefix: /z}, split: {a: 100}}\n\
         - {name: all, match: {path_prefix: /}, split: {a: 100}}\n\
         - {name: late, match: {path_prefix: /late}, split: {a: 100}}\n",
    )
    .unwrap();
    let (ok, stdout, _) = check(&path);
    assert!(ok);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: route \"api-users\" can never match: route \"api\" before it matches every request it would",
            "warning: route \"exact2\" can never match: route \"exact\" before it matches every request it would",
            "warning: route \"host-z\" can never match: route \"host\" before it matches every request it would",
            "warning: route \"late\" can never match: route \"all\" before it matches every request it would",
        ]
    );
}

#[test]
fn run_refuses_an_invalid_config_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listen: nowhere\nbackends: {a: {url: 'https://x'}}\nroutes: []\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("c.yaml:1:1: listen:"), "{stderr}");
    assert!(stderr.contains("backends.a.url"), "{stderr}");
}

#[test]
fn run_refuses_an_exposed_admin_listener_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nadmin:\n  listen: 0.0.0.0:0\n  token_env: CUTOVER_TEST_UNSET_TOKEN\n\
         backends: {a: {url: 'http://127.0.0.1:1'}}\nroutes:\n- {name: all, match: {path_prefix: /}, split: {a: 100}}\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("CUTOVER_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to expose the admin API without a token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_both_backends_and_prints_what_to_try() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--legacy-port",
            "0",
            "--new-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("cutover listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("demo did not start");
    let start = line.find("proxy=").unwrap() + 6;
    let proxy: SocketAddr = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let (_, _, body) = get(proxy, "/api/checkout", &[]).await;
        seen.insert(body.split(':').next().unwrap_or("").to_owned());
    }
    let (_, _, other) = get(proxy, "/anything", &[]).await;
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["legacy", "new"]);
    assert_eq!(other, "legacy: GET /anything\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("curl -s localhost:"), "{stdout}");
}

#[test]
fn check_validates_flags_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.yaml");
    let good = "\
backends:
  legacy: {url: 'http://127.0.0.1:9001'}
routes:
  - {name: all, match: {path_prefix: /}, split: {legacy: 100}}
flags:
  new-checkout:
    variants: { \"on\": true, \"off\": false }
    default: \"off\"
    rules:
      - when: { country: { in: [NL, BE] } }
        serve: \"on\"
    rollout: { \"on\": 25, \"off\": 75 }
";
    std::fs::write(&path, good).unwrap();
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("flag new-checkout: on, off; default off; 1 rule; rollout on 25%, off 75%"),
        "{stdout}"
    );
    let broken = format!(
        "{good}  broken:\n    variants: {{ a: 1, b: \"x\" }}\n    default: c\n    rollout: {{ a: 50, b: 40 }}\n"
    );
    std::fs::write(&path, broken).unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let file = path.display();
    for expected in [
        format!("{file}:14:23: flags.broken.variants.b: is a string"),
        format!("{file}:15:5: flags.broken.default: unknown variant \"c\""),
        format!("{file}:16:5: flags.broken.rollout: percentages sum to 90, must be 100"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_reads_the_flags_file_and_points_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.yaml");
    std::fs::write(
        &path,
        "flags_file: flags.yaml\nbackends:\n  legacy: {url: 'http://127.0.0.1:9'}\n\
         routes:\n  - {name: all, match: {path_prefix: /}, split: {legacy: 100}}\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:1:1: flags_file: cannot read {}",
            path.display(),
            dir.path().join("flags.yaml").display()
        )),
        "{stderr}"
    );

    let flags = dir.path().join("flags.yaml");
    std::fs::write(
        &flags,
        "flags:\n  x:\n    variants: {a: 1}\n    default: a\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 flag;"), "{stdout}");
    assert!(
        stdout.contains(&format!("flags also from {}", flags.display())),
        "{stdout}"
    );

    // Only `flags:` belongs in a flags file.
    std::fs::write(
        &flags,
        "flags:\n  x:\n    variants: {a: 1}\n    default: b\nroutes: []\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:5:1: unknown field `routes`, expected `flags`",
            flags.display()
        )),
        "{stderr}"
    );
    std::fs::write(
        &flags,
        "flags:\n  x:\n    variants: {a: 1}\n    default: b\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:4:5: flags.x.default: unknown variant \"b\"",
            flags.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_validates_shadow_and_warns_about_copied_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let backends = "backends:\n  legacy: {url: 'http://127.0.0.1:1'}\n  v2: {url: 'http://127.0.0.1:2'}\n  legacy-b: {url: 'http://127.0.0.1:3'}\n";
    std::fs::write(
        &path,
        format!(
            "{backends}routes:\n  - name: orders\n    match: {{path_prefix: /orders}}\n    split: {{legacy: 95, v2: 5}}\n    shadow:\n      to: v2\n      percent: 10\n      methods: [GET, post]\n      max_body: 256KiB\n      compare: {{ignore_json: ['/meta/*'], noise: legacy-b}}\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("orders: /orders* → legacy 95%, v2 5%; shadow 10% of GET|POST to v2 (noise from legacy-b)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: routes[0].shadow.methods: POST requests are copied to \"v2\", which performs each of those writes a second time"),
        "{stdout}"
    );

    std::fs::write(
        &path,
        format!(
            "{backends}routes:\n  - name: orders\n    match: {{path_prefix: /orders}}\n    split: {{legacy: 100}}\n    shadow:\n      to: legacy\n      percent: 120\n      max_body: 1TiB\n      max_inflight: 0\n      compare: {{ignore_json: ['meta'], ignore_headers: ['bad header'], noise: nowhere}}\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for expected in [
        "routes[0].shadow.to: \"legacy\" is this route's stable backend",
        "routes[0].shadow.percent:",
        "routes[0].shadow.max_body: is not a size like 1MiB",
        "routes[0].shadow.max_inflight: must be from 1 to 10000",
        "routes[0].shadow.compare.ignore_headers[0]: \"bad header\" is not a header name",
        "routes[0].shadow.compare.ignore_json[0]: \"meta\" is not a JSON pointer",
        "routes[0].shadow.compare.noise: unknown backend \"nowhere\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Every error points at its line.
    assert!(stderr.contains(&format!("{}:", path.display())), "{stderr}");
}

#[test]
fn check_summarizes_a_ramp_and_rejects_one_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let backends = "backends:\n  legacy: {url: 'http://127.0.0.1:1'}\n  v2: {url: 'http://127.0.0.1:2'}\n  v3: {url: 'http://127.0.0.1:3'}\n";
    std::fs::write(
        &path,
        format!(
            "{backends}routes:\n  - name: orders\n    match: {{path_prefix: /orders}}\n    split: {{legacy: 100, v2: 0}}\n    ramp:\n      to: v2\n      steps: [1, 5, 25, 100]\n      every: 10m\n      gate: {{max_latency_ratio: 1.5}}\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ramp v2 1% → 5% → 25% → 100% every 10m (gate: 100 requests, errors ≤ 1%, p99 ≤ 1.5× stable's)"),
        "{stdout}"
    );

    std::fs::write(
        &path,
        format!(
            "{backends}routes:\n  - name: orders\n    match: {{path_prefix: /orders}}\n    split: {{legacy: 90, v2: 5, v3: 5}}\n    ramp:\n      to: v2\n      steps: [5, 1, 0, 120]\n      every: 0s\n      gate: {{min_requests: 0, max_latency_ratio: 0.5, max_mismatch_rate: 1}}\n  - name: other\n    match: {{path_prefix: /other}}\n    split: {{legacy: 100}}\n    ramp: {{to: v2, steps: [50], every: 1m}}\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for expected in [
        "routes[0].ramp: a ramped route splits between its stable backend and `to` only",
        "routes[0].ramp.steps[1]: 1% after 5%: steps only go up",
        "routes[0].ramp.steps[2]: a step gives more than 0%",
        "routes[0].ramp.steps[3]: 120 is not a percentage from 0 to 100",
        "routes[0].ramp.every: must be between 1s and 30 days",
        "routes[0].ramp.gate.min_requests: must be at least 1",
        "routes[0].ramp.gate.max_latency_ratio: 0.5 must be at least 1",
        "routes[0].ramp.gate.max_mismatch_rate: needs `shadow:` to \"v2\"",
        "routes[1].ramp.to: \"v2\" must be in this route's split",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
