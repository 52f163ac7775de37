//! `once`: run a side effect at most once per key, replay its result to everyone else, and say so
//! honestly when the outcome is uncertain.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use super::Sentinel;
use super::authority::{Authority, LostReason};
use super::failure::Failure;
use crate::error::{Error, InvalidInput, Result};
use crate::execution::{ClaimOutcome, ClaimRequest, Disposition, ExecutionState, Fingerprint};
use crate::key::{Key, Keyspace, Namespace, RecordId};
use crate::owner::{OwnerId, RequestId};
use crate::step::Grant;
use crate::store::{CoordinationStore, Renewal};
use crate::time::Timestamp;
use crate::token::FencingToken;
use crate::ttl::Ttl;

/// Per-call settings for [`Sentinel::once_with`]; anything left unset takes the client's default.
#[derive(Clone, Debug, Default)]
pub struct OnceOptions {
    ttl: Option<Duration>,
    hard_ttl: Option<Duration>,
    fingerprint: Option<String>,
}

impl OnceOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease window heartbeats renew.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The ceiling no heartbeat extends past, counted from the claim.
    pub fn hard_ttl(mut self, hard_ttl: Duration) -> Self {
        self.hard_ttl = Some(hard_ttl);
        self
    }

    /// A fingerprint of the request's payload: reusing the key with a different fingerprint is
    /// refused instead of replaying another request's result.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }
}

/// What the work passed to `once` is given: the key, its fencing token and its authority.
#[derive(Clone, Debug)]
pub struct ExecutionContext {
    id: RecordId,
    authority: Authority,
}

impl ExecutionContext {
    /// The key being executed.
    pub fn key(&self) -> &Key {
        &self.id.key
    }

    /// Its namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.id.namespace
    }

    /// The fencing token: pass it to every downstream write so a stale worker's write is refused.
    pub fn token(&self) -> FencingToken {
        self.authority.token()
    }

    /// True while this worker still holds the execution. Check it right before an irreversible
    /// step.
    pub fn is_authoritative(&self) -> bool {
        self.authority.is_held()
    }

    /// Resolves when authority is lost (renewal refused, local deadline passed, hard ttl reached).
    pub async fn authority_lost(&self) -> LostReason {
        self.authority.lost().await
    }

    /// The authority handle, to hand to other tasks.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// What [`Sentinel::once`] found or did.
///
/// It answers the questions of the original library's result object: `success`
/// ([`Once::is_executed`]), `cached` ([`Once::is_cached`]), `status` ([`Once::status`]),
/// `execution_alive` ([`Once::is_execution_alive`]) and `uncertain` ([`Once::is_uncertain`]).
#[derive(Debug)]
#[non_exhaustive]
#[must_use]
pub enum Once<T> {
    /// The work ran here and its result was recorded.
    Executed {
        /// What the work returned.
        value: T,
        /// The token it ran under.
        token: FencingToken,
    },
    /// The work had already completed; this is its recorded result.
    Cached {
        /// The stored result, decoded.
        value: T,
        /// The token of the generation that completed it.
        token: FencingToken,
    },
    /// Another worker holds the key and is alive. Try again later.
    InProgress {
        /// `claimed` or `executing`.
        state: ExecutionState,
        /// The holder.
        owner: OwnerId,
        /// The holder's token.
        token: FencingToken,
        /// When the holder's lease ends unless renewed (store time).
        lease_expires_at: Timestamp,
    },
    /// A worker started this key and vanished before completing it: its side effects may or may
    /// not have happened. It does not run again until reconciled.
    Uncertain {
        /// The worker that was executing.
        owner: OwnerId,
        /// Its token.
        token: FencingToken,
        /// When its lease expired (store time).
        expired_at: Timestamp,
    },
    /// An operator is reconciling this key.
    Reconciling {
        /// The operator.
        owner: OwnerId,
        /// The reconciliation's token.
        token: FencingToken,
    },
    /// The work ran here and failed. If it said nothing was applied the key is claimable again;
    /// otherwise the execution is uncertain.
    Failed {
        /// The work's error and disposition.
        failure: Failure,
        /// The token it ran under.
        token: FencingToken,
    },
    /// The work panicked. The execution is uncertain.
    Panicked {
        /// The panic message.
        message: String,
        /// The token it ran under.
        token: FencingToken,
    },
    /// The work returned a value but its completion could not be recorded (fenced by a
    /// reconciliation, store unreachable, result too large). The side effect happened; the record
    /// says otherwise until reconciled: uncertain.
    CompletionFailed {
        /// What the work returned.
        value: T,
        /// The token it ran under.
        token: FencingToken,
        /// Why the completion was not recorded.
        error: Error,
    },
}

