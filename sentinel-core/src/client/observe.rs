//! What the client reports about its work: an [`Observer`] callback per transition, `tracing`
//! events, and (with the `metrics` feature) counters, gauges and histograms through the `metrics`
//! facade.
//!
//! Metrics, when the `metrics` feature is on:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `sentinel_once_total` | counter | `outcome`: executed, cached, in_progress, uncertain, reconciling, failed, panicked, completion_failed |
//! | `sentinel_uncertain_total` | counter | — (once outcomes that need reconciliation) |
//! | `sentinel_store_call_seconds` | histogram | `operation`, `result` (ok, rejected, error) |
//! | `sentinel_held` | gauge | `keyspace`: executions and leases being renewed |
//! | `sentinel_heartbeat_failures_total` | counter | — |
//! | `sentinel_authority_lost_total` | counter | `keyspace` |

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::execution::Disposition;
use crate::key::{Keyspace, RecordId};
use crate::token::FencingToken;

/// A transition the client caused or observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionKind {
    /// This client claimed an execution (and started it, for `once`).
    Claimed,
    /// A two-phase execution crossed into `executing`.
    Started,
    /// This client recorded a completion.
    Completed,
    /// The work finished but its completion was not recorded.
    CompletionFailed,
    /// This client gave up an execution.
    Aborted(Disposition),
    /// A claim found a completed result.
    Cached,
    /// A claim found the key held by a live worker.
    Busy,
    /// A claim found the key uncertain.
    Uncertain,
    /// A claim found the key being reconciled.
    Reconciling,
    /// This client started a reconciliation.
    Reconciled,
    /// This client force-completed a reconciliation.
    ForceCompleted,
    /// This client reset a reconciliation to `claimed`.
    Reset,
    /// This client acquired a lease.
    LeaseAcquired,
    /// A lease acquire found it held.
    LeaseHeld,
    /// This client released a lease.
    LeaseReleased,
    /// An execution or lease this client held lost its authority.
    AuthorityLost,
    /// This client purged completed records (`count` of them).
    Purged {
        /// How many records were removed.
        count: u64,
    },
}

/// One transition, as handed to an [`Observer`].
#[derive(Clone, Copy, Debug)]
pub struct Transition<'a> {
    /// Which keyspace.
    pub keyspace: Keyspace,
    /// The record; `None` for a purge, which spans a namespace.
    pub id: Option<&'a RecordId>,
    /// What happened.
    pub kind: TransitionKind,
    /// The token involved, when there is one.
    pub token: Option<FencingToken>,
}

/// A callback the client calls for every transition it causes or observes. Keep it quick: it runs
/// inline. It may call back into the client (the client holds no lock while calling it), and a
/// panic in it is caught and logged, never carried into the client's work.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use sentinel_core::client::{Observer, Transition, TransitionKind};
///
/// #[derive(Default)]
/// struct Audit(Mutex<Vec<TransitionKind>>);
///
/// impl Observer for Audit {
///     fn on_transition(&self, transition: &Transition<'_>) {
///         self.0.lock().unwrap().push(transition.kind);
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let audit = Arc::new(Audit::default());
/// let sentinel = sentinel_core::Sentinel::builder(sentinel_memory::MemoryStore::new())
///     .observer(audit.clone())
///     .build()?;
/// let _ = sentinel.once("k", |_| async { Ok::<_, sentinel_core::Failure>(1) }).await?;
/// assert_eq!(*audit.0.lock().unwrap(), [TransitionKind::Claimed, TransitionKind::Completed]);
/// # Ok::<(), sentinel_core::Error>(())
/// # }).unwrap();
/// ```
pub trait Observer: Send + Sync + 'static {
    /// Called once per transition.
    fn on_transition(&self, transition: &Transition<'_>);
}

/// Where the client sends what it does: the observer, `tracing`, and the metrics facade.
#[derive(Clone, Default)]
pub(crate) struct Telemetry {
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Telemetry {
    pub(crate) fn new(observer: Option<Arc<dyn Observer>>) -> Self {
        Telemetry { observer }
    }

    pub(crate) fn transition(
        &self,
        keyspace: Keyspace,
        id: Option<&RecordId>,
        kind: TransitionKind,
        token: Option<FencingToken>,
    ) {
        if let Some(observer) = &self.observer {
            let transition = Transition {
                keyspace,
                id,
                kind,
                token,
            };
            // The observer is the caller's code, called from the middle of the client's own
            // work (right after a claim, inside the heartbeat task): a panic there must not
            // abandon that work.
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
                observer.on_transition(&transition);
            }));
            if let Err(payload) = called {
                tracing::error!(
                    panic = %super::panic_message(payload.as_ref()),
                    ?kind,
                    "the observer panicked; the client carries on"
                );
            }
        }
        if kind == TransitionKind::AuthorityLost {
            self.authority_lost(keyspace);
        }
    }

    /// Counts a finished `once` by outcome.
    pub(crate) fn once_outcome(&self, kind: &'static str, uncertain: bool) {
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("sentinel_once_total", "outcome" => kind).increment(1);
            if uncertain {
                metrics::counter!("sentinel_uncertain_total").increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, uncertain);
    }

    /// Records the latency of one store call.
    pub(crate) fn store_call(
        &self,
        operation: &'static str,
        elapsed: Duration,
        result: Result<(), &Error>,
    ) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(Error::Rejected(_)) => "rejected",
            Err(_) => "error",
        };
        #[cfg(feature = "metrics")]
        metrics::histogram!("sentinel_store_call_seconds", "operation" => operation, "result" => outcome)
            .record(elapsed.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (operation, elapsed, outcome);
    }

    /// Adjusts the number of held records of `keyspace`.
    pub(crate) fn held(&self, keyspace: Keyspace, delta: f64) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("sentinel_held", "keyspace" => keyspace.as_str()).increment(delta);
        #[cfg(not(feature = "metrics"))]
        let _ = (keyspace, delta);
    }

    /// Counts a failed heartbeat call.
    pub(crate) fn heartbeat_failed(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!("sentinel_heartbeat_failures_total").increment(1);
    }

    fn authority_lost(&self, keyspace: Keyspace) {
        #[cfg(feature = "metrics")]
        metrics::counter!("sentinel_authority_lost_total", "keyspace" => keyspace.as_str())
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = keyspace;
    }
}
