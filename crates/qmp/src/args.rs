//! Decoding a command's `arguments` object into a `#[serde(deny_unknown_fields)]` struct,
//! with QEMU's error messages.
//!
//! serde_json's own errors are prose ("unknown field `foo`, expected ..."); QMP clients
//! expect QEMU's wording (`qapi/qobject-input-visitor.c`, `include/qapi/qmp/qerror.h`):
//!
//! | problem              | message                                              |
//! |----------------------|------------------------------------------------------|
//! | member missing       | `Parameter 'uri' is missing`                         |
//! | member not known     | `Parameter 'foo' is unexpected`                      |
//! | wrong JSON type      | `Invalid parameter type for 'uri', expected: string` |
//! | not an unsigned int  | `Parameter 'gpa' expects uint64`                     |
//! | bad enum value       | `Parameter 'enable[0]' does not accept value 'foo'`  |
//!
//! So this is a small serde `Deserializer` over a borrowed `serde_json::Value` whose error
//! type records *what* went wrong and *where* structurally; no message text is parsed.
//! Divergence from QEMU: a negative number for an unsigned member is refused (QEMU wraps
//! it around "for backward compatibility"), and `null` is refused for optional members as
//! QEMU refuses it.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why an `arguments` object did not decode; `path` names the member (`uri`,
/// `enable[0]`, `a.b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArgError {
    /// A mandatory member is absent.
    Missing { path: String },
    /// A member the command does not define.
    Unexpected { path: String },
    /// The member has the wrong JSON type.
    InvalidType {
        path: String,
        expected: &'static str,
    },
    /// The member is a number but not of the expected range (`uint64`, `uint32`, …).
    Expects { path: String, what: &'static str },
    /// An enum member with a value the enum does not define.
    BadEnumValue { path: String, value: String },
    /// Anything else serde reports.
    Other { msg: String },
}

impl ArgError {
    /// The member path this error is about, if any.
    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<&str> {
        match self {
            ArgError::Missing { path }
            | ArgError::Unexpected { path }
            | ArgError::InvalidType { path, .. }
            | ArgError::Expects { path, .. }
            | ArgError::BadEnumValue { path, .. } => Some(path),
            ArgError::Other { .. } => None,
        }
    }

    /// Prefixes the member path with the enclosing member (`key`) or list index.
    fn within(mut self, segment: Segment<'_>) -> Self {
        let prefix = match segment {
            Segment::Key(k) => k.to_string(),
            Segment::Index(i) => format!("[{i}]"),
        };
        let join = |path: &mut String| {
            *path = if path.is_empty() {
                prefix.clone()
            } else if path.starts_with('[') {
                format!("{prefix}{path}")
            } else {
                format!("{prefix}.{path}")
            };
        };
        match &mut self {
            ArgError::Missing { path }
            | ArgError::Unexpected { path }
            | ArgError::InvalidType { path, .. }
            | ArgError::Expects { path, .. }
            | ArgError::BadEnumValue { path, .. } => join(path),
            ArgError::Other { .. } => {}
        }
        self
    }
}

/// The top level of an argument object has no name; QEMU prints `<anonymous>`.
fn shown(path: &str) -> &str {
    if path.is_empty() {
        "<anonymous>"
    } else {
        path
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Missing { path } => write!(f, "Parameter '{}' is missing", shown(path)),
            ArgError::Unexpected { path } => {
                write!(f, "Parameter '{}' is unexpected", shown(path))
            }
            ArgError::InvalidType { path, expected } => write!(
                f,
                "Invalid parameter type for '{}', expected: {expected}",
                shown(path)
            ),
            ArgError::Expects { path, what } => {
                write!(f, "Parameter '{}' expects {what}", shown(path))
            }
            ArgError::BadEnumValue { path, value } => write!(
                f,
                "Parameter '{}' does not accept value '{value}'",
                shown(path)
            ),
            ArgError::Other { msg } => f.write_str(msg),
        }
    }
}

impl std::error::Error for ArgError {}

