use proptest::prelude::*;

use super::*;
use crate::types::StructName;

// A msgpack encoder with msgpack-python's choices (smallest int / length encoding, floats as
// float64, bytes as bin, str as str), so generated payloads are what the client sends.

fn int(v: i128, out: &mut Vec<u8>) {
    if (0..=0x7f).contains(&v) {
        out.push(v as u8);
    } else if (-32..0).contains(&v) {
        out.push(v as i8 as u8);
    } else if v > 0 {
        if let Ok(x) = u8::try_from(v) {
            out.extend_from_slice(&[0xcc, x]);
        } else if let Ok(x) = u16::try_from(v) {
            out.push(0xcd);
            out.extend_from_slice(&x.to_be_bytes());
        } else if let Ok(x) = u32::try_from(v) {
            out.push(0xce);
            out.extend_from_slice(&x.to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(v as u64).to_be_bytes());
        }
    } else if let Ok(x) = i8::try_from(v) {
        out.extend_from_slice(&[0xd0, x as u8]);
    } else if let Ok(x) = i16::try_from(v) {
        out.push(0xd1);
        out.extend_from_slice(&x.to_be_bytes());
    } else if let Ok(x) = i32::try_from(v) {
        out.push(0xd2);
        out.extend_from_slice(&x.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&(v as i64).to_be_bytes());
    }
}

/// `v` in the given fixed width: 0..=3 unsigned 8..64, 4..=7 signed 8..64 (when it fits).
fn int_wide(v: i128, width: u8, out: &mut Vec<u8>) {
    let bytes = 1usize << (width % 4);
    let signed = width >= 4;
    let fits = if signed {
        let bits = 8 * bytes as u32;
        v >= -(1i128 << (bits - 1)) && v < (1i128 << (bits - 1))
    } else {
        v >= 0 && v < (1i128 << (8 * bytes as u32))
    };
    if !fits {
        return int(v, out);
    }
    out.push(if signed { 0xd0 } else { 0xcc } + (width % 4));
    out.extend_from_slice(&(v as u64).to_be_bytes()[8 - bytes..]);
}

fn header(n: usize, fix: u8, fix_max: usize, b16: u8, out: &mut Vec<u8>) {
    if n <= fix_max {
        out.push(fix | n as u8);
    } else if let Ok(x) = u16::try_from(n) {
        out.push(b16);
        out.extend_from_slice(&x.to_be_bytes());
    } else {
        out.push(b16 + 1);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn str_(s: &str, out: &mut Vec<u8>) {
    let n = s.len();
    if n <= 31 {
        out.push(0xa0 | n as u8);
    } else if let Ok(x) = u8::try_from(n) {
        out.extend_from_slice(&[0xd9, x]);
    } else {
        header(n, 0, 0, 0xda, out);
    }
    out.extend_from_slice(s.as_bytes());
}

fn f64_(v: f64, out: &mut Vec<u8>) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

fn int_type() -> impl Strategy<Value = IntType> {
    prop_oneof![
        Just(IntType::Int8),
        Just(IntType::Int16),
        Just(IntType::Int32),
        Just(IntType::Int64)
    ]
}

fn key_type() -> impl Strategy<Value = MapKeyType> {
    prop_oneof![
        int_type().prop_map(MapKeyType::Int),
        Just(MapKeyType::Bytes {}),
        Just(MapKeyType::String {})
    ]
}

fn value_type() -> impl Strategy<Value = ValueType> {
    let leaf = prop_oneof![
        int_type().prop_map(|i| ValueType::Primitive(PrimitiveType::Int(i))),
        Just(ValueType::Primitive(PrimitiveType::Float(
            FloatType::Float32
        ))),
        Just(ValueType::Primitive(PrimitiveType::Float(
            FloatType::Float64
        ))),
        Just(ValueType::Primitive(PrimitiveType::Boolean)),
        Just(ValueType::Bytes {}),
        Just(ValueType::String {}),
        Just(ValueType::Struct(StructName::new("m.Point").expect("name"))),
    ];
    leaf.prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| ValueType::List(Box::new(t))),
            (key_type(), inner).prop_map(|(key, v)| ValueType::Map {
                key,
                value: Box::new(v)
            }),
        ]
    })
}

fn int_value(t: IntType) -> BoxedStrategy<i128> {
    let (lo, hi) = int_range(t);
    prop_oneof![lo..=hi, Just(lo), Just(hi), -40i128..=300]
        .prop_filter("in range", move |v| (lo..=hi).contains(v))
        .boxed()
}

