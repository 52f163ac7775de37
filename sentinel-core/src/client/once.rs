//! `once`: run a side effect at most once per key, replay its result to everyone else, and say so
//! honestly when the outcome is uncertain.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use super::Sentinel;
use super::authority::{Authority, LostReason};
use super::background::{forget_if_unanswered, look_for_a_while, send_in_background};
use super::failure::Failure;
use super::observe::TransitionKind;
use crate::error::{Error, InvalidInput, Result};
use crate::execution::{ClaimOutcome, ClaimRequest, Disposition, ExecutionState, Fingerprint};
use crate::key::{Key, Keyspace, Namespace, RecordId};
use crate::owner::{OwnerId, RequestId};
use crate::step::Grant;
use crate::store::{CoordinationStore, Renewal, Wait};
use crate::time::Timestamp;
use crate::token::FencingToken;
use crate::ttl::Ttl;

/// Per-call settings for [`Sentinel::once_with`]; anything left unset takes the client's default.
#[derive(Clone, Debug, Default)]
pub struct OnceOptions {
    ttl: Option<Duration>,
    hard_ttl: Option<Duration>,
    fingerprint: Option<String>,
    wait: Option<Duration>,
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

    /// When another worker is executing the key, wait up to `timeout` for it to finish and return
    /// its result (or the uncertain state, if it dies meanwhile) instead of
    /// [`Once::InProgress`] at once. Stores that notify (memory, PostgreSQL `LISTEN`, Redis
    /// pub/sub) wake the waiter on the change; others are polled with a bounded backoff.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
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
    /// otherwise the execution is uncertain. (If the store cannot be reached to record that,
    /// the client keeps trying in the background for about a minute; until it gets through, the
    /// key shows as in progress, then uncertain, and never as claimable.)
    Failed {
        /// The work's error and disposition.
        failure: Failure,
        /// The token it ran under.
        token: FencingToken,
    },
    /// The work panicked. The execution is uncertain, unless the work had not crossed the
    /// side-effect boundary of a two-phase `once`.
    Panicked {
        /// The panic message.
        message: String,
        /// The token it ran under.
        token: FencingToken,
        /// Whether anything may have been applied.
        disposition: Disposition,
    },
    /// The work returned a value but its completion could not be recorded (fenced by a
    /// reconciliation, store unreachable, result too large). The side effect happened; the record
    /// says otherwise until reconciled: uncertain. When the store could not be reached, the
    /// client goes on sending the completion in the background for about a minute, so the result
    /// may yet be recorded (and replayed) without a reconciliation.
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
            Once::Uncertain { .. } | Once::CompletionFailed { .. } => true,
            Once::Panicked { disposition, .. } => *disposition == Disposition::Uncertain,
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
            Once::Uncertain { .. } => Some(ExecutionState::Executing),
            Once::Panicked { disposition, .. } => Some(match disposition {
                Disposition::NotApplied => ExecutionState::Claimed,
                Disposition::Uncertain => ExecutionState::Executing,
            }),
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

