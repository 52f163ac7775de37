//! Shared fixtures of the client tests: a store clock that follows tokio's (pausable) clock, and a
//! store wrapper whose heartbeats can be made to fail.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, Clock, CoordinationStore, Disposition, Error, Event,
    ExecutionRecord, FencingToken, Keyspace, LeaseRecord, LeaseRequest, ManualClock, Namespace,
    OwnerId, RecordId, RejectReason, Rejection, Result, Timestamp,
};
use sentinel_memory::MemoryStore;

/// A store clock that moves with tokio's clock, so tests with paused time see leases expire as the
/// runtime's timers fire.
#[derive(Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        ManualClock::START.saturating_add(self.origin.elapsed())
    }
}

/// What the heartbeat of a [`Faulty`] store does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Renewals {
    /// Passed through.
    Work = 0,
    /// Every renewal is refused as fenced.
    Refused = 1,
    /// The call fails as if the store were unreachable.
    Unreachable = 2,
}

/// Forwards to a memory store, except for heartbeats, which follow [`Renewals`]; counts claims
/// and heartbeats; can hide the memory store's change notifications.
#[derive(Debug, Clone)]
pub struct Faulty {
    pub inner: MemoryStore,
    renewals: Arc<AtomicU8>,
    pub heartbeats: Arc<Mutex<Vec<usize>>>,
    pub claims: Arc<AtomicUsize>,
    notifications: Arc<AtomicBool>,
    /// The next this-many claims are applied, then answered as if the connection broke.
    pub lost_claim_replies: Arc<AtomicUsize>,
}

impl Faulty {
    pub fn new(inner: MemoryStore) -> Self {
        Faulty {
            inner,
            renewals: Arc::new(AtomicU8::new(0)),
            heartbeats: Arc::default(),
            claims: Arc::default(),
            notifications: Arc::new(AtomicBool::new(true)),
            lost_claim_replies: Arc::default(),
        }
    }

    pub fn set(&self, mode: Renewals) {
        self.renewals.store(mode as u8, Ordering::SeqCst);
    }

    /// Makes `wait_for_change` answer `Unsupported`, as a store without notifications does.
    pub fn without_notifications(self) -> Self {
        self.notifications.store(false, Ordering::SeqCst);
        self
    }
}

#[async_trait]
impl CoordinationStore for Faulty {
    fn backend(&self) -> &'static str {
        "faulty-memory"
    }
    async fn now(&self) -> Result<Timestamp> {
        CoordinationStore::now(&self.inner).await
    }
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.claim(id, request).await;
        let lose = self
            .lost_claim_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(Error::Unavailable {
                store: "faulty-memory",
                source: "connection reset after the claim was applied".into(),
            });
        }
        answer
    }
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        if self.notifications.load(Ordering::SeqCst) {
            self.inner.wait_for_change(id, since, timeout).await
        } else {
            Ok(Wait::Unsupported)
        }
    }
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        self.inner.start(id, token).await
    }
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        self.heartbeats.lock().unwrap().push(renewals.len());
        match self.renewals.load(Ordering::SeqCst) {
            0 => self.inner.heartbeat(renewals).await,
            1 => Ok(renewals
                .iter()
                .map(|r| {
                    Err(Rejection {
                        reason: RejectReason::Fenced,
                        state: None,
                        token: Some(r.token),
                    })
                })
                .collect()),
            _ => Err(Error::Unavailable {
                store: "faulty-memory",
                source: "connection refused".into(),
            }),
        }
    }
    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        self.inner.complete(id, token, result).await
    }
    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.inner.abort(id, token, disposition).await
    }
    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        self.inner.reconcile(id, owner).await
    }
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.inner.force_complete(id, owner, result).await
    }
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.inner.reset_to_claimed(id, owner).await
    }
    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        self.inner.purge(namespace, older_than, limit).await
    }
    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        self.inner.inspect(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        self.inner.list(query).await
    }
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        self.inner.history(keyspace, id, query).await
    }
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        self.inner.acquire_lease(id, request).await
    }
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.inner.release_lease(id, token).await
    }
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        self.inner.inspect_lease(id).await
    }
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        self.inner.list_leases(query).await
    }
}