fn key_value(k: MapKeyType) -> BoxedStrategy<Vec<u8>> {
    match k {
        MapKeyType::Int(i) => int_value(i)
            .prop_map(|v| {
                let mut o = Vec::new();
                int(v, &mut o);
                o
            })
            .boxed(),
        MapKeyType::Bytes {} => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| msgpack_bin(&b))
            .boxed(),
        MapKeyType::String {} => ".{0,40}"
            .prop_map(|s| {
                let mut o = Vec::new();
                str_(&s, &mut o);
                o
            })
            .boxed(),
    }
}

/// Any value a struct field can hold (what the client encodes for some Orbweaver type).
fn any_value() -> BoxedStrategy<Vec<u8>> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|v| {
            let mut o = Vec::new();
            int(i128::from(v), &mut o);
            o
        }),
        any::<f64>().prop_map(|v| {
            let mut o = Vec::new();
            f64_(v, &mut o);
            o
        }),
        any::<bool>().prop_map(|b| vec![0xc2 + u8::from(b)]),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| msgpack_bin(&b)),
        ".{0,40}".prop_map(|s| {
            let mut o = Vec::new();
            str_(&s, &mut o);
            o
        }),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(|items| {
                let mut o = Vec::new();
                header(items.len(), 0x90, 15, 0xdc, &mut o);
                for i in items {
                    o.extend(i);
                }
                o
            }),
            proptest::collection::vec((key_value(MapKeyType::String {}), inner), 0..4).prop_map(
                |entries| {
                    let mut o = Vec::new();
                    header(entries.len(), 0x80, 15, 0xde, &mut o);
                    for (k, v) in entries {
                        o.extend(k);
                        o.extend(v);
                    }
                    o
                }
            ),
        ]
    })
    .boxed()
}

fn value_of(t: &ValueType) -> BoxedStrategy<Vec<u8>> {
    match t {
        ValueType::Primitive(PrimitiveType::Int(i)) => (int_value(*i), 0u8..9)
            .prop_map(|(v, w)| {
                let mut o = Vec::new();
                // Mostly the smallest encoding (the client's), sometimes a wider one.
                if w < 8 {
                    int_wide(v, w, &mut o);
                } else {
                    int(v, &mut o);
                }
                o
            })
            .boxed(),
        ValueType::Primitive(PrimitiveType::Float(FloatType::Float32)) => any::<f32>()
            .prop_map(|v| {
                let mut o = Vec::new();
                f64_(f64::from(v), &mut o);
                o
            })
            .boxed(),
        ValueType::Primitive(PrimitiveType::Float(FloatType::Float64)) => any::<f64>()
            .prop_map(|v| {
                let mut o = Vec::new();
                f64_(v, &mut o);
                o
            })
            .boxed(),
        ValueType::Primitive(PrimitiveType::Boolean) => {
            any::<bool>().prop_map(|b| vec![0xc2 + u8::from(b)]).boxed()
        }
        ValueType::Bytes {} => proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| msgpack_bin(&b))
            .boxed(),
        ValueType::String {} => ".{0,60}"
            .prop_map(|s| {
                let mut o = Vec::new();
                str_(&s, &mut o);
                o
            })
            .boxed(),
        ValueType::Struct(_) => proptest::collection::vec(any_value(), 0..5)
            .prop_map(|fields| {
                let mut o = Vec::new();
                header(fields.len(), 0x90, 15, 0xdc, &mut o);
                for f in fields {
                    o.extend(f);
                }
                o
            })
            .boxed(),
        ValueType::List(item) => proptest::collection::vec(value_of(item), 0..20)
            .prop_map(|items| {
                let mut o = Vec::new();
                header(items.len(), 0x90, 15, 0xdc, &mut o);
                for i in items {
                    o.extend(i);
                }
                o
            })
            .boxed(),
        ValueType::Map { key, value } => {
            proptest::collection::vec((key_value(*key), value_of(value)), 0..20)
                .prop_map(|entries| {
                    let mut o = Vec::new();
                    header(entries.len(), 0x80, 15, 0xde, &mut o);
                    for (k, v) in entries {
                        o.extend(k);
                        o.extend(v);
                    }
                    o
                })
                .boxed()
        }
    }
}

fn typed_value() -> impl Strategy<Value = (ValueType, Vec<u8>)> {
    value_type().prop_flat_map(|t| {
        let v = value_of(&t);
        (Just(t), v)
    })
}

