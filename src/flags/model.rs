//! One flag: the serde types that mirror its YAML, the compiled [`Flag`] that evaluation reads,
//! and [`compile`] between them. Compiling checks everything that can be checked before a
//! request arrives (variant names, one value type, percentages, operators, regexes, semver
//! operands) and collects every error with its field path, so a bad flag is rejected at load
//! with the whole list, and evaluation never meets a malformed flag.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_yaml::Value as Yaml;

use super::condition::Condition;
use crate::bucket::{basis_points, format_percent, BUCKETS};
use crate::ordered_map::OrderedMap;

/// One flag as written under `flags:`; its key is the map key above it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlag {
    pub variants: OrderedMap<Yaml>,
    pub default: String,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub rollout: Option<OrderedMap<f64>>,
    /// Raises one variant's share of `rollout` on a schedule.
    pub ramp: Option<RawFlagRamp>,
    #[serde(default)]
    pub kill: bool,
}

/// `ramp:` on a flag: `to`'s share of the rollout, step by step; the rollout's other variant
/// takes the rest. No gate: time and a person move it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlagRamp {
    pub to: String,
    pub steps: Vec<f64>,
    pub every: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Attribute name → a bare scalar (equals) or `{ operator: operand }`.
    pub when: OrderedMap<Yaml>,
    pub serve: RawServe,
}

/// `serve:` is a variant name or a rollout map like `{ "on": 50, "off": 50 }`.
#[derive(Debug)]
pub enum RawServe {
    Variant(String),
    Rollout(OrderedMap<f64>),
}

/// A compiled flag: plain data, indices into `variants` instead of names.
#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    /// In YAML order; never empty, all values of one JSON type.
    pub variants: Vec<Variant>,
    /// Index into `variants`.
    pub default: usize,
    /// First match wins.
    pub rules: Vec<Rule>,
    pub rollout: Option<Rollout>,
    pub ramp: Option<FlagRamp>,
    /// `kill: true` in the YAML; a runtime kill is passed to evaluation separately.
    pub kill: bool,
}

/// A flag's compiled `ramp:`.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagRamp {
    /// The rollout's two variants (indices into `variants`), in its YAML order: the bucket
    /// ranges keep that order at every step, so raising `to` only moves keys toward it.
    pub order: [usize; 2],
    /// Index of the ramped variant, one of `order`.
    pub to: usize,
    /// `to`'s share in the YAML's rollout, in basis points.
    pub configured: u32,
    /// The steps and `every`; the gate is empty.
    pub plan: crate::schedule::Plan,
}

impl FlagRamp {
    /// The rollout with `to` at `share` basis points and the other variant at the rest.
    pub fn rollout(&self, share: u32) -> Rollout {
        let shares = self.order.map(|index| {
            if index == self.to {
                share
            } else {
                BUCKETS - share
            }
        });
        let mut upper = 0u32;
        let bounds = self
            .order
            .iter()
            .zip(shares)
            .filter(|&(_, share)| share > 0)
            .map(|(&index, share)| {
                upper += share;
                (index, upper.min(BUCKETS) as u16)
            })
            .collect();
        Rollout { bounds }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    /// What OFREP returns as `value`; a YAML float stays a float (`1.0`, not `1`).
    pub value: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Every condition must hold; empty holds for everyone.
    pub when: Vec<Condition>,
    pub serve: Serve,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Serve {
    /// Index into the flag's `variants`.
    Variant(usize),
    Rollout(Rollout),
}

/// Shares of targeting keys, as cumulative bounds in basis points: a key whose bucket (in
/// `0..10_000`) is below an entry's bound, and not below any earlier one, gets that variant.
/// Entries keep the rollout's YAML order; zero shares are left out; the last bound is 10 000.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// (index into `variants`, exclusive upper bound).
    pub bounds: Vec<(usize, u16)>,
}

impl Rollout {
    /// The share of variant `index` in basis points (0 when it has none).
    pub fn share_of(&self, index: usize) -> u32 {
        let mut previous = 0;
        for &(variant, bound) in &self.bounds {
            if variant == index {
                return u32::from(bound - previous);
            }
            previous = bound;
        }
        0
    }
}

/// One thing wrong with a flag. The caller prefixes `path` with `flags.<key>.`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagError {
    /// Relative to the flag, e.g. `rules[0].when.country.in`.
    pub path: String,
    pub message: String,
}

