//! A candidate's whole answer against the primary's: status, headers and body, each difference
//! a JSON pointer into the answer seen as one document (`/status`, `/headers/{name}`,
//! `/body/...`), so `compare.ignore_json`, learned [`Noise`](super::compare::Noise) and the
//! samples work alike on all.
//!
//! Headers are compared without hop-by-hop ones, `Content-Length` (the body is compared
//! itself) and those in `compare.ignore_headers`; a header sent more than once compares as its
//! list of values. A body is compared as JSON when both
//! answers say JSON and parse as JSON, otherwise as bytes; one larger than `max_body` arrives
//! here as its length and SHA-256 ([`BodyDigest`], computed while it streams).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE};
use http::StatusCode;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::compare::{
    differences_beyond_noise, varying_places, Difference, Differences, PointerPattern,
};
use crate::proxy::headers::{is_hop_by_hop, strip_hop_by_hop};

/// What a shadowed route compares, from its `shadow.compare` settings.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub ignore_headers: Vec<HeaderName>,
    pub ignore_json: Vec<PointerPattern>,
}

/// One side's answer, as far as the comparison needs it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

pub enum Body {
    /// The whole body, up to `max_body`.
    Full(Bytes),
    /// A larger body: its length and SHA-256.
    Digest { len: u64, sha256: [u8; 32] },
}

/// Length and SHA-256 of a body, fed one frame at a time as it streams past.
#[derive(Default)]
pub struct BodyDigest {
    len: u64,
    hasher: Sha256,
}

impl BodyDigest {
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.hasher.update(data);
    }

    pub fn finish(self) -> Body {
        Body::Digest {
            len: self.len,
            sha256: self.hasher.finalize().into(),
        }
    }
}

impl Body {
    /// Bytes a comparison may have to parse: those of a whole body (a digest is compared as is).
    pub fn compared_bytes(&self) -> usize {
        match self {
            Body::Full(bytes) => bytes.len(),
            Body::Digest { .. } => 0,
        }
    }

    /// Length and digest, whichever way the body was kept.
    fn fingerprint(&self) -> (u64, [u8; 32]) {
        match self {
            Body::Full(bytes) => (bytes.len() as u64, Sha256::digest(bytes).into()),
            Body::Digest { len, sha256 } => (*len, *sha256),
        }
    }
}

/// Header values kept out of samples: they carry credentials.
const REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

/// The differences between the two answers, every one counted and the first `keep` kept,
/// after `settings` and the `learned` noise.
pub fn differences(
    primary: &Answer,
    candidate: &Answer,
    settings: &Settings,
    learned: &[PointerPattern],
    keep: usize,
) -> Differences {
    if identical(primary, candidate, settings) {
        return Differences::default();
    }
    let (primary_doc, candidate_doc) = documents(primary, candidate, settings);
    let ignore: Vec<PointerPattern> = settings
        .ignore_json
        .iter()
        .map(|pattern| pattern.under("body"))
        .collect();
    let mut found = differences_beyond_noise(&primary_doc, &candidate_doc, &ignore, learned, keep);
    for difference in &mut found.kept {
        redact(difference);
    }
    found
}

/// The same status, the same body bytes and the same compared header values: most answers,
/// decided without building either document. `false` only means "look closer".
fn identical(primary: &Answer, candidate: &Answer, settings: &Settings) -> bool {
    let same_body = match (&primary.body, &candidate.body) {
        (Body::Full(a), Body::Full(b)) => a == b,
        (
            Body::Digest { len, sha256 },
            Body::Digest {
                len: other_len,
                sha256: other_sha256,
            },
        ) => len == other_len && sha256 == other_sha256,
        _ => false,
    };
    primary.status == candidate.status
        && same_body
        && same_headers(&primary.headers, &candidate.headers, settings)
}

/// Whether the headers [`headers`] compares are equal, without copying them. A `TE` field (which
/// hop-by-hop removal may keep) sends the answers the long way; `Host` is compared even when
/// `Connection` names it, as hop-by-hop removal never removes it.
fn same_headers(a: &HeaderMap, b: &HeaderMap, settings: &Settings) -> bool {
    if a.contains_key(TE) || b.contains_key(TE) {
        return false;
    }
    let (a_named, b_named) = (connection_named(a), connection_named(b));
    let compared = |named: &[String], name: &HeaderName| {
        name != CONTENT_LENGTH
            && !is_hop_by_hop(name)
            && !settings.ignore_headers.contains(name)
            && (name == HOST || !named.iter().any(|token| token == name.as_str()))
    };
    let count =
        |map: &HeaderMap, named: &[String]| map.keys().filter(|name| compared(named, name)).count();
    count(a, &a_named) == count(b, &b_named)
        && a.keys()
            .filter(|name| compared(&a_named, name))
            .all(|name| {
                compared(&b_named, name) && a.get_all(name).iter().eq(b.get_all(name).iter())
            })
}

