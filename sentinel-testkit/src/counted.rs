//! A store wrapper that counts the calls made through it: how the kit checks round-trip budgets
//! (one store call is one round trip for every conforming store).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, Event,
    ExecutionRecord, FencingToken, Keyspace, LeaseRecord, LeaseRequest, Namespace, OwnerId,
    RecordId, Result, Timestamp,
};

/// Forwards every call to `inner` and counts it by operation name.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    calls: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl<S> Counted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Counted {
            inner,
            calls: Arc::default(),
        }
    }

    /// How many calls of `operation` (a method name of the port, e.g. `"claim"`) were made.
    pub fn count(&self, operation: &str) -> u64 {
        self.calls
            .lock()
            .map(|c| c.get(operation).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every count, by operation.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn tick(&self, operation: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(operation).or_default() += 1;
        }
    }
}

#[async_trait]
impl<S: CoordinationStore> CoordinationStore for Counted<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn now(&self) -> Result<Timestamp> {
        self.tick("now");
        self.inner.now().await
    }
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        self.tick("claim");
        self.inner.claim(id, request).await
    }
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        self.tick("start");
        self.inner.start(id, token).await
    }
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        self.tick("heartbeat");
        self.inner.heartbeat(renewals).await
    }
    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        self.tick("complete");
        self.inner.complete(id, token, result).await
    }
    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.tick("abort");
        self.inner.abort(id, token, disposition).await
    }
    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        self.tick("reconcile");
        self.inner.reconcile(id, owner).await
    }
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.tick("force_complete");
        self.inner.force_complete(id, owner, result).await
    }
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.tick("reset_to_claimed");
        self.inner.reset_to_claimed(id, owner).await
    }
    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        self.tick("purge");
        self.inner.purge(namespace, older_than, limit).await
    }
    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        self.tick("inspect");
        self.inner.inspect(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        self.tick("list");
        self.inner.list(query).await
    }
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        self.tick("history");
        self.inner.history(keyspace, id, query).await
    }
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        self.tick("acquire_lease");
        self.inner.acquire_lease(id, request).await
    }
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.tick("release_lease");
        self.inner.release_lease(id, token).await
    }
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        self.tick("inspect_lease");
        self.inner.inspect_lease(id).await
    }
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        self.tick("list_leases");
        self.inner.list_leases(query).await
    }
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        self.tick("wait_for_change");
        self.inner.wait_for_change(id, since, timeout).await
    }
}
