//! Canonical JSON against the spec appendix's examples, plus properties on arbitrary values.

use mxqr_keys::canonical::MAX_SAFE_INTEGER;
use mxqr_keys::{CanonicalJsonError, canonical_json};
use proptest::prelude::*;
use serde_json::Value;

fn canonical_of(input: &str) -> String {
    let value: Value = serde_json::from_str(input).unwrap();
    canonical_json(&value).unwrap()
}

/// Every "Given … should be produced" pair of the appendix, input text verbatim.
#[test]
fn spec_appendix_examples() {
    let cases: &[(&str, &str)] = &[
        ("{}", "{}"),
        (
            "{\n    \"one\": 1,\n    \"two\": \"Two\"\n}",
            r#"{"one":1,"two":"Two"}"#,
        ),
        (
            "{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}",
            r#"{"a":"1","b":"2"}"#,
        ),
        (r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#),
        (
            r#"{
                "auth": {
                    "success": true,
                    "mxid": "@john.doe:example.com",
                    "profile": {
                        "display_name": "John Doe",
                        "three_pids": [
                            {"medium": "email", "address": "john.doe@example.org"},
                            {"medium": "msisdn", "address": "123456789"}
                        ]
                    }
                }
            }"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        ("{\n    \"a\": \"日本語\"\n}", r#"{"a":"日本語"}"#),
        ("{\n    \"本\": 2,\n    \"日\": 1\n}", r#"{"日":1,"本":2}"#),
        ("{\n    \"a\": \"\\u65E5\"\n}", r#"{"a":"日"}"#),
        ("{\n    \"a\": null\n}", r#"{"a":null}"#),
        (
            "{\n    \"a\": -0,\n    \"b\": 1e10\n}",
            r#"{"a":0,"b":10000000000}"#,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(&canonical_of(input), expected, "input: {input}");
    }
}

#[test]
fn escapes_follow_the_appendix_grammar() {
    // Redundant escapes in the input disappear; required ones use the grammar's spelling.
    assert_eq!(
        canonical_of(r#"["\u0041\/\u001F\u007f\u2028\b\u000c\n\r\t\"\\"]"#),
        "[\"A/\\u001f\u{7f}\u{2028}\\b\\f\\n\\r\\t\\\"\\\\\"]"
    );
}

#[test]
fn out_of_range_and_fractional_numbers_are_refused() {
    let refuse = |input: &str| canonical_json(&serde_json::from_str(input).unwrap());
    assert!(matches!(
        refuse("9007199254740992"),
        Err(CanonicalJsonError::IntegerOutOfRange(_))
    ));
    assert!(matches!(
        refuse("-9007199254740992"),
        Err(CanonicalJsonError::IntegerOutOfRange(_))
    ));
    assert!(matches!(
        refuse("1e300"),
        Err(CanonicalJsonError::IntegerOutOfRange(_))
    ));
    assert!(matches!(refuse("0.5"), Err(CanonicalJsonError::Float(_))));
    assert!(matches!(
        refuse(r#"{"a":[{"b":1.25}]}"#),
        Err(CanonicalJsonError::Float(_))
    ));
    assert_eq!(
        canonical_of("[9007199254740991,-9007199254740991,1.0,-2.0E3]"),
        "[9007199254740991,-9007199254740991,1,-2000]"
    );
}

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(|i| Value::from(i as f64)),
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x20\"\\\\\\x7f\u{2028}\u{2029}a-c日本😀]{0,8}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Never panics; whatever it emits parses back to a value with the same canonical form,
    /// contains no whitespace outside strings, and means the same as the input (for values
    /// without floats, where the conversion is the identity).
    #[test]
    fn canonical_json_is_idempotent(value in arb_json()) {
        if let Ok(text) = canonical_json(&value) {
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canonical_json(&back).unwrap(), text.clone());
            if !has_float(&value) {
                prop_assert_eq!(back, value);
            }
        }
    }

    /// Arbitrary text that parses as JSON either canonicalizes to a fixed point or is refused
    /// with an error, never a panic.
    #[test]
    fn parsed_text_never_panics(text in "[\\[\\]{}\",:0-9eE.+\\-a-z\\\\ ]{0,40}") {
        if let Ok(value) = serde_json::from_str::<Value>(&text)
            && let Ok(canonical) = canonical_json(&value)
        {
            let again: Value = serde_json::from_str(&canonical).unwrap();
            prop_assert_eq!(canonical_json(&again).unwrap(), canonical);
        }
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}