fn t(json: &str) -> ValueType {
    match crate::types::DataTypeDescriptor::from_json(json).expect(json) {
        crate::types::DataTypeDescriptor::Value(v)
        | crate::types::DataTypeDescriptor::SharedValue(v) => v,
    }
}

fn err(ty: &str, payload: &[u8]) -> String {
    validate(&t(ty), payload)
        .expect_err("must be refused")
        .to_string()
}

const INT8: &str = r#"{"Value":{"Primitive":{"Int":"Int8"}}}"#;
const INT32: &str = r#"{"Value":{"Primitive":{"Int":"Int32"}}}"#;
const INT64: &str = r#"{"Value":{"Primitive":{"Int":"Int64"}}}"#;
const F32: &str = r#"{"Value":{"Primitive":{"Float":"Float32"}}}"#;
const F64: &str = r#"{"Value":{"Primitive":{"Float":"Float64"}}}"#;
const BOOL: &str = r#"{"Value":{"Primitive":"Boolean"}}"#;
const BYTES: &str = r#"{"Value":{"Bytes":{}}}"#;
const STRING: &str = r#"{"Value":{"String":{}}}"#;
const STRUCT: &str = r#"{"Value":{"Struct":"m.P"}}"#;
const LIST_I32: &str = r#"{"Value":{"List":{"Primitive":{"Int":"Int32"}}}}"#;
const MAP_S_I8: &str =
    r#"{"Value":{"Map":{"key":{"String":{}},"value":{"Primitive":{"Int":"Int8"}}}}}"#;