    /// [`Sentinel::once`] with per-call options (ttl, hard ttl, fingerprint, waiting).
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
        self.run_once(key, options, true, |ctx, _| work(ctx)).await
    }

    /// Two-phase `once`: the work starts under `claimed`, where it prepares (validates, reads,
    /// builds the request) with nothing applied yet, and crosses into `executing` explicitly with
    /// [`Preparation::begin`] right before its side effect.
    ///
    /// Failing, panicking or being cancelled before `begin` leaves the key claimable again at
    /// once — never uncertain — whatever the error says. After `begin`, the rules of
    /// [`Sentinel::once`] apply. The crossing costs one more round trip, paid only here.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use sentinel_core::{Failure, Once, OnceOptions, Sentinel};
    /// let sentinel = Sentinel::builder(sentinel_memory::MemoryStore::new()).build()?;
    ///
    /// let outcome: Once<String> = sentinel
    ///     .once_prepared("refund-3", &OnceOptions::new(), |prep| async move {
    ///         let amount: u64 = "1250".parse()?; // an error here: nothing applied, safe to retry
    ///         let ctx = prep.begin().await?;       // the side-effect boundary
    ///         Ok(format!("refunded {amount} under token {}", ctx.token()))
    ///     })
    ///     .await?;
    /// assert!(outcome.is_executed());
    /// # Ok::<(), sentinel_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn once_prepared<T, F, Fut>(
        &self,
        key: &str,
        options: &OnceOptions,
        work: F,
    ) -> Result<Once<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Preparation) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let sentinel = self.clone();
        self.run_once(key, options, false, move |ctx, boundary| {
            work(Preparation {
                ctx,
                boundary,
                sentinel,
            })
        })
        .await
    }

    async fn run_once<T, F, Fut>(
        &self,
        key: &str,
        options: &OnceOptions,
        start: bool,
        work: F,
    ) -> Result<Once<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(ExecutionContext, Boundary) -> Fut,
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
            start,
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
        self.ensure_retention();
        let recorder = span.clone();
        async {
            let (claimed, sent) = self.claim_waiting(&id, &request, options.wait).await?;
            let span = recorder;
            let telemetry = &self.inner.telemetry;
            let observed = |kind, token| telemetry.transition(Keyspace::Execution, Some(&id), kind, Some(token));
            let outcome = match claimed {
                ClaimOutcome::Acquired(grant) => {
                    span.record("token", grant.token.get());
                    observed(TransitionKind::Claimed, grant.token);
                    self.execute(id.clone(), grant, ttl, sent, Boundary::new(start), work).await
                }
                ClaimOutcome::Completed { token, result } => {
                    observed(TransitionKind::Cached, token);
                    Once::Cached {
                        value: serde_json::from_value(result).map_err(Error::ResultDecode)?,
                        token,
                    }
                }
                ClaimOutcome::Busy {
                    state,
                    owner,
                    token,
                    lease_expires_at,
                } => {
                    observed(TransitionKind::Busy, token);
                    Once::InProgress {
                        state,
                        owner,
                        token,
                        lease_expires_at,
                    }
                }
                ClaimOutcome::Uncertain {
                    owner,
                    token,
                    expired_at,
                } => {
                    observed(TransitionKind::Uncertain, token);
                    tracing::warn!(%owner, %token, %expired_at, "execution is uncertain: reconcile it");
                    Once::Uncertain {
                        owner,
                        token,
                        expired_at,
                    }
                }
                ClaimOutcome::Reconciling { owner, token } => {
                    observed(TransitionKind::Reconciling, token);
                    Once::Reconciling { owner, token }
                }
            };
            span.record("outcome", outcome.kind());
            telemetry.once_outcome(outcome.kind(), outcome.is_uncertain());
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Claims, and while the key is busy and the caller asked to wait, waits for it to change and
    /// claims again. Returns the last answer and when its request was sent.
    async fn claim_waiting(
        &self,
        id: &RecordId,
        request: &ClaimRequest,
        wait: Option<Duration>,
    ) -> Result<(ClaimOutcome, Instant)> {
        let store = &self.inner.store;
        // Measured before the first attempt: a retried claim may adopt the grant of an earlier
        // attempt, whose lease started no earlier than this.
        let mut sent = Instant::now();
        let mut claimed = self.claim(id, request).await?;
        let Some(wait) = wait else {
            return Ok((claimed, sent));
        };
        // A wait too long to add to the clock (`Duration::MAX`, say) has no deadline.
        let deadline = sent.checked_add(wait);
        let mut pause = POLL_START;
        let mut poll = false;
        while let ClaimOutcome::Busy { token, state, .. } = claimed {
            let now = Instant::now();
            let remaining = match deadline {
                Some(deadline) if now >= deadline => break,
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            if poll {
                tokio::time::sleep(pause.min(remaining)).await;
                pause = (pause * 2).min(POLL_MAX);
            } else {
                match store
                    .wait_for_change(id, sent, remaining.min(NOTIFIED_RECHECK))
                    .await?
                {
                    Wait::Changed | Wait::TimedOut => {}
                    Wait::Unsupported => poll = true,
                }
            }
            let waited = now.elapsed();
            sent = Instant::now();
            claimed = self.claim(id, request).await?;
            // A store that keeps waking us at once with nothing changed is polled instead (a
            // holder crossing from claimed to executing is a change).
            if !poll
                && waited < POLL_START
                && matches!(&claimed, ClaimOutcome::Busy { token: again, state: now_state, .. }
                    if *again == token && *now_state == state)
            {
                poll = true;
            }
        }
        Ok((claimed, sent))
    }

    /// One claim, retried on transient failures with the same request id (a retry adopts the
    /// grant of an attempt whose reply was lost). When every attempt failed, an attempt may still
    /// have been applied — a claim no code will run under. A background task then looks for it and
    /// gives it up as not applied, so it never shows up as a phantom uncertain execution: the
    /// caller, told the claim failed, delivers its message again.
    ///
    /// A claim whose `once` future is dropped before the answer arrives is left as the store has
    /// it: if it was applied, it expires as uncertain, as a worker that died would. Others may
    /// have been told the key was in progress and let their deliveries go, so it is never made
    /// claimable behind their backs.
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        let store = &self.inner.store;
        let claimed = self.call("claim", || store.claim(id, request)).await;
        forget_if_unanswered(&claimed, || {
            forget_claim(Arc::clone(store), id.clone(), request.request_id)
        });
        claimed
    }

    async fn execute<T, F, Fut>(
        &self,
        id: RecordId,
        grant: Grant,
        ttl: Ttl,
        sent: Instant,
        boundary: Boundary,
        work: F,
    ) -> Once<T>
    where
        T: Serialize,
        F: FnOnce(ExecutionContext, Boundary) -> Fut,
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
            boundary: boundary.clone(),
            then: Afterwards::GiveUp(None),
        };
        let ctx = ExecutionContext {
            id: id.clone(),
            authority,
        };
        let ran = match std::panic::catch_unwind(AssertUnwindSafe(|| work(ctx, boundary.clone()))) {
            Ok(future) => CatchUnwind(Box::pin(future)).await,
            Err(payload) => Err(payload),
        };
        // The work is over: stop renewing before recording the outcome.
        drop(registration);
        // Before the side-effect boundary nothing was applied, whatever the work says.
        let disposition = boundary.disposition();
        // From here until the outcome is recorded, `in_flight` still stands guard: if this future
        // is dropped meanwhile, it finishes recording the outcome in the background.
        let outcome = match ran {
            Ok(Ok(value)) => {
                let recorded = match serde_json::to_value(&value) {
                    Ok(json) => {
                        // Shared with the guard, not copied: a result may be large.
                        let json = Arc::new(json);
                        in_flight.then = Afterwards::Complete(Arc::clone(&json));
                        self.record_completion(&id, token, &boundary, &json).await
                    }
                    Err(e) => Err(InvalidInput::ResultNotJson(e.to_string()).into()),
                };
                match recorded {
                    Ok(()) => Once::Executed { value, token },
                    Err(error) => {
                        if error.is_transient()
                            && let Some(json) = in_flight.completion()
                        {
                            // The store could not be reached: the result is known and the
                            // completion is safe to send again, so keep sending it.
                            complete_in_background(
                                Arc::clone(&self.inner.store),
                                id.clone(),
                                token,
                                json,
                            );
                        } else {
                            in_flight.then = Afterwards::GiveUp(Some(boundary.disposition()));
                            self.give_up(&id, token, boundary.disposition()).await;
                        }
                        self.inner.telemetry.transition(
                            Keyspace::Execution,
                            Some(&id),
                            TransitionKind::CompletionFailed,
                            Some(token),
                        );
                        tracing::warn!(%error, "completion not recorded: execution uncertain");
                        Once::CompletionFailed {
                            value,
                            token,
                            error,
                        }
                    }
                }
            }
            Ok(Err(failure)) => {
                let failure = match disposition {
                    Disposition::NotApplied if !failure.is_not_applied() => {
                        Failure::not_applied(failure.into_error())
                    }
                    _ => failure,
                };
                in_flight.then = Afterwards::GiveUp(Some(failure.disposition()));
                self.give_up(&id, token, failure.disposition()).await;
                if !failure.is_not_applied() {
                    tracing::warn!(%failure, "work failed: execution left uncertain");
                }
                Once::Failed { failure, token }
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                in_flight.then = Afterwards::GiveUp(Some(disposition));
                self.give_up(&id, token, disposition).await;
                tracing::error!(panic = %message, "work panicked");
                Once::Panicked {
                    message,
                    token,
                    disposition,
                }
            }
        };
        in_flight.disarm();
        outcome
    }

    /// Records the work's value: crosses the boundary first if the work never did, then
    /// completes. A result that cannot be recorded is an error, never a panic.
    async fn record_completion(
        &self,
        id: &RecordId,
        token: FencingToken,
        boundary: &Boundary,
        json: &serde_json::Value,
    ) -> Result<()> {
        self.check_result_size(json)?;
        let store = &self.inner.store;
        if !boundary.crossed() {
            self.call("start", || store.start(id, token)).await?;
            boundary.cross();
        }
        self.call("complete", || store.complete(id, token, json))
            .await?;
        self.inner.telemetry.transition(
            Keyspace::Execution,
            Some(id),
            TransitionKind::Completed,
            Some(token),
        );
        Ok(())
    }

    /// Aborts an execution. If the store cannot be reached, a background task keeps trying for
    /// about a minute: until it gets through, the record is in progress to others, then uncertain
    /// once the lease expires (never claimable before the abort is recorded).
    async fn give_up(&self, id: &RecordId, token: FencingToken, disposition: Disposition) {
        let store = &self.inner.store;
        match self
            .call("abort", || store.abort(id, token, disposition))
            .await
        {
            Ok(()) => self.inner.telemetry.transition(
                Keyspace::Execution,
                Some(id),
                TransitionKind::Aborted(disposition),
                Some(token),
            ),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, disposition = disposition.as_str(), "abort not recorded yet; trying again in the background");
                abort_in_background(Arc::clone(store), id.clone(), token, disposition);
            }
            Err(error) => {
                tracing::warn!(%error, disposition = disposition.as_str(), "abort refused")
            }
        }
    }
}

