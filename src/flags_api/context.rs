//! The OFREP request body's context, read two ways that accept and refuse the same bodies
//! (a test and the `ofrep` fuzz target compare them): [`parse_tree`], a JSON tree, for the bulk
//! answer's ETag; [`parse`], for one flag, without a tree: attribute names and string values
//! borrow from the body (copied only when they hold escapes), nested values are read but not
//! kept, since no rule can match them, and a repeated attribute's last value wins, as in a
//! JSON map.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::flags::{Context, ContextValue};

/// An evaluation context, in body order.
#[derive(Debug, Default)]
pub struct BorrowedContext<'a> {
    attributes: Vec<(Cow<'a, str>, Attribute<'a>)>,
}

#[derive(Debug)]
enum Attribute<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    /// `null`, an array or an object: present, but never matched.
    Unmatchable,
}

impl<'a> BorrowedContext<'a> {
    fn last(&self, name: &str) -> Option<&Attribute<'a>> {
        self.attributes
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

impl Context for BorrowedContext<'_> {
    fn targeting_key(&self) -> Option<&str> {
        match self.last("targetingKey")? {
            Attribute::Str(key) => Some(key),
            _ => None,
        }
    }

    fn get(&self, attribute: &str) -> Option<ContextValue<'_>> {
        match self.last(attribute)? {
            Attribute::Str(s) => Some(ContextValue::Str(s)),
            Attribute::Num(n) => Some(ContextValue::Num(*n)),
            Attribute::Bool(b) => Some(ContextValue::Bool(*b)),
            Attribute::Unmatchable => None,
        }
    }
}

/// An OFREP body that cannot be evaluated: the OFREP error code and the details.
type BodyError = (&'static str, String);

/// The body as a JSON tree: the bulk answer needs the whole context for its ETag.
pub fn parse_tree(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    match context_member::<Value>(body)? {
        None => Ok(Map::new()),
        Some(Value::Object(context)) => match context.get("targetingKey") {
            None | Some(Value::String(_)) => Ok(context),
            Some(_) => Err(targeting_key_not_a_string()),
        },
        Some(_) => Err(context_not_an_object()),
    }
}

/// The `context` member of an OFREP body as `T`, `None` when the body is empty or has none
/// (or it is `null`). Both context readers start here, so they refuse the same bodies.
fn context_member<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<Option<T>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    /// Other members are ignored, as the spec allows.
    #[derive(serde::Deserialize)]
    struct EvaluationRequest<T> {
        context: Option<T>,
    }
    // Derived structs also accept a JSON array; the spec wants an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err((
            "PARSE_ERROR",
            "request body must be a JSON object".to_owned(),
        ));
    }
    serde_json::from_slice::<EvaluationRequest<T>>(body)
        .map(|request| request.context)
        .map_err(|err| ("PARSE_ERROR", format!("request body is not JSON: {err}")))
}

fn context_not_an_object() -> BodyError {
    (
        "INVALID_CONTEXT",
        "context must be a JSON object".to_owned(),
    )
}

fn targeting_key_not_a_string() -> BodyError {
    (
        "INVALID_CONTEXT",
        "targetingKey must be a string".to_owned(),
    )
}

/// The body read in place, for one flag; it refuses what [`parse_tree`] refuses.
pub fn parse(body: &[u8]) -> Result<BorrowedContext<'_>, BodyError> {
    match context_member::<ContextField<'_>>(body)? {
        None => Ok(BorrowedContext::default()),
        Some(ContextField::Object(context)) => match context.last("targetingKey") {
            None | Some(Attribute::Str(_)) => Ok(context),
            Some(_) => Err(targeting_key_not_a_string()),
        },
        Some(ContextField::NotObject) => Err(context_not_an_object()),
    }
}

/// Reads `body` with both context readers and panics where they differ: one accepts and the
/// other refuses, the error codes, the targeting key, or any attribute either one holds.
/// Returns whether the body holds a usable context. For the tests and the `ofrep` fuzz target.
pub fn assert_readers_agree(body: &[u8]) -> bool {
    let shown = String::from_utf8_lossy(body);
    let tree = parse_tree(body);
    let in_place = parse(body);
    match (&tree, &in_place) {
        (Ok(tree), Ok(in_place)) => {
            assert_eq!(tree.targeting_key(), in_place.targeting_key(), "{shown}");
            let names = tree.keys().map(String::as_str);
            for name in names.chain(in_place.attributes.iter().map(|(name, _)| &**name)) {
                assert_eq!(
                    Context::get(tree, name),
                    in_place.get(name),
                    "{shown}: {name}"
                );
            }
        }
        (Err((a, _)), Err((b, _))) => assert_eq!(a, b, "{shown}"),
        _ => panic!("{shown}: the readers disagree: {tree:?} vs {in_place:?}"),
    }
    tree.is_ok()
}

