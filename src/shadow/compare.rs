//! Whether two JSON answers to the same request are the same answer, and where they are not.
//!
//! Structural, as a person reading both would judge: object keys in any order, numbers by value
//! (`1`, `1.0` and `1e0` are one number), arrays element by element. Places named in
//! `compare.ignore_json` are skipped with everything under them. Each difference is reported as
//! a JSON pointer (RFC 6901) with both values, each cut to [`VALUE_LIMIT`] bytes.

use std::fmt;

use serde_json::{Number, Value};

/// Bytes of each value kept in a [`Difference`].
pub const VALUE_LIMIT: usize = 200;
/// Bytes of a kept pointer: keys come from the answers, and may be long.
const POINTER_LIMIT: usize = 512;

/// A place to ignore, from `compare.ignore_json`: a JSON pointer whose `*` tokens stand for any
/// one object key or array index (`/items/*/etag`). A key that is literally `*` cannot be named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerPattern {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Any,
    Exact(String),
}

impl PointerPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<PointerPattern, String> {
        if pattern.is_empty() {
            return Err(
                "an empty pointer names the whole document; leave compare out instead".into(),
            );
        }
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!(
                "{pattern:?} is not a JSON pointer: it must start with '/'"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|token| match token {
                "*" => Ok(Token::Any),
                _ => unescape(token).map(Token::Exact),
            })
            .collect::<Result<_, _>>()
            .map_err(|bad| format!("{pattern:?}: {bad}"))?;
        Ok(PointerPattern { tokens })
    }

    /// The same places, inside `key` of a larger document.
    pub fn under(&self, key: &str) -> PointerPattern {
        let mut tokens = vec![Token::Exact(key.to_owned())];
        tokens.extend(self.tokens.iter().cloned());
        PointerPattern { tokens }
    }

    /// Tokens in the pointer: 1 for `/status`, 2 for `/body/total`.
    pub fn depth(&self) -> usize {
        self.tokens.len()
    }

    fn matches(&self, path: &[(String, bool)]) -> bool {
        self.tokens.len() == path.len()
            && self
                .tokens
                .iter()
                .zip(path)
                .all(|(token, (step, _))| match token {
                    Token::Any => true,
                    Token::Exact(key) => key == step,
                })
    }
}

/// RFC 6901: `~1` is `/` and `~0` is `~`; any other `~` is an error.
fn unescape(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err("'~' must be followed by 0 or 1".into()),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

impl fmt::Display for PointerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.tokens {
            match token {
                Token::Any => f.write_str("/*")?,
                Token::Exact(key) => write!(f, "/{}", escape(key))?,
            }
        }
        Ok(())
    }
}

fn escape(step: &str) -> String {
    step.replace('~', "~0").replace('/', "~1")
}

/// One place where the answers differ. A value is `None` where that side has nothing there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    pub pointer: String,
    pub primary: Option<String>,
    pub candidate: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |value: &Option<String>| value.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "{}: {} != {}",
            self.pointer,
            side(&self.primary),
            side(&self.candidate)
        )
    }
}

/// The differences between two JSON documents: every one counted, the first `keep` kept,
/// in document order (object keys sorted).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    pub count: usize,
    pub kept: Vec<Difference>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Compares `primary` with `candidate`, skipping the places `ignore` names.
pub fn json_differences(
    primary: &Value,
    candidate: &Value,
    ignore: &[PointerPattern],
    keep: usize,
) -> Differences {
    differences_beyond_noise(primary, candidate, ignore, &[], keep)
}

/// [`json_differences`], where a value may also differ at a place in `noise` when both sides
/// hold a plain value there: learned noise never hides a missing key, a list of another length
/// or a value of another kind.
pub fn differences_beyond_noise(
    primary: &Value,
    candidate: &Value,
    ignore: &[PointerPattern],
    noise: &[PointerPattern],
    keep: usize,
) -> Differences {
    let mut walk = Walk {
        ignore,
        noise,
        keep,
        path: Vec::new(),
        found: Differences::default(),
        varying: None,
    };
    walk.compare(Some(primary), Some(candidate));
    walk.found
}