/// Looks, for a while, for a claim made by `request_id` whose reply never arrived, and aborts it
/// as not applied: nothing ran under it. It looks through its whole schedule (about a minute),
/// not only until it first finds one: every attempt of the call carried the same request id,
/// and one still on its way (a statement the server runs late) may land after an abort and be
/// granted again. Another caller's claim has another request id and is never touched.
async fn forget_claim(store: Arc<dyn CoordinationStore>, id: RecordId, request_id: RequestId) {
    // Not (yet) applied, or someone else's record now (even a completed one: an operator may
    // reset it): an attempt still on its way may land later, so it keeps looking.
    look_for_a_while(|| async {
        if let Ok(Some(record)) = store.inspect(&id).await
            && record.request_id == Some(request_id)
            && matches!(
                record.state,
                ExecutionState::Claimed | ExecutionState::Executing
            )
        {
            // A claim already given up is aborted again as a no-op (no event).
            let aborted = store
                .abort(&id, record.token, Disposition::NotApplied)
                .await;
            if aborted.is_ok() && record.state == ExecutionState::Executing {
                tracing::info!(%id, token = %record.token, "gave up a claim whose reply was lost");
            }
        }
    })
    .await;
}

/// Spawns a task that completes `token`'s execution with `result`: the work's result is known,
/// and a completion with the same token and result is safe to send again. Without a runtime, or
/// if it never gets through, the execution turns uncertain when its lease expires.
fn complete_in_background(
    store: Arc<dyn CoordinationStore>,
    id: RecordId,
    token: FencingToken,
    result: Arc<serde_json::Value>,
) {
    send_in_background("completion", id, token, move |id| {
        let (store, result) = (Arc::clone(&store), Arc::clone(&result));
        async move { store.complete(&id, token, &result).await }
    });
}