/// Checks `raw` and compiles it, or returns every error found. `key` names the flag in
/// messages; it is validated by the caller.
pub fn compile(key: &str, raw: &RawFlag) -> Result<Flag, Vec<FlagError>> {
    let mut c = Compiler {
        key,
        errors: Vec::new(),
    };
    let names: Vec<&str> = raw.variants.0.iter().map(|(n, _)| n.as_str()).collect();
    let variants = c.variants(raw);
    let default = c.variant_ref("default", &raw.default, &names);
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        let when: Vec<Condition> = rule
            .when
            .0
            .iter()
            .filter_map(|(attribute, operand)| {
                let operator = c.operator(&format!("{path}.when.{attribute}"), operand)?;
                Some(Condition {
                    attribute: attribute.clone(),
                    operator,
                })
            })
            .collect();
        let serve_path = format!("{path}.serve");
        let serve = match &rule.serve {
            RawServe::Variant(name) => c.variant_ref(&serve_path, name, &names).map(Serve::Variant),
            RawServe::Rollout(shares) => c.rollout(&serve_path, shares, &names).map(Serve::Rollout),
        };
        if let Some(serve) = serve {
            rules.push(Rule { when, serve });
        }
    }
    let rollout = match &raw.rollout {
        Some(shares) => c.rollout("rollout", shares, &names),
        None => None,
    };
    let ramp = raw
        .ramp
        .as_ref()
        .and_then(|ramp| c.ramp(ramp, raw.rollout.as_ref(), &names));
    match (c.errors.is_empty(), default) {
        (true, Some(default)) => Ok(Flag {
            variants,
            default,
            rules,
            rollout,
            ramp,
            kill: raw.kill,
        }),
        _ => Err(c.errors),
    }
}

/// Collects errors while compiling one flag; `condition.rs` adds the `when:` methods.
pub(super) struct Compiler<'a> {
    key: &'a str,
    pub(super) errors: Vec<FlagError>,
}

/// The JSON type of a variant's value, for the one-type rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Boolean => "a boolean",
            Kind::String => "a string",
            Kind::Integer => "an integer",
            Kind::Float => "a float",
            Kind::Object => "an object",
        })
    }
}

