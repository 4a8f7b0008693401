//! Compile tests: every error with its path, values keeping their JSON type.

use super::*;

fn raw(yaml: &str) -> RawFlag {
    serde_yaml::from_str(yaml).unwrap()
}

fn errors(yaml: &str) -> Vec<(String, String)> {
    compile("f", &raw(yaml))
        .unwrap_err()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

#[test]
fn every_error_is_collected_with_its_path() {
    let found = errors(
        r#"
variants: { "on": true, "off": "no" }
default: maybe
rules:
  - when:
      country: { in: [NL, [BE]] }
      plan: { equals: pro }
      tier: { in: [a], not_in: [b] }
      email: { matches: "(" }
      version: { semver_ge: "2.x" }
      age: { gt: old }
      list: [a, b]
    serve: nope
  - when: {}
    serve: { "on": 50.005, "off": 50, "maybe": 0 }
rollout: { "on": 25, "off": 70 }
"#,
    );
    let expected = [
        ("variants.off", "is a string, but \"on\" is a boolean"),
        ("default", "unknown variant \"maybe\" (variants: on, off)"),
        (
            "rules[0].when.country.in[1]",
            "must be a string, number or boolean",
        ),
        ("rules[0].when.plan.equals", "unknown operator \"equals\""),
        ("rules[0].when.tier", "more than one operator"),
        ("rules[0].when.email.matches", "invalid regex"),
        (
            "rules[0].when.version.semver_ge",
            "\"2.x\" is not a semantic version",
        ),
        ("rules[0].when.age.gt", "must be a number"),
        ("rules[0].when.list", "a list is not a condition"),
        ("rules[0].serve", "unknown variant \"nope\""),
        ("rules[1].serve.on", "50.005 has more than 2 decimals"),
        ("rules[1].serve.maybe", "unknown variant \"maybe\""),
        ("rollout", "percentages sum to 95, must be 100"),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for ((path, message), (want_path, want_message)) in found.iter().zip(expected) {
        assert_eq!(path, want_path, "{found:#?}");
        assert!(message.contains(want_message), "{path}: {message}");
    }
}

#[test]
fn each_error_alone() {
    // (YAML after `default: a`, path, message); variants are { a: 1, b: 2 } unless given.
    let cases = [
        (
            "variants: { a: 1, b: 0.5 }",
            "variants.b",
            "is a float, but \"a\" is an integer",
        ),
        (
            "variants: { a: ~ }",
            "variants.a",
            "must be a boolean, string, integer",
        ),
        (
            "variants: { a: [1] }",
            "variants.a",
            "must be a boolean, string, integer",
        ),
        (
            "variants: { a: .inf }",
            "variants.a",
            "cannot be represented in JSON",
        ),
        (
            "variants: {}",
            "variants",
            "flag \"f\" needs at least one variant",
        ),
        ("rollout: {}", "rollout", "needs at least one variant"),
        (
            "rollout: { a: 101 }",
            "rollout.a",
            "not a percentage from 0 to 100",
        ),
        (
            "rollout: { a: 50, b: 50, c: 0 }",
            "rollout.c",
            "unknown variant \"c\"",
        ),
    ];
    for (extra, path, message) in cases {
        let variants = match extra.starts_with("variants") {
            true => "",
            false => "variants: { a: 1, b: 2 }\n",
        };
        let found = errors(&format!("{variants}default: a\n{extra}\n"));
        assert_eq!(found[0].0, path, "{extra}: {found:?}");
        assert!(found[0].1.contains(message), "{extra}: {}", found[0].1);
    }
}

#[test]
fn yaml_shape_errors_come_from_serde() {
    for (yaml, message) in [
        (
            "variants: { a: 1 }\ndefault: a\ndefualt: a\n",
            "unknown field `defualt`",
        ),
        ("variants: { a: 1, a: 2 }\ndefault: a\n", "duplicate"),
        (
            "variants: { a: 1 }\ndefault: a\nrules: [ { when: {}, serve: true } ]\n",
            "a variant name or a rollout map",
        ),
        (
            "variants: { a: 1 }\ndefault: a\nrules: [ { when: {}, serve: { a: 50, a: 50 } } ]\n",
            "duplicate key \"a\"",
        ),
        (
            "variants: { a: 1 }\ndefault: a\nrules: [ { serve: a } ]\n",
            "missing field `when`",
        ),
    ] {
        let err = serde_yaml::from_str::<RawFlag>(yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{yaml}: {err}");
    }
}

#[test]
fn values_keep_their_json_type() {
    let flag = compile("f", &raw("variants: { a: 1.0, b: 2.5 }\ndefault: a\n")).unwrap();
    assert_eq!(
        serde_json::to_string(&flag.variants[0].value).unwrap(),
        "1.0"
    );
    let flag = compile("f", &raw("variants: { a: 1, b: -2 }\ndefault: a\n")).unwrap();
    assert_eq!(
        serde_json::to_string(&flag.variants[1].value).unwrap(),
        "-2"
    );
    let flag = compile(
        "f",
        &raw("variants: { a: { x: 1, y: [1.0, s, ~], z: { t: true } } }\ndefault: a\n"),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&flag.variants[0].value).unwrap(),
        r#"{"x":1,"y":[1.0,"s",null],"z":{"t":true}}"#
    );
}

#[test]
fn compiles_to_plain_data() {
    let flag = compile(
        "f",
        &raw(r#"
variants: { "on": true, "off": false }
default: "off"
rules:
  - when: { country: NL }
    serve: "on"
rollout: { "off": 74.5, "on": 25.5 }
kill: true
"#),
    )
    .unwrap();
    let names: Vec<&str> = flag.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["on", "off"]);
    assert_eq!(flag.default, 1);
    assert_eq!(flag.rules[0].serve, Serve::Variant(0));
    assert_eq!(
        flag.rollout,
        Some(Rollout {
            bounds: vec![(1, 7_450), (0, 10_000)]
        })
    );
    assert!(flag.kill);
}