/// Spawns a task that aborts `token`'s execution. Without a runtime, or if it never gets through,
/// the lease simply expires.
fn abort_in_background(
    store: Arc<dyn CoordinationStore>,
    id: RecordId,
    token: FencingToken,
    disposition: Disposition,
) {
    send_in_background(disposition.as_str(), id, token, move |id| {
        let store = Arc::clone(&store);
        async move { store.abort(&id, token, disposition).await }
    });
}

/// The first pause between claims when the store cannot notify.
const POLL_START: Duration = Duration::from_millis(20);
/// The longest pause between claims when the store cannot notify.
const POLL_MAX: Duration = Duration::from_secs(1);
/// How long a waiter trusts notifications before claiming again anyway: a worker that dies
/// writes nothing, so its expiry is only seen by claiming.
const NOTIFIED_RECHECK: Duration = Duration::from_secs(1);

/// Whether the work has crossed the side-effect boundary (always, for plain `once`).
#[derive(Clone, Debug)]
pub(crate) struct Boundary(Arc<AtomicBool>);

impl Boundary {
    fn new(crossed: bool) -> Self {
        Boundary(Arc::new(AtomicBool::new(crossed)))
    }

    fn crossed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn cross(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// What giving up now means: before the boundary nothing was applied.
    fn disposition(&self) -> Disposition {
        if self.crossed() {
            Disposition::Uncertain
        } else {
            Disposition::NotApplied
        }
    }
}

/// What the work of [`Sentinel::once_prepared`] gets: a claimed, not yet started execution.
/// Prepare freely, then call [`Preparation::begin`] right before the side effect.
#[derive(Debug)]
pub struct Preparation {
    ctx: ExecutionContext,
    boundary: Boundary,
    sentinel: Sentinel,
}

impl Preparation {
    /// The key being executed.
    pub fn key(&self) -> &Key {
        self.ctx.key()
    }