impl<T> Once<T> {
    /// The work ran here and completed (the original's `success`).
    pub fn is_executed(&self) -> bool {
        matches!(self, Once::Executed { .. })
    }

    /// The result came from an earlier completion (the original's `cached`).
    pub fn is_cached(&self) -> bool {
        matches!(self, Once::Cached { .. })
    }

    /// Another worker is executing or holding the key right now (the original's
    /// `execution_alive`).
    pub fn is_execution_alive(&self) -> bool {
        matches!(self, Once::InProgress { .. })
    }

    /// The outcome of the side effect is unknown and needs reconciliation: an abandoned execution,
    /// an uncertain failure, a panic, or a completion that could not be recorded.
    pub fn is_uncertain(&self) -> bool {
        match self {
            Once::Uncertain { .. } | Once::Panicked { .. } | Once::CompletionFailed { .. } => true,
            Once::Failed { failure, .. } => !failure.is_not_applied(),
            _ => false,
        }
    }

    /// The state the record is in as far as this call knows (the original's `status`), or `None`
    /// when a completion failed for a reason that does not say.
    pub fn status(&self) -> Option<ExecutionState> {
        match self {
            Once::Executed { .. } | Once::Cached { .. } => Some(ExecutionState::Completed),
            Once::InProgress { state, .. } => Some(*state),
            Once::Uncertain { .. } | Once::Panicked { .. } => Some(ExecutionState::Executing),
            Once::Reconciling { .. } => Some(ExecutionState::Reconciling),
            Once::Failed { failure, .. } => Some(match failure.disposition() {
                Disposition::NotApplied => ExecutionState::Claimed,
                Disposition::Uncertain => ExecutionState::Executing,
            }),
            Once::CompletionFailed { error, .. } => error.rejection().and_then(|r| r.state),
        }
    }

