//! Evaluation: which variant one compiled flag serves to one context, and why (the OFREP
//! reason). Pure and synchronous: no I/O, no locks, and no allocation, since the result
//! borrows from the flag; handlers call it inline and a bench can measure it alone.
//!
//! Rollouts bucket exactly as flagd's `fractional` (v2) does, so other tools can predict
//! assignments: the bucket is `(murmur3_x86_32(flag_key ++ targeting_key, seed 0) as u64 *
//! 10_000) >> 32`, and the variant is the first, in the rollout's YAML order, whose cumulative
//! bound is above it. A variant's range only widens when its share rises and the others'
//! shrink, so a ramp never moves a user out of the variant being raised.

use serde_json::{Map, Value};

use super::model::{Flag, Rollout, Serve};
use crate::bucket::bucket;

/// Why a variant was served: OFREP's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The flag has no rules and no rollout: everyone gets `default`.
    Static,
    /// A rule matched and served a variant.
    TargetingMatch,
    /// A rollout (a rule's or the flag's) picked by targeting key.
    Split,
    /// Killed in the YAML or at runtime: everyone gets `default`.
    Disabled,
    /// Nothing else applied: no rule matched, and no rollout or no targeting key for it.
    Default,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes this).
    pub const ALL: [Reason; 5] = [
        Reason::Static,
        Reason::TargetingMatch,
        Reason::Split,
        Reason::Disabled,
        Reason::Default,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
        }
    }
}

/// The answer for one flag, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation<'a> {
    /// Index into the flag's `variants`.
    pub index: usize,
    pub variant: &'a str,
    pub value: &'a Value,
    pub reason: Reason,
}

/// What evaluation reads from a request: the OFREP `context` object, or query parameters.
pub trait Context {
    /// The key rollouts hash (OFREP's `targetingKey`). An empty key counts as none.
    fn targeting_key(&self) -> Option<&str>;
    /// One attribute; `None` when absent or not a string, number or boolean.
    fn get(&self, attribute: &str) -> Option<ContextValue<'_>>;
}

/// A matchable context value. Strings that read as numbers also compare as numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ContextValue<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
}

/// The variant `flag` (named `key`) serves to `ctx`. `killed` is the runtime kill switch; it
/// and `kill: true` both serve `default` with [`Reason::Disabled`].
pub fn evaluate<'a>(
    flag: &'a Flag,
    key: &str,
    ctx: &(impl Context + ?Sized),
    killed: bool,
) -> Evaluation<'a> {
    if killed || flag.kill {
        return serve(flag, flag.default, Reason::Disabled);
    }
    let targeting_key = ctx.targeting_key().filter(|k| !k.is_empty());
    for rule in &flag.rules {
        if !rule.when.iter().all(|condition| condition.holds(ctx)) {
            continue;
        }
        match &rule.serve {
            Serve::Variant(index) => return serve(flag, *index, Reason::TargetingMatch),
            Serve::Rollout(rollout) => {
                // Without a targeting key the rollout cannot pick: the rule counts as not
                // matched and the next one is tried.
                if let Some(targeting_key) = targeting_key {
                    return serve(flag, rollout.pick(key, targeting_key), Reason::Split);
                }
            }
        }
    }
    if let (Some(rollout), Some(targeting_key)) = (&flag.rollout, targeting_key) {
        return serve(flag, rollout.pick(key, targeting_key), Reason::Split);
    }
    let reason = if flag.rules.is_empty() && flag.rollout.is_none() {
        Reason::Static
    } else {
        Reason::Default
    };
    serve(flag, flag.default, reason)
}

fn serve(flag: &Flag, index: usize, reason: Reason) -> Evaluation<'_> {
    let variant = &flag.variants[index];
    Evaluation {
        index,
        variant: &variant.name,
        value: &variant.value,
        reason,
    }
}

impl Rollout {
    /// The variant index for `targeting_key` under flag `flag_key`.
    pub fn pick(&self, flag_key: &str, targeting_key: &str) -> usize {
        let bucket = bucket(flag_key, targeting_key.as_bytes());
        // Bounds end at 10 000, above every bucket; `last` only guards hand-built data.
        self.bounds
            .iter()
            .find(|(_, upper)| bucket < *upper)
            .or(self.bounds.last())
            .map_or(0, |(index, _)| *index)
    }
}

/// The OFREP `context` object. Nested objects, arrays and nulls are not matchable.
impl Context for Map<String, Value> {
    fn targeting_key(&self) -> Option<&str> {
        Map::get(self, "targetingKey")?.as_str()
    }

