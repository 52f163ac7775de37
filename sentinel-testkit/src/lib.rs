//! The conformance suite every Sentinel store must pass, and real servers for backend test suites.
//!
//! A store is correct when it behaves, command for command, like the core's pure transition
//! functions ([`sentinel_core::execution::transition`], [`sentinel_core::lease::transition`]) and
//! makes each command atomic. This crate checks exactly that, against a real store:
//!
//! - a model-based property test: random command sequences over a few keys, owners and both
//!   keyspaces, every outcome, record and history compared with the model (shrinks to a minimal
//!   failing sequence; `PROPTEST_CASES` sets the number of sequences, 256 by default);
//! - races with real concurrency: 32 claims or lease acquires on one key, a late completion
//!   against a reconcile, a renewal against the expiry instant, each over 50 keys;
//! - tokens across expiry, reconcile, purge, release and a restart of the store;
//! - the store's own clock in real time; awkward keys and namespaces; invalid input;
//! - the event log; listing, purging, heartbeat batches, retries after a lost reply;
//! - the `Sentinel` client on top: 16 concurrent `once` callers, a lease renewed past its ttl;
//! - payload fingerprints, 50 callers waiting for one slow executor (store calls counted), a
//!   change between a busy claim and the wait never missed, and two-phase execution.
//!
//! # Testing your own store
//!
//! Implement [`StoreFactory`] (a fresh, isolated store per call, driven by the clock the kit
//! passes in) and expand [`conformance_tests!`] in a test file: one `#[tokio::test]` per case,
//! named after it. Your crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
//! dev-dependency.
//!
//! ```
//! use sentinel_core::{Result, TimeSource};
//! use sentinel_memory::MemoryStore;
//! use sentinel_testkit::StoreFactory;
//!
//! struct MyFactory;
//!
//! #[async_trait::async_trait]
//! impl StoreFactory for MyFactory {
//!     type Store = MemoryStore;
//!
//!     async fn create(&self, time: TimeSource) -> Result<MemoryStore> {
//!         // A real store would create a schema, database or key prefix of its own here.
//!         Ok(MemoryStore::with_time(time))
//!     }
//!
//!     async fn reopen(&self, store: &MemoryStore, time: TimeSource) -> Result<MemoryStore> {
//!         // New connections over the same data, as after a process restart.
//!         Ok(store.restarted(time))
//!     }
//! }
//!
//! // In tests/conformance.rs:
//! //     sentinel_testkit::conformance_tests!(MyFactory);
//! // or, from any harness of your own (needs a multi-threaded tokio runtime):
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let report = sentinel_testkit::run(MyFactory, &["claim_race", "event_log_records_every_transition"]).await;
//! assert!(report.passed(), "{report}");
//! # });
//! ```

pub mod cases;
pub mod cpu;
mod decorate;
mod harness;
pub mod servers;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use sentinel_core::{CoordinationStore, Result, TimeSource};
use sentinel_memory::MemoryStore;

pub use decorate::{CallCounter, Counted, Decorated, Decorator};
pub use harness::{Harness, unique_namespace};

/// Builds the stores the suite runs against. Implement it for your store.
///
/// Every store it returns must be isolated from every other one (its own namespace prefix, schema
/// or database), so cases can run in parallel.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: CoordinationStore + Clone;

    /// A fresh, empty, isolated store whose clock is `time`: the kit passes
    /// [`TimeSource::Manual`] for every case but the ones that check the store's own clock.
    async fn create(&self, time: TimeSource) -> Result<Self::Store>;

    /// A second instance over the same backing data as `store`, as after a process restart
    /// (new connections, same records), on `time`.
    async fn reopen(&self, store: &Self::Store, time: TimeSource) -> Result<Self::Store>;
}

/// The factory of the in-memory store: the reference every other store is held to.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryFactory;

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn create(&self, time: TimeSource) -> Result<MemoryStore> {
        Ok(MemoryStore::with_time(time))
    }

    async fn reopen(&self, store: &MemoryStore, time: TimeSource) -> Result<MemoryStore> {
        Ok(store.restarted(time))
    }
}