#[test]
fn scalars_of_the_right_msgpack_type_are_accepted() {
    for (ty, payload) in [
        (INT8, &[0x7f][..]),
        (INT8, &[0xd0, 0x80]),
        (INT8, &[0xcc, 0x7f]),
        (
            INT8,
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80],
        ),
        (
            INT64,
            &[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        (INT64, &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        (F64, &[0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]),
        (F64, &[0xca, 0x3f, 0x80, 0, 0]),
        (F32, &[0xca, 0x3f, 0x80, 0, 0]),
        (BOOL, &[0xc3]),
        (BYTES, &[0xc4, 1, b'x']),
        (BYTES, &[0xc5, 0, 0]),
        (STRING, &[0xa2, b'h', b'i']),
        (STRING, &[0xd9, 0]),
        (STRUCT, &[0x92, 0x01, 0xa1, b'x']),
        (STRUCT, &[0x90]),
        (LIST_I32, &[0x92, 0x01, 0xd2, 0, 0, 1, 0]),
        (MAP_S_I8, &[0x81, 0xa1, b'k', 0xff]),
    ] {
        validate(&t(ty), payload).unwrap_or_else(|e| panic!("{ty} {payload:?}: {e}"));
    }
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(err(INT32, &[0xa1, b'x']), "expected Int32, got str");
    assert_eq!(
        err(INT32, &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]),
        "expected Int32, got float"
    );
    assert_eq!(err(F64, &[0x01]), "expected Float64, got int");
    assert_eq!(err(BOOL, &[0x01]), "expected Boolean, got int");
    assert_eq!(err(BYTES, &[0xa1, b'x']), "expected Bytes, got str");
    assert_eq!(err(BYTES, &[0x91, 0x01]), "expected Bytes, got array");
    assert_eq!(err(STRING, &[0xc4, 1, b'x']), "expected String, got bin");
    assert_eq!(err(STRING, &[0xc0]), "expected String, got nil");
    assert_eq!(
        err(STRUCT, &[0x81, 0xa1, b'x', 1]),
        "expected Struct m.P, got map"
    );
    assert_eq!(err(LIST_I32, &[0xc4, 0]), "expected List[Int32], got bin");
    assert_eq!(
        err(MAP_S_I8, &[0x91, 0x01]),
        "expected Map[String, Int8], got array"
    );
    assert_eq!(err(INT8, &[0xd4, 1, 2]), "expected Int8, got ext");
}

#[test]
fn integers_out_of_range_are_refused_in_any_encoding() {
    assert_eq!(
        err(INT8, &[0xcd, 0x01, 0x2c]),
        "value 300 out of range for Int8"
    );
    assert_eq!(err(INT8, &[0xcc, 0x80]), "value 128 out of range for Int8");
    assert_eq!(
        err(INT8, &[0xd1, 0xff, 0x7f]),
        "value -129 out of range for Int8"
    );
    assert_eq!(
        err(INT64, &[0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        "value 9223372036854775808 out of range for Int64"
    );
    assert_eq!(
        err(F32, &[0xcb, 0x7f, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        format!("value {} out of range for Float32", f64::MAX)
    );
    // Infinities and NaN are floats the client writes for Float32 too.
    validate(&t(F32), &[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0]).expect("inf");
    validate(&t(F32), &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]).expect("nan");
}

#[test]
fn nested_errors_carry_their_path() {
    assert_eq!(
        err(LIST_I32, &[0x93, 0x01, 0x02, 0xa1, b'x']),
        "at [2]: expected Int32, got str"
    );
    assert_eq!(
        err(MAP_S_I8, &[0x82, 0xa1, b'a', 0x01, 0x05, 0x01]),
        "at {entry 1: key}: expected String key, got int"
    );
    assert_eq!(
        err(MAP_S_I8, &[0x81, 0xa1, b'a', 0xcd, 0x01, 0x2c]),
        "at {entry 0: value}: value 300 out of range for Int8"
    );
    assert_eq!(
        err(STRUCT, &[0x92, 0x01, 0x91, 0xc0]),
        "at [1][0]: expected a value of an Orbweaver type, got nil"
    );
    assert_eq!(
        err(STRUCT, &[0x91, 0x81, 0xc3, 0x01]),
        "at [0]{entry 0: key}: expected an int, str or bin map key, got bool"
    );
}

#[test]
fn malformed_msgpack_is_refused() {
    assert!(err(INT8, &[]).starts_with("not valid msgpack: truncated at byte 0"));
    assert_eq!(
        err(INT8, &[0xc1]),
        "not valid msgpack: reserved byte 0xc1 at byte 0"
    );
    assert_eq!(
        err(INT8, &[0x01, 0x02]),
        "not valid msgpack: 1 trailing bytes after the value"
    );
    assert!(err(BYTES, &[0xc4, 5, 1]).contains("truncated"));
    assert!(err(STRING, &[0xa2, 0xff, 0xfe]).starts_with("str is not valid UTF-8"));
    assert!(err(STRUCT, &[0x91, 0xa1, 0xff]).starts_with("at [0]: str is not valid UTF-8"));
    // A huge claimed count costs nothing: it is compared with the bytes left.
    assert_eq!(
        err(LIST_I32, &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]),
        "not valid msgpack: array claims 4294967295 items but only 1 bytes remain"
    );
    assert!(err(BYTES, &[0xc6, 0xff, 0xff, 0xff, 0xff]).contains("truncated"));
    assert!(err(STRING, &[0xdb, 0xff, 0xff, 0xff, 0xff]).contains("truncated"));
}

#[test]
fn nesting_is_bounded_without_recursion() {
    let nested = |depth: usize| {
        let mut v = vec![0x91u8; depth];
        v.push(0x01);
        v
    };
    validate(&t(STRUCT), &nested(MAX_DEPTH)).expect("at the bound");
    let e = validate(&t(STRUCT), &nested(MAX_DEPTH + 1)).expect_err("too deep");
    assert!(e.reason.contains("deeper than 512"), "{e}");
    // Far deeper than any thread stack would survive with a recursive walker.
    assert!(validate(&t(STRUCT), &vec![0x91u8; 10_000_000]).is_err());
}

#[test]
fn msgpack_bin_uses_the_smallest_header() {
    assert_eq!(msgpack_bin(b"ab"), vec![0xc4, 2, b'a', b'b']);
    assert_eq!(&msgpack_bin(&[0u8; 300])[..3], &[0xc5, 0x01, 0x2c]);
    assert_eq!(
        &msgpack_bin(&vec![0u8; 70_000])[..5],
        &[0xc6, 0, 1, 0x11, 0x70]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_encoded_value_of_a_type_validates((ty, payload) in typed_value()) {
        prop_assert!(validate(&ty, &payload).is_ok(), "{}: {:?}", type_name(&ty), validate(&ty, &payload));
    }

    #[test]
    fn a_truncated_or_extended_value_is_refused((ty, payload) in typed_value(), extra in any::<u8>()) {
        let mut longer = payload.clone();
        longer.push(extra);
        prop_assert!(validate(&ty, &longer).is_err());
        prop_assert!(validate(&ty, &payload[..payload.len() - 1]).is_err());
    }

    #[test]
    fn random_bytes_never_panic(ty in value_type(), data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = validate(&ty, &data);
    }
}
