//! The `when:` language: one [`Condition`] per attribute, compiled from YAML at load (regexes
//! and semver operands parsed once, every error collected with its path) and tested against a
//! [`Context`] on the request path. A missing or unusable attribute fails its condition; it
//! never errors. Testing allocates nothing beyond the regex engine's scratch space (made once
//! per thread) and a context version whose pre-release or build part exceeds 8 bytes.

use std::cmp::Ordering;

use regex::Regex;
use serde_yaml::Value as Yaml;

use super::eval::{Context, ContextValue};
use super::model::Compiler;

/// `attribute: operand` from a rule's `when:`; all of a rule's conditions must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub attribute: String,
    pub operator: Operator,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operator {
    Equals(Scalar),
    In(Vec<Scalar>),
    NotIn(Vec<Scalar>),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Matches(Pattern),
    /// `gt ge lt le`: the context value (or a string that parses as one) compared to this.
    Number(Comparison, f64),
    /// `semver_*`: the context value, parsed as a version, compared by SemVer precedence.
    Semver(Comparison, semver::Version),
}

/// A condition operand: what `in` lists and bare `when:` values may hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// How the context value must compare to the operand (`Gt`: value > operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

/// A regex compiled at load; equal when the source patterns are equal.
#[derive(Clone, Debug)]
pub struct Pattern(pub Regex);

impl Comparison {
    /// Whether `value.cmp(operand) == ordering` satisfies this comparison.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Gt => ordering.is_gt(),
            Comparison::Ge => ordering.is_ge(),
            Comparison::Lt => ordering.is_lt(),
            Comparison::Le => ordering.is_le(),
            Comparison::Eq => ordering.is_eq(),
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// A version, tolerating a leading `v` (`v2.1.0`), as apps and tags often write it.
fn parse_version(text: &str) -> Option<semver::Version> {
    let text = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(text);
    semver::Version::parse(text).ok()
}

const OPERATORS: &str = "in, not_in, starts_with, ends_with, contains, matches, gt, ge, lt, le, \
                         semver_gt, semver_ge, semver_lt, semver_le, semver_eq";

impl Compiler<'_> {
    /// One `when:` entry: a bare scalar means equals; a mapping holds exactly one operator.
    pub(super) fn operator(&mut self, path: &str, operand: &Yaml) -> Option<Operator> {
        let Yaml::Mapping(map) = operand else {
            return match operand {
                Yaml::Sequence(_) => {
                    self.error(
                        path,
                        "a list is not a condition: write { in: [...] }".to_owned(),
                    );
                    None
                }
                _ => self.scalar(path, operand).map(Operator::Equals),
            };
        };
        if map.is_empty() {
            self.error(path, format!("needs a value or one operator: {OPERATORS}"));
            return None;
        }
        let mut compiled = None;
        for (name, arg) in map {
            let Some(name) = name.as_str() else {
                self.error(path, format!("operators are names: {OPERATORS}"));
                continue;
            };
            compiled = self.one_operator(&format!("{path}.{name}"), name, arg);
        }
        if map.len() > 1 {
            self.error(
                path,
                "has more than one operator; give each attribute one condition".to_owned(),
            );
            return None;
        }
        compiled
    }

    fn one_operator(&mut self, path: &str, name: &str, arg: &Yaml) -> Option<Operator> {
        let ordering = |suffix: &str| match suffix {
            "gt" => Some(Comparison::Gt),
            "ge" => Some(Comparison::Ge),
            "lt" => Some(Comparison::Lt),
            "le" => Some(Comparison::Le),
            _ => None,
        };
        if let Some(cmp) = ordering(name) {
            return self.number(path, arg).map(|n| Operator::Number(cmp, n));
        }
        let semver = name
            .strip_prefix("semver_")
            .and_then(|suffix| match suffix {
                "eq" => Some(Comparison::Eq),
                _ => ordering(suffix),
            });
        if let Some(cmp) = semver {
            return self.version(path, arg).map(|v| Operator::Semver(cmp, v));
        }
        match name {
            "in" => self.scalars(path, arg).map(Operator::In),
            "not_in" => self.scalars(path, arg).map(Operator::NotIn),
            "starts_with" => self.string(path, arg).map(Operator::StartsWith),
            "ends_with" => self.string(path, arg).map(Operator::EndsWith),
            "contains" => self.string(path, arg).map(Operator::Contains),
            "matches" => {
                let pattern = self.string(path, arg)?;
                match Regex::new(&pattern) {
                    Ok(regex) => Some(Operator::Matches(Pattern(regex))),
                    Err(err) => {
                        self.error(path, format!("invalid regex: {err}"));
                        None
                    }
                }
            }
            _ => {
                self.error(
                    path,
                    format!("unknown operator {name:?} (one of {OPERATORS})"),
                );
                None
            }
        }
    }