    /// The fencing token of this claim.
    pub fn token(&self) -> FencingToken {
        self.ctx.token()
    }

    /// True while the claim still holds.
    pub fn is_authoritative(&self) -> bool {
        self.ctx.is_authoritative()
    }

    /// Crosses into `executing` (one store round trip): from here on a failure is uncertain
    /// unless said otherwise. Refused if the claim was lost meanwhile.
    pub async fn begin(self) -> Result<ExecutionContext> {
        let store = &self.sentinel.inner.store;
        let (id, token) = (&self.ctx.id, self.ctx.token());
        self.sentinel
            .call("start", || store.start(id, token))
            .await?;
        self.boundary.cross();
        self.sentinel.inner.telemetry.transition(
            Keyspace::Execution,
            Some(id),
            TransitionKind::Started,
            Some(token),
        );
        Ok(self.ctx)
    }
}

/// Guards an execution from its grant until its outcome is recorded: if the `once` future is
/// dropped meanwhile, the execution is finished in the background as [`Afterwards`] says.
struct InFlight {
    store: Arc<dyn CoordinationStore>,
    id: Option<RecordId>,
    token: FencingToken,
    boundary: Boundary,
    then: Afterwards,
}

/// What a dropped [`InFlight`] does.
enum Afterwards {
    /// Give the execution up: with this disposition, or, while the work still runs, as the
    /// boundary says (uncertain after it, its effects may be half done; not applied before it).
    GiveUp(Option<Disposition>),
    /// The work returned this result: complete with it (once past the boundary), or give up as
    /// not applied before it.
    Complete(Arc<serde_json::Value>),
}

impl InFlight {
    fn disarm(&mut self) {
        self.id = None;
    }

    /// The result to complete with, when finishing means completing: the work returned it, and
    /// the execution is past the boundary (before it, finishing means giving up as not applied).
    fn completion(&self) -> Option<Arc<serde_json::Value>> {
        match &self.then {
            Afterwards::Complete(result) if self.boundary.crossed() => Some(Arc::clone(result)),
            _ => None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let store = Arc::clone(&self.store);
        if let Some(result) = self.completion() {
            tracing::warn!(%id, token = %self.token, "once() dropped while recording its result; completing in the background");
            complete_in_background(store, id, self.token, result);
            return;
        }
        match self.then {
            Afterwards::GiveUp(Some(disposition)) => {
                tracing::warn!(%id, token = %self.token, disposition = disposition.as_str(), "once() dropped while giving its execution up");
                abort_in_background(store, id, self.token, disposition);
            }
            _ => {
                let disposition = self.boundary.disposition();
                tracing::warn!(%id, token = %self.token, disposition = disposition.as_str(), "once() dropped while its work ran");
                abort_in_background(store, id, self.token, disposition);
            }
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

/// The message of a panic's payload (a `&str` or a `String`, as `panic!` makes them), as
/// [`Once::Panicked`] reports it.
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("card declined: {}", 402)).unwrap_err();
/// assert_eq!(sentinel_core::client::panic_message(payload.as_ref()), "card declined: 402");
/// ```
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