    fn get(&self, attribute: &str) -> Option<ContextValue<'_>> {
        match Map::get(self, attribute)? {
            Value::String(s) => Some(ContextValue::Str(s)),
            Value::Number(n) => n.as_f64().map(ContextValue::Num),
            Value::Bool(b) => Some(ContextValue::Bool(*b)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// Query parameters, already decoded: every value is a string; a repeated name's first wins.
impl<K: AsRef<str>, V: AsRef<str>> Context for [(K, V)] {
    fn targeting_key(&self) -> Option<&str> {
        self.iter()
            .find(|(name, _)| name.as_ref() == "targetingKey")
            .map(|(_, value)| value.as_ref())
    }

    fn get(&self, attribute: &str) -> Option<ContextValue<'_>> {
        self.iter()
            .find(|(name, _)| name.as_ref() == attribute)
            .map(|(_, value)| ContextValue::Str(value.as_ref()))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Context for Vec<(K, V)> {
    fn targeting_key(&self) -> Option<&str> {
        self.as_slice().targeting_key()
    }

    fn get(&self, attribute: &str) -> Option<ContextValue<'_>> {
        Context::get(self.as_slice(), attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{compile, RawFlag};
    use proptest::prelude::*;
    use serde_json::json;

    fn flag(yaml: &str) -> Flag {
        let raw: RawFlag = serde_yaml::from_str(yaml).unwrap();
        compile("test", &raw).unwrap()
    }

    fn ctx(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    const CHECKOUT: &str = r#"
variants: { "on": true, "off": false, "beta": true }
default: "off"
rules:
  - when: { country: { in: [NL, BE] } }
    serve: "on"
  - when: { plan: pro }
    serve: { "beta": 50, "on": 50 }
rollout: { "on": 25, "off": 75 }
"#;

    fn reason(flag: &Flag, context: Value, killed: bool) -> (String, &'static str) {
        let e = evaluate(flag, "new-checkout", &ctx(context), killed);
        (e.variant.to_owned(), e.reason.as_str())
    }

    #[test]
    fn reasons() {
        let f = flag(CHECKOUT);
        let r = |context, killed| reason(&f, context, killed);
        assert_eq!(
            r(json!({"country": "NL"}), true),
            ("off".into(), "DISABLED")
        );
        assert_eq!(
            r(json!({"country": "NL"}), false),
            ("on".into(), "TARGETING_MATCH")
        );
        assert_eq!(
            r(json!({"targetingKey": "u1", "plan": "pro"}), false).1,
            "SPLIT"
        );
        // The rule's rollout cannot pick without a key: not matched, and no key for the
        // flag's rollout either.
        assert_eq!(r(json!({"plan": "pro"}), false), ("off".into(), "DEFAULT"));
        assert_eq!(
            r(json!({"plan": "pro", "targetingKey": ""}), false).1,
            "DEFAULT"
        );
        assert_eq!(r(json!({"targetingKey": "u1"}), false).1, "SPLIT");
        assert_eq!(r(json!({}), false), ("off".into(), "DEFAULT"));

        let mut killed = f.clone();
        killed.kill = true;
        assert_eq!(
            reason(&killed, json!({"country": "NL"}), false),
            ("off".into(), "DISABLED")
        );

        let plain = flag("variants: { a: 1, b: 2 }\ndefault: b\n");
        let e = evaluate(&plain, "plain", &ctx(json!({"targetingKey": "u1"})), false);
        assert_eq!(
            (e.variant, e.value, e.reason),
            ("b", &json!(2), Reason::Static)
        );

        let rules_only = flag(
            "variants: { a: 1, b: 2 }\ndefault: b\nrules:\n  - when: { x: 1 }\n    serve: a\n",
        );
        assert_eq!(
            evaluate(&rules_only, "r", &ctx(json!({})), false).reason,
            Reason::Default
        );

        assert_eq!(Reason::TargetingMatch.as_str(), "TARGETING_MATCH");
    }

    #[test]
    fn a_rule_serving_a_rollout_falls_through_without_a_key() {
        let f = flag(
            "variants: { a: 1, b: 2, c: 3 }\ndefault: c\nrules:\n  - when: { x: 1 }\n    serve: { a: 100 }\n  - when: { x: 1 }\n    serve: b\n",
        );
        let with_key = evaluate(&f, "k", &ctx(json!({"x": 1, "targetingKey": "u"})), false);
        assert_eq!((with_key.variant, with_key.reason), ("a", Reason::Split));
        let without = evaluate(&f, "k", &ctx(json!({"x": 1})), false);
        assert_eq!(
            (without.variant, without.reason),
            ("b", Reason::TargetingMatch)
        );
    }

    #[test]
    fn query_pairs_are_a_context() {
        let f = flag(CHECKOUT);
        let pairs = vec![("country".to_owned(), "BE".to_owned())];
        assert_eq!(
            evaluate(&f, "k", &pairs, false).reason,
            Reason::TargetingMatch
        );
        let pairs = [
            ("targetingKey", "u1"),
            ("targetingKey", "u2"),
            ("age", "30"),
        ];
        assert_eq!(pairs[..].targeting_key(), Some("u1"));
        assert_eq!(
            Context::get(&pairs[..], "age"),
            Some(ContextValue::Str("30"))
        );
        assert_eq!(evaluate(&f, "k", &pairs[..], false).reason, Reason::Split);
    }

    #[test]
    fn json_context_matches_scalars_only() {
        let c = ctx(
            json!({"targetingKey": 7, "n": 2.5, "b": true, "o": {"x": 1}, "a": [1], "z": null}),
        );
        assert_eq!(c.targeting_key(), None);
        assert_eq!(Context::get(&c, "n"), Some(ContextValue::Num(2.5)));
        assert_eq!(Context::get(&c, "b"), Some(ContextValue::Bool(true)));
        for nested in ["o", "a", "z", "missing"] {
            assert_eq!(Context::get(&c, nested), None, "{nested}");
        }
    }

    fn pick(f: &Flag, key: &str, targeting_key: &str) -> String {
        let c = ctx(json!({ "targetingKey": targeting_key }));
        evaluate(f, key, &c, false).variant.to_owned()
    }

    #[test]
    fn flagd_boundary_vectors() {
        let f = flag(
            "variants: { lower: 1, upper: 2 }\ndefault: lower\nrollout: { lower: 50, upper: 50 }\n",
        );
        for key in ["ejOoVL", "bY9fO-", "SI7p-"] {
            assert_eq!(pick(&f, "", key), "lower", "{key}");
        }
        for key in ["6LvT0", "ceQdGm"] {
            assert_eq!(pick(&f, "", key), "upper", "{key}");
        }
    }

    #[test]
    fn flagd_fractional_v2_vectors() {
        let f = flag(
            "variants: { clubs: clubs, diamonds: diamonds, hearts: hearts, spades: spades, wild: wild }\n\
             default: wild\n\
             rollout: { clubs: 25, diamonds: 25, hearts: 25, spades: 25 }\n",
        );
        for (key, suit) in [
            ("jack", "hearts"),
            ("queen", "spades"),
            ("ten", "clubs"),
            ("nine", "diamonds"),
            ("3", "clubs"),
        ] {
            assert_eq!(pick(&f, "fractional-flag", key), suit, "{key}");
        }
    }

    #[test]
    fn rollout_share_is_within_bounds() {
        let f = flag(
            "variants: { on: true, off: false }\ndefault: off\nrollout: { on: 25, off: 75 }\n",
        );
        let on = (0..10_000)
            .filter(|i| pick(&f, "new-checkout", &format!("user-{i}")) == "on")
            .count();
        assert!((2_350..=2_650).contains(&on), "{on} of 10000");
    }

    fn shares_flag(shares: &[u32]) -> Flag {
        let variants: String = (0..shares.len()).map(|i| format!("v{i}: {i}, ")).collect();
        let rollout: String = shares
            .iter()
            .enumerate()
            .map(|(i, bp)| format!("v{i}: {}, ", f64::from(*bp) / 100.0))
            .collect();
        flag(&format!(
            "variants: {{ {variants} }}\ndefault: v0\nrollout: {{ {rollout} }}\n"
        ))
    }

    /// Cut points in `0..=total`, sorted, as the consecutive parts between them.
    fn parts(mut cuts: Vec<u32>, total: u32) -> Vec<u32> {
        cuts.sort_unstable();
        cuts.push(total);
        let mut previous = 0;
        cuts.into_iter()
            .map(|cut| cut - std::mem::replace(&mut previous, cut))
            .collect()
    }

    proptest! {
        #[test]
        fn raising_a_share_never_moves_its_users_out(
            cuts in proptest::collection::vec(0u32..=10_000, 1..5),
            raised in 0usize..5,
            fraction in 0u32..=10_000,
            give in proptest::collection::vec(0u32..=10_000, 3),
        ) {
            // `after` raises one variant by `amount` taken from the others in any proportion.
            let after = parts(cuts, 10_000);
            let raised = raised % after.len();
            let amount = after[raised] * fraction / 10_000;
            let give: Vec<u32> = give[..after.len() - 2].iter().map(|g| g * amount / 10_000).collect();
            let mut given = parts(give, amount).into_iter();
            let before: Vec<u32> = after
                .iter()
                .enumerate()
                .map(|(i, share)| if i == raised { share - amount } else { share + given.next().unwrap_or(0) })
                .collect();
            prop_assert_eq!(before.iter().sum::<u32>(), 10_000);
            let (old, new) = (shares_flag(&before), shares_flag(&after));
            let name = format!("v{raised}");
            for user in 0..300 {
                let key = format!("u{user}");
                if pick(&old, "ramp", &key) == name {
                    prop_assert_eq!(pick(&new, "ramp", &key), name.clone(), "{:?} -> {:?}", before, after);
                }
            }
        }
    }
}
