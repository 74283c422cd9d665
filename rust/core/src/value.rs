//! Check a msgpack payload against a type descriptor (graph inputs at submission).
//!
//! Accepted is exactly what the Python client's encoder (`orbweaver.tdl.types`) produces for the
//! type, in any msgpack width where msgpack offers several:
//!
//! * `IntN`: a msgpack int (fixint, uint8..64, int8..64) within the type's range;
//! * `Float32` / `Float64`: a msgpack float (32 or 64 bit); a finite `Float32` value must not
//!   overflow single precision (the client refuses those);
//! * `Boolean`: true / false; `Bytes`: bin; `String`: str holding valid UTF-8;
//! * `List`: an array, each element of the item type; `Map`: a map, keys of the key type
//!   (int in range, bin or str), values of the value type;
//! * `Struct`: a positional array. Field types are unknown to storage, so every field only has to
//!   be a well-formed value of *some* Orbweaver type (int, float, bool, str, bin, array, map with
//!   int / str / bin keys); nil and ext are never produced by the client and are refused.
//!
//! The payload must be exactly one value (no trailing bytes).
//!
//! The walker is hand-written rather than built on a msgpack crate: it needs no value tree (a
//! crate's generic decoder would allocate one per element, so a payload of tiny elements would
//! cost many times its size), it never allocates according to a length read from the payload
//! (lengths are only compared with the bytes that remain), and it keeps its own explicit stack,
//! bounded by [`MAX_DEPTH`], so no crafted nesting can overflow the thread's stack.

use std::fmt::Write as _;

use crate::types::{FloatType, IntType, MapKeyType, PrimitiveType, ValueType};

/// `kind` of the `InvalidGraph` error for a graph input that does not fit its type.
pub const INVALID_INPUT_VALUE: &str = "InvalidInputValue";

/// Deepest container nesting accepted. msgpack-python's packer refuses to nest deeper than 511
/// levels, so no value the client can produce is refused by this bound.
pub const MAX_DEPTH: usize = 512;

/// Why a payload does not fit its type. `path` locates the offending part (`[3]` for an array
/// element, `{entry 2: key}` / `{entry 2: value}` for a map entry), empty for the whole value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "at {}: {}", self.path, self.reason)
        }
    }
}

/// One decoded msgpack header; containers carry their element count only.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Nil,
    Bool,
    Int(i128),
    Float32,
    Float64(f64),
    Str(&'a [u8]),
    Bin,
    Array(u32),
    Map(u32),
    Ext,
}

impl Token<'_> {
    const fn name(&self) -> &'static str {
        match self {
            Self::Nil => "nil",
            Self::Bool => "bool",
            Self::Int(_) => "int",
            Self::Float32 | Self::Float64(_) => "float",
            Self::Str(_) => "str",
            Self::Bin => "bin",
            Self::Array(_) => "array",
            Self::Map(_) => "map",
            Self::Ext => "ext",
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "not valid msgpack: truncated at byte {} ({n} more bytes needed, {} left)",
                self.pos,
                self.data.len() - self.pos
            )),
        }
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, String> {
        // A length is never used to allocate; `take` checks it against the bytes left.
        usize::try_from(self.be(n)?).map_err(|_| "not valid msgpack: length too large".into())
    }

    fn token(&mut self) -> Result<Token<'a>, String> {
        let at = self.pos;
        let b = self.take(1)?[0];
        Ok(match b {
            0x00..=0x7f => Token::Int(i128::from(b)),
            0x80..=0x8f => Token::Map(u32::from(b & 0x0f)),
            0x90..=0x9f => Token::Array(u32::from(b & 0x0f)),
            0xa0..=0xbf => Token::Str(self.take(usize::from(b & 0x1f))?),
            0xc0 => Token::Nil,
            0xc2 | 0xc3 => Token::Bool,
            0xc4..=0xc6 => {
                let n = self.len(1 << (b - 0xc4))?;
                self.take(n)?;
                Token::Bin
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (b - 0xc7))?;
                self.take(n.saturating_add(1))?;
                Token::Ext
            }
            0xca => {
                self.take(4)?;
                Token::Float32
            }
            0xcb => Token::Float64(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Token::Int(i128::from(self.be(1 << (b - 0xcc))?)),
            0xd0..=0xd3 => {
                let bytes = 1usize << (b - 0xd0);
                let raw = self.be(bytes)?;
                // Sign-extend from the encoded width.
                let shift = 64 - 8 * bytes as u32;
                Token::Int(i128::from(((raw << shift) as i64) >> shift))
            }
            0xd4..=0xd8 => {
                self.take(1 + (1usize << (b - 0xd4)))?;
                Token::Ext
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (b - 0xd9))?;
                Token::Str(self.take(n)?)
            }
            0xdc | 0xdd => Token::Array(self.be(if b == 0xdc { 2 } else { 4 })? as u32),
            0xde | 0xdf => Token::Map(self.be(if b == 0xde { 2 } else { 4 })? as u32),
            0xe0..=0xff => Token::Int(i128::from(b as i8)),
            0xc1 => {
                return Err(format!(
                    "not valid msgpack: reserved byte 0xc1 at byte {at}"
                ))
            }
        })
    }
}

