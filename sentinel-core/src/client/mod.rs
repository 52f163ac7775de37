//! The `Sentinel` client: `once`, leases, heartbeats and the reconcile API over any store.

mod authority;
mod background;
mod failure;
mod heartbeat;
mod lease;
mod observe;
mod once;
mod reconcile;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use authority::{Authority, LostReason};
pub use failure::Failure;
pub use lease::{LeaseAttempt, LeaseGuard, LeaseOptions, Leased};
pub use observe::{Observer, Transition, TransitionKind};
pub use once::{ExecutionContext, Once, OnceOptions, Preparation, panic_message};

use heartbeat::Heartbeat;
use observe::Telemetry;

use crate::error::{Error, InvalidInput, Result};
use crate::key::{Key, Namespace, RecordId};
use crate::owner::OwnerId;
use crate::store::CoordinationStore;
use crate::ttl::Ttl;

/// The client: a store, a namespace, a default ttl and this worker's owner id.
///
/// Cheap to clone; clones share one heartbeat task, which renews every execution and lease the
/// client holds in one store call per tick (about a third of the shortest ttl held).
///
/// Its calls run on a tokio runtime with the time driver enabled (`#[tokio::main]`,
/// `Runtime::new`, or a builder with `enable_time()` / `enable_all()`): deadlines, retries and
/// heartbeats are tokio timers, and tokio panics when a timer is used without its driver.
///
/// ```
/// use std::time::Duration;
/// use sentinel_core::Sentinel;
///
/// # fn main() -> Result<(), sentinel_core::Error> {
/// let sentinel = Sentinel::builder(sentinel_memory::MemoryStore::new())
///     .namespace("payments")
///     .ttl(Duration::from_secs(5))
///     .hard_ttl(Duration::from_secs(120))
///     .build()?;
/// assert_eq!(sentinel.namespace().as_str(), "payments");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sentinel {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn CoordinationStore>,
    namespace: Namespace,
    ttl: Ttl,
    owner: OwnerId,
    max_result_bytes: usize,
    attempts: u32,
    backoff: Duration,
    call_timeout: Duration,
    heartbeat: Heartbeat,
    telemetry: Telemetry,
    retention: Option<Duration>,
    retention_task: background::Background,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.heartbeat.shutdown();
    }
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("store", &self.inner.store.backend())
            .field("namespace", &self.inner.namespace)
            .field("ttl", &self.inner.ttl)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Sentinel`]; see [`Sentinel::builder`].
#[derive(Debug)]
#[must_use]
pub struct SentinelBuilder {
    store: Arc<dyn CoordinationStore>,
    namespace: String,
    ttl: Duration,
    hard_ttl: Option<Duration>,
    owner: Option<OwnerId>,
    max_result_bytes: usize,
    attempts: u32,
    backoff: Duration,
    call_timeout: Duration,
    observer: Option<Arc<dyn Observer>>,
    retention: Option<Duration>,
}

impl fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

impl SentinelBuilder {
    /// The namespace every key of this client lives in (default `"default"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The default lease window (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The default ceiling no heartbeat extends past (default: equal to the ttl, so long work
    /// must ask for room explicitly).
    pub fn hard_ttl(mut self, hard_ttl: Duration) -> Self {
        self.hard_ttl = Some(hard_ttl);
        self
    }

    /// This worker's owner id (default `host:pid:random`).
    pub fn owner(mut self, owner: OwnerId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The largest result `once` records, in bytes of JSON (default 1 MiB).
    pub fn max_result_bytes(mut self, max: usize) -> Self {
        self.max_result_bytes = max;
        self
    }

    /// How often a store call that failed transiently (unavailable, timeout) is tried in all,
    /// and the first pause between tries, doubled each time (default 3 tries, 50 ms).
    /// Every command is safe to send again, so retries never apply a transition twice.
    pub fn retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// How long one store call may take before it counts as timed out (default 5 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Calls `observer` for every transition the client causes or observes.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Keeps completed records for `retention`, then purges them: once the client is in use, a
    /// background task removes completed records older than `retention` from the namespace, in
    /// bounded batches, every quarter of `retention` (at most hourly, at least every second).
    /// Uncertain and reconciling records are never purged. Off by default; zero is refused by
    /// [`Self::build`]. Keep it longer than any redelivery of your messages can come: a message
    /// delivered again after its result was purged runs the work again.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<Sentinel> {
        let namespace = Namespace::new(self.namespace)?;
        let ttl = resolve_ttl(Some(self.ttl), self.hard_ttl, Ttl::new(self.ttl)?)?;
        if self.call_timeout.is_zero() {
            return Err(InvalidInput::Malformed {
                what: "call timeout",
                detail: "must be above zero".to_owned(),
            }
            .into());
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            // Every completed result would be purged as it is written, and replays would run
            // the work again.
            return Err(InvalidInput::Malformed {
                what: "retention",
                detail: "must be above zero: it is how long completed results are replayed"
                    .to_owned(),
            }
            .into());
        }
        let telemetry = Telemetry::new(self.observer);
        let heartbeat = Heartbeat::new(Arc::clone(&self.store), telemetry.clone());
        Ok(Sentinel {
            inner: Arc::new(Inner {
                store: self.store,
                namespace,
                ttl,
                owner: self.owner.unwrap_or_else(OwnerId::generate),
                max_result_bytes: self.max_result_bytes,
                attempts: self.attempts,
                backoff: self.backoff,
                call_timeout: self.call_timeout,
                heartbeat,
                telemetry,
                retention: self.retention,
                retention_task: background::Background::default(),
            }),
        })
    }
}

/// Resolves per-call ttl settings against a default: an omitted hard ttl equals the ttl given
/// with it, or the default's hard ttl when no ttl is given either.
pub(crate) fn resolve_ttl(
    ttl: Option<Duration>,
    hard_ttl: Option<Duration>,
    default: Ttl,
) -> Result<Ttl, InvalidInput> {
    match (ttl, hard_ttl) {
        (None, None) => Ok(default),
        (Some(ttl), None) => Ttl::new(ttl),
        (ttl, Some(hard)) => Ttl::with_hard(ttl.unwrap_or(default.ttl()), hard),
    }
}

impl Sentinel {
    /// Starts building a client over `store`.
    pub fn builder(store: impl CoordinationStore) -> SentinelBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// Starts building a client over a shared store.
    pub fn builder_shared(store: Arc<dyn CoordinationStore>) -> SentinelBuilder {
        SentinelBuilder {
            store,
            namespace: "default".to_owned(),
            ttl: Duration::from_secs(10),
            hard_ttl: None,
            owner: None,
            max_result_bytes: 1 << 20,
            attempts: 3,
            backoff: Duration::from_millis(50),
            call_timeout: Duration::from_secs(5),
            observer: None,
            retention: None,
        }
    }

    /// The client's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// This worker's owner id.
    pub fn owner(&self) -> &OwnerId {
        &self.inner.owner
    }

    /// The default ttl.
    pub fn ttl(&self) -> Ttl {
        self.inner.ttl
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CoordinationStore> {
        &self.inner.store
    }

    /// How many executions and leases this client is renewing right now.
    pub fn held(&self) -> usize {
        self.inner.heartbeat.held()
    }

    fn record_id(&self, key: &str) -> Result<RecordId> {
        Ok(RecordId::new(self.inner.namespace.clone(), Key::new(key)?))
    }

    fn check_result_size(&self, result: &serde_json::Value) -> Result<()> {
        let len = serde_json::to_vec(result).map_or(usize::MAX, |bytes| bytes.len());
        if len > self.inner.max_result_bytes {
            return Err(InvalidInput::ResultTooLarge {
                len,
                max: self.inner.max_result_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Starts the retention task, if retention is configured and it is not running (a runtime
    /// must be).
    fn ensure_retention(&self) {
        let Some(retention) = self.inner.retention else {
            return;
        };
        self.inner.retention_task.ensure(|| {
            let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            retain(Arc::downgrade(&self.inner), retention, every)
        });
    }

    /// Runs one store call with the client's timeout, trying again on transient failures.
    async fn call<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call_retried(operation, attempt).await.0
    }

    /// [`Self::call`], and whether an attempt before the last one failed transiently: it may
    /// have been applied, and a refusal of the last one may then be the store having done it.
    async fn call_retried<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> (Result<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut pause = self.inner.backoff;
        let mut tries = 1;
        loop {
            let started = tokio::time::Instant::now();
            let answer = tokio::time::timeout(self.inner.call_timeout, attempt())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout {
                        store: self.inner.store.backend(),
                        operation,
                        after: self.inner.call_timeout,
                    })
                });
            self.inner.telemetry.store_call(
                operation,
                started.elapsed(),
                answer.as_ref().map(drop),
            );
            match answer {
                Err(error) if error.is_transient() && tries < self.inner.attempts => {
                    tracing::warn!(%error, operation, tries, "store call failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    tries += 1;
                }
                answer => return (answer, tries > 1),
            }
        }
    }
}

/// How a store call ended, for span fields: `ok`, the rejection's reason, or `error`.
pub(crate) fn outcome_of<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Error::Rejected(rejection)) => rejection.reason.as_str(),
        Err(_) => "error",
    }
}

/// Purges completed records older than `retention` every `every`, until the client is dropped.
async fn retain(client: Weak<Inner>, retention: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = client.upgrade() else {
            return;
        };
        let sentinel = Sentinel { inner };
        match sentinel.purge(retention).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(count, namespace = %sentinel.namespace(), "retention purged completed records")
            }
            Err(error) => tracing::warn!(%error, "retention purge failed; trying again later"),
        }
    }
}