impl Compiler<'_> {
    pub(super) fn error(&mut self, path: &str, message: String) {
        self.errors.push(FlagError {
            path: path.to_owned(),
            message,
        });
    }

    fn variants(&mut self, raw: &RawFlag) -> Vec<Variant> {
        if raw.variants.0.is_empty() {
            self.error(
                "variants",
                format!("flag {:?} needs at least one variant", self.key),
            );
        }
        let mut first: Option<(&str, Kind)> = None;
        let mut variants = Vec::with_capacity(raw.variants.0.len());
        for (name, value) in &raw.variants.0 {
            let path = format!("variants.{name}");
            if name.is_empty() {
                self.error(&path, "a variant name must not be empty".to_owned());
            }
            let kind = match value {
                Yaml::Bool(_) => Kind::Boolean,
                Yaml::String(_) => Kind::String,
                Yaml::Number(n) if n.is_f64() => Kind::Float,
                Yaml::Number(_) => Kind::Integer,
                Yaml::Mapping(_) => Kind::Object,
                _ => {
                    self.error(
                        &path,
                        "must be a boolean, string, integer, float or object".to_owned(),
                    );
                    continue;
                }
            };
            match first {
                None => first = Some((name, kind)),
                Some((first_name, first_kind)) if first_kind != kind => self.error(
                    &path,
                    format!(
                        "is {kind}, but {first_name:?} is {first_kind}: all variants of a flag \
                         must have one type"
                    ),
                ),
                Some(_) => {}
            }
            if let Some(value) = self.json(&path, value) {
                variants.push(Variant {
                    name: name.clone(),
                    value,
                });
            }
        }
        variants
    }

    /// `value` as JSON, numbers keeping their integer or float nature.
    fn json(&mut self, path: &str, value: &Yaml) -> Option<serde_json::Value> {
        use serde_json::Value as Json;
        Some(match value {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => Json::Bool(*b),
            Yaml::String(s) => Json::String(s.clone()),
            Yaml::Number(n) => {
                let number = if let Some(i) = n.as_i64() {
                    serde_json::Number::from(i)
                } else if let Some(u) = n.as_u64() {
                    serde_json::Number::from(u)
                } else {
                    let float = n.as_f64().and_then(serde_json::Number::from_f64);
                    let Some(float) = float else {
                        self.error(path, format!("{n} cannot be represented in JSON"));
                        return None;
                    };
                    float
                };
                Json::Number(number)
            }
            Yaml::Sequence(items) => {
                let mut array = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    array.push(self.json(&format!("{path}[{i}]"), item)?);
                }
                Json::Array(array)
            }
            Yaml::Mapping(map) => {
                let mut object = serde_json::Map::new();
                for (key, item) in map {
                    let Some(key) = key.as_str() else {
                        self.error(path, "object keys must be strings".to_owned());
                        return None;
                    };
                    object.insert(key.to_owned(), self.json(&format!("{path}.{key}"), item)?);
                }
                Json::Object(object)
            }
            Yaml::Tagged(tagged) => {
                self.error(
                    path,
                    format!("tagged values ({}) are not supported", tagged.tag),
                );
                return None;
            }
        })
    }

    fn variant_ref(&mut self, path: &str, name: &str, names: &[&str]) -> Option<usize> {
        let index = names.iter().position(|n| *n == name);
        if index.is_none() {
            self.error(
                path,
                format!("unknown variant {name:?} (variants: {})", names.join(", ")),
            );
        }
        index
    }

    fn rollout(&mut self, path: &str, shares: &OrderedMap<f64>, names: &[&str]) -> Option<Rollout> {
        if shares.0.is_empty() {
            self.error(path, "needs at least one variant".to_owned());
            return None;
        }
        let errors_before = self.errors.len();
        let mut bounds = Vec::with_capacity(shares.0.len());
        let mut total = 0u32;
        for (name, percent) in &shares.0 {
            let at = format!("{path}.{name}");
            let share = self.percent(&at, *percent);
            let index = names.iter().position(|n| n == name);
            if index.is_none() {
                self.error(
                    &at,
                    format!("unknown variant {name:?} (variants: {})", names.join(", ")),
                );
            }
            if let (Some(index), Some(share)) = (index, share) {
                total += share;
                if share > 0 {
                    bounds.push((index, total.min(BUCKETS) as u16));
                }
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        if total != BUCKETS {
            self.error(
                path,
                format!("percentages sum to {}, must be 100", format_percent(total)),
            );
            return None;
        }
        Some(Rollout { bounds })
    }

    /// `ramp:`: `to` must be one of exactly two variants in the flag's `rollout`.
    fn ramp(
        &mut self,
        raw: &RawFlagRamp,
        rollout: Option<&OrderedMap<f64>>,
        names: &[&str],
    ) -> Option<FlagRamp> {
        let errors_before = self.errors.len();
        let listed: Vec<(&str, f64)> = rollout
            .map(|r| r.0.iter().map(|(n, p)| (n.as_str(), *p)).collect())
            .unwrap_or_default();
        let to = listed.iter().position(|&(name, _)| name == raw.to);
        if listed.len() != 2 || to.is_none() {
            self.error(
                "ramp.to",
                format!(
                    "{:?} must be one of exactly two variants in this flag's rollout (with any share, 0 is fine): the ramp raises its share and the other takes the rest",
                    raw.to
                ),
            );
        }
        let (steps, errors) = crate::schedule::parse_steps(&raw.steps);
        for (index, message) in errors {
            match index {
                Some(i) => self.error(&format!("ramp.steps[{i}]"), message),
                None => self.error("ramp.steps", message),
            }
        }
        let every = crate::schedule::parse_every(&raw.every)
            .map_err(|message| self.error("ramp.every", message))
            .ok();
        if self.errors.len() > errors_before {
            return None;
        }
        let index = |name: &str| names.iter().position(|n| *n == name);
        let order = [index(listed[0].0)?, index(listed[1].0)?];
        let to = to?;
        Some(FlagRamp {
            order,
            to: order[to],
            configured: basis_points(listed[to].1).ok()?,
            plan: crate::schedule::Plan {
                to: raw.to.clone(),
                steps,
                every: every?,
                gate: crate::schedule::Gate {
                    min_requests: 0,
                    max_error_rate: None,
                    max_latency_ratio: None,
                    max_mismatch_rate: None,
                },
            },
        })
    }

    /// A percentage with at most 2 decimals, as basis points.
    fn percent(&mut self, path: &str, value: f64) -> Option<u32> {
        basis_points(value)
            .map_err(|message| self.error(path, message))
            .ok()
    }
}

impl<'de> Deserialize<'de> for RawServe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServeVisitor;

        impl<'de> Visitor<'de> for ServeVisitor {
            type Value = RawServe;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a variant name or a rollout map like { \"on\": 50, \"off\": 50 }")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<RawServe, E> {
                Ok(RawServe::Variant(name.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServe, A::Error> {
                OrderedMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawServe::Rollout)
            }
        }

        deserializer.deserialize_any(ServeVisitor)
    }
}

#[cfg(test)]
mod tests;