/// What the next value must be.
#[derive(Debug, Clone, Copy)]
enum Expect<'t> {
    Typed(&'t ValueType),
    Key(MapKeyType),
    /// A struct field: any value of an Orbweaver type.
    Any,
    /// A map key inside a struct field: int, str or bin.
    AnyKey,
}

#[derive(Debug)]
enum Elems<'t> {
    List(&'t ValueType),
    Map(MapKeyType, &'t ValueType),
    AnyArray,
    AnyMap,
}

#[derive(Debug)]
struct Frame<'t> {
    elems: Elems<'t>,
    /// Items still to read (a map entry is two items).
    remaining: u64,
    /// Item being read (0-based).
    current: u64,
}

impl<'t> Frame<'t> {
    fn is_map(&self) -> bool {
        matches!(self.elems, Elems::Map(..) | Elems::AnyMap)
    }

    fn next(&mut self, first: bool) -> Expect<'t> {
        if !first {
            self.current += 1;
        }
        self.remaining -= 1;
        let key = self.current % 2 == 0;
        match self.elems {
            Elems::List(t) => Expect::Typed(t),
            Elems::AnyArray => Expect::Any,
            Elems::Map(k, _) if key => Expect::Key(k),
            Elems::Map(_, v) => Expect::Typed(v),
            Elems::AnyMap if key => Expect::AnyKey,
            Elems::AnyMap => Expect::Any,
        }
    }

    fn path(&self, out: &mut String) {
        if self.is_map() {
            let part = if self.current % 2 == 0 {
                "key"
            } else {
                "value"
            };
            let _ = write!(out, "{{entry {}: {part}}}", self.current / 2);
        } else {
            let _ = write!(out, "[{}]", self.current);
        }
    }
}

fn int_range(t: IntType) -> (i128, i128) {
    let bits = match t {
        IntType::Int8 => 8,
        IntType::Int16 => 16,
        IntType::Int32 => 32,
        IntType::Int64 => 64,
    };
    (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
}

fn int_name(t: IntType) -> &'static str {
    match t {
        IntType::Int8 => "Int8",
        IntType::Int16 => "Int16",
        IntType::Int32 => "Int32",
        IntType::Int64 => "Int64",
    }
}

/// Short display name of a type for messages.
#[must_use]
pub fn type_name(t: &ValueType) -> String {
    match t {
        ValueType::Primitive(PrimitiveType::Int(i)) => int_name(*i).into(),
        ValueType::Primitive(PrimitiveType::Float(FloatType::Float32)) => "Float32".into(),
        ValueType::Primitive(PrimitiveType::Float(FloatType::Float64)) => "Float64".into(),
        ValueType::Primitive(PrimitiveType::Boolean) => "Boolean".into(),
        ValueType::Bytes {} => "Bytes".into(),
        ValueType::String {} => "String".into(),
        ValueType::Struct(name) => format!("Struct {}", name.as_str()),
        ValueType::List(item) => format!("List[{}]", type_name(item)),
        ValueType::Map { key, value } => format!("Map[{}, {}]", key_name(*key), type_name(value)),
    }
}

fn key_name(k: MapKeyType) -> &'static str {
    match k {
        MapKeyType::Int(i) => int_name(i),
        MapKeyType::Bytes {} => "Bytes",
        MapKeyType::String {} => "String",
    }
}

fn check_int(v: i128, t: IntType) -> Result<(), String> {
    let (lo, hi) = int_range(t);
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("value {v} out of range for {}", int_name(t)))
    }
}

fn check_str(s: &[u8]) -> Result<(), String> {
    std::str::from_utf8(s)
        .map(|_| ())
        .map_err(|e| format!("str is not valid UTF-8: {e}"))
}

