//! The PostgreSQL schema Sentinel's tables live in.

use std::fmt;

use sentinel_core::InvalidInput;

/// The name of the PostgreSQL schema holding Sentinel's tables: `sentinel` unless configured.
///
/// Names are checked, then always quoted: 1 to 63 bytes of lowercase ASCII letters, digits and
/// `_`, not starting with a digit, and not starting with `pg_` (reserved by PostgreSQL). Nothing
/// else is ever put into SQL text, so a name cannot inject SQL.
///
/// ```
/// use sentinel_postgres::Schema;
///
/// let schema = Schema::new("billing_sentinel")?;
/// assert_eq!(schema.as_str(), "billing_sentinel");
/// assert!(Schema::new("Robert'); DROP TABLE students;--").is_err());
/// assert_eq!(Schema::default().as_str(), "sentinel");
/// # Ok::<(), sentinel_core::InvalidInput>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    /// The schema used when none is configured.
    pub const DEFAULT: &'static str = "sentinel";

    /// The longest name PostgreSQL keeps without truncating it, in bytes.
    pub const MAX_LEN: usize = 63;

    /// A checked schema name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        let malformed = |detail: String| InvalidInput::Malformed {
            what: "schema name",
            detail,
        };
        if name.is_empty() {
            return Err(InvalidInput::Empty {
                what: "schema name",
            });
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidInput::TooLong {
                what: "schema name",
                len: name.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(malformed(format!(
                "{name:?} contains {bad:?}; use lowercase ASCII letters, digits and '_'"
            )));
        }
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(malformed(format!("{name:?} starts with a digit")));
        }
        if name.starts_with("pg_") {
            return Err(malformed(format!(
                "{name:?} starts with \"pg_\", which PostgreSQL reserves"
            )));
        }
        Ok(Schema(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier. The name is checked to hold no quote.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<&str> for Schema {
    type Error = InvalidInput;
    fn try_from(value: &str) -> Result<Self, InvalidInput> {
        Schema::new(value)
    }
}

impl TryFrom<String> for Schema {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, InvalidInput> {
        Schema::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Schema::new("sentinel").is_ok());
        assert!(Schema::new("_x9").is_ok());
        assert!(Schema::new("a".repeat(63)).is_ok());
        assert!(matches!(
            Schema::new("a".repeat(64)),
            Err(InvalidInput::TooLong { len: 64, .. })
        ));
        for bad in [
            "",
            "9lives",
            "Upper",
            "with space",
            "quo\"te",
            "semi;colon",
            "pg_temp",
            "é",
        ] {
            assert!(Schema::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Schema::new("abc").unwrap_or_default().quoted(), "\"abc\"");
    }

    #[test]
    fn conversions_check_names_too() {
        assert_eq!(
            Schema::try_from("billing").map(|s| s.as_str().to_owned()),
            Ok("billing".to_owned())
        );
        assert_eq!(
            Schema::try_from(String::from("ledger")).map(|s| s.as_str().to_owned()),
            Ok("ledger".to_owned())
        );
        assert!(Schema::try_from("Robert'); DROP TABLE students;--").is_err());
        assert!(Schema::try_from(String::from("pg_catalog")).is_err());
    }
}
