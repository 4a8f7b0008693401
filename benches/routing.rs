//! Questions these answer:
//! - `route_pick_90_10_sticky`: what does deciding a backend cost per request (match the
//!   route among several, hash the sticky header, pick)? Target: < 100 ns.
//! - `route_pick_90_10_random`: the same without a sticky key.
//! - `config_compile_1000_routes`: how long does a reload of a large file take (parse,
//!   validate, compile a snapshot)? Target: < 20 ms.
//! - `flag_eval_rules_rollout`: what does evaluating a flag with two rules and a rollout cost
//!   (the rules miss, the rollout picks)? Target: < 100 ns.
//! - `record_response`: what does recording one response cost the request path (status
//!   counter, latency histogram, window stats), with the real Prometheus recorder installed?

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use cutover::config;
use cutover::proxy::routing::RequestHead;
use cutover::snapshot::{Carried, Snapshot};
use http::{HeaderMap, HeaderValue, Method};

fn table_yaml(routes: usize, sticky: bool) -> String {
    let mut yaml = String::from("backends:\n");
    for b in 0..10 {
        yaml.push_str(&format!(
            "  b{b}: {{url: 'http://127.0.0.1:{}'}}\n",
            9000 + b
        ));
    }
    yaml.push_str("routes:\n");
    for r in 0..routes {
        yaml.push_str(&format!(
            "  - name: r{r}\n    match: {{path_prefix: /api/service{r}, methods: [GET, POST]}}\n    split: {{b{}: 90, b{}: 10}}\n",
            r % 10,
            (r + 1) % 10
        ));
        if sticky {
            yaml.push_str("    sticky: {header: x-user-id}\n");
        }
    }
    yaml
}

fn snapshot(yaml: &str) -> Snapshot {
    let config = config::compile_text(Path::new("bench.yaml"), yaml).expect("valid bench config");
    Snapshot::build(config, 1, &mut Carried::default(), Default::default())
}

fn route_pick(c: &mut Criterion) {
    for (name, sticky) in [
        ("route_pick_90_10_sticky", true),
        ("route_pick_90_10_random", false),
    ] {
        // Five routes; the request matches the fourth, as a mid-table route would.
        let snapshot = snapshot(&table_yaml(5, sticky));
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("shop.example.com"));
        headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("x-user-id", HeaderValue::from_static("user-8d3f2a"));
        let method = Method::GET;
        c.bench_function(name, |b| {
            b.iter(|| {
                let head = RequestHead {
                    method: &method,
                    path: black_box("/api/service3/orders/42"),
                    query: None,
                    host: Some("shop.example.com"),
                    headers: &headers,
                    client_ip: IpAddr::from([127, 0, 0, 1]),
                };
                let route = snapshot.find_route(&head).expect("matches");
                black_box(snapshot.routes[route].pick(&head))
            })
        });
    }
}

fn config_compile(c: &mut Criterion) {
    let yaml = table_yaml(1000, true);
    let mut carried = Carried::default();
    c.bench_function("config_compile_1000_routes", |b| {
        b.iter(|| {
            let config = config::compile_text(Path::new("bench.yaml"), black_box(&yaml))
                .expect("valid bench config");
            black_box(Snapshot::build(config, 2, &mut carried, Default::default()))
        })
    });
}

fn flag_eval(c: &mut Criterion) {
    let yaml = "\
variants: { \"on\": true, \"off\": false }
default: \"off\"
rules:
  - when: { country: { in: [NL, BE] } }
    serve: \"on\"
  - when: { plan: enterprise, version: { semver_ge: \"2.1.0\" } }
    serve: \"on\"
rollout: { \"on\": 25, \"off\": 75 }
";
    let raw: cutover::flags::RawFlag = serde_yaml::from_str(yaml).expect("valid flag");
    let flag = cutover::flags::compile("new-checkout", &raw).expect("valid flag");
    let mut context = serde_json::Map::new();
    context.insert("targetingKey".into(), "user-8d3f2a".into());
    context.insert("country".into(), "DE".into());
    context.insert("plan".into(), "pro".into());
    context.insert("version".into(), "2.3.1".into());
    c.bench_function("flag_eval_rules_rollout", |b| {
        b.iter(|| {
            black_box(cutover::flags::evaluate(
                &flag,
                "new-checkout",
                black_box(&context),
                false,
            ))
        })
    });
}

fn record_response(c: &mut Criterion) {
    // Real handles, as in the server; a second install (another bench binary run) is fine.
    let _ = cutover::telemetry::install_recorder();
    let target =
        cutover::telemetry::TargetTelemetry::new(&"payments".into(), &"payments-v2".into());
    let window = cutover::control::window::WindowStats::new(std::time::Duration::from_secs(30));
    let latency = std::time::Duration::from_micros(850);
    c.bench_function("record_response", |b| {
        b.iter(|| {
            // As the proxy does: one clock read serves the window.
            target.response(black_box(http::StatusCode::OK), latency);
            window.record_at(std::time::Instant::now(), latency, false);
        })
    });
}

criterion_group!(
    benches,
    route_pick,
    config_compile,
    flag_eval,
    record_response
);
criterion_main!(benches);
