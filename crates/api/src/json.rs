//! Request bodies parsed as JSON whose objects repeat no key.
//!
//! RFC 8259 leaves repeated names to the parser, and serde_json keeps the last one: the
//! earlier value would be dropped without a word (`{"killed": 12, "killed": 1}` recorded as 1).
//! A body that says two things at once is refused instead (400), like malformed JSON.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` into a [`Value`]; a repeated key in any object is an error naming the key and
/// where it is.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Unique>(bytes).map(|u| u.0)
}

struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json maps them to null the same way.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One lookup per key: the vacant entry takes the value once it is parsed.
            match object.entry(key) {
                serde_json::map::Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key {:?}",
                        taken.key()
                    )));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    let Unique(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_when_no_key_repeats() {
        let text = br#"{"a": [1, -2, 3.5, 1e300, "x\u00e9\n", true, false, null, {}],
                        "b": {"c": {"d": 18446744073709551615}}, "e": ""}"#;
        let ours = from_slice(text).expect("valid JSON");
        let theirs: Value = serde_json::from_slice(text).expect("valid JSON");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth() {
        for text in [
            r#"{"a": 1, "a": 1}"#,
            r#"{"a": {"b": 1, "c": 2, "b": 3}}"#,
            r#"[{"x": [{"k": 1, "k": 2}]}]"#,
        ] {
            let err = from_slice(text.as_bytes()).expect_err(text).to_string();
            assert!(err.starts_with("duplicate key"), "{text}: {err}");
            assert!(err.contains("line 1 column"), "{text}: {err}");
        }
        // The same key in sibling objects is fine.
        assert!(from_slice(br#"[{"a": 1}, {"a": 2}]"#).is_ok());
    }

    #[test]
    fn keeps_serde_json_errors_and_depth_limit() {
        assert!(from_slice(b"{\"a\": }").is_err());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(from_slice(deep.as_bytes()).is_err(), "recursion limit");
    }
}
