//! Shared fixtures of the client tests: a store clock that follows tokio's (pausable) clock, and a
//! store wrapper whose heartbeats can be made to fail and whose notifications can be hidden or
//! made spurious.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use sentinel_core::store::{HistoryQuery, Renewal, RenewalResult, Wait};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, Clock, CoordinationStore, Disposition, Error, Event,
    FencingToken, Keyspace, LeaseRequest, ManualClock, Namespace, OwnerId, RecordId, RejectReason,
    Rejection, Result, Timestamp,
};
use sentinel_memory::MemoryStore;
use sentinel_testkit::{Decorated, Decorator};

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

/// What the change notifications of a [`Faulty`] store do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Notifications {
    /// Passed through.
    Work = 0,
    /// `wait_for_change` answers `Unsupported`, as a store without notifications does.
    Hidden = 1,
    /// `wait_for_change` answers `Changed` at once, whether anything changed or not.
    Spurious = 2,
}

/// A memory store whose heartbeats follow [`Renewals`], whose claims and heartbeats are counted,
/// whose claim replies can be lost, and whose change notifications can be hidden.
pub type Faulty = Decorated<Faults>;

/// A faulty store over `inner`, working normally until told otherwise.
pub fn faulty(inner: MemoryStore) -> Faulty {
    Decorated::new(inner, Faults::default())
}

/// A faulty store on tokio's clock and a client over it with a 3 s ttl (renewed every second)
/// and a hard ttl of a minute.
pub fn renewing_client() -> (Faulty, sentinel_core::Sentinel) {
    let store = faulty(MemoryStore::with_clock(TokioClock::new()));
    let sentinel = sentinel_core::Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(3))
        .hard_ttl(Duration::from_secs(60))
        .build()
        .expect("a valid client");
    (store, sentinel)
}

/// Runs `once(key)` in a task whose work returns `value` when the returned sender fires; returns
/// once the work has begun, so the key is held, executing, until then.
pub async fn holding(
    sentinel: &sentinel_core::Sentinel,
    key: &str,
    value: u8,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<sentinel_core::Once<u8>>>,
) {
    let (began, running) = tokio::sync::oneshot::channel::<()>();
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let (sentinel, key) = (sentinel.clone(), key.to_owned());
    let held = tokio::spawn(async move {
        sentinel
            .once(&key, |_| async move {
                began.send(()).unwrap();
                finished.await.unwrap();
                Ok::<_, sentinel_core::Failure>(value)
            })
            .await
    });
    running.await.unwrap();
    (finish, held)
}

/// A faulty store whose `wait_for_change` answers `Unsupported`, as a store without
/// notifications does.
pub fn without_notifications(inner: MemoryStore) -> Faulty {
    let store = faulty(inner);
    store
        .notifications
        .store(Notifications::Hidden as u8, Ordering::SeqCst);
    store
}

/// A faulty store whose `wait_for_change` answers `Changed` at once, whether anything changed or
/// not: notifications that wake waiters for nothing.
pub fn spurious_notifications(inner: MemoryStore) -> Faulty {
    let store = faulty(inner);
    store
        .notifications
        .store(Notifications::Spurious as u8, Ordering::SeqCst);
    store
}

/// The faults and counters of a [`Faulty`] store.
#[derive(Debug, Default)]
pub struct Faults {
    renewals: AtomicU8,
    /// The size of every heartbeat batch, in order.
    pub heartbeats: Mutex<Vec<usize>>,
    /// How many claims were made.
    pub claims: AtomicUsize,
    notifications: AtomicU8,
    /// The next this-many claims are applied, then answered as if the connection broke.
    pub lost_claim_replies: AtomicUsize,
    /// The next this-many claims fail as if the store were unreachable, applying nothing.
    pub failed_claims: AtomicUsize,
    /// The next this-many claims fail as if the store were unreachable, and are applied 300 ms
    /// later all the same, to [`Faults::late_store`]: a statement the server ran after the client
    /// gave up on it.
    pub late_claims: AtomicUsize,
    /// The store late claims are applied to (the decorated store's inner one).
    pub late_store: Mutex<Option<std::sync::Arc<dyn CoordinationStore>>>,
    /// The next this-many aborts fail as if the store were unreachable, applying nothing.
    pub failed_aborts: AtomicUsize,
    /// How many aborts were sent.
    pub aborts: AtomicUsize,
    /// The next this-many starts fail as if the store were unreachable, applying nothing.
    pub failed_starts: AtomicUsize,
    /// The next this-many completions fail as if the store were unreachable, applying nothing.
    pub failed_completions: AtomicUsize,
    /// When each completion was sent (tokio's clock), in order.
    pub completions: Mutex<Vec<tokio::time::Instant>>,
    /// The next this-many reconciliations are applied, then answered as if the connection broke.
    pub lost_reconcile_replies: AtomicUsize,
    /// The next this-many resets are applied, then answered as if the connection broke.
    pub lost_reset_replies: AtomicUsize,
    /// The next this-many lease acquires are applied, then answered as if the connection broke.
    pub lost_acquire_replies: AtomicUsize,
    /// The next this-many lease acquires fail as if the store were unreachable, applying nothing.
    pub failed_acquires: AtomicUsize,
    /// The next this-many lease releases are applied, then answered as if the connection broke.
    pub lost_release_replies: AtomicUsize,
    /// The next this-many lease releases fail as if the store were unreachable, applying nothing.
    pub failed_releases: AtomicUsize,
    /// How many lease releases were sent.
    pub releases: AtomicUsize,
    /// How many history pages were read.
    pub history_reads: AtomicUsize,
    /// History reads ignore `before` (a page from the newest end is always the newest events).
    pub history_ignores_before: AtomicBool,
    /// History reads ignore `before` and `newest_first`, as a store written before they existed
    /// would: always the oldest events, oldest first.
    pub history_oldest_first_only: AtomicBool,
    /// Claims and lease acquires are answered this long after the store applied them.
    pub slow_replies: Mutex<Duration>,
    /// The next this-many purges report one record more than their limit allows (after removing
    /// what they remove).
    pub purge_overcounts: AtomicUsize,
}