/// The fields a message's `Connection` names, lower case.
fn connection_named(map: &HeaderMap) -> Vec<String> {
    map.get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or_default().split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

/// What two stable answers to one request teach, beyond the `known` places: the places inside
/// `/headers` and `/body` where they differ (never a whole part, such as a body compared as
/// bytes). Two answers with different statuses teach nothing: one instance is failing, and
/// learning from it would hide everything.
pub fn noise_places(
    stable: &Answer,
    other: &Answer,
    settings: &Settings,
    known: &[PointerPattern],
) -> Vec<PointerPattern> {
    if stable.status != other.status || identical(stable, other, settings) {
        return Vec::new();
    }
    let (a, b) = documents(stable, other, settings);
    let mut places = varying_places(&a, &b, known);
    places.retain(|place| place.depth() >= 2);
    places
}

/// Both answers as documents: `{status, headers, body}`. The body is JSON when both are;
/// otherwise it is left out when the bytes are equal, or described by length and digest.
fn documents(primary: &Answer, candidate: &Answer, settings: &Settings) -> (Value, Value) {
    let (primary_body, candidate_body) = match (json_body(primary), json_body(candidate)) {
        (Some(a), Some(b)) => (Some(a), Some(b)),
        _ => {
            let (a, b) = (primary.body.fingerprint(), candidate.body.fingerprint());
            if a == b {
                (None, None)
            } else {
                (Some(describe(a)), Some(describe(b)))
            }
        }
    };
    let document = |answer: &Answer, body: Option<Value>| {
        let mut doc = Map::new();
        doc.insert("status".into(), Value::from(answer.status.as_u16()));
        doc.insert("headers".into(), headers(&answer.headers, settings));
        if let Some(body) = body {
            doc.insert("body".into(), body);
        }
        Value::Object(doc)
    };
    (
        document(primary, primary_body),
        document(candidate, candidate_body),
    )
}

fn json_body(answer: &Answer) -> Option<Value> {
    let Body::Full(bytes) = &answer.body else {
        return None;
    };
    let content_type = answer.headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    is_json.then(|| serde_json::from_slice(bytes).ok())?
}

fn describe((len, sha256): (u64, [u8; 32])) -> Value {
    let hex: String = sha256[..8].iter().map(|b| format!("{b:02x}")).collect();
    Value::from(format!("{len} bytes, sha256 {hex}…"))
}

fn headers(headers: &HeaderMap, settings: &Settings) -> Value {
    let mut compared = headers.clone();
    strip_hop_by_hop(&mut compared);
    // How the body was framed; the body itself is compared, as JSON or as bytes.
    compared.remove(CONTENT_LENGTH);
    for name in &settings.ignore_headers {
        compared.remove(name);
    }
    let mut out = Map::new();
    for name in compared.keys() {
        let values: Vec<Value> = compared
            .get_all(name)
            .iter()
            .map(|v| Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        out.insert(name.as_str().to_owned(), value);
    }
    Value::Object(out)
}

fn redact(difference: &mut Difference) {
    let header = difference.pointer.strip_prefix("/headers/");
    let header = header.map(|rest| rest.split('/').next().unwrap_or_default());
    if header.is_some_and(|name| REDACTED.contains(&name)) {
        for value in [&mut difference.primary, &mut difference.candidate] {
            if value.is_some() {
                *value = Some("(redacted)".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::compare::{json_differences, Noise};

    /// Teaches `noise` from two stable answers, as the copy's task does (outside the lock).
    fn learn_noise(noise: &mut Noise, stable: &Answer, other: &Answer, settings: &Settings) {
        let places = noise_places(stable, other, settings, noise.learned());
        noise.add(places);
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Body::Full(Bytes::from(body.to_owned())),
        }
    }

    fn pointers(found: &Differences) -> Vec<&str> {
        found.kept.iter().map(|d| d.pointer.as_str()).collect()
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    /// What the documents say, without the shortcut.
    fn the_long_way(a: &Answer, b: &Answer, settings: &Settings) -> bool {
        let (a, b) = documents(a, b, settings);
        json_differences(&a, &b, &[], 10).is_empty()
    }

    /// Headers drawn from a small pool, so that two answers often share names and values,
    /// and the fields the shortcut treats specially (Connection, its tokens, TE, Host,
    /// Content-Length, hop-by-hop, ignored) come up often.
    fn some_headers() -> impl proptest::strategy::Strategy<Value = Vec<(&'static str, &'static str)>>
    {
        use proptest::prelude::*;
        let names = prop::sample::select(vec![
            "connection",
            "host",
            "te",
            "content-length",
            "keep-alive",
            "x-a",
            "x-b",
            "date",
            "etag",
            "upgrade",
            "x-cutover-shadow",
        ]);
        let values = prop::sample::select(vec!["1", "2", "x-a", "host", "x-b, close", "trailers"]);
        prop::collection::vec((names, values), 0..6)
    }

    proptest::proptest! {
        #[test]
        fn the_shortcut_never_says_alike_when_the_documents_differ(
            a in some_headers(),
            extra in some_headers(),
            reversed in proptest::bool::ANY,
            status in proptest::sample::select(vec![200u16, 200, 200, 201]),
            body in proptest::sample::select(vec!["x", "x", "x", "y"]),
        ) {
            let settings = Settings {
                ignore_headers: vec![HeaderName::from_static("date")],
                ..Settings::default()
            };
            // The second answer is the first with more fields, in either order: alike as far
            // as the comparison looks in about one case in seven (measured), often not.
            let mut b = a.clone();
            b.extend(extra);
            if reversed {
                b.reverse();
            }
            let (a, b) = (answer(200, &a, "x"), answer(status, &b, body));
            if identical(&a, &b, &settings) {
                proptest::prop_assert!(the_long_way(&a, &b, &settings));
            }
        }
    }

    #[test]
    fn the_shortcut_only_ever_agrees_with_the_documents() {
        let settings = Settings {
            ignore_headers: vec![HeaderName::from_static("date")],
            ..Settings::default()
        };
        let base: &[(&str, &str)] = &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("etag", "a"),
            ("date", "1"),
        ];
        let pairs: Vec<(Answer, Answer, bool)> = vec![
            // Alike as far as the comparison looks: the shortcut takes them.
            (
                answer(200, base, "x"),
                answer(200, &[("etag", "a"), ("date", "2")], "x"),
                true,
            ),
            (
                answer(200, &[("content-length", "1")], "x"),
                answer(200, &[], "x"),
                true,
            ),
            (
                answer(200, &[("keep-alive", "timeout=5")], "x"),
                answer(200, &[], "x"),
                true,
            ),
            // Different: the shortcut must not take them.
            (
                answer(200, base, "x"),
                answer(200, &[("etag", "b")], "x"),
                false,
            ),
            (
                answer(200, &[("etag", "a"), ("etag", "b")], "x"),
                answer(200, &[("etag", "b"), ("etag", "a")], "x"),
                false,
            ),
            (
                answer(200, &[("x-hop", "1")], "x"),
                answer(200, &[], "x"),
                false,
            ),
            (answer(200, &[], "x"), answer(201, &[], "x"), false),
            (
                answer(200, &[], "x"),
                answer(200, &[("connection", "host"), ("host", "evil")], "x"),
                false,
            ),
            (answer(200, &[], "x"), answer(200, &[], "y"), false),
            // Alike, but only the long way can tell (TE, JSON written two ways).
            (
                answer(200, &[("te", "trailers")], "x"),
                answer(200, &[("te", "trailers")], "x"),
                false,
            ),
            (
                answer(200, &[JSON], "{\"a\": 1}"),
                answer(200, &[JSON], "{\"a\":1.0}"),
                false,
            ),
        ];
        for (i, (a, b, shortcut)) in pairs.iter().enumerate() {
            assert_eq!(identical(a, b, &settings), *shortcut, "pair {i}");
            if *shortcut {
                assert!(
                    the_long_way(a, b, &settings),
                    "pair {i}: the shortcut said alike"
                );
            }
        }
    }

    #[test]
    fn status_headers_and_json_body_differ_by_pointer() {
        let settings = Settings {
            ignore_headers: vec![HeaderName::from_static("date")],
            ignore_json: vec![PointerPattern::parse("/meta/at").unwrap()],
        };
        let primary = answer(
            200,
            &[
                JSON,
                ("date", "a"),
                ("x-v", "1"),
                ("connection", "x-v2"),
                ("x-v2", "p"),
            ],
            r#"{"id": 1, "meta": {"at": 5}}"#,
        );
        let candidate = answer(
            201,
            &[
                ("content-type", "application/problem+json"),
                ("date", "b"),
                ("x-v", "2"),
            ],
            r#"{"meta": {"at": 6}, "id": 2}"#,
        );
        let found = differences(&primary, &candidate, &settings, &[], 10);
        // Hop-by-hop headers (and those `Connection` names) are not compared.
        assert_eq!(
            pointers(&found),
            [
                "/body/id",
                "/headers/content-type",
                "/headers/x-v",
                "/status"
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_json_on_both_sides_compares_by_bytes() {
        let settings = Settings::default();
        let noise = Noise::default();
        let same = differences(
            &answer(200, &[], "hello"),
            &answer(200, &[], "hello"),
            &settings,
            noise.learned(),
            10,
        );
        assert!(same.is_empty());
        // JSON on one side only: bytes, described by length and digest.
        let found = differences(
            &answer(200, &[JSON], r#"{"a":1}"#),
            &answer(200, &[], r#"{"a": 1}"#),
            &settings,
            noise.learned(),
            10,
        );
        assert_eq!(pointers(&found), ["/body", "/headers/content-type"]);
        let body = found.kept[0].primary.as_deref().unwrap();
        assert!(body.starts_with("\"7 bytes, sha256 "), "{body}");
    }

    #[test]
    fn a_streamed_digest_matches_a_full_body_with_the_same_bytes() {
        let mut digest = BodyDigest::default();
        digest.update(b"hel");
        digest.update(b"lo");
        let streamed = Answer {
            body: digest.finish(),
            ..answer(200, &[], "")
        };
        let settings = Settings::default();
        let noise = Noise::default();
        assert!(differences(
            &answer(200, &[], "hello"),
            &streamed,
            &settings,
            noise.learned(),
            10
        )
        .is_empty());
        assert_eq!(
            pointers(&differences(
                &answer(200, &[], "hellO"),
                &streamed,
                &settings,
                noise.learned(),
                10
            )),
            ["/body"]
        );
    }

    #[test]
    fn credentials_are_compared_but_never_kept() {
        let found = differences(
            &answer(200, &[("set-cookie", "s=1"), ("set-cookie", "t=2")], ""),
            &answer(200, &[("set-cookie", "s=9")], ""),
            &Settings::default(),
            &[],
            10,
        );
        assert_eq!(pointers(&found), ["/headers/set-cookie"]);
        assert_eq!(found.kept[0].primary.as_deref(), Some("(redacted)"));
        assert_eq!(found.kept[0].candidate.as_deref(), Some("(redacted)"));
    }

    #[test]
    fn noise_learned_on_whole_answers_covers_headers_and_body() {
        let settings = Settings::default();
        let mut noise = Noise::default();
        let stable = |id: &str, at: &str| {
            answer(
                200,
                &[JSON, ("x-trace", at)],
                &format!(r#"{{"id": 1, "at": "{id}"}}"#),
            )
        };
        learn_noise(&mut noise, &stable("a", "1"), &stable("b", "2"), &settings);
        let candidate = answer(200, &[JSON, ("x-trace", "3")], r#"{"id": 2, "at": "c"}"#);
        let found = differences(
            &stable("a", "1"),
            &candidate,
            &settings,
            noise.learned(),
            10,
        );
        assert_eq!(pointers(&found), ["/body/id"]);

        // A failing second instance teaches nothing.
        let mut noise = Noise::default();
        let failing = answer(503, &[("x-trace", "9")], "down");
        learn_noise(&mut noise, &stable("a", "1"), &failing, &settings);
        assert!(noise.learned().is_empty());

        // Nor do bodies compared as bytes, or lists of another length: learning `/body` or
        // `/body/items/*` would hide every later difference there.
        let html = |token: &str| answer(200, &[], &format!("<form csrf={token}>"));
        learn_noise(&mut noise, &html("a"), &html("b"), &settings);
        let list = |items: &str| answer(200, &[JSON], &format!(r#"{{"items": [{items}]}}"#));
        learn_noise(&mut noise, &list("1, 2"), &list("1, 2, 3"), &settings);
        assert!(noise.learned().is_empty(), "{:?}", noise.learned());
        assert_eq!(
            differences(&list("1"), &list("7"), &settings, noise.learned(), 10).count,
            1
        );
    }
}