impl de::Error for ArgError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ArgError::Other {
            msg: msg.to_string(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        ArgError::Missing { path: field.into() }
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        ArgError::Unexpected { path: field.into() }
    }

    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        ArgError::BadEnumValue {
            path: String::new(),
            value: variant.into(),
        }
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Decodes `args` (absent = `{}`, as QEMU treats a missing `arguments`) into `T`.
pub(crate) fn from_args<'a, T: de::Deserialize<'a>>(
    args: Option<&'a Map<String, Value>>,
) -> Result<T, ArgError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let map = args.unwrap_or_else(|| EMPTY.get_or_init(Map::new));
    T::deserialize(MapDe { map })
}

/// The top-level arguments object.
struct MapDe<'a> {
    map: &'a Map<String, Value>,
}

impl<'de> Deserializer<'de> for MapDe<'de> {
    type Error = ArgError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_map(MapAcc::new(self.map))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// One JSON value inside the arguments.
struct ValueDe<'a> {
    v: &'a Value,
}

impl<'de> ValueDe<'de> {
    fn invalid(&self, expected: &'static str) -> ArgError {
        ArgError::InvalidType {
            path: String::new(),
            expected,
        }
    }

    fn unsigned(&self, max: u64, what: &'static str) -> Result<u64, ArgError> {
        match self.v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(ArgError::Expects {
                path: String::new(),
                what,
            }),
        }
    }
}