/// Check one token against what is expected; `Ok(Some(elems, items))` for a container whose
/// elements follow.
fn check<'t>(tok: Token<'_>, expect: Expect<'t>) -> Result<Option<(Elems<'t>, u64)>, String> {
    let wrong = |expected: &str| Err(format!("expected {expected}, got {}", tok.name()));
    match expect {
        Expect::Typed(t) => match (t, tok) {
            (ValueType::Primitive(PrimitiveType::Int(i)), Token::Int(v)) => {
                check_int(v, *i).map(|()| None)
            }
            (ValueType::Primitive(PrimitiveType::Float(f)), Token::Float32 | Token::Float64(_)) => {
                if let (FloatType::Float32, Token::Float64(v)) = (f, tok) {
                    // The client rounds to single precision and refuses what overflows it.
                    if (v as f32).is_infinite() && !v.is_infinite() {
                        return Err(format!("value {v} out of range for Float32"));
                    }
                }
                Ok(None)
            }
            (ValueType::Primitive(PrimitiveType::Boolean), Token::Bool)
            | (ValueType::Bytes {}, Token::Bin) => Ok(None),
            (ValueType::String {}, Token::Str(s)) => check_str(s).map(|()| None),
            (ValueType::List(item), Token::Array(n)) => Ok(Some((Elems::List(item), u64::from(n)))),
            (ValueType::Map { key, value }, Token::Map(n)) => {
                Ok(Some((Elems::Map(*key, value), 2 * u64::from(n))))
            }
            (ValueType::Struct(_), Token::Array(n)) => Ok(Some((Elems::AnyArray, u64::from(n)))),
            (t, _) => wrong(&type_name(t)),
        },
        Expect::Key(k) => match (k, tok) {
            (MapKeyType::Int(i), Token::Int(v)) => check_int(v, i).map(|()| None),
            (MapKeyType::Bytes {}, Token::Bin) => Ok(None),
            (MapKeyType::String {}, Token::Str(s)) => check_str(s).map(|()| None),
            (k, _) => wrong(&format!("{} key", key_name(k))),
        },
        Expect::Any => match tok {
            Token::Int(_) | Token::Float32 | Token::Float64(_) | Token::Bool | Token::Bin => {
                Ok(None)
            }
            Token::Str(s) => check_str(s).map(|()| None),
            Token::Array(n) => Ok(Some((Elems::AnyArray, u64::from(n)))),
            Token::Map(n) => Ok(Some((Elems::AnyMap, 2 * u64::from(n)))),
            Token::Nil | Token::Ext => wrong("a value of an Orbweaver type"),
        },
        Expect::AnyKey => match tok {
            Token::Int(_) | Token::Bin => Ok(None),
            Token::Str(s) => check_str(s).map(|()| None),
            _ => wrong("an int, str or bin map key"),
        },
    }
}

/// Check that `payload` is exactly one msgpack value of type `ty`.
///
/// # Errors
/// A [`ValueError`] naming where and why the payload does not fit.
pub fn validate(ty: &ValueType, payload: &[u8]) -> Result<(), ValueError> {
    let mut r = Reader {
        data: payload,
        pos: 0,
    };
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut expect = Expect::Typed(ty);
    let fail = |stack: &[Frame<'_>], reason: String| {
        let mut path = String::new();
        for f in stack {
            f.path(&mut path);
        }
        ValueError { path, reason }
    };
    loop {
        let tok = r.token().map_err(|m| fail(&stack, m))?;
        if let Some((elems, items)) = check(tok, expect).map_err(|m| fail(&stack, m))? {
            if items > 0 {
                // Every item takes at least one byte: refuse impossible counts at once.
                let left = (payload.len() - r.pos) as u64;
                if items > left {
                    return Err(fail(
                        &stack,
                        format!(
                            "not valid msgpack: {} claims {items} items but only {left} bytes \
                             remain",
                            tok.name()
                        ),
                    ));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(fail(
                        &stack,
                        format!("value nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let mut frame = Frame {
                    elems,
                    remaining: items,
                    current: 0,
                };
                expect = frame.next(true);
                stack.push(frame);
                continue;
            }
        }
        // Move to the next item of the innermost unfinished container.
        loop {
            match stack.last_mut() {
                None => {
                    let trailing = payload.len() - r.pos;
                    return if trailing == 0 {
                        Ok(())
                    } else {
                        Err(fail(
                            &stack,
                            format!("not valid msgpack: {trailing} trailing bytes after the value"),
                        ))
                    };
                }
                Some(f) if f.remaining == 0 => {
                    stack.pop();
                }
                Some(f) => {
                    expect = f.next(false);
                    break;
                }
            }
        }
    }
}

/// msgpack bin of `data` (the encoding the client uses for `bytes`); for tests and workloads.
#[cfg(any(test, feature = "test-support"))]
#[must_use]
pub fn msgpack_bin(data: &[u8]) -> Vec<u8> {
    let n = data.len();
    let mut out = Vec::with_capacity(n + 5);
    if let Ok(n8) = u8::try_from(n) {
        out.extend_from_slice(&[0xc4, n8]);
    } else if let Ok(n16) = u16::try_from(n) {
        out.push(0xc5);
        out.extend_from_slice(&n16.to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests;