    fn number(&mut self, path: &str, value: &Yaml) -> Option<f64> {
        let number = value.as_f64().filter(|n| n.is_finite());
        if number.is_none() {
            self.error(path, "must be a number".to_owned());
        }
        number
    }

    fn version(&mut self, path: &str, value: &Yaml) -> Option<semver::Version> {
        let text = self.string(path, value)?;
        let version = parse_version(&text);
        if version.is_none() {
            self.error(
                path,
                format!("{text:?} is not a semantic version like \"2.1.0\""),
            );
        }
        version
    }

    fn scalar(&mut self, path: &str, value: &Yaml) -> Option<Scalar> {
        match value {
            Yaml::String(s) => Some(Scalar::Str(s.clone())),
            Yaml::Bool(b) => Some(Scalar::Bool(*b)),
            Yaml::Number(n) => match n.as_f64() {
                Some(n) if n.is_finite() => Some(Scalar::Num(n)),
                _ => {
                    self.error(path, format!("{n} is not a finite number"));
                    None
                }
            },
            _ => {
                self.error(path, "must be a string, number or boolean".to_owned());
                None
            }
        }
    }

    fn scalars(&mut self, path: &str, value: &Yaml) -> Option<Vec<Scalar>> {
        let Yaml::Sequence(items) = value else {
            self.error(
                path,
                "must be a list of strings, numbers or booleans".to_owned(),
            );
            return None;
        };
        let errors_before = self.errors.len();
        let scalars: Vec<Scalar> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.scalar(&format!("{path}[{i}]"), item))
            .collect();
        (self.errors.len() == errors_before).then_some(scalars)
    }

    fn string(&mut self, path: &str, value: &Yaml) -> Option<String> {
        match value.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.error(path, "must be a string (quote it)".to_owned());
                None
            }
        }
    }
}

impl Condition {
    /// Whether `ctx` satisfies this condition. Without the attribute it does not, whatever the
    /// operator: `not_in` needs a value to be outside the list.
    pub fn holds(&self, ctx: &(impl Context + ?Sized)) -> bool {
        let Some(value) = ctx.get(&self.attribute) else {
            return false;
        };
        match &self.operator {
            Operator::Equals(operand) => operand.equals(value),
            Operator::In(operands) => operands.iter().any(|o| o.equals(value)),
            Operator::NotIn(operands) => !operands.iter().any(|o| o.equals(value)),
            Operator::StartsWith(prefix) => {
                text(value).is_some_and(|v| v.starts_with(prefix.as_str()))
            }
            Operator::EndsWith(suffix) => text(value).is_some_and(|v| v.ends_with(suffix.as_str())),
            Operator::Contains(part) => text(value).is_some_and(|v| v.contains(part.as_str())),
            Operator::Matches(Pattern(regex)) => text(value).is_some_and(|v| regex.is_match(v)),
            Operator::Number(cmp, operand) => number(value)
                .and_then(|v| v.partial_cmp(operand))
                .is_some_and(|ordering| cmp.holds(ordering)),
            Operator::Semver(cmp, operand) => text(value)
                .and_then(parse_version)
                .is_some_and(|v| cmp.holds(v.cmp_precedence(operand))),
        }
    }
}

