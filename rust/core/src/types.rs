//! Type descriptors plus the Orbweaver `String` extension. Serde uses
//! externally tagged enums so the JSON is byte-compatible with Spider:
//! `{"Value":{"Primitive":{"Int":"Int32"}}}`, `{"Value":{"Bytes":{}}}`, ...
//! They must match exactly across edges; storage checks graph-input payloads against them at
//! submission (see `value`).

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IntType {
    Int8,
    Int16,
    Int32,
    Int64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FloatType {
    Float32,
    Float64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrimitiveType {
    Int(IntType),
    Float(FloatType),
    Boolean,
}

/// Map keys: integers and bytes as in Spider, plus `String` (Orbweaver extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum MapKeyType {
    Int(IntType),
    Bytes {},
    String {},
}

/// A non-empty struct name (structs are identified by name only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct StructName(Box<str>);

impl StructName {
    /// # Errors
    /// An empty name is rejected.
    pub fn new(name: &str) -> Result<Self, &'static str> {
        if name.is_empty() {
            Err("empty struct name is not allowed")
        } else {
            Ok(Self(name.into()))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StructName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ValueType {
    Primitive(PrimitiveType),
    Bytes {},
    /// Orbweaver extension: UTF-8 text (msgpack str).
    String {},
    Struct(StructName),
    List(Box<ValueType>),
    Map {
        key: MapKeyType,
        value: Box<ValueType>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataTypeDescriptor {
    Value(ValueType),
    SharedValue(ValueType),
}

impl DataTypeDescriptor {
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing these enums cannot fail (no maps with non-string keys, no floats).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// # Errors
    /// Malformed JSON or an unknown variant.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The value type, whichever wrapper holds it.
    #[must_use]
    pub const fn value_type(&self) -> &ValueType {
        match self {
            Self::Value(v) | Self::SharedValue(v) => v,
        }
    }

    #[must_use]
    pub fn int(t: IntType) -> Self {
        Self::Value(ValueType::Primitive(PrimitiveType::Int(t)))
    }

    #[must_use]
    pub fn float(t: FloatType) -> Self {
        Self::Value(ValueType::Primitive(PrimitiveType::Float(t)))
    }

    #[must_use]
    pub fn boolean() -> Self {
        Self::Value(ValueType::Primitive(PrimitiveType::Boolean))
    }

    #[must_use]
    pub fn bytes() -> Self {
        Self::Value(ValueType::Bytes {})
    }

    #[must_use]
    pub fn string() -> Self {
        Self::Value(ValueType::String {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(json: &str) -> DataTypeDescriptor {
        let d = DataTypeDescriptor::from_json(json).expect(json);
        assert_eq!(d.to_json(), json);
        d
    }

    #[test]
    fn spider_json_forms() {
        assert_eq!(
            rt(r#"{"Value":{"Primitive":{"Int":"Int32"}}}"#),
            DataTypeDescriptor::int(IntType::Int32)
        );
        assert_eq!(rt(r#"{"Value":{"Bytes":{}}}"#), DataTypeDescriptor::bytes());
        assert_eq!(
            rt(r#"{"Value":{"Primitive":"Boolean"}}"#),
            DataTypeDescriptor::boolean()
        );
        rt(r#"{"Value":{"Primitive":{"Float":"Float64"}}}"#);
        rt(r#"{"SharedValue":{"List":{"Bytes":{}}}}"#);
        rt(r#"{"Value":{"Map":{"key":{"Int":"Int64"},"value":{"Struct":"Point"}}}}"#);
        rt(r#"{"Value":{"Map":{"key":{"Bytes":{}},"value":{"Primitive":{"Int":"Int64"}}}}}"#);
        rt(r#"{"Value":{"List":{"List":{"Primitive":{"Float":"Float32"}}}}}"#);
    }

    #[test]
    fn all_scalar_types_round_trip_both_wrappers() {
        let mut values = vec![
            ValueType::Bytes {},
            ValueType::String {},
            ValueType::Primitive(PrimitiveType::Boolean),
            ValueType::Struct(StructName::new("User").expect("name")),
        ];
        for i in [
            IntType::Int8,
            IntType::Int16,
            IntType::Int32,
            IntType::Int64,
        ] {
            values.push(ValueType::Primitive(PrimitiveType::Int(i)));
            values.push(ValueType::Map {
                key: MapKeyType::Int(i),
                value: Box::new(ValueType::Bytes {}),
            });
        }
        for f in [FloatType::Float32, FloatType::Float64] {
            values.push(ValueType::Primitive(PrimitiveType::Float(f)));
        }
        for v in values {
            for d in [
                DataTypeDescriptor::Value(v.clone()),
                DataTypeDescriptor::SharedValue(v.clone()),
            ] {
                assert_eq!(
                    DataTypeDescriptor::from_json(&d.to_json()).expect("json"),
                    d
                );
                let list = DataTypeDescriptor::Value(ValueType::List(Box::new(v.clone())));
                assert_eq!(
                    DataTypeDescriptor::from_json(&list.to_json()).expect("json"),
                    list
                );
            }
        }
    }

    #[test]
    fn string_extension() {
        assert_eq!(
            rt(r#"{"Value":{"String":{}}}"#),
            DataTypeDescriptor::string()
        );
        rt(r#"{"Value":{"Map":{"key":{"String":{}},"value":{"String":{}}}}}"#);
    }

    #[test]
    fn rejects_bad_descriptors() {
        for bad in [
            r#"{"Value":{"Struct":""}}"#,
            r#"{"Value":{"Map":{"key":{"Primitive":"Boolean"},"value":{"Bytes":{}}}}}"#,
            r#"{"Value":{"Map":{"key":{"Bytes":{}}}}}"#,
            r#"{"Value":{"Bytes":{"x":1}}}"#,
            r#"{"Value":{"Primitive":{"Int":"Int128"}}}"#,
            r#"{"Other":{"Bytes":{}}}"#,
            r#""Bytes""#,
        ] {
            assert!(DataTypeDescriptor::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn value_and_shared_value_differ() {
        let a = DataTypeDescriptor::Value(ValueType::Bytes {});
        let b = DataTypeDescriptor::SharedValue(ValueType::Bytes {});
        assert_ne!(a, b);
    }
}