    /// The value, when the work completed here or earlier.
    pub fn value(&self) -> Option<&T> {
        match self {
            Once::Executed { value, .. } | Once::Cached { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value, when the work completed here or earlier.
    pub fn into_value(self) -> Option<T> {
        match self {
            Once::Executed { value, .. } | Once::Cached { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The token this outcome concerns.
    pub fn token(&self) -> FencingToken {
        match self {
            Once::Executed { token, .. }
            | Once::Cached { token, .. }
            | Once::InProgress { token, .. }
            | Once::Uncertain { token, .. }
            | Once::Reconciling { token, .. }
            | Once::Failed { token, .. }
            | Once::Panicked { token, .. }
            | Once::CompletionFailed { token, .. } => *token,
        }
    }

    /// A short name of the outcome: `executed`, `cached`, `in_progress`, `uncertain`,
    /// `reconciling`, `failed`, `panicked`, `completion_failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Once::Executed { .. } => "executed",
            Once::Cached { .. } => "cached",
            Once::InProgress { .. } => "in_progress",
            Once::Uncertain { .. } => "uncertain",
            Once::Reconciling { .. } => "reconciling",
            Once::Failed { .. } => "failed",
            Once::Panicked { .. } => "panicked",
            Once::CompletionFailed { .. } => "completion_failed",
        }
    }
}

impl Sentinel {
    /// Runs `work` at most once for `key` across every worker sharing the store, with the
    /// client's default ttl.
    ///
    /// One store round trip claims and starts the key; if this call wins, `work` runs with an
    /// [`ExecutionContext`] while the client's heartbeat renews the lease, and a second round trip
    /// records the result. Everyone else gets the recorded result ([`Once::Cached`]), or is told
    /// the key is in progress, uncertain or being reconciled.
    ///
    /// Errors from `work` leave the execution uncertain unless it returns
    /// [`Failure::not_applied`]; a panic is caught and leaves it uncertain; dropping the returned
    /// future while `work` runs leaves it uncertain and stops its heartbeat.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use sentinel_core::{Failure, Once, Sentinel};
    /// # let store = sentinel_memory::MemoryStore::new();
    /// let sentinel = Sentinel::builder(store).namespace("payments").build()?;
    ///
    /// let first = sentinel
    ///     .once("order-789", |ctx| async move {
    ///         // charge the card, passing ctx.token() to the gateway as an idempotency fence
    ///         Ok::<_, Failure>(format!("receipt-{}", ctx.token()))
    ///     })
    ///     .await?;
    /// assert!(first.is_executed());
    ///
    /// let again: Once<String> = sentinel
    ///     .once("order-789", |_| async { unreachable!("never runs twice") })
    ///     .await?;
    /// assert!(again.is_cached());
    /// assert_eq!(again.value(), first.value());
    /// # Ok::<(), sentinel_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn once<T, F, Fut>(&self, key: &str, work: F) -> Result<Once<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(ExecutionContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        self.once_with(key, &OnceOptions::default(), work).await
    }

    /// [`Sentinel::once`] with per-call options (ttl, hard ttl, fingerprint).
    pub async fn once_with<T, F, Fut>(
        &self,
        key: &str,
        options: &OnceOptions,
        work: F,
    ) -> Result<Once<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(ExecutionContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let id = self.record_id(key)?;
        let ttl = super::resolve_ttl(options.ttl, options.hard_ttl, self.inner.ttl)?;
        let fingerprint = options
            .fingerprint
            .clone()
            .map(Fingerprint::new)
            .transpose()?;
        let request = ClaimRequest {
            owner: self.inner.owner.clone(),
            ttl,
            start: true,
            request_id: RequestId::random(),
            fingerprint,
        };
        let span = tracing::info_span!(
            "once",
            namespace = %id.namespace,
            key = %id.key,
            token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        self.claim_and_run(id, request, work).instrument(span).await
    }

    async fn claim_and_run<T, F, Fut>(
        &self,
        id: RecordId,
        request: ClaimRequest,
        work: F,
    ) -> Result<Once<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(ExecutionContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        // Measured before the first attempt: a retried claim may adopt the grant of an earlier
        // attempt, whose lease started no earlier than this.
        let sent = Instant::now();
        let store = &self.inner.store;
        let claimed = self.call("claim", || store.claim(&id, &request)).await?;
        let span = tracing::Span::current();
        let outcome = match claimed {
            ClaimOutcome::Acquired(grant) => {
                span.record("token", grant.token.get());
                self.execute(id, grant, request.ttl, sent, work).await
            }
            ClaimOutcome::Completed { token, result } => Once::Cached {
                value: serde_json::from_value(result).map_err(Error::ResultDecode)?,
                token,
            },
            ClaimOutcome::Busy {
                state,
                owner,
                token,
                lease_expires_at,
            } => Once::InProgress {
                state,
                owner,
                token,
                lease_expires_at,
            },
            ClaimOutcome::Uncertain {
                owner,
                token,
                expired_at,
            } => {
                tracing::warn!(%owner, %token, %expired_at, "execution is uncertain: reconcile it");
                Once::Uncertain {
                    owner,
                    token,
                    expired_at,
                }
            }
            ClaimOutcome::Reconciling { owner, token } => Once::Reconciling { owner, token },
        };
        span.record("outcome", outcome.kind());
        Ok(outcome)
    }

    async fn execute<T, F, Fut>(
        &self,
        id: RecordId,
        grant: Grant,
        ttl: Ttl,
        sent: Instant,
        work: F,
    ) -> Once<T>
    where
        T: Serialize,
        F: FnOnce(ExecutionContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let token = grant.token;
        let renewal = Renewal {
            keyspace: Keyspace::Execution,
            id: id.clone(),
            token,
        };
        let (registration, authority) = self.inner.heartbeat.register(renewal, ttl, sent);
        let mut in_flight = InFlight {
            store: Arc::clone(&self.inner.store),
            id: Some(id.clone()),
            token,
        };
        let ctx = ExecutionContext {
            id: id.clone(),
            authority,
        };
        let ran = match std::panic::catch_unwind(AssertUnwindSafe(|| work(ctx))) {
            Ok(future) => CatchUnwind(Box::pin(future)).await,
            Err(payload) => Err(payload),
        };
        // The work is over: stop renewing before recording the outcome.
        drop(registration);
        in_flight.disarm();
        let store = &self.inner.store;
        match ran {
            Ok(Ok(value)) => match self.result_json(&value) {
                Err(error) => {
                    self.give_up(&id, token, Disposition::Uncertain).await;
                    tracing::warn!(%error, "result not recorded: execution left uncertain");
                    Once::CompletionFailed {
                        value,
                        token,
                        error,
                    }
                }
                Ok(json) => match self
                    .call("complete", || store.complete(&id, token, &json))
                    .await
                {
                    Ok(()) => Once::Executed { value, token },
                    Err(error) => {
                        tracing::warn!(%error, "completion not recorded: execution uncertain");
                        Once::CompletionFailed {
                            value,
                            token,
                            error,
                        }
                    }
                },
            },
            Ok(Err(failure)) => {
                self.give_up(&id, token, failure.disposition()).await;
                if !failure.is_not_applied() {
                    tracing::warn!(%failure, "work failed: execution left uncertain");
                }
                Once::Failed { failure, token }
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.give_up(&id, token, Disposition::Uncertain).await;
                tracing::error!(panic = %message, "work panicked: execution left uncertain");
                Once::Panicked { message, token }
            }
        }
    }

    fn result_json<T: Serialize>(&self, value: &T) -> Result<serde_json::Value> {
        let json =
            serde_json::to_value(value).map_err(|e| InvalidInput::ResultNotJson(e.to_string()))?;
        self.check_result_size(&json)?;
        Ok(json)
    }

    /// Aborts an execution; a failure is logged, since the record becomes uncertain on its own
    /// once the lease expires.
    async fn give_up(&self, id: &RecordId, token: FencingToken, disposition: Disposition) {
        let store = &self.inner.store;
        if let Err(error) = self
            .call("abort", || store.abort(id, token, disposition))
            .await
        {
            tracing::warn!(%error, disposition = disposition.as_str(), "abort not recorded");
        }
    }
}

/// Guards an execution whose work is running: if the `once` future is dropped before the work
/// finishes, the execution is marked uncertain (its side effects may be half done).
struct InFlight {
    store: Arc<dyn CoordinationStore>,
    id: Option<RecordId>,
    token: FencingToken,
}

impl InFlight {
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        tracing::warn!(%id, token = %self.token, "once() dropped while its work ran: execution left uncertain");
        // Best effort: without a runtime the lease simply expires, with the same result.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            let token = self.token;
            runtime.spawn(async move {
                if let Err(error) = store.abort(&id, token, Disposition::Uncertain).await {
                    tracing::warn!(%error, %id, "abort after cancellation not recorded");
                }
            });
        }
    }
}

/// Polls a future, turning a panic into an `Err` with the panic's payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
