//! Reading JSON typed by an operator: numbers that would not be stored as written are refused.

use serde_json::Value;

/// `text` parsed as JSON, refusing an integer that does not fit 64 bits: without arbitrary
/// precision, serde_json reads one as a float and stores another number (`12345678901234567890123`
/// becomes `1.2345678901234568e22`), which an operator recording a result would not see.
pub fn parse_exact(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    match inexact_integer(text) {
        Some(number) => Err(format!(
            "holds {number}, which does not fit a 64-bit integer and would be stored as another \
             number; write it as a string (\"{number}\")"
        )),
        None => Ok(value),
    }
}

/// The first integer literal of the JSON `text` (outside strings) that fits neither `i64` nor
/// `u64`. `text` must be valid JSON.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < bytes.len()
                    && matches!(bytes[at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    at += 1;
                }
                let number = &text[start..at];
                let integer = !number.contains(['.', 'e', 'E']);
                if integer && number.parse::<i64>().is_err() && number.parse::<u64>().is_err() {
                    return Some(number);
                }
            }
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_64_bits_are_refused_wherever_they_are() {
        for text in [
            "12345678901234567890123",
            "-9223372036854775809",
            "18446744073709551616",
            r#"{"amount": 12345678901234567890123}"#,
            r#"["a\"b", {"k": [1, 99999999999999999999]}]"#,
        ] {
            let refused = parse_exact(text).unwrap_err();
            assert!(refused.contains("64-bit"), "{text}: {refused}");
        }
    }

    #[test]
    fn what_fits_is_read_as_written() {
        for (text, expected) in [
            ("18446744073709551615", serde_json::json!(u64::MAX)),
            ("-9223372036854775808", serde_json::json!(i64::MIN)),
            (
                r#"{"id": "12345678901234567890123"}"#,
                serde_json::json!({"id": "12345678901234567890123"}),
            ),
            (
                r#"["\\", 1.5e3, -0.25]"#,
                serde_json::json!(["\\", 1500.0, -0.25]),
            ),
            (
                r#""\"99999999999999999999""#,
                serde_json::json!("\"99999999999999999999"),
            ),
        ] {
            assert_eq!(parse_exact(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(parse_exact("{").is_err());
        assert!(parse_exact("").is_err());
    }
}
