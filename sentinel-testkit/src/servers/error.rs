//! Why a server could not be had.

use std::fmt;

/// Where the resolver looked for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptSource {
    /// An URL in this environment variable.
    Environment(&'static str),
    /// Server binaries on this machine, started on a free loopback port.
    LocalBinaries,
    /// A container started through Docker (the `docker` feature).
    Docker,
}

impl fmt::Display for AttemptSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Environment(var) => write!(f, "environment variable {var}"),
            Self::LocalBinaries => f.write_str("local binaries"),
            Self::Docker => f.write_str("docker"),
        }
    }
}

/// One place the resolver tried, and why it gave no server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Where it looked.
    pub source: AttemptSource,
    /// Why that failed: "not set", a missing binary, a start failure with the server's log tail.
    pub reason: String,
}

impl Attempt {
    /// An attempt at `source` that failed for `reason`.
    pub fn new(source: AttemptSource, reason: impl Into<String>) -> Self {
        Self {
            source,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.reason)
    }
}

/// A server that could not be had, or a private instance that could not be controlled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerError {
    /// Every source was tried, in order, and none gave a server.
    Unavailable {
        /// Which server: `postgres`, `redis` or `redis cluster`.
        server: &'static str,
        /// Every attempt, in the order made.
        attempts: Vec<Attempt>,
    },
    /// A private instance (from `spawn_postgres` / `spawn_redis`) refused an operation.
    Control {
        /// Which server: `postgres` or `redis`.
        server: &'static str,
        /// What was asked: `start`, `stop`, `restart`, `kill`.
        action: &'static str,
        /// Why it failed, with the server's log tail when there is one.
        reason: String,
    },
}

impl ServerError {
    /// Every attempt made, in order (empty for [`ServerError::Control`]).
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Self::Unavailable { attempts, .. } => attempts,
            Self::Control { .. } => &[],
        }
    }

    /// The server this error is about.
    pub fn server(&self) -> &'static str {
        match self {
            Self::Unavailable { server, .. } | Self::Control { server, .. } => server,
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { server, attempts } => {
                write!(f, "no {server} server available; tried, in order:")?;
                for (i, attempt) in attempts.iter().enumerate() {
                    let shown = attempt.to_string().replace('\n', "\n       ");
                    write!(f, "\n  {}. {shown}", i + 1)?;
                }
                Ok(())
            }
            Self::Control {
                server,
                action,
                reason,
            } => write!(f, "{server}: {action} failed: {reason}"),
        }
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_shows_where_it_looked_and_why_it_failed() {
        let attempt = Attempt::new(AttemptSource::Environment("SENTINEL_X_URL"), "not set");
        assert_eq!(
            attempt.to_string(),
            "environment variable SENTINEL_X_URL: not set"
        );
        assert_eq!(
            Attempt::new(AttemptSource::LocalBinaries, "initdb not found").to_string(),
            "local binaries: initdb not found"
        );
    }
}
