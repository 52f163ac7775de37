//! The reconcile API: look at executions and resolve the uncertain ones.

use std::time::Duration;

use serde::Serialize;

use std::future::Future;

use tracing::Instrument;

use super::Sentinel;
use super::observe::TransitionKind;
use super::outcome_of;
use crate::error::{Error, InvalidInput, Result};
use crate::event::Event;
use crate::execution::ExecutionRecord;
use crate::execution::ExecutionState;
use crate::key::{Key, Keyspace, RecordId};
use crate::lease::LeaseRecord;
use crate::rejection::RejectReason;
use crate::store::{HistoryQuery, LeaseListQuery, ListFilter, ListQuery, Page};
use crate::token::FencingToken;

/// How many records one purge call removes at most.
const PURGE_BATCH: u32 = 500;

impl Sentinel {
    /// Runs one operator command inside a `reconcile` span naming the operation, the record and
    /// the outcome (`ok`, or the rejection's reason).
    async fn operate<T>(
        &self,
        operation: &'static str,
        id: &RecordId,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = tracing::info_span!(
            "reconcile",
            operation,
            namespace = %id.namespace,
            key = %id.key,
            outcome = tracing::field::Empty,
        );
        let result = call.instrument(span.clone()).await;
        span.record("outcome", outcome_of(&result));
        result
    }

    fn observed(&self, id: &RecordId, kind: TransitionKind, token: Option<FencingToken>) {
        self.inner
            .telemetry
            .transition(Keyspace::Execution, Some(id), kind, token);
    }

    /// The execution record of `key`, if any.
    pub async fn inspect(&self, key: &str) -> Result<Option<ExecutionRecord>> {
        self.inspect_id(&self.record_id(key)?).await
    }

    async fn inspect_id(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        let store = &self.inner.store;
        self.call("inspect", || store.inspect(id)).await
    }

    /// Sends an operator command on `id`, retried like every store call. When a retry that
    /// followed a transient failure is refused for the record's state, an earlier attempt may
    /// have been applied and its reply lost: `own` says whether the record, as it is now, shows
    /// this client's own transition, and with what answer.
    async fn call_recognised<T, F, Fut>(
        &self,
        operation: &'static str,
        id: &RecordId,
        attempt: F,
        own: impl FnOnce(&ExecutionRecord) -> Option<T>,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match self.call_retried(operation, attempt).await {
            (Err(Error::Rejected(refused)), true) if refused.reason == RejectReason::WrongState => {
                match self.inspect_id(id).await?.as_ref().and_then(own) {
                    Some(answer) => Ok(answer),
                    None => Err(Error::Rejected(refused)),
                }
            }
            (answer, _) => answer,
        }
    }

