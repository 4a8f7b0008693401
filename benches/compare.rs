//! What comparing a shadow copy's answer with stable's costs, on the copy's own task (never on
//! the client's request path):
//! - `parse_one_10k_json`: the floor, serde_json reading one 10 KiB body;
//! - `compare_10k_json_equal`: two 10 KiB JSON answers, keys in another order, numbers written
//!   differently: both parsed, walked, no difference;
//! - `compare_10k_json_one_difference`: the same with one field changed, which is kept;
//! - `compare_10k_bytes`: the same bodies as text/plain: length and SHA-256 of each.
//!
//! Report them as ratios to `parse_one_10k_json` from one run.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use cutover::shadow::verdict::{differences, Answer, Body, Settings};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

/// About 10 KiB of orders; `reordered` writes every object's keys in another order and the
/// totals as exponents, `changed` alters one total.
fn orders(reordered: bool, changed: bool) -> String {
    let items: Vec<String> = (0..100)
        .map(|i| {
            let total = if changed && i == 42 {
                "99.99".to_owned()
            } else if reordered {
                format!("{}e-2", 1000 + i)
            } else {
                format!("{}.{:02}", 10 + i / 100, i % 100)
            };
            let fields = [
                format!(r#""id": {i}"#),
                format!(r#""sku": "SKU-{i:05}""#),
                format!(r#""total": {total}"#),
                r#""tags": ["a", "b"]"#.to_owned(),
                format!(r#""note": "order {i} for customer {}""#, i * 7),
            ];
            let fields: Vec<&String> = if reordered {
                fields.iter().rev().collect()
            } else {
                fields.iter().collect()
            };
            format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    format!(r#"{{"orders": [{}], "count": 100}}"#, items.join(", "))
}

fn answer(body: &str, content_type: &'static str) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    Answer {
        status: StatusCode::OK,
        headers,
        body: Body::Full(Bytes::from(body.to_owned())),
    }
}

fn bench(c: &mut Criterion) {
    let stable = orders(false, false);
    let same = orders(true, false);
    let changed = orders(true, true);
    assert!(
        stable.len() > 9 * 1024 && stable.len() < 12 * 1024,
        "{}",
        stable.len()
    );
    let settings = Settings::default();
    let json = "application/json";
    let (a, b, c2) = (
        answer(&stable, json),
        answer(&same, json),
        answer(&changed, json),
    );
    assert!(differences(&a, &b, &settings, &[], 20).is_empty());
    assert_eq!(differences(&a, &c2, &settings, &[], 20).count, 1);

    c.bench_function("parse_one_10k_json", |bench| {
        bench.iter(|| serde_json::from_str::<Value>(black_box(&stable)).unwrap())
    });
    c.bench_function("compare_10k_json_equal", |bench| {
        bench.iter(|| differences(black_box(&a), black_box(&b), &settings, &[], 20))
    });
    c.bench_function("compare_10k_json_one_difference", |bench| {
        bench.iter(|| differences(black_box(&a), black_box(&c2), &settings, &[], 20))
    });
    let (text_a, text_b) = (answer(&stable, "text/plain"), answer(&same, "text/plain"));
    c.bench_function("compare_10k_bytes", |bench| {
        bench.iter(|| differences(black_box(&text_a), black_box(&text_b), &settings, &[], 20))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
