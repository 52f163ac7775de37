//! `sentinel-chaos`: a fault-injection and load harness for Sentinel.
//!
//! A coordinator ([`coordinator::run`]) starts (or is given) loopback servers, fills a shared
//! delivery queue with a payment workload (every key delivered several times), spawns worker
//! **processes** ([`worker::process_main`]) that call `once()` for each delivery and apply a fenced
//! side effect to a ledger, injects faults on a schedule (a worker killed with `kill -9` right after
//! its ledger write, a worker stopped with SIGSTOP past its ttl, connections killed server-side, the
//! server restarted, replies dropped after the server applied a command), reconciles uncertain keys
//! the way an operator would, and finally audits the guarantees from the stores' own data
//! ([`audit`]).
//!
//! The memory store cannot be shared between processes: with `--store memory` the workers are
//! groups of tasks in the coordinator's process, a crash is the abort of a worker's tasks and a
//! pause is a task that stalls past the hard ttl.

pub mod audit;
pub mod backend;
pub mod config;
pub mod coordinator;
pub mod fleet;
pub mod journal;
pub mod lossy;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod worker;

/// Any error of the harness itself (not of the system under test).
pub type AnyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of the harness.
pub type Result<T, E = AnyError> = std::result::Result<T, E>;

/// Exit code of a run that found no violation.
pub const EXIT_OK: u8 = 0;
/// Exit code of a run that found at least one violation of the guarantees.
pub const EXIT_VIOLATION: u8 = 1;
/// Exit code of a harness failure (bad usage, a server that misbehaves outside the test).
pub const EXIT_HARNESS: u8 = 2;
/// Exit code when a backend needed by the run could not be found or started.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Microseconds since the Unix epoch, by this machine's clock (for run ids and seeds only).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Adds what the harness was doing to an error.
pub trait Context<T> {
    /// Prefixes the error with `what`.
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: Into<AnyError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| {
            let e: AnyError = e.into();
            format!("{what}: {e}").into()
        })
    }
}
