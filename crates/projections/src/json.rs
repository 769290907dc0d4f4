//! Request bodies as a JSON tree borrowed from their bytes, whose objects repeat no key.
//!
//! RFC 8259 leaves repeated names to the parser, and serde_json keeps the last one: the
//! earlier value would be dropped without a word (`{"killed": 12, "killed": 1}` recorded as 1).
//! A body that says two things at once is refused instead (400), like malformed JSON.
//!
//! [`Json`] is what the append path validates ([`crate::parse_events`] works on it and on
//! `serde_json::Value` alike, through [`JsonValue`]). Strings and keys without escapes borrow
//! from the body and objects are small vectors, so a body becomes a tree with a handful of
//! allocations instead of one per key and string (a `Value` keeps every key in an owned
//! `String` and every object in a `BTreeMap`).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Most values (of any kind, nested or not) one text may hold: a tree costs ~32 bytes per
/// value however few bytes the text spends on it (`[{},{},...]`: 3), so without a bound a
/// 64 MiB bulk line of empty objects became a tree of ~1 GB (a security audit). A million
/// values is ~30,000 events in one line; more is refused (400), as text too deep is.
pub const MAX_JSON_VALUES: usize = 1_000_000;

/// A JSON value borrowed from the text it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(JsonObject<'a>),
}

/// A JSON object: its members in the order written, no key twice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonObject<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Json<'a> {
    /// Parses `bytes`; a repeated key in any object is an error naming the key and where it
    /// is. Syntax errors are serde_json's own (same messages, positions and depth limit).
    pub fn from_slice(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        // Checked as UTF-8 in one pass, the text's strings need no check each (serde_json
        // checks every string of a byte slice on its own, a call per key and value). Not
        // UTF-8: the byte-slice parser, for its error and where it is.
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(serde_json::Deserializer::from_str(text)),
            Err(_) => Self::parse(serde_json::Deserializer::from_slice(bytes)),
        }
    }

    fn parse<R: serde_json::de::Read<'a>>(
        mut de: serde_json::Deserializer<R>,
    ) -> Result<Json<'a>, serde_json::Error> {
        let budget = Cell::new(MAX_JSON_VALUES);
        let v = JsonSeed(&budget).deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

/// What validation needs of a JSON value: implemented by [`Json`] (the append path) and by
/// `serde_json::Value` (tests, fuzzing, callers holding a tree already).
pub trait JsonValue: Sized {
    type Object: JsonMembers<Value = Self>;
    fn as_object(&self) -> Option<&Self::Object>;
    fn as_array(&self) -> Option<&[Self]>;
    fn as_str(&self) -> Option<&str>;
    fn as_number(&self) -> Option<&Number>;
    fn is_null(&self) -> bool;
}

/// The members of a JSON object.
pub trait JsonMembers {
    type Value: JsonValue;
    fn get(&self, key: &str) -> Option<&Self::Value>;
    fn keys(&self) -> impl Iterator<Item = &str>;
}

impl<'a> JsonValue for Json<'a> {
    type Object = JsonObject<'a>;
    fn as_object(&self) -> Option<&JsonObject<'a>> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<&Number> {
        match self {
            Json::Number(n) => Some(n),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
}

impl<'a> JsonMembers for JsonObject<'a> {
    type Value = Json<'a>;
    fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }
}

impl JsonValue for Value {
    type Object = Map<String, Value>;
    fn as_object(&self) -> Option<&Map<String, Value>> {
        Value::as_object(self)
    }
    fn as_array(&self) -> Option<&[Value]> {
        Value::as_array(self).map(Vec::as_slice)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_number(&self) -> Option<&Number> {
        Value::as_number(self)
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
}

impl JsonMembers for Map<String, Value> {
    type Value = Value;
    fn get(&self, key: &str) -> Option<&Value> {
        Map::get(self, key)
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        Map::keys(self).map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JsonSeed(&Cell::new(MAX_JSON_VALUES)).deserialize(d)
    }
}

/// One value of a text, charged to the text's budget of [`MAX_JSON_VALUES`].
#[derive(Clone, Copy)]
struct JsonSeed<'b>(&'b Cell<usize>);

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        let left = self.0.get();
        if left == 0 {
            return Err(de::Error::custom(format_args!(
                "more than {MAX_JSON_VALUES} JSON values in one text (split a bulk line's \
                 events over several lines)"
            )));
        }
        self.0.set(left - 1);
        d.deserialize_any(JsonVisitor(self.0))
    }
}

struct JsonVisitor<'b>(&'b Cell<usize>);

/// Members of an object checked for a repeated key by a linear scan; beyond, by a set.
const SCAN_MAX: usize = 16;

