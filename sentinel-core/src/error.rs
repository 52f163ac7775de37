//! The one error type of Sentinel, shared by the client and every store.

use std::time::Duration;

use crate::rejection::Rejection;

/// A boxed error from a backend or from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, sentinel_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to Sentinel.
///
/// Match on the meaning, never on a backend's message: [`Error::Rejected`] is the state machine
/// refusing a command (nothing changed), [`Error::Unavailable`] and [`Error::Timeout`] say the store
/// could not be asked or did not answer (the command may or may not have been applied; every
/// command is safe to send again), [`Error::InvalidInput`] is caught before anything is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was refused before anything was written.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),

    /// The state machine refused the command; the record is unchanged.
    #[error("{0}")]
    Rejected(#[from] Rejection),

    /// The store could not be reached, or the connection broke during the call.
    #[error("{store} is unavailable: {source}")]
    Unavailable {
        /// Which store, e.g. `"postgres"`.
        store: &'static str,
        /// What the backend said.
        #[source]
        source: BoxError,
    },

    /// The store did not answer in time.
    #[error("{store} did not answer {operation} within {after:?}")]
    Timeout {
        /// Which store.
        store: &'static str,
        /// The operation that timed out.
        operation: &'static str,
        /// How long the caller waited.
        after: Duration,
    },

    /// A stored record could not be read back: a field is missing or malformed.
    #[error("{store} holds a corrupt record: {detail}")]
    CorruptRecord {
        /// Which store.
        store: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// A completed result could not be decoded into the caller's type.
    #[error("the stored result does not decode into the requested type: {0}")]
    ResultDecode(#[source] serde_json::Error),

    /// Any other backend failure (a constraint, a script error, a protocol error).
    #[error("{store} failed: {source}")]
    Backend {
        /// Which store.
        store: &'static str,
        /// What the backend said.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// True for failures after which the same command may simply be sent again:
    /// [`Error::Unavailable`] and [`Error::Timeout`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// The rejection, if the state machine refused the command.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Error::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// Input refused before anything was sent to a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A name that must not be empty was empty.
    #[error("{what} is empty")]
    Empty {
        /// `"key"`, `"namespace"`, `"owner id"` or `"fingerprint"`.
        what: &'static str,
    },
    /// A name was longer than its limit.
    #[error("{what} is {len} bytes; the limit is {max}")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A name contained U+0000, which PostgreSQL text cannot hold.
    #[error("{what} contains a NUL character (U+0000), which no store accepts")]
    Nul {
        /// Which name.
        what: &'static str,
    },
    /// A ttl was shorter than the minimum.
    #[error("ttl is {ttl:?}; it must be at least {min:?}")]
    TtlTooShort {
        /// The ttl given.
        ttl: Duration,
        /// The minimum.
        min: Duration,
    },
    /// A ttl or hard ttl was longer than the maximum.
    #[error("{what} is {ttl:?}; the limit is {max:?}")]
    TtlTooLong {
        /// `"ttl"` or `"hard ttl"`.
        what: &'static str,
        /// The value given.
        ttl: Duration,
        /// The maximum.
        max: Duration,
    },
    /// The hard ttl was below the ttl.
    #[error("hard ttl {hard:?} is below ttl {ttl:?}; it must be at least the ttl")]
    HardTtlBelowTtl {
        /// The ttl.
        ttl: Duration,
        /// The hard ttl.
        hard: Duration,
    },
    /// A result was larger than the configured limit once serialized to JSON.
    #[error("result is {len} bytes of JSON; the limit is {max}")]
    ResultTooLarge {
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A result could not be serialized to JSON.
    #[error("result does not serialize to JSON: {0}")]
    ResultNotJson(String),
    /// A fencing token was zero or negative.
    #[error("fencing token {0} is not positive")]
    Token(i64),
    /// Any other malformed value, e.g. an unknown state name or a page size of zero.
    #[error("{what}: {detail}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_timeout_are_transient() {
        let unavailable = Error::Unavailable {
            store: "test",
            source: "connection reset".into(),
        };
        let timeout = Error::Timeout {
            store: "test",
            operation: "claim",
            after: std::time::Duration::from_secs(1),
        };
        let corrupt = Error::CorruptRecord {
            store: "test",
            detail: "no owner".to_owned(),
        };
        assert!(unavailable.is_transient() && timeout.is_transient());
        assert!(!corrupt.is_transient());
        let invalid = Error::InvalidInput(InvalidInput::Malformed {
            what: "key",
            detail: "empty".to_owned(),
        });
        assert!(!invalid.is_transient());
        let fenced = Error::Rejected(Rejection {
            reason: crate::RejectReason::Fenced,
            state: None,
            token: None,
        });
        assert!(!fenced.is_transient());
        assert!(fenced.to_string().contains("fenced"), "{fenced}");
    }
}