    /// Starts resolving an uncertain execution: fences out its worker with a new token (a late
    /// completion from it is refused from now on) and moves it to `reconciling`.
    ///
    /// Refused while the execution is alive, or when it is not `executing`. Then check the
    /// downstream system and finish with [`Sentinel::force_complete`] (it happened) or
    /// [`Sentinel::reset_to_claimed`] (it did not: run it again).
    ///
    /// Safe to retry: when an attempt's reply is lost, the client's retry recognises the
    /// reconciliation as this client's own and returns its token.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use sentinel_core::{ManualClock, Once, Sentinel, TimeSource};
    /// use sentinel_memory::MemoryStore;
    ///
    /// let clock = ManualClock::new();
    /// let store = MemoryStore::with_time(TimeSource::Manual(clock.clone()));
    /// let sentinel = Sentinel::builder(store).build()?;
    ///
    /// // A worker dies mid-charge (its work fails without saying nothing was applied).
    /// let died: Once<String> = sentinel
    ///     .once("charge-1", |_| async { Err(std::io::Error::other("connection reset").into()) })
    ///     .await?;
    /// assert!(died.is_uncertain());
    ///
    /// sentinel.reconcile("charge-1").await?;
    /// // The gateway's ledger shows the charge went through:
    /// sentinel.force_complete("charge-1", &"receipt-77").await?;
    /// let replay: Once<String> = sentinel.once("charge-1", |_| async { unreachable!() }).await?;
    /// assert_eq!(replay.value().map(String::as_str), Some("receipt-77"));
    /// # Ok::<(), sentinel_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn reconcile(&self, key: &str) -> Result<FencingToken> {
        let id = self.record_id(key)?;
        let store = &self.inner.store;
        let owner = &self.inner.owner;
        let call = self.call_recognised(
            "reconcile",
            &id,
            || store.reconcile(&id, owner),
            |r| (r.state == ExecutionState::Reconciling && r.owner == *owner).then_some(r.token),
        );
        let token = self.operate("reconcile", &id, call).await?;
        tracing::info!(namespace = %id.namespace, key = %id.key, %token, "reconciling");
        self.observed(&id, TransitionKind::Reconciled, Some(token));
        Ok(token)
    }

    /// Resolves a reconciling execution as completed with `result`, which later `once` calls
    /// replay.
    pub async fn force_complete<T: Serialize>(&self, key: &str, result: &T) -> Result<()> {
        let id = self.record_id(key)?;
        let json =
            serde_json::to_value(result).map_err(|e| InvalidInput::ResultNotJson(e.to_string()))?;
        self.check_result_size(&json)?;
        let store = &self.inner.store;
        let owner = &self.inner.owner;
        let call = self.call("force_complete", || store.force_complete(&id, owner, &json));
        self.operate("force_complete", &id, call).await?;
        tracing::info!(namespace = %id.namespace, key = %id.key, "force-completed");
        self.observed(&id, TransitionKind::ForceCompleted, None);
        Ok(())
    }

    /// Resolves a reconciling execution by returning it to `claimed`: the next `once` runs it again.
    ///
    /// Safe to retry: when an attempt's reply is lost, the client's retry recognises the record
    /// this client reset. (If a worker claimed the key between the two attempts, the retry is
    /// reported as refused although the reset happened: the key is running again either way.)
    pub async fn reset_to_claimed(&self, key: &str) -> Result<()> {
        let id = self.record_id(key)?;
        let store = &self.inner.store;
        let owner = &self.inner.owner;
        // After a reset the record is claimed by this client, with no claim call's request id.
        let call = self.call_recognised(
            "reset_to_claimed",
            &id,
            || store.reset_to_claimed(&id, owner),
            |r| {
                (r.state == ExecutionState::Claimed && r.owner == *owner && r.request_id.is_none())
                    .then_some(())
            },
        );
        self.operate("reset_to_claimed", &id, call).await?;
        tracing::info!(namespace = %id.namespace, key = %id.key, "reset to claimed");
        self.observed(&id, TransitionKind::Reset, None);
        Ok(())
    }

    /// A page of the namespace's execution records matching `filter`, in key order, starting
    /// after `after`.
    pub async fn list(
        &self,
        filter: ListFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<ExecutionRecord>> {
        let query = ListQuery {
            namespace: self.inner.namespace.clone(),
            filter,
            after: after.map(Key::new).transpose()?,
            limit,
        };
        query.validate()?;
        let store = &self.inner.store;
        self.call("list", || store.list(&query)).await
    }

    /// The history of `key`'s execution record, oldest first (up to the store's page limit).
    pub async fn history(&self, key: &str) -> Result<Vec<Event>> {
        self.history_of(Keyspace::Execution, key, &HistoryQuery::default())
            .await
    }

    /// A page of the history of `key` in either keyspace, in the order `query` asks for (see
    /// [`HistoryQuery`]).
    pub async fn history_of(
        &self,
        keyspace: Keyspace,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        query.validate()?;
        let id = self.record_id(key)?;
        let store = &self.inner.store;
        self.call("history", || store.history(keyspace, &id, query))
            .await
    }

    /// Removes completed records whose last transition is at least `older_than` old, in batches,
    /// keeping their tokens so tokens stay increasing. Uncertain and reconciling records are never
    /// purged. Returns how many were removed.
    pub async fn purge(&self, older_than: Duration) -> Result<u64> {
        let store = &self.inner.store;
        let namespace = &self.inner.namespace;
        let mut total = 0;
        loop {
            let removed = self
                .call("purge", || store.purge(namespace, older_than, PURGE_BATCH))
                .await?;
            if removed > u64::from(PURGE_BATCH) {
                return Err(Error::Backend {
                    store: store.backend(),
                    source: format!(
                        "purge reported {removed} records removed in a batch of at most \
                         {PURGE_BATCH} ({total} removed before it)"
                    )
                    .into(),
                });
            }
            total += removed;
            if removed < u64::from(PURGE_BATCH) {
                if total > 0 {
                    self.inner.telemetry.transition(
                        Keyspace::Execution,
                        None,
                        TransitionKind::Purged { count: total },
                        None,
                    );
                }
                return Ok(total);
            }
        }
    }

    /// The lease record of `key`, if held.
    pub async fn inspect_lease(&self, key: &str) -> Result<Option<LeaseRecord>> {
        let id = self.record_id(key)?;
        let store = &self.inner.store;
        self.call("inspect_lease", || store.inspect_lease(&id))
            .await
    }

    /// A page of the namespace's leases, in key order.
    pub async fn list_leases(&self, after: Option<&str>, limit: u32) -> Result<Page<LeaseRecord>> {
        let query = LeaseListQuery {
            namespace: self.inner.namespace.clone(),
            after: after.map(Key::new).transpose()?,
            limit,
        };
        query.validate()?;
        let store = &self.inner.store;
        self.call("list_leases", || store.list_leases(&query)).await
    }
}
