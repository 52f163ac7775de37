//! Names: namespaces, keys, and the pair that addresses one record.
//!
//! Namespace and key are always kept as two fields, never joined into one string, so
//! `("a:b", "c")` and `("a", "b:c")` are different records in every store.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// The longest key or namespace, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a name: non-empty, at most `max` bytes, no U+0000.
pub(crate) fn check_name(what: &'static str, s: &str, max: usize) -> Result<(), InvalidInput> {
    if s.is_empty() {
        return Err(InvalidInput::Empty { what });
    }
    if s.len() > max {
        return Err(InvalidInput::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if s.contains('\0') {
        return Err(InvalidInput::Nul { what });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A ", $what, ", checked: non-empty, at most ", stringify!($max),
                " bytes of UTF-8, no U+0000.")]
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
                let value = value.into();
                check_name($what, &value, $max)?;
                Ok($name(value))
            }

            #[doc = concat!("The ", $what, " as a string slice.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(value: String) -> Result<Self, InvalidInput> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidInput;
            fn try_from(value: &str) -> Result<Self, InvalidInput> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_type!(
    /// A namespace: keeps the records of one application or system apart from another's in the
    /// same store. Any UTF-8 except U+0000, 1 to 1024 bytes.
    Namespace,
    "namespace",
    MAX_NAME_BYTES
);

name_type!(
    /// The key of one unit of work, e.g. `payment-order-789`. Any UTF-8 except U+0000 (`:`, `{`,
    /// `}`, `/`, quotes and emoji are all fine), 1 to 1024 bytes.
    Key,
    "key",
    MAX_NAME_BYTES
);

/// The two keyspaces a store keeps: executions (`once`) and leases (the plain mutex).
/// The same key may exist in both without the two ever meeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keyspace {
    /// Execution records, driven by `once` and the reconcile API.
    Execution,
    /// Lease records, driven by the lease API.
    Lease,
}

impl Keyspace {
    /// `"execution"` or `"lease"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Keyspace::Execution => "execution",
            Keyspace::Lease => "lease",
        }
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address of one record: a namespace and a key, as two separate fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId {
    /// The namespace.
    pub namespace: Namespace,
    /// The key inside the namespace.
    pub key: Key,
}

impl RecordId {
    /// The record `key` in `namespace`.
    pub fn new(namespace: Namespace, key: Key) -> Self {
        RecordId { namespace, key }
    }

    /// Validates both parts and builds the address.
    pub fn parse(namespace: &str, key: &str) -> Result<Self, InvalidInput> {
        Ok(RecordId::new(Namespace::new(namespace)?, Key::new(key)?))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.namespace.as_str(), self.key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert_eq!(Key::new(""), Err(InvalidInput::Empty { what: "key" }));
        assert_eq!(
            Key::new("x".repeat(1025)),
            Err(InvalidInput::TooLong {
                what: "key",
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(Key::new("a\0b"), Err(InvalidInput::Nul { what: "key" }));
        assert!(Key::new("é".repeat(512)).is_ok());
        assert!(Key::new("{a}:b/%\"'").is_ok());
        assert_eq!(
            Namespace::new("").unwrap_err(),
            InvalidInput::Empty { what: "namespace" }
        );
        assert_eq!(
            Namespace::new("n".repeat(1025)),
            Err(InvalidInput::TooLong {
                what: "namespace",
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            Namespace::new("a\0b"),
            Err(InvalidInput::Nul { what: "namespace" })
        );
        assert!(Namespace::new("é".repeat(512)).is_ok());
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<Key>("\"\"").is_err());
        let k: Key = serde_json::from_str("\"a:b\"").expect("valid key");
        assert_eq!(k.as_str(), "a:b");
    }

    #[test]
    fn the_error_names_the_size_and_the_limit() {
        let e = Key::new("k".repeat(2049)).unwrap_err();
        assert_eq!(e.to_string(), "key is 2049 bytes; the limit is 1024");
    }

    #[test]
    fn keyspaces_keep_the_names_stores_hold() {
        assert_eq!(Keyspace::Execution.as_str(), "execution");
        assert_eq!(Keyspace::Lease.as_str(), "lease");
        assert_eq!(Keyspace::Lease.to_string(), "lease");
    }

    #[test]
    fn a_record_id_displays_both_parts_quoted() {
        let id = RecordId::parse("a:b", "c").expect("valid");
        assert_eq!(id.to_string(), r#""a:b"/"c""#);
        assert_ne!(
            id.to_string(),
            RecordId::parse("a", "b:c").expect("valid").to_string()
        );
    }
}