/// What a route has learned to ignore from two stable answers to the same request
/// (`compare.noise`): every place where they differ varies from answer to answer (a timestamp,
/// an id), so it is no evidence against the candidate. Array indices are learned as `*`, since
/// such a field varies in every element. Bounded: past [`Noise::LIMIT`] places it learns no more.
#[derive(Debug, Default)]
pub struct Noise {
    learned: Vec<PointerPattern>,
}

impl Noise {
    pub const LIMIT: usize = 256;

    /// Learns from two stable answers to one request; returns how many places were new.
    #[cfg(test)]
    pub fn learn(&mut self, stable: &Value, other_stable: &Value) -> usize {
        let places = varying_places(stable, other_stable, &self.learned);
        self.add(places)
    }

    /// Adds places found by [`varying_places`]; returns how many were new.
    pub fn add(&mut self, places: Vec<PointerPattern>) -> usize {
        let mut new = 0;
        for pattern in places {
            if self.learned.len() >= Self::LIMIT {
                break;
            }
            if !self.learned.contains(&pattern) {
                self.learned.push(pattern);
                new += 1;
            }
        }
        new
    }

    /// The places learned so far, to ignore next to `compare.ignore_json`.
    pub fn learned(&self) -> &[PointerPattern] {
        &self.learned
    }

    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.learned.len() >= Self::LIMIT
    }
}

/// The places where two stable answers differ, beyond the `known` ones, as patterns (array
/// indices as `*`): only values both answers have and that are plain values in both, since a
/// missing key, an array of another length or a whole document would hide everything beneath.
pub fn varying_places(
    stable: &Value,
    other_stable: &Value,
    known: &[PointerPattern],
) -> Vec<PointerPattern> {
    let mut walk = Walk {
        ignore: &[],
        noise: known,
        keep: 0,
        path: Vec::new(),
        found: Differences::default(),
        varying: Some(Vec::new()),
    };
    walk.compare(Some(stable), Some(other_stable));
    walk.varying.unwrap_or_default()
}

struct Walk<'a> {
    /// Skipped whole, with everything beneath.
    ignore: &'a [PointerPattern],
    /// Skipped only where both sides hold a plain value.
    noise: &'a [PointerPattern],
    keep: usize,
    /// Where the walk is: each step's key, and whether it is an array index.
    path: Vec<(String, bool)>,
    found: Differences,
    /// When learning [`Noise`]: each difference as a pattern, array indices as `*`.
    varying: Option<Vec<PointerPattern>>,
}

impl Walk<'_> {
    fn compare(&mut self, primary: Option<&Value>, candidate: Option<&Value>) {
        if self
            .ignore
            .iter()
            .any(|pattern| pattern.matches(&self.path))
        {
            return;
        }
        match (primary, candidate) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    self.path.push((key.clone(), false));
                    self.compare(a.get(key), b.get(key));
                    self.path.pop();
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) => {
                for i in 0..a.len().max(b.len()) {
                    self.path.push((i.to_string(), true));
                    self.compare(a.get(i), b.get(i));
                    self.path.pop();
                }
            }
            (Some(Value::Number(a)), Some(Value::Number(b))) if same_number(a, b) => {}
            (Some(a), Some(b)) if a == b => {}
            _ if scalar(primary)
                && scalar(candidate)
                && self.noise.iter().any(|p| p.matches(&self.path)) => {}
            _ => self.differ(primary, candidate),
        }
    }

    fn differ(&mut self, primary: Option<&Value>, candidate: Option<&Value>) {
        self.found.count += 1;
        // See `varying_places` for what is learned.
        let learnable = !self.path.is_empty() && scalar(primary) && scalar(candidate);
        if let Some(varying) = self
            .varying
            .as_mut()
            .filter(|v| learnable && v.len() < Noise::LIMIT)
        {
            let tokens = self.path.iter().map(|(key, index)| match index {
                true => Token::Any,
                false => Token::Exact(key.clone()),
            });
            let pattern = PointerPattern {
                tokens: tokens.collect(),
            };
            if !varying.contains(&pattern) {
                varying.push(pattern);
            }
        }
        if self.found.kept.len() < self.keep {
            let pointer: String = self
                .path
                .iter()
                .map(|(step, _)| format!("/{}", escape(step)))
                .collect();
            let pointer = cut(pointer, POINTER_LIMIT);
            self.found.kept.push(Difference {
                pointer,
                primary: primary.map(render),
                candidate: candidate.map(render),
            });
        }
    }
}