impl Scalar {
    /// Equality as a query string needs it: `"30"` equals `30`, `"true"` equals `true`.
    fn equals(&self, value: ContextValue<'_>) -> bool {
        match (self, value) {
            (Scalar::Str(operand), ContextValue::Str(v)) => operand == v,
            (Scalar::Num(operand), _) => number(value) == Some(*operand),
            (Scalar::Bool(operand), ContextValue::Bool(v)) => *operand == v,
            (Scalar::Bool(operand), ContextValue::Str(v)) => {
                v == if *operand { "true" } else { "false" }
            }
            _ => false,
        }
    }
}

fn text(value: ContextValue<'_>) -> Option<&str> {
    match value {
        ContextValue::Str(s) => Some(s),
        _ => None,
    }
}

/// A number, or a string that reads as a finite one (`"30"`, `"2.5"`, `"-1e3"`).
fn number(value: ContextValue<'_>) -> Option<f64> {
    match value {
        ContextValue::Num(n) => Some(n),
        ContextValue::Str(s) => s.parse::<f64>().ok().filter(|n| n.is_finite()),
        ContextValue::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{compile, RawFlag};
    use serde_json::{json, Map, Value};

    /// The one condition `x: <operand>` compiles to.
    fn condition(operand: &str) -> Condition {
        let yaml = format!(
            "variants: {{ a: 1 }}\ndefault: a\nrules:\n  - when: {{ x: {operand} }}\n    serve: a\n"
        );
        let raw: RawFlag = serde_yaml::from_str(&yaml).unwrap();
        compile("t", &raw).unwrap().rules.remove(0).when.remove(0)
    }

    fn holds(operand: &str, value: Value) -> bool {
        let mut ctx = Map::new();
        ctx.insert("x".to_owned(), value);
        condition(operand).holds(&ctx)
    }

    /// (operand, context value of `x`, holds?)
    const CASES: &[(&str, &str, bool)] = &[
        ("NL", r#""NL""#, true),
        ("NL", r#""nl""#, false),
        ("30", "30", true),
        ("30", r#""30""#, true),
        ("30", r#""30.0""#, true),
        ("30", r#""31""#, false),
        ("30", r#""thirty""#, false),
        (r#""30""#, r#""30""#, true),
        ("true", "true", true),
        ("true", r#""true""#, true),
        ("true", "false", false),
        ("true", "1", false),
        ("{ in: [NL, BE] }", r#""BE""#, true),
        ("{ in: [NL, BE] }", r#""DE""#, false),
        ("{ in: [1, 2] }", r#""2""#, true),
        ("{ in: [1, 2] }", "3", false),
        ("{ not_in: [NL, BE] }", r#""DE""#, true),
        ("{ not_in: [NL, BE] }", r#""NL""#, false),
        ("{ starts_with: ab }", r#""abc""#, true),
        ("{ starts_with: ab }", r#""cab""#, false),
        ("{ starts_with: \"1\" }", "12", false),
        (
            "{ ends_with: \"@example.com\" }",
            r#""a@example.com""#,
            true,
        ),
        (
            "{ ends_with: \"@example.com\" }",
            r#""a@example.org""#,
            false,
        ),
        ("{ contains: bc }", r#""abcd""#, true),
        ("{ contains: bc }", r#""acbd""#, false),
        ("{ matches: \"^u-[0-9]+$\" }", r#""u-12""#, true),
        ("{ matches: \"^u-[0-9]+$\" }", r#""u-12x""#, false),
        ("{ matches: \"^1\" }", "1", false),
        ("{ gt: 30 }", "31", true),
        ("{ gt: 30 }", r#""30.5""#, true),
        ("{ gt: 30 }", "30", false),
        ("{ gt: 30 }", r#""abc""#, false),
        ("{ gt: 30 }", "true", false),
        ("{ gt: 30 }", r#""inf""#, false),
        ("{ ge: 30 }", r#""30""#, true),
        ("{ ge: 30 }", "29.9", false),
        ("{ lt: 2.5 }", r#""-1e3""#, true),
        ("{ lt: 2.5 }", "2.5", false),
        ("{ le: 2.5 }", "2.5", true),
        ("{ le: 2.5 }", r#""2.51""#, false),
        ("{ semver_ge: \"2.1.0\" }", r#""2.1.0""#, true),
        ("{ semver_ge: \"2.1.0\" }", r#""v2.10.0""#, true),
        ("{ semver_ge: \"2.1.0\" }", r#""2.1.0-beta.1""#, false),
        ("{ semver_ge: \"2.1.0\" }", r#""v2.0.9""#, false),
        ("{ semver_ge: \"2.1.0\" }", r#""2.1""#, false),
        ("{ semver_ge: \"2.1.0\" }", "3", false),
        ("{ semver_gt: \"2.1.0\" }", r#""2.1.1""#, true),
        ("{ semver_gt: \"2.1.0\" }", r#""2.1.0""#, false),
        ("{ semver_lt: v2.1.0 }", r#""2.1.0-rc.1""#, true),
        ("{ semver_lt: v2.1.0 }", r#""v2.1.0""#, false),
        ("{ semver_le: \"2.1.0\" }", r#""2.1.0""#, true),
        ("{ semver_le: \"2.1.0\" }", r#""2.1.1""#, false),
        ("{ semver_eq: \"1.0.0\" }", r#""v1.0.0+build.7""#, true),
        ("{ semver_eq: \"1.0.0\" }", r#""1.0.1""#, false),
    ];

    #[test]
    fn every_operator() {
        for (operand, value, expected) in CASES {
            let value: Value = serde_json::from_str(value).unwrap();
            assert_eq!(
                holds(operand, value.clone()),
                *expected,
                "x: {operand} against {value}"
            );
        }
    }

    #[test]
    fn a_missing_or_unmatchable_attribute_fails_every_operator() {
        for (operand, _, _) in CASES {
            let c = condition(operand);
            assert!(!c.holds(&Map::new()), "x: {operand} without x");
            for value in [json!(null), json!({"y": 1}), json!([1])] {
                assert!(
                    !holds(operand, value.clone()),
                    "x: {operand} against {value}"
                );
            }
        }
    }

    #[test]
    fn query_strings_match_numbers_and_versions() {
        let pairs = [("age", "30"), ("version", "v2.1.0"), ("beta", "true")];
        let cond = |attribute: &str, operand: &str| {
            let mut c = condition(operand);
            c.attribute = attribute.to_owned();
            c.holds(&pairs[..])
        };
        assert!(cond("age", "{ ge: 18 }"));
        assert!(cond("age", "30"));
        assert!(cond("version", "{ semver_ge: \"2.1.0\" }"));
        assert!(cond("beta", "true"));
        assert!(!cond("missing", "{ not_in: [a] }"));
    }

    #[test]
    fn operand_errors() {
        for (operand, path, message) in [
            ("{}", "", "needs a value or one operator: in, not_in"),
            ("~", "", "must be a string, number or boolean"),
            (
                "{ semver_ne: \"1.0.0\" }",
                ".semver_ne",
                "unknown operator \"semver_ne\"",
            ),
            ("{ starts_with: 1 }", ".starts_with", "must be a string"),
            ("{ in: a }", ".in", "must be a list"),
            ("{ lt: .nan }", ".lt", "must be a number"),
            ("{ matches: \"[\" }", ".matches", "invalid regex"),
        ] {
            let yaml = format!(
                "variants: {{ a: 1 }}\ndefault: a\nrules:\n  - when: {{ x: {operand} }}\n    serve: a\n"
            );
            let raw: RawFlag = serde_yaml::from_str(&yaml).unwrap();
            let errors = compile("t", &raw).unwrap_err();
            assert_eq!(errors.len(), 1, "{operand}: {errors:?}");
            assert_eq!(
                errors[0].path,
                format!("rules[0].when.x{path}"),
                "{operand}"
            );
            assert!(errors[0].message.contains(message), "{operand}: {errors:?}");
        }
    }

    #[test]
    fn operands_compile_once() {
        assert_eq!(
            condition("{ semver_eq: v1.2.3 }").operator,
            Operator::Semver(Comparison::Eq, semver::Version::new(1, 2, 3))
        );
        assert_eq!(
            condition("{ in: [a, 2, true] }").operator,
            Operator::In(vec![
                Scalar::Str("a".into()),
                Scalar::Num(2.0),
                Scalar::Bool(true)
            ])
        );
    }
}
