//! How PostgreSQL and sqlx failures become [`sentinel_core::Error`]s.
//!
//! Callers match on meaning, never on a driver's message: a connection that could not be made or
//! broke mid-call is [`Error::Unavailable`], a pool that had no connection to give within its
//! acquire timeout is [`Error::Timeout`], a row that does not decode is
//! [`Error::CorruptRecord`], and anything else from the server is [`Error::Backend`]. None of
//! them reports a state: after an `Unavailable` or `Timeout` the command may or may not have been
//! applied, and every command is safe to send again.

use std::fmt;
use std::time::Duration;

use sentinel_core::Error;
use sqlx::migrate::MigrateError;

/// The name this store gives itself in errors and traces.
pub(crate) const BACKEND: &str = "postgres";

/// Maps a sqlx error from `operation` to the core's error. `acquire_timeout` is the pool's, for
/// the message of a pool that ran dry.
pub(crate) fn from_sqlx(
    error: sqlx::Error,
    operation: &'static str,
    acquire_timeout: Duration,
) -> Error {
    match error {
        sqlx::Error::PoolTimedOut => Error::Timeout {
            store: BACKEND,
            operation,
            after: acquire_timeout,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => unavailable(error),
        sqlx::Error::Database(ref db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if is_transient(&code) {
                unavailable(error)
            } else if is_missing_schema(&code) {
                Error::Backend {
                    store: BACKEND,
                    source: Box::new(NotMigrated { source: error }),
                }
            } else {
                backend(error)
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => corrupt(format!("{operation}: {error}")),
        other => backend(other),
    }
}

/// Maps a migration failure.
pub(crate) fn from_migrate(error: MigrateError, acquire_timeout: Duration) -> Error {
    match error {
        MigrateError::Execute(inner) => from_sqlx(inner, "migrate", acquire_timeout),
        MigrateError::ExecuteMigration(inner, version) => {
            match from_sqlx(inner, "migrate", acquire_timeout) {
                Error::Backend { source, .. } => Error::Backend {
                    store: BACKEND,
                    source: format!("migration {version} failed: {source}").into(),
                },
                other => other,
            }
        }
        other => backend(other),
    }
}

/// SQLSTATEs after which the same statement may simply be sent again: the connection is gone or
/// going (class 08, 57P01-57P03 admin/crash shutdown, cannot connect now), the server is short of
/// resources (class 53), the statement was cancelled (57014) or rolled back by a deadlock or a
/// serialization failure (40001, 40P01). Nothing was applied, or the outcome is unknown.
fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03"
        )
}

/// SQLSTATEs of a schema whose tables are missing: undefined table, function or schema.
fn is_missing_schema(code: &str) -> bool {
    matches!(code, "42P01" | "42883" | "3F000")
}

pub(crate) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Unavailable {
        store: BACKEND,
        source: Box::new(error),
    }
}

pub(crate) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend {
        store: BACKEND,
        source: Box::new(error),
    }
}

pub(crate) fn corrupt(detail: impl Into<String>) -> Error {
    Error::CorruptRecord {
        store: BACKEND,
        detail: detail.into(),
    }
}

/// The schema's tables or functions do not exist: the migrations were not run.
#[derive(Debug)]
struct NotMigrated {
    source: sqlx::Error,
}

impl fmt::Display for NotMigrated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; the Sentinel schema is missing or not migrated: build the store with \
             PostgresStore::builder(pool).build() or call sentinel_postgres::migrate first",
            self.source
        )
    }
}

impl std::error::Error for NotMigrated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in ["08006", "08001", "57P01", "53300", "40P01", "57014"] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", ""] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn missing_schema_codes() {
        for code in ["42P01", "42883", "3F000"] {
            assert!(is_missing_schema(code), "{code}");
        }
        for code in ["25P02", "23505", "42601", "08006", ""] {
            assert!(!is_missing_schema(code), "{code}");
        }
    }

    #[test]
    fn pool_timeout_is_a_timeout_and_io_is_unavailable() {
        let e = from_sqlx(sqlx::Error::PoolTimedOut, "claim", Duration::from_secs(3));
        assert!(
            matches!(
                e,
                Error::Timeout {
                    operation: "claim",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = from_sqlx(sqlx::Error::Io(io), "claim", Duration::from_secs(3));
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        let e = from_sqlx(
            sqlx::Error::ColumnNotFound("x".into()),
            "inspect",
            Duration::ZERO,
        );
        assert!(matches!(e, Error::CorruptRecord { .. }), "{e}");
    }
}