/// Passes the name of every case to `__case_dispatch!`: the one list the test macro and [`run`]
/// share.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($($prefix:tt)*) => {
        $crate::__case_dispatch! { $($prefix)*;
            model_based,
            claim_race,
            reconcile_vs_complete_race,
            lease_acquire_race,
            renewal_vs_expiry_race,
            purge_race,
            tokens_strictly_increase,
            tokens_survive_restart,
            server_clock,
            numbers_stay_exact,
            keys_round_trip_and_never_collide,
            namespaces_are_separate,
            invalid_input_writes_nothing,
            event_log_records_every_transition,
            event_log_ignores_reads_and_refusals,
            list_filters_and_pages,
            list_pages_through_sparse_matches,
            purge_in_batches,
            heartbeat_batch,
            expiry_is_exclusive,
            retries_after_a_lost_reply,
            once_with_concurrent_callers,
            lease_renews_under_heartbeat,
            fingerprints_guard_the_key,
            waiting_for_a_result,
            waiting_misses_no_change,
            two_phase_execution
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_dispatch {
    (@tests $factory:expr; $($case:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::limited(stringify!($case), $crate::cases::$case(&$factory)).await;
            }
        )*
    };
    (@names; $($case:ident),*) => {
        vec![$(stringify!($case)),*]
    };
    (@table $factory:ident; $($case:ident),*) => {
        vec![
            $(
                (stringify!($case), {
                    let factory = ::std::sync::Arc::clone(&$factory);
                    Box::new(move || -> $crate::CaseFuture {
                        Box::pin($crate::limited(stringify!($case), async move {
                            $crate::cases::$case(&*factory).await
                        }))
                    }) as Box<dyn FnOnce() -> $crate::CaseFuture + Send>
                }),
            )*
        ]
    };
}

/// Expands into one `#[tokio::test]` per conformance case, each named after its case, running it
/// against stores from `$factory` (an expression evaluated once per test).
///
/// ```ignore
/// sentinel_testkit::conformance_tests!(my_crate::tests::PgFactory::new());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__with_cases!(@tests $factory);
    };
}

#[doc(hidden)]
pub type CaseFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How long one case may take before it fails. A store that never answers, or answers so that a
/// case waits for something that never comes, fails the case with its name instead of hanging
/// the suite. Every case finishes in seconds on a working store.
pub const CASE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs one case, failing it when it takes longer than [`CASE_TIME_LIMIT`].
#[doc(hidden)]
pub async fn limited(case: &str, run: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIME_LIMIT, run).await.is_err() {
        panic!(
            "[{case}] did not finish within {} s: a store call or a wait never returned",
            CASE_TIME_LIMIT.as_secs()
        );
    }
}

/// The names of every case, in the order [`run_all`] runs them.
pub fn case_names() -> Vec<&'static str> {
    __with_cases!(@names)
}

/// What a run of the suite found.
#[derive(Debug, Default)]
pub struct Report {
    /// Each case run, with its failure message if it failed.
    pub results: Vec<(&'static str, std::result::Result<(), String>)>,
}

impl Report {
    /// True when every case that ran passed (and at least one ran).
    pub fn passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// The names of the failed cases.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, result) in &self.results {
            match result {
                Ok(()) => writeln!(f, "ok      {name}")?,
                Err(message) => writeln!(f, "FAILED  {name}: {message}")?,
            }
        }
        Ok(())
    }
}

/// Runs every case against `factory`, one after another, and reports each. A panicking case is
/// recorded as failed; the run goes on. Needs a multi-threaded tokio runtime.
pub async fn run_all<F: StoreFactory>(factory: F) -> Report {
    run(factory, &case_names()).await
}

/// Runs the named cases (see [`case_names`]) against `factory`. Unknown names are reported as
/// failures.
pub async fn run<F: StoreFactory>(factory: F, names: &[&str]) -> Report {
    let factory = Arc::new(factory);
    let mut table = __with_cases!(@table factory);
    let mut report = Report::default();
    for name in names {
        let Some(index) = table.iter().position(|(n, _)| n == name) else {
            report
                .results
                .push(("unknown case", Err(format!("no case is named {name:?}"))));
            continue;
        };
        let (name, case) = table.swap_remove(index);
        let outcome = tokio::spawn(case()).await.map_err(panic_text);
        report.results.push((name, outcome));
    }
    report
}

fn panic_text(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    sentinel_core::client::panic_message(error.into_panic().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_unique_name() {
        let names = case_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.len() >= 22);
    }

    #[tokio::test]
    async fn a_panicking_case_is_reported_with_its_own_message() {
        let error = tokio::spawn(async { panic!("[case] what went wrong") })
            .await
            .unwrap_err();
        assert_eq!(panic_text(error), "[case] what went wrong");
    }
}