/// `context` itself: an object, or anything else (`null` is `None` around it).
enum ContextField<'a> {
    Object(BorrowedContext<'a>),
    NotObject,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContextField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
            type Value = ContextField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut attributes = Vec::new();
                while let Some(Name(name)) = map.next_key()? {
                    attributes.push((name, map.next_value()?));
                }
                Ok(ContextField::Object(BorrowedContext { attributes }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| ContextField::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
        }
        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

/// An attribute name, borrowed unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Attribute<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AttributeVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for AttributeVisitor<'a> {
            type Value = Attribute<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Attribute::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Attribute::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Attribute::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Attribute::Num(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Attribute::Num(n as f64))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Attribute::Num(n))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Attribute::Unmatchable)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Attribute::Unmatchable)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Attribute::Unmatchable)
            }
        }
        deserializer.deserialize_any(AttributeVisitor(PhantomData))
    }
}

// Skipped values are still read as values, not with `IgnoredAny`: that would let invalid
// UTF-8, out-of-range numbers and nesting past serde_json's depth limit through, all of which
// the tree parser refuses.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Attribute<'_>>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Name<'_>, Attribute<'_>>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both parsers agree on every body: accepted or refused with the same code, and the same
    /// targeting key and attributes when accepted.
    #[test]
    fn agrees_with_the_json_tree_parser() {
        let bodies = [
            "",
            "  \n",
            "{}",
            "[]",
            "null",
            "{\"context\":null}",
            "{\"context\":{}}",
            "{\"context\":[1,2]}",
            "{\"context\":\"x\"}",
            "{\"context\":7}",
            "{\"context\":true}",
            "{\"context\":{\"targetingKey\":\"u1\",\"country\":\"NL\"}}",
            "{\"context\":{\"targetingKey\":1}}",
            "{\"context\":{\"targetingKey\":null}}",
            "{\"context\":{\"targetingKey\":\"a\",\"targetingKey\":\"b\"}}",
            "{\"context\":{\"targetingKey\":\"a\",\"targetingKey\":2}}",
            "{\"context\":{\"targetingKey\":2,\"targetingKey\":\"a\"}}",
            "{\"context\":{\"n\":-3,\"u\":18446744073709551615,\"f\":1.5e3,\"b\":false}}",
            "{\"context\":{\"esc\\u0061ped\":\"v\\n\",\"nested\":{\"a\":[1,{\"b\":2}]},\"arr\":[\"x\"]}}",
            "{\"context\":{\"country\":\"NL\",\"country\":\"DE\"}}",
            "{\"other\":1,\"context\":{\"app_version\":\"1.2.3\"}}",
            "{\"context\":{},\"context\":{}}",
            "{\"context\":{\"a\":1}",
            "{\"context\":{\"a\":tru}}",
            "{\"context\":{\"a\":1}} trailing",
            "{\"context\":{1:2}}",
            "{\"context\":{\"a\":\"\\ud800\"}}",
            "{\"context\":{\"a\":[1e400]}}",
            "{\"context\":[1e400]}",
            "{\"context\":{\"a\":{\"b\":1e400}}}",
        ];
        let deep = |depth| {
            format!(
                "{{\"context\":{{\"a\":{}{}}}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let mut bodies: Vec<Vec<u8>> = bodies.iter().map(|b| b.as_bytes().to_vec()).collect();
        bodies.extend([
            // Invalid UTF-8 in a value no rule could match is still invalid JSON.
            b"{\"context\":[\"a\xff\"]}".to_vec(),
            b"{\"context\":{\"a\":{\"b\":\"\xff\"}}}".to_vec(),
            b"{\"context\":{\"\xff\":1}}".to_vec(),
            deep(100).into_bytes(),
            deep(200).into_bytes(),
        ]);
        for body in &bodies {
            assert_readers_agree(body);
        }
    }

    #[test]
    fn plain_names_and_values_borrow_from_the_body() {
        let body = br#"{"context":{"targetingKey":"user-1","country":"N\u004c"}}"#;
        let context = parse(body).unwrap();
        assert!(matches!(
            context.attributes[0].0,
            Cow::Borrowed("targetingKey")
        ));
        assert!(matches!(
            context.attributes[0].1,
            Attribute::Str(Cow::Borrowed("user-1"))
        ));
        // An escape needs a copy, and reads the same.
        assert!(matches!(
            context.attributes[1].1,
            Attribute::Str(Cow::Owned(_))
        ));
        assert_eq!(context.get("country"), Some(ContextValue::Str("NL")));
    }
}
