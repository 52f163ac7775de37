//! Redis failures mapped to Sentinel's errors by meaning.
//!
//! | what Redis said | Sentinel error | may the command have been applied? |
//! |---|---|---|
//! | I/O error, connection refused or dropped, cluster down / moved / try again, `LOADING`, `READONLY`, `MASTERDOWN`, no connection to the slot's node | [`Error::Unavailable`] | yes, if the connection broke after sending: every command is safe to send again |
//! | the server takes no writes for now: `NOREPLICAS` (`min-replicas-to-write`), `MISCONF` (its last save failed), `OOM` (over `maxmemory`) | [`Error::Unavailable`] | no: a script is refused at its first write, before anything is written |
//! | no answer within the response timeout | [`Error::Timeout`] | yes, as above |
//! | a script reports a record it cannot read (`SENTINEL_CORRUPT`), a reply of the wrong shape | [`Error::CorruptRecord`] | no |
//! | anything else (`WRONGTYPE` on a foreign key under the prefix, a script error, `NOPERM`, …) | [`Error::Backend`] | no |
//!
//! [`Error::Unavailable`] and [`Error::Timeout`] are what [`Error::is_transient`] calls
//! transient: the client retries them on its own.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use sentinel_core::Error;

/// The name this store gives in errors and traces.
pub(crate) const BACKEND: &str = "redis";

/// The code a script raises for a record it cannot decode.
const CORRUPT: &str = "SENTINEL_CORRUPT";

/// Maps a redis-rs error of `operation` to a Sentinel error. `timeout` is the response timeout
/// the connection was configured with, reported when the call timed out.
pub(crate) fn map(error: RedisError, operation: &'static str, timeout: Duration) -> Error {
    if error.is_timeout() {
        return Error::Timeout {
            store: BACKEND,
            operation,
            after: timeout,
        };
    }
    if error.code() == Some(CORRUPT) {
        return Error::CorruptRecord {
            store: BACKEND,
            detail: error.detail().unwrap_or("unreadable record").to_owned(),
        };
    }
    // Every I/O failure counts (a refused, reset or dropped connection is one: redis-rs's
    // `is_connection_refusal` and `is_connection_dropped` only ever hold for I/O errors).
    let unavailable = error.is_io_error()
        || error.is_cluster_error()
        || matches!(error.code(), Some("NOREPLICAS" | "MISCONF" | "OOM"))
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unavailable {
        return Error::Unavailable {
            store: BACKEND,
            source: Box::new(error),
        };
    }
    if error.kind() == ErrorKind::UnexpectedReturnType {
        return corrupt(format!("{operation}: {error}"));
    }
    Error::Backend {
        store: BACKEND,
        source: Box::new(error),
    }
}

/// A write the primary applied but too few replicas acknowledged in time (`WAIT`).
#[derive(Debug)]
pub(crate) struct ReplicationLag {
    pub(crate) acked: i64,
    pub(crate) wanted: u32,
    pub(crate) timeout: Duration,
}

impl std::fmt::Display for ReplicationLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the primary answered, but only {} of {} replicas acknowledged its writes within {:?} \
             (the command may be applied on the primary only); sending it again is safe",
            self.acked, self.wanted, self.timeout
        )
    }
}

impl std::error::Error for ReplicationLag {}

/// A reply or stored field that does not decode.
pub(crate) fn corrupt(detail: impl Into<String>) -> Error {
    Error::CorruptRecord {
        store: BACKEND,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_by_meaning() {
        let t = Duration::from_secs(1);
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let io = RedisError::from(std::io::Error::from(kind));
            assert!(map(io, "claim", t).is_transient(), "{kind:?}");
        }
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            map(timed_out, "claim", t),
            Error::Timeout {
                operation: "claim",
                ..
            }
        ));
        let corrupt =
            redis::make_extension_error(CORRUPT.to_owned(), Some("field lease".to_owned()));
        assert!(matches!(
            map(corrupt, "claim", t),
            Error::CorruptRecord { .. }
        ));
        let other = redis::make_extension_error("WRONGTYPE".to_owned(), None);
        assert!(matches!(map(other, "claim", t), Error::Backend { .. }));
    }

    /// The error a server's reply line (`-CODE detail`) becomes.
    fn replied(line: &str) -> RedisError {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .and_then(|reply| reply.extract_error())
            .expect_err("an error reply")
    }

    #[test]
    fn a_server_that_cannot_serve_now_is_unavailable_and_other_refusals_are_not() {
        let t = Duration::from_secs(1);
        let unavailable = [
            replied("LOADING Redis is loading the dataset in memory"),
            replied("MASTERDOWN Link with MASTER is down"),
            replied("READONLY You can't write against a read only replica."),
            replied("CLUSTERDOWN The cluster is down"),
            replied("TRYAGAIN Multiple keys request during rehashing of slot"),
            replied("MOVED 3999 127.0.0.1:6381"),
            replied("NOREPLICAS Not enough good replicas to write."),
            replied("MISCONF Errors writing to the AOF file: No space left on device"),
            replied("OOM command not allowed when used memory > 'maxmemory'."),
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection")),
        ];
        for error in unavailable {
            let shown = format!("{error:?}");
            assert!(
                matches!(map(error, "claim", t), Error::Unavailable { .. }),
                "{shown}"
            );
        }
        for line in [
            "NOPERM this user has no permissions",
            "ERR Error running script",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            assert!(
                matches!(map(replied(line), "claim", t), Error::Backend { .. }),
                "{line}"
            );
        }
        let shape = RedisError::from((ErrorKind::UnexpectedReturnType, "not a map"));
        assert!(matches!(
            map(shape, "claim", t),
            Error::CorruptRecord { .. }
        ));
    }
}
