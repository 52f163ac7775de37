//! Store decorators: wrap any store and intercept the calls a test cares about (count them, fail
//! them, lose their replies), forwarding everything else unchanged.
//!
//! ```
//! use sentinel_core::{ClaimOutcome, ClaimRequest, CoordinationStore, Error, RecordId, Result};
//! use sentinel_memory::MemoryStore;
//! use sentinel_testkit::{Decorated, Decorator};
//!
//! /// Applies every claim, then answers as if the connection broke: a lost reply.
//! #[derive(Debug)]
//! struct LoseClaimReplies;
//!
//! #[async_trait::async_trait]
//! impl Decorator for LoseClaimReplies {
//!     async fn claim(&self, store: &dyn CoordinationStore, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
//!         store.claim(id, request).await?;
//!         Err(Error::Unavailable { store: store.backend(), source: "reply lost".into() })
//!     }
//! }
//!
//! let store = Decorated::new(MemoryStore::new(), LoseClaimReplies);
//! # let _ = store;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
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

/// What a [`Decorated`] store does around its inner store. Every method has a default that
/// forwards unchanged; override the ones to intercept.
#[async_trait]
pub trait Decorator: Send + Sync + fmt::Debug + 'static {
    /// Called before every call, with the port method's name (`"claim"`, `"heartbeat"`, ...).
    fn before(&self, operation: &'static str) {
        let _ = operation;
    }

    /// Intercepts [`CoordinationStore::claim`].
    async fn claim(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        request: &ClaimRequest,
    ) -> Result<ClaimOutcome> {
        store.claim(id, request).await
    }

    /// Intercepts [`CoordinationStore::start`].
    async fn start(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<Timestamp> {
        store.start(id, token).await
    }

    /// Intercepts [`CoordinationStore::complete`].
    async fn complete(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
        result: &Value,
    ) -> Result<()> {
        store.complete(id, token, result).await
    }

    /// Intercepts [`CoordinationStore::abort`].
    async fn abort(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        store.abort(id, token, disposition).await
    }

    /// Intercepts [`CoordinationStore::reconcile`].
    async fn reconcile(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        owner: &OwnerId,
    ) -> Result<FencingToken> {
        store.reconcile(id, owner).await
    }

    /// Intercepts [`CoordinationStore::reset_to_claimed`].
    async fn reset_to_claimed(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        owner: &OwnerId,
    ) -> Result<()> {
        store.reset_to_claimed(id, owner).await
    }

    /// Intercepts [`CoordinationStore::purge`].
    async fn purge(
        &self,
        store: &dyn CoordinationStore,
        namespace: &Namespace,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64> {
        store.purge(namespace, older_than, limit).await
    }

    /// Intercepts [`CoordinationStore::history`].
    async fn history(
        &self,
        store: &dyn CoordinationStore,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        store.history(keyspace, id, query).await
    }

    /// Intercepts [`CoordinationStore::acquire_lease`].
    async fn acquire_lease(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        request: &LeaseRequest,
    ) -> Result<Acquisition> {
        store.acquire_lease(id, request).await
    }

    /// Intercepts [`CoordinationStore::release_lease`].
    async fn release_lease(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<()> {
        store.release_lease(id, token).await
    }

    /// Intercepts [`CoordinationStore::heartbeat`].
    async fn heartbeat(
        &self,
        store: &dyn CoordinationStore,
        renewals: &[Renewal],
    ) -> Result<Vec<RenewalResult>> {
        store.heartbeat(renewals).await
    }

    /// Intercepts [`CoordinationStore::wait_for_change`].
    async fn wait_for_change(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        store.wait_for_change(id, since, timeout).await
    }
}

/// A store wrapped in a [`Decorator`]. Cheap to clone (clones share the store and the decorator);
/// dereferences to the decorator, so a test reads its counters directly.
#[derive(Debug)]
pub struct Decorated<D> {
    store: Arc<dyn CoordinationStore>,
    decorator: Arc<D>,
}

impl<D> Clone for Decorated<D> {
    fn clone(&self) -> Self {
        Decorated {
            store: Arc::clone(&self.store),
            decorator: Arc::clone(&self.decorator),
        }
    }
}

impl<D: Decorator> Decorated<D> {
    /// Wraps `store` in `decorator`.
    pub fn new(store: impl CoordinationStore, decorator: D) -> Self {
        Self::around(Arc::new(store), decorator)
    }

    /// Wraps a shared store in `decorator`.
    pub fn around(store: Arc<dyn CoordinationStore>, decorator: D) -> Self {
        Decorated {
            store,
            decorator: Arc::new(decorator),
        }
    }

    /// The store inside.
    pub fn inner(&self) -> &Arc<dyn CoordinationStore> {
        &self.store
    }
}

impl<D> Deref for Decorated<D> {
    type Target = D;

    fn deref(&self) -> &D {
        &self.decorator
    }
}

#[async_trait]
impl<D: Decorator> CoordinationStore for Decorated<D> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
    async fn now(&self) -> Result<Timestamp> {
        self.decorator.before("now");
        self.store.now().await
    }
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        self.decorator.before("claim");
        self.decorator.claim(self.store.as_ref(), id, request).await
    }
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        self.decorator.before("start");
        self.decorator.start(self.store.as_ref(), id, token).await
    }
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        self.decorator.before("heartbeat");
        self.decorator
            .heartbeat(self.store.as_ref(), renewals)
            .await
    }
    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        self.decorator.before("complete");
        self.decorator
            .complete(self.store.as_ref(), id, token, result)
            .await
    }
    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.decorator.before("abort");
        self.decorator
            .abort(self.store.as_ref(), id, token, disposition)
            .await
    }
    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        self.decorator.before("reconcile");
        self.decorator
            .reconcile(self.store.as_ref(), id, owner)
            .await
    }
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.decorator.before("force_complete");
        self.store.force_complete(id, owner, result).await
    }
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.decorator.before("reset_to_claimed");
        self.decorator
            .reset_to_claimed(self.store.as_ref(), id, owner)
            .await
    }
    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        self.decorator.before("purge");
        self.decorator
            .purge(self.store.as_ref(), namespace, older_than, limit)
            .await
    }
    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        self.decorator.before("inspect");
        self.store.inspect(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        self.decorator.before("list");
        self.store.list(query).await
    }
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        self.decorator.before("history");
        self.decorator
            .history(self.store.as_ref(), keyspace, id, query)
            .await
    }
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        self.decorator.before("acquire_lease");
        self.decorator
            .acquire_lease(self.store.as_ref(), id, request)
            .await
    }
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.decorator.before("release_lease");
        self.decorator
            .release_lease(self.store.as_ref(), id, token)
            .await
    }
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        self.decorator.before("inspect_lease");
        self.store.inspect_lease(id).await
    }
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        self.decorator.before("list_leases");
        self.store.list_leases(query).await
    }
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        self.decorator.before("wait_for_change");
        self.decorator
            .wait_for_change(self.store.as_ref(), id, since, timeout)
            .await
    }
}

/// Counts calls by operation: how the kit checks round-trip budgets (one store call is one round
/// trip for every conforming store).
#[derive(Debug, Default)]
pub struct CallCounter {
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl CallCounter {
    /// How many calls of `operation` (a port method's name, e.g. `"claim"`) were made.
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
}

impl Decorator for CallCounter {
    fn before(&self, operation: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(operation).or_default() += 1;
        }
    }
}

/// A store whose calls are counted.
pub type Counted = Decorated<CallCounter>;

impl Counted {
    /// Wraps `store`, counting its calls.
    pub fn counting(store: impl CoordinationStore) -> Self {
        Decorated::new(store, CallCounter::default())
    }
}