/// A value that is there and is neither an object nor an array.
fn scalar(value: Option<&Value>) -> bool {
    value.is_some_and(|v| !matches!(v, Value::Object(_) | Value::Array(_)))
}

/// Numbers by value: integers exactly (so 2^53 + 1 is not 2^53), anything else as f64.
fn same_number(a: &Number, b: &Number) -> bool {
    let integer = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.as_f64().zip(b.as_f64()).is_some_and(|(a, b)| a == b),
    }
}

/// A value as compact JSON, cut to at most [`VALUE_LIMIT`] bytes.
fn render(value: &Value) -> String {
    cut(value.to_string(), VALUE_LIMIT)
}

/// `text` cut to at most `limit` bytes, an ellipsis included, at a character boundary.
fn cut(mut text: String, limit: usize) -> String {
    const CUT: char = '…';
    if text.len() > limit {
        let mut end = limit - CUT.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push(CUT);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patterns(list: &[&str]) -> Vec<PointerPattern> {
        list.iter()
            .map(|p| PointerPattern::parse(p).unwrap())
            .collect()
    }

    fn pointers(found: &Differences) -> Vec<&str> {
        found.kept.iter().map(|d| d.pointer.as_str()).collect()
    }

    #[test]
    fn key_order_and_number_spelling_are_not_differences() {
        let a: Value =
            serde_json::from_str(r#"{"a": 1, "b": [1.0, 2e0], "c": {"x": null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"c": {"x": null}, "b": [1, 2], "a": 1.0}"#).unwrap();
        assert!(json_differences(&a, &b, &[], 10).is_empty());
        // Integers compare exactly, beyond f64's precision too.
        let (big, bigger) = (
            json!(9_007_199_254_740_992_u64),
            json!(9_007_199_254_740_993_u64),
        );
        assert_eq!(json_differences(&big, &bigger, &[], 10).count, 1);
        assert_eq!(json_differences(&json!(-1), &json!(-1.0), &[], 10).count, 0);
    }

    #[test]
    fn each_difference_is_a_pointer_with_both_values() {
        let a = json!({"id": 7, "items": [{"sku": "a"}, {"sku": "b"}], "a/b~": true, "gone": 1});
        let b = json!({"id": "7", "items": [{"sku": "a"}, {"sku": "c"}, {"sku": "d"}], "a/b~": true, "new": 2});
        let found = json_differences(&a, &b, &[], 10);
        assert_eq!(
            pointers(&found),
            ["/gone", "/id", "/items/1/sku", "/items/2", "/new"]
        );
        assert_eq!(found.kept[1].primary.as_deref(), Some("7"));
        assert_eq!(found.kept[1].candidate.as_deref(), Some("\"7\""));
        assert_eq!(found.kept[0].candidate, None);
        assert_eq!(
            found.kept[3].to_string(),
            "/items/2: (absent) != {\"sku\":\"d\"}"
        );
        // Keys with '/' and '~' are escaped in pointers.
        let found = json_differences(&json!({"a/b~": 1}), &json!({"a/b~": 2}), &[], 10);
        assert_eq!(pointers(&found), ["/a~1b~0"]);
    }

    #[test]
    fn ignored_places_and_everything_under_them_are_skipped() {
        let a = json!({"meta": {"generated_at": 1, "v": 1}, "items": [{"etag": "x", "n": 1}, {"etag": "y", "n": 2}]});
        let b = json!({"meta": {"generated_at": 2, "v": 1}, "items": [{"etag": "p", "n": 1}, {"etag": "q", "n": 3}]});
        let ignore = patterns(&["/meta/generated_at", "/items/*/etag"]);
        assert_eq!(
            pointers(&json_differences(&a, &b, &ignore, 10)),
            ["/items/1/n"]
        );
        // A pattern stops at its own depth: `/items/*` skips whole elements.
        assert!(
            json_differences(&a, &b, &patterns(&["/meta/generated_at", "/items/*"]), 10).is_empty()
        );
        // Escapes in patterns name the same keys as in documents.
        let ignore = patterns(&["/a~1b"]);
        assert!(json_differences(&json!({"a/b": 1}), &json!({"a/b": 2}), &ignore, 10).is_empty());
    }

    #[test]
    fn every_difference_is_counted_and_the_first_ones_kept_with_values_cut_short() {
        let long = "é".repeat(300);
        let a = json!([1, 2, 3, long]);
        let b = json!([4, 5, 6, "short"]);
        let found = json_differences(&a, &b, &[], 2);
        assert_eq!(found.count, 4);
        assert_eq!(pointers(&found), ["/0", "/1"]);
        let found = json_differences(&a, &b, &[], 10);
        let cut = found.kept[3].primary.as_deref().unwrap();
        assert!(
            cut.len() <= VALUE_LIMIT + '…'.len_utf8() && cut.ends_with('…'),
            "{cut}"
        );
    }

    #[test]
    fn noise_learned_from_two_stable_answers_is_ignored_and_a_real_difference_still_counts() {
        let answer = |id: u32, at: u32, price: u32| json!({"request_id": id, "items": [{"sku": "a", "at": at}, {"sku": "b", "at": at + 1}], "price": price});
        let mut noise = Noise::default();
        // Before any learning, the per-request fields count against the candidate.
        let primary = answer(1, 100, 5);
        let candidate = answer(2, 200, 5);
        assert_eq!(
            json_differences(&primary, &candidate, noise.learned(), 10).count,
            3
        );
        // One pair of stable answers teaches them, array elements as `*`.
        assert_eq!(noise.learn(&answer(3, 300, 5), &answer(4, 400, 5)), 2);
        assert_eq!(
            noise.learned(),
            patterns(&["/items/*/at", "/request_id"]).as_slice()
        );
        assert_eq!(noise.learn(&answer(5, 500, 5), &answer(6, 600, 5)), 0);
        assert!(
            differences_beyond_noise(&primary, &candidate, &[], noise.learned(), 10).is_empty()
        );
        // A field the stable answers agree on still counts.
        let wrong = answer(7, 700, 6);
        assert_eq!(
            pointers(&differences_beyond_noise(
                &primary,
                &wrong,
                &[],
                noise.learned(),
                10
            )),
            ["/price"]
        );
        // Learned noise lets a value differ, never be missing or change its shape.
        let mut list = Noise::default();
        assert_eq!(list.learn(&json!([1, 2]), &json!([2, 1])), 1);
        assert_eq!(list.learned(), patterns(&["/*"]).as_slice());
        let beyond = |a: Value, b: Value| {
            pointers(&differences_beyond_noise(&a, &b, &[], list.learned(), 10))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert!(beyond(json!([1, 2]), json!([3, 4])).is_empty());
        assert_eq!(beyond(json!([1, 2]), json!([1])), ["/1"]);
        assert_eq!(beyond(json!([1, 2]), json!([1, {"x": 2}])), ["/1"]);
    }

    #[test]
    fn noise_learns_no_more_than_its_limit() {
        let wide = |v: u32| Value::Object((0..400).map(|i| (format!("k{i}"), json!(v))).collect());
        let mut noise = Noise::default();
        assert_eq!(noise.learn(&wide(1), &wide(2)), Noise::LIMIT);
        assert!(noise.is_full());
        assert_eq!(noise.learn(&wide(3), &wide(4)), 0);
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for (bad, says) in [
            ("", "whole document"),
            ("meta/x", "must start with '/'"),
            ("/a~2", "'~' must be followed by 0 or 1"),
            ("/a~", "'~' must be followed by 0 or 1"),
        ] {
            let err = PointerPattern::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert_eq!(
            PointerPattern::parse("/*/a~0b").unwrap(),
            PointerPattern {
                tokens: vec![Token::Any, Token::Exact("a~b".into())]
            }
        );
    }
}