impl<'de> Visitor<'de> for JsonVisitor<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // JSON text has no NaN or infinity; serde_json maps them to null the same way.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(JsonSeed(self.0))? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        // Keys seen, once an object is too large for a linear scan (a hostile body of 100k
        // keys would otherwise cost billions of comparisons).
        let mut seen: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key_seed(KeySeed)? {
            // Checked before the value is parsed, so the error points just past the key.
            // Objects of request bodies have a few members: a linear scan beats hashing.
            let repeated = match &mut seen {
                Some(seen) => !seen.insert(key.clone()),
                None if members.len() < SCAN_MAX => members.iter().any(|(k, _)| *k == key),
                None => {
                    let mut keys: HashSet<_> = members.iter().map(|(k, _)| k.clone()).collect();
                    let repeated = !keys.insert(key.clone());
                    seen = Some(keys);
                    repeated
                }
            };
            if repeated {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(JsonSeed(self.0))?;
            members.push((key, value));
        }
        Ok(Json::Object(JsonObject(members)))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same value as a `serde_json::Value`.
    fn to_value(j: &Json<'_>) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(a) => Value::Array(a.iter().map(to_value).collect()),
            Json::Object(o) => Value::Object(
                o.0.iter()
                    .map(|(k, v)| (k.to_string(), to_value(v)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    #[test]
    fn parses_like_serde_json_when_no_key_repeats() {
        let text = br#"{"a": [1, -2, 3.5, 1e300, "x\u00e9\n", true, false, null, {}],
                        "b": {"c": {"d": 18446744073709551615}}, "e": "", "f": -0.0}"#;
        let ours = Json::from_slice(text).expect("valid JSON");
        let theirs: Value = serde_json::from_slice(text).expect("valid JSON");
        assert_eq!(to_value(&ours), theirs);
        // Strings without escapes are borrowed from the text, the others owned.
        let Json::Object(o) = &ours else {
            panic!("an object")
        };
        assert!(matches!(o.get("e"), Some(Json::String(Cow::Borrowed("")))));
        let Some(Json::Array(a)) = o.get("a") else {
            panic!("an array")
        };
        assert!(matches!(&a[4], Json::String(Cow::Owned(s)) if s == "x\u{e9}\n"));
    }

    /// At most [`MAX_JSON_VALUES`] values, counted at every depth, object members included.
    #[test]
    fn a_text_holds_at_most_max_json_values() {
        let values = |n: usize| format!("[{}]", vec!["{}"; n - 1].join(","));
        assert!(Json::from_slice(values(MAX_JSON_VALUES).as_bytes()).is_ok());
        let err = Json::from_slice(values(MAX_JSON_VALUES + 1).as_bytes())
            .expect_err("one value too many")
            .to_string();
        assert!(err.contains("more than 1000000 JSON values"), "{err}");
        // Nested and in objects alike: {"a": [..]} holds the object, the array and its items.
        let nested = format!(r#"{{"a": [{}]}}"#, vec!["0"; MAX_JSON_VALUES - 1].join(","));
        assert!(Json::from_slice(nested.as_bytes()).is_err());
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth() {
        for text in [
            r#"{"a": 1, "a": 1}"#,
            r#"{"a": {"b": 1, "c": 2, "b": 3}}"#,
            r#"[{"x": [{"k": 1, "k": 2}]}]"#,
            r#"{"\u0061": 1, "a": 2}"#,
        ] {
            let err = Json::from_slice(text.as_bytes())
                .expect_err(text)
                .to_string();
            assert!(
                err.starts_with("duplicate key \"a\"")
                    || err.starts_with("duplicate key \"b\"")
                    || err.starts_with("duplicate key \"k\""),
                "{text}: {err}"
            );
            assert!(err.contains("line 1 column"), "{text}: {err}");
        }
        // The same key in sibling objects is fine.
        assert!(Json::from_slice(br#"[{"a": 1}, {"a": 2}]"#).is_ok());
    }

    /// Past `SCAN_MAX` members keys are checked through a set: a repeat is still found, and
    /// an object of many distinct keys parses in linear time.
    #[test]
    fn large_objects_are_checked_through_a_set() {
        let keys = |n: usize| (0..n).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>();
        let many = format!("{{{}}}", keys(50_000).join(","));
        let parsed = Json::from_slice(many.as_bytes()).expect("distinct keys");
        assert_eq!(parsed.as_object().map(|o| o.keys().count()), Some(50_000));
        for at in [3, SCAN_MAX, SCAN_MAX + 1, 49_999] {
            let mut k = keys(50_000);
            k.push(format!("\"k{at}\": 0"));
            let text = format!("{{{}}}", k.join(","));
            let err = Json::from_slice(text.as_bytes())
                .expect_err("a repeat")
                .to_string();
            assert!(
                err.starts_with(&format!("duplicate key \"k{at}\"")),
                "{err}"
            );
        }
    }

    #[test]
    fn keeps_serde_json_errors_and_depth_limit() {
        for text in ["{\"a\": }", "[1, 2", "{\"a\": 1} x", "\"\\ud800\""] {
            let ours = Json::from_slice(text.as_bytes())
                .expect_err(text)
                .to_string();
            let theirs = serde_json::from_slice::<Value>(text.as_bytes())
                .expect_err(text)
                .to_string();
            assert_eq!(ours, theirs, "{text}");
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(
            Json::from_slice(deep.as_bytes()).is_err(),
            "recursion limit"
        );
    }
}
