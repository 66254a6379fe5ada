//! Exact decimals: what a `decimal` column accepts, and the text Postgres reads as `numeric`.
//!
//! A value arrives as a JSON number (`12.5`) or a string (`"12.50"`), which is how JSON carries
//! decimals that must not pass through a double. Either way it is read as decimal text, never
//! rounded: a value with more digits after the point than the column's scale is refused, not
//! silently cut. Stored values keep at most [`MAX_DIGITS`] significant digits, so the JSON number
//! a record holds (and every API response carries) is the value exactly; sums and averages are
//! computed in Postgres `numeric`.

use serde_json::{Number, Value};

/// The most significant digits a stored decimal has: every such value survives a trip through an
/// IEEE double (and so through any JSON parser) unchanged.
pub const MAX_DIGITS: usize = 15;

/// The longest decimal string read at all (filters may be finer than a column's scale).
const MAX_TEXT: usize = 64;

/// A decimal read from its text: sign, integer digits (no leading zeros) and fraction digits (no
/// trailing zeros).
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    negative: bool,
    int: String,
    frac: String,
}

impl Parts {
    /// Reads `-?[0-9]+(\.[0-9]+)?`; nothing else (no exponent, no `+`, no spaces).
    fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (int, frac) = match rest.split_once('.') {
            Some((i, f)) => (i, f),
            None => (rest, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !digits(int)
            || !digits(frac)
            || (rest.contains('.') && frac.is_empty())
        {
            return None;
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        let zero = int.is_empty() && frac.is_empty();
        Some(Self {
            negative: negative && !zero,
            int,
            frac,
        })
    }

    /// From a JSON number: integers as they are, others by their shortest round-trip text (which
    /// Rust prints without an exponent).
    fn from_number(n: &Number) -> Option<Self> {
        if n.is_i64() || n.is_u64() {
            return Self::parse(&n.to_string());
        }
        n.as_f64()
            .filter(|f| f.is_finite())
            .and_then(|f| Self::parse(&format!("{f}")))
    }

    /// From a JSON number or string; None for anything else.
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => Self::from_number(n),
            Value::String(s) if s.len() <= MAX_TEXT => Self::parse(s),
            _ => None,
        }
    }

    fn significant_digits(&self) -> usize {
        if self.int.is_empty() {
            self.frac.trim_start_matches('0').len()
        } else {
            self.int.len() + self.frac.len()
        }
    }

    /// The canonical text: `-12.5`, `0`, `0.05`.
    fn text(&self) -> String {
        let sign = if self.negative { "-" } else { "" };
        let int = if self.int.is_empty() { "0" } else { &self.int };
        if self.frac.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{}", self.frac)
        }
    }
}

/// A value for a decimal column of `scale`, as the JSON number to store: Err is (reason, message).
pub fn check(value: &Value, scale: u32) -> Result<Value, (&'static str, String)> {
    let parts = Parts::from_value(value).ok_or_else(|| {
        (
            "type_mismatch",
            "Expected a decimal: a JSON number or a string such as \"12.50\".".to_owned(),
        )
    })?;
    if parts.frac.len() > scale as usize {
        return Err((
            "too_precise",
            format!(
                "This column keeps {scale} digit(s) after the point; round the value before sending it."
            ),
        ));
    }
    if parts.significant_digits() > MAX_DIGITS {
        return Err((
            "out_of_range",
            format!("Decimals have at most {MAX_DIGITS} significant digits."),
        ));
    }
    let text = parts.text();
    let number = if parts.frac.is_empty() {
        text.parse::<i64>().ok().map(Number::from)
    } else {
        text.parse::<f64>().ok().and_then(Number::from_f64)
    };
    // Unreachable for 15 digits or fewer; refused rather than stored inexactly all the same.
    number.map(Value::Number).ok_or((
        "out_of_range",
        format!("Decimals have at most {MAX_DIGITS} significant digits."),
    ))
}

/// A filter's decimal literal as text for `$n::numeric`: exact, any scale, None if it is not a
/// decimal.
pub fn literal(value: &Value) -> Option<String> {
    Parts::from_value(value).map(|p| p.text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ok(v: Value, scale: u32) -> Value {
        match check(&v, scale) {
            Ok(v) => v,
            Err(e) => panic!("{v}: {e:?}"),
        }
    }

    fn reason(v: Value, scale: u32) -> &'static str {
        match check(&v, scale) {
            Ok(stored) => panic!("{v} was accepted as {stored}"),
            Err((reason, _)) => reason,
        }
    }

    #[test]
    fn numbers_and_strings_store_as_the_exact_number() {
        assert_eq!(ok(json!(12.5), 2).to_string(), "12.5");
        assert_eq!(ok(json!("12.50"), 2).to_string(), "12.5");
        assert_eq!(ok(json!("0.10"), 2).to_string(), "0.1");
        assert_eq!(ok(json!(-3), 0).to_string(), "-3");
        assert_eq!(ok(json!("-0.00"), 2).to_string(), "0");
        assert_eq!(ok(json!("007.20"), 2).to_string(), "7.2");
        assert_eq!(
            ok(json!("9999999999999.99"), 2).to_string(),
            "9999999999999.99"
        );
        assert_eq!(ok(json!("0.000000001"), 9).to_string(), "1e-9");
    }

    #[test]
    fn finer_than_the_scale_too_many_digits_and_non_decimals_are_refused() {
        assert_eq!(reason(json!(12.345), 2), "too_precise");
        assert_eq!(reason(json!("0.001"), 2), "too_precise");
        assert_eq!(reason(json!(0.1 + 0.2), 2), "too_precise");
        assert_eq!(reason(json!(1.5), 0), "too_precise");
        assert_eq!(reason(json!("99999999999999.99"), 2), "out_of_range");
        assert_eq!(reason(json!(1e300), 2), "out_of_range");
        for bad in [
            json!("1e3"),
            json!("+1"),
            json!(" 1"),
            json!("1."),
            json!(".5"),
            json!("1,5"),
            json!("--1"),
            json!(""),
            json!("NaN"),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(reason(bad.clone(), 2), "type_mismatch", "{bad}");
        }
    }

    #[test]
    fn literals_keep_every_digit() {
        assert_eq!(literal(&json!("10.005")).as_deref(), Some("10.005"));
        assert_eq!(literal(&json!(0.1)).as_deref(), Some("0.1"));
        assert_eq!(
            literal(&json!("123456789012345678901234.5")).as_deref(),
            Some("123456789012345678901234.5")
        );
        assert_eq!(literal(&json!("x")), None);
    }

    proptest! {
        /// Any value with at most the scale's digits and 15 significant digits is stored as a
        /// number whose text is the value exactly, and the number reads back the same.
        #[test]
        fn stored_numbers_are_the_value_exactly(
            int in 0u64..10_000_000_000_000,
            frac in 0u32..100,
            negative in any::<bool>(),
        ) {
            let text = format!("{}{int}.{frac:02}", if negative { "-" } else { "" });
            let stored = ok(json!(text), 2);
            let back = literal(&stored);
            prop_assert_eq!(back, literal(&json!(text)));
            // And a client that sends the stored number gets the same value stored again.
            prop_assert_eq!(ok(stored.clone(), 2), stored);
        }

        /// Arbitrary strings never panic and are either refused or canonical decimals.
        #[test]
        fn arbitrary_text_is_refused_or_canonical(s in "[-+.0-9eE ]{0,24}") {
            if let Ok(stored) = check(&json!(s), 9) {
                let canonical = literal(&stored);
                prop_assert!(canonical.is_some(), "{stored}");
            }
        }
    }
}