impl<'de> Deserializer<'de> for ValueDe<'de> {
    type Error = ArgError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(a) => visitor.visit_seq(SeqAcc {
                items: a.iter().enumerate(),
            }),
            Value::Object(m) => visitor.visit_map(MapAcc::new(m)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::Bool(b) => visitor.visit_bool(*b),
            _ => Err(self.invalid("boolean")),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_u64(self.unsigned(u8::MAX.into(), "uint8")?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_u64(self.unsigned(u16::MAX.into(), "uint16")?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_u64(self.unsigned(u32::MAX.into(), "uint32")?)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_u64(self.unsigned(u64::MAX, "uint64")?)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v.as_i64() {
            Some(i) => visitor.visit_i64(i),
            None => Err(self.invalid("integer")),
        }
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v.as_f64() {
            Some(x) => visitor.visit_f64(x),
            None => Err(self.invalid("number")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.invalid("string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        self.deserialize_str(visitor)
    }

    /// An absent optional member never gets here (serde fills in `None`); a present one,
    /// even `null`, must have the member's type, as in QEMU.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid("null")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ArgError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::Array(a) => visitor.visit_seq(SeqAcc {
                items: a.iter().enumerate(),
            }),
            _ => Err(self.invalid("array")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        match self.v {
            Value::Object(m) => visitor.visit_map(MapAcc::new(m)),
            _ => Err(self.invalid("object")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ArgError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ArgError> {
        match self.v {
            Value::String(s) => {
                visitor.visit_enum(BorrowedStrDeserializer::<'de, ArgError>::new(s))
            }
            _ => Err(self.invalid("string")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ArgError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i128 u128 f32 char bytes byte_buf unit_struct tuple tuple_struct
    }
}

struct MapAcc<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<(&'a str, &'a Value)>,
}

impl<'a> MapAcc<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            iter: map.iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapAcc<'de> {
    type Error = ArgError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ArgError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some((k.as_str(), v));
                let key = BorrowedStrDeserializer::<'de, ArgError>::new(k.as_str());
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ArgError> {
        match self.value.take() {
            Some((k, v)) => seed
                .deserialize(ValueDe { v })
                .map_err(|e| e.within(Segment::Key(k))),
            None => Err(de::Error::custom("value requested before its key")),
        }
    }
}

struct SeqAcc<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
}

impl<'de> de::SeqAccess<'de> for SeqAcc<'de> {
    type Error = ArgError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ArgError> {
        match self.items.next() {
            Some((i, v)) => seed
                .deserialize(ValueDe { v })
                .map(Some)
                .map_err(|e| e.within(Segment::Index(i))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Sample {
        packet_header: String,
        gpa: Option<u64>,
        small: Option<u8>,
        flag: Option<bool>,
        list: Option<Vec<Colour>>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Colour {
        Red,
        DarkBlue,
    }

    fn decode(v: Value) -> Result<Sample, String> {
        let m = v.as_object().unwrap().clone();
        from_args::<Sample>(Some(&m)).map_err(|e| e.to_string())
    }

    #[test]
    fn decodes_a_good_object() {
        let s = decode(json!({"packet-header": "aGk=", "gpa": 4096, "small": 255,
            "flag": true, "list": ["red", "dark-blue"], "inner": {"name": "x"}}))
        .unwrap();
        assert_eq!(s.packet_header, "aGk=");
        assert_eq!(s.gpa, Some(4096));
        assert_eq!(s.small, Some(255));
        assert_eq!(s.flag, Some(true));
        assert_eq!(s.list, Some(vec![Colour::Red, Colour::DarkBlue]));
        assert_eq!(s.inner, Some(Inner { name: "x".into() }));
        let s = decode(json!({"packet-header": ""})).unwrap();
        assert_eq!((s.gpa, s.flag), (None, None));
    }

    #[test]
    fn errors_read_like_qemus() {
        let cases = [
            (json!({}), "Parameter 'packet-header' is missing"),
            (
                json!({"packet-header": "a", "foo": 1}),
                "Parameter 'foo' is unexpected",
            ),
            (
                json!({"packet-header": 5}),
                "Invalid parameter type for 'packet-header', expected: string",
            ),
            (
                json!({"packet-header": "a", "gpa": "0x1000"}),
                "Parameter 'gpa' expects uint64",
            ),
            (
                json!({"packet-header": "a", "gpa": -1}),
                "Parameter 'gpa' expects uint64",
            ),
            (
                json!({"packet-header": "a", "gpa": 1.5}),
                "Parameter 'gpa' expects uint64",
            ),
            (
                json!({"packet-header": "a", "gpa": null}),
                "Parameter 'gpa' expects uint64",
            ),
            (
                json!({"packet-header": "a", "small": 256}),
                "Parameter 'small' expects uint8",
            ),
            (
                json!({"packet-header": "a", "flag": "yes"}),
                "Invalid parameter type for 'flag', expected: boolean",
            ),
            (
                json!({"packet-header": "a", "list": "red"}),
                "Invalid parameter type for 'list', expected: array",
            ),
            (
                json!({"packet-header": "a", "list": ["red", "green"]}),
                "Parameter 'list[1]' does not accept value 'green'",
            ),
            (
                json!({"packet-header": "a", "list": [1]}),
                "Invalid parameter type for 'list[0]', expected: string",
            ),
            (
                json!({"packet-header": "a", "inner": {}}),
                "Parameter 'inner.name' is missing",
            ),
            (
                json!({"packet-header": "a", "inner": {"name": "x", "y": 1}}),
                "Parameter 'inner.y' is unexpected",
            ),
            (
                json!({"packet-header": "a", "inner": []}),
                "Invalid parameter type for 'inner', expected: object",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input.clone()).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn absent_arguments_are_an_empty_object() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Nothing {}
        assert!(from_args::<Nothing>(None).is_ok());
        let err = from_args::<Sample>(None).unwrap_err();
        assert_eq!(
            err,
            ArgError::Missing {
                path: "packet-header".into()
            }
        );
        assert_eq!(err.path(), Some("packet-header"));
    }

    #[test]
    fn deep_and_odd_values_do_not_panic() {
        let mut deep = json!("x");
        for _ in 0..200 {
            deep = json!({ "name": deep });
        }
        let _ = decode(json!({"packet-header": "a", "inner": deep}));
        let _ = decode(json!({"packet-header": "a", "gpa": 1e300}));
        let _ = decode(json!({"packet-header": "a", "gpa": u64::MAX}));
        let _ = decode(json!({"packet-header": "a", "list": [[[[]]]]}));
    }
}