impl Faults {
    pub fn set(&self, mode: Renewals) {
        self.renewals.store(mode as u8, Ordering::SeqCst);
    }

    /// Holds an answer back for [`Faults::slow_replies`].
    async fn answer_slowly(&self) {
        let delay = *self.slow_replies.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl Decorator for Faults {
    fn before(&self, operation: &'static str) {
        if operation == "history" {
            self.history_reads.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn claim(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        request: &ClaimRequest,
    ) -> Result<ClaimOutcome> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.failed_claims) {
            return Err(unavailable("connection refused"));
        }
        if take_one(&self.late_claims) {
            let store = self
                .late_store
                .lock()
                .unwrap()
                .clone()
                .expect("late_store is set");
            let (id, request) = (id.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = store.claim(&id, &request).await;
            });
            return Err(unavailable("timed out; the statement runs on"));
        }
        let answer = store.claim(id, request).await;
        self.answer_slowly().await;
        lose_reply(&self.lost_claim_replies, answer)
    }

    async fn start(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<Timestamp> {
        if take_one(&self.failed_starts) {
            return Err(unavailable("connection refused"));
        }
        store.start(id, token).await
    }

    async fn complete(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
        result: &serde_json::Value,
    ) -> Result<()> {
        self.completions
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        if take_one(&self.failed_completions) {
            return Err(unavailable("connection refused"));
        }
        store.complete(id, token, result).await
    }

    async fn abort(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.failed_aborts) {
            return Err(unavailable("connection refused"));
        }
        store.abort(id, token, disposition).await
    }

    async fn reconcile(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        owner: &OwnerId,
    ) -> Result<FencingToken> {
        let answer = store.reconcile(id, owner).await;
        lose_reply(&self.lost_reconcile_replies, answer)
    }

    async fn reset_to_claimed(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        owner: &OwnerId,
    ) -> Result<()> {
        let answer = store.reset_to_claimed(id, owner).await;
        lose_reply(&self.lost_reset_replies, answer)
    }

    async fn history(
        &self,
        store: &dyn CoordinationStore,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        let mut query = *query;
        if self.history_ignores_before.load(Ordering::SeqCst) {
            query.before = None;
        }
        if self.history_oldest_first_only.load(Ordering::SeqCst) {
            query.before = None;
            query.newest_first = false;
        }
        store.history(keyspace, id, &query).await
    }

    async fn purge(
        &self,
        store: &dyn CoordinationStore,
        namespace: &Namespace,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64> {
        let removed = store.purge(namespace, older_than, limit).await?;
        if take_one(&self.purge_overcounts) {
            return Ok(u64::from(limit) + 1);
        }
        Ok(removed)
    }

    async fn acquire_lease(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        request: &LeaseRequest,
    ) -> Result<Acquisition> {
        if take_one(&self.failed_acquires) {
            return Err(unavailable("connection refused"));
        }
        let answer = store.acquire_lease(id, request).await;
        self.answer_slowly().await;
        lose_reply(&self.lost_acquire_replies, answer)
    }

    async fn release_lease(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<()> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.failed_releases) {
            return Err(unavailable("connection refused"));
        }
        let answer = store.release_lease(id, token).await;
        lose_reply(&self.lost_release_replies, answer)
    }

    async fn heartbeat(
        &self,
        store: &dyn CoordinationStore,
        renewals: &[Renewal],
    ) -> Result<Vec<RenewalResult>> {
        self.heartbeats.lock().unwrap().push(renewals.len());
        match self.renewals.load(Ordering::SeqCst) {
            0 => store.heartbeat(renewals).await,
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
            _ => Err(unavailable("connection refused")),
        }
    }

    async fn wait_for_change(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        match self.notifications.load(Ordering::SeqCst) {
            0 => store.wait_for_change(id, since, timeout).await,
            1 => Ok(Wait::Unsupported),
            _ => Ok(Wait::Changed),
        }
    }
}

/// The error of a store that cannot be reached.
fn unavailable(why: &str) -> Error {
    Error::Unavailable {
        store: "faulty-memory",
        source: why.into(),
    }
}

/// `answer`, or, if `counter` says so, the error of a connection that broke after the command
/// was applied.
fn lose_reply<T>(counter: &AtomicUsize, answer: Result<T>) -> Result<T> {
    if take_one(counter) {
        return Err(unavailable(
            "connection reset after the command was applied",
        ));
    }
    answer
}

/// Takes one from `counter` unless it is zero; whether it did.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
