//! Canonical JSON (spec appendix "Canonical JSON"): the byte string that gets signed.
//!
//! Written over [`serde_json::Value`] instead of relying on `serde_json::to_string`: the key
//! order of `serde_json::Map` depends on whether any crate in the build enables serde_json's
//! `preserve_order` feature, and serde_json accepts numbers the spec forbids. Here keys are
//! always sorted and numbers always checked, whatever the feature set.

use serde_json::{Map, Number, Value};

/// Largest integer magnitude canonical JSON allows: 2^53 - 1, exact in an IEEE double.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Deepest nesting of arrays and objects accepted: serde_json's parser refuses deeper input,
/// so anything we emit can be parsed back (and a hostile value cannot exhaust the stack).
pub const MAX_DEPTH: usize = 127;

/// Why a value has no canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalJsonError {
    #[error("integer {0} is outside [-(2^53)+1, 2^53-1]")]
    IntegerOutOfRange(String),
    #[error("number {0} is not an integer; canonical JSON has no floats")]
    Float(String),
    #[error("nesting is deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Encodes `value` as canonical JSON: keys sorted by code point, no insignificant whitespace,
/// strings UTF-8 with only the escapes JSON requires, integers in the safe range.
///
/// A number written with an exponent or fraction part is accepted when its value is an
/// integer in range (`1e10` becomes `10000000000`, `-0` becomes `0`), because the spec's own
/// examples expect exactly that; any other float is refused.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_value(&mut out, value, 0)?;
    Ok(out)
}

/// Canonical JSON of an object with some top-level members left out, without cloning it:
/// signing skips `signatures` and `unsigned`.
pub(crate) fn canonical_object_without(
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_object(&mut out, map, skip, 0)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            let depth = enter(depth)?;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, &[], depth)?,
    }
    Ok(())
}

fn enter(depth: usize) -> Result<usize, CanonicalJsonError> {
    if depth >= MAX_DEPTH {
        Err(CanonicalJsonError::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    skip: &[&str],
    depth: usize,
) -> Result<(), CanonicalJsonError> {
    let depth = enter(depth)?;
    // `str`'s ordering is byte order, and UTF-8 byte order is code point order.
    let mut members: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value, depth)?;
    }
    out.push('}');
    Ok(())
}

fn write_number(out: &mut String, n: &Number) -> Result<(), CanonicalJsonError> {
    let int = if let Some(i) = n.as_i64() {
        i
    } else if n.is_u64() {
        // Only reached above i64::MAX, far outside the safe range.
        return Err(CanonicalJsonError::IntegerOutOfRange(n.to_string()));
    } else {
        let f = n
            .as_f64()
            .ok_or_else(|| CanonicalJsonError::Float(n.to_string()))?;
        if !f.is_finite() || f.fract() != 0.0 {
            return Err(CanonicalJsonError::Float(n.to_string()));
        }
        if f.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(CanonicalJsonError::IntegerOutOfRange(n.to_string()));
        }
        // Exact: |f| < 2^53 and integral.
        f as i64
    };
    if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&int) {
        return Err(CanonicalJsonError::IntegerOutOfRange(int.to_string()));
    }
    out.push_str(&int.to_string());
    Ok(())
}

/// Escapes exactly what the appendix grammar requires: `"`, `\`, the five short control
/// escapes, and other C0 controls as `\u00xx` with lowercase hex. Everything else (DEL,
/// U+2028, non-ASCII) is written as raw UTF-8.
fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u32 as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_characters_use_lowercase_hex() {
        let v = json!({"a": "\u{1f}\u{0}\u{b}\u{7f}"});
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"a\":\"\\u001f\\u0000\\u000b\u{7f}\"}"
        );
    }

    #[test]
    fn short_escapes_and_quotes() {
        let v = json!(["\"\\\u{8}\u{c}\n\r\t/"]);
        assert_eq!(canonical_json(&v).unwrap(), r#"["\"\\\b\f\n\r\t/"]"#);
    }

    #[test]
    fn line_separators_are_not_escaped() {
        let v = json!(["\u{2028}\u{2029}😀"]);
        assert_eq!(canonical_json(&v).unwrap(), "[\"\u{2028}\u{2029}😀\"]");
    }

    #[test]
    fn keys_sorted_by_code_point_not_utf16() {
        // U+FF21 sorts before U+1F600 by code point; UTF-16 order would put the emoji
        // (surrogate 0xD83D) first.
        let v = json!({"😀": 1, "Ａ": 2, "a": 3, "B": 4});
        assert_eq!(
            canonical_json(&v).unwrap(),
            "{\"B\":4,\"a\":3,\"Ａ\":2,\"😀\":1}"
        );
    }

    #[test]
    fn integer_bounds() {
        assert_eq!(
            canonical_json(&json!([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])).unwrap(),
            "[9007199254740991,-9007199254740991]"
        );
        for bad in [
            json!(MAX_SAFE_INTEGER + 1),
            json!(-MAX_SAFE_INTEGER - 1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9007199254740992.0),
        ] {
            assert!(
                matches!(
                    canonical_json(&bad),
                    Err(CanonicalJsonError::IntegerOutOfRange(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn fractional_numbers_are_refused() {
        for bad in [json!(1.5), json!(-0.25), json!(1e-3)] {
            assert!(matches!(
                canonical_json(&bad),
                Err(CanonicalJsonError::Float(_))
            ));
        }
    }

    #[test]
    fn depth_limit_matches_serde_json_parser() {
        let mut ok = json!(null);
        for _ in 0..MAX_DEPTH {
            ok = json!([ok]);
        }
        let text = canonical_json(&ok).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_json(&back).unwrap(), text);
        let too_deep = json!([ok]);
        assert_eq!(canonical_json(&too_deep), Err(CanonicalJsonError::TooDeep));
    }

    #[test]
    fn skipping_top_level_members() {
        let v = json!({"b": 1, "signatures": {}, "unsigned": {"x": 1}, "a": {"unsigned": 2}});
        let map = v.as_object().unwrap();
        assert_eq!(
            canonical_object_without(map, &["signatures", "unsigned"]).unwrap(),
            "{\"a\":{\"unsigned\":2},\"b\":1}"
        );
    }
}
