//! The in-memory store for Sentinel: every rule of the core's state machine, no setup.
//!
//! Use it in unit tests of code that calls `once` or takes leases, in examples, and in a single
//! process that needs no durability. It calls the core's pure transition functions under a lock
//! per shard, so it behaves exactly as the conformance suite says every store must; records live
//! as long as the store (and its clones) do.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use sentinel_core::{Failure, ManualClock, Once, Sentinel, TimeSource};
//! use sentinel_memory::MemoryStore;
//!
//! // A manual clock makes leases expire exactly when the test says so.
//! let clock = ManualClock::new();
//! let sentinel = Sentinel::builder(MemoryStore::with_time(TimeSource::Manual(clock.clone())))
//!     .ttl(Duration::from_secs(5))
//!     .build()?;
//!
//! let sent: Once<u32> = sentinel.once("welcome-email:42", |_| async { Ok::<_, Failure>(1) }).await?;
//! assert!(sent.is_executed());
//!
//! clock.advance(Duration::from_secs(3600));
//! let again: Once<u32> = sentinel.once("welcome-email:42", |_| async { Ok::<_, Failure>(2) }).await?;
//! assert_eq!(again.into_value(), Some(1));
//! # Ok::<(), sentinel_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use sentinel_core::execution::{
    self, ClaimOutcome, ClaimRequest, Disposition, ExecutionCommand, ExecutionOutcome,
};
use sentinel_core::lease::{self, Acquisition, LeaseCommand, LeaseOutcome, LeaseRequest};
use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Clock, CoordinationStore, Error, Event, ExecutionRecord, ExecutionSlot, FencingToken, Key,
    Keyspace, LeaseRecord, LeaseSlot, ManualClock, Namespace, OwnerId, RecordId, Result, Step,
    SystemClock, TimeSource, Timestamp,
};

const SHARDS: usize = 64;
const BACKEND: &str = "memory";

/// The in-memory store. Clones share the same records.
#[derive(Clone)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    data: Arc<Data>,
}

struct Data {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    next_event_id: AtomicI64,
}

#[derive(Default)]
struct Shard {
    executions: HashMap<RecordId, Entry<ExecutionSlot>>,
    leases: HashMap<RecordId, Entry<LeaseSlot>>,
}

#[derive(Default)]
struct Entry<S> {
    slot: S,
    events: Vec<Event>,
    /// When the slot last changed, for [`CoordinationStore::wait_for_change`].
    changed_at: Option<Instant>,
    /// Woken on every change, while someone waits.
    waiters: Option<Arc<Notify>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store on the given time source ([`TimeSource::Server`] is the system clock).
    pub fn with_time(time: TimeSource) -> Self {
        match time {
            TimeSource::Server => Self::new(),
            TimeSource::Manual(clock) => Self::with_clock(clock),
        }
    }

    /// An empty store on a manual clock, returned with it.
    pub fn with_manual_clock() -> (Self, ManualClock) {
        let clock = ManualClock::new();
        (Self::with_clock(clock.clone()), clock)
    }

    /// An empty store on any clock.
    pub fn with_clock(clock: impl Clock) -> Self {
        MemoryStore {
            clock: Arc::new(clock),
            data: Arc::new(Data {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                next_event_id: AtomicI64::new(1),
            }),
        }
    }

    /// A new store instance over the same records, on another clock: what a process restart looks
    /// like for the conformance suite. Records, tokens and history carry over.
    pub fn restarted(&self, time: TimeSource) -> MemoryStore {
        let clock: Arc<dyn Clock> = match time {
            TimeSource::Server => Arc::new(SystemClock),
            TimeSource::Manual(clock) => Arc::new(clock),
        };
        MemoryStore {
            clock,
            data: Arc::clone(&self.data),
        }
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, Shard> {
        let index = (self.data.hasher.hash_one(id) % SHARDS as u64) as usize;
        lock(&self.data.shards[index])
    }

    fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.data.shards.iter().map(lock)
    }

    /// Applies one execution command atomically: under the shard lock, read the slot and the
    /// clock, run the core's transition, write the slot and the event.
    fn execute(&self, id: &RecordId, command: &ExecutionCommand) -> Result<ExecutionOutcome> {
        let mut shard = self.shard(id);
        let now = self.clock.now();
        self.apply(&mut shard.executions, id, |slot| {
            execution::transition(id, slot, command, now)
        })
    }

    /// Applies one lease command atomically.
    fn lease(&self, id: &RecordId, command: &LeaseCommand) -> Result<LeaseOutcome> {
        let mut shard = self.shard(id);
        let now = self.clock.now();
        self.apply(&mut shard.leases, id, |slot| {
            lease::transition(id, slot, command, now)
        })
    }

    fn apply<S: Default, O>(
        &self,
        map: &mut HashMap<RecordId, Entry<S>>,
        id: &RecordId,
        transition: impl FnOnce(&S) -> Step<S, O>,
    ) -> Result<O> {
        let step = match map.get(id) {
            Some(entry) => transition(&entry.slot),
            None => transition(&S::default()),
        };
        if step.slot.is_some() || step.event.is_some() {
            let entry = map.entry(id.clone()).or_default();
            if let Some(slot) = step.slot {
                entry.slot = slot;
            }
            if step.clears_history {
                entry.events.clear();
            }
            if let Some(draft) = step.event {
                // Waiters care about transitions, not about heartbeats moving a lease.
                entry.changed_at = Some(Instant::now());
                if let Some(waiters) = &entry.waiters {
                    waiters.notify_waiters();
                }
                let event_id = self.data.next_event_id.fetch_add(1, Ordering::Relaxed);
                entry.events.push(draft.into_event(event_id));
            }
        }
        step.outcome.map_err(Error::Rejected)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Transitions are computed before anything is written, so a panic cannot leave a shard
    // half-updated; a poisoned lock is safe to keep using.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The outcome the core produced did not fit the command; the core never does this.
fn unexpected(outcome: impl fmt::Debug) -> Error {
    Error::CorruptRecord {
        store: BACKEND,
        detail: format!("unexpected outcome {outcome:?}"),
    }
}

fn page<T>(mut items: Vec<(Key, T)>, after: Option<&Key>, limit: u32) -> Page<T> {
    items.retain(|(key, _)| after.is_none_or(|a| key > a));
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let limit = limit as usize;
    let next = (items.len() > limit).then(|| items[limit - 1].0.clone());
    items.truncate(limit);
    Page {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next,
    }
}

#[async_trait]
impl CoordinationStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(self.clock.now())
    }

    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        match self.execute(id, &ExecutionCommand::Claim(request.clone()))? {
            ExecutionOutcome::Claim(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        match self.execute(id, &ExecutionCommand::Start { token })? {
            ExecutionOutcome::Started { lease_expires_at } => Ok(lease_expires_at),
            other => Err(unexpected(other)),
        }
    }

    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        let renew = |renewal: &Renewal| -> Result<RenewalResult> {
            let token = renewal.token;
            let renewed = match renewal.keyspace {
                Keyspace::Execution => self
                    .execute(&renewal.id, &ExecutionCommand::Heartbeat { token })
                    .map(|o| match o {
                        ExecutionOutcome::Renewed { lease_expires_at } => Ok(lease_expires_at),
                        other => Err(unexpected(other)),
                    }),
                Keyspace::Lease => {
                    self.lease(&renewal.id, &LeaseCommand::Renew { token })
                        .map(|o| match o {
                            LeaseOutcome::Renewed { lease_expires_at } => Ok(lease_expires_at),
                            other => Err(unexpected(other)),
                        })
                }
            };
            match renewed {
                Ok(answer) => answer.map(Ok),
                Err(Error::Rejected(rejection)) => Ok(Err(rejection)),
                Err(error) => Err(error),
            }
        };
        renewals.iter().map(renew).collect()
    }

    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        let command = ExecutionCommand::Complete {
            token,
            result: result.clone(),
        };
        self.execute(id, &command).map(drop)
    }

    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.execute(id, &ExecutionCommand::Abort { token, disposition })
            .map(drop)
    }

    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        let command = ExecutionCommand::Reconcile {
            owner: owner.clone(),
        };
        match self.execute(id, &command)? {
            ExecutionOutcome::Reconciling { token } => Ok(token),
            other => Err(unexpected(other)),
        }
    }

    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        let command = ExecutionCommand::ForceComplete {
            owner: owner.clone(),
            result: result.clone(),
        };
        self.execute(id, &command).map(drop)
    }

    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        let command = ExecutionCommand::ResetToClaimed {
            owner: owner.clone(),
        };
        self.execute(id, &command).map(drop)
    }

    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        let completed_before = self.clock.now().saturating_sub(older_than);
        let mut candidates: Vec<(Timestamp, RecordId)> = self
            .shards()
            .flat_map(|shard| {
                shard
                    .executions
                    .values()
                    .filter_map(|entry| entry.slot.record.as_ref())
                    .filter(|r| {
                        &r.namespace == namespace && execution::purgeable(r, completed_before)
                    })
                    .map(|r| (r.updated_at, r.id()))
                    .collect::<Vec<_>>()
            })
            .collect();
        candidates.sort();
        candidates.truncate(limit as usize);
        let command = ExecutionCommand::Purge { completed_before };
        let mut purged = 0;
        for (_, id) in candidates {
            // Checked again under the lock: the record may have changed since it was listed.
            if self.execute(&id, &command).is_ok() {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        Ok(self
            .shard(id)
            .executions
            .get(id)
            .and_then(|e| e.slot.record.clone()))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        query.validate()?;
        let now = self.clock.now();
        let items = self
            .shards()
            .flat_map(|shard| {
                shard
                    .executions
                    .values()
                    .filter_map(|entry| entry.slot.record.as_ref())
                    .filter(|r| r.namespace == query.namespace && query.filter.matches(r, now))
                    .map(|r| (r.key.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(page(items, query.after.as_ref(), query.limit))
    }

    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        query.validate()?;
        let shard = self.shard(id);
        let events = match keyspace {
            Keyspace::Execution => shard.executions.get(id).map(|e| &e.events),
            Keyspace::Lease => shard.leases.get(id).map(|e| &e.events),
        };
        let in_range = events.into_iter().flatten().filter(|e| {
            query.after.is_none_or(|after| e.id > after)
                && query.before.is_none_or(|before| e.id < before)
        });
        let limit = query.limit as usize;
        Ok(if query.newest_first {
            in_range.rev().take(limit).cloned().collect()
        } else {
            in_range.take(limit).cloned().collect()
        })
    }

    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        match self.lease(id, &LeaseCommand::Acquire(request.clone()))? {
            LeaseOutcome::Acquire(acquisition) => Ok(acquisition),
            other => Err(unexpected(other)),
        }
    }

    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.lease(id, &LeaseCommand::Release { token }).map(drop)
    }

    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        Ok(self
            .shard(id)
            .leases
            .get(id)
            .and_then(|e| e.slot.record.clone()))
    }

    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        let notify;
        let notified = {
            let mut shard = self.shard(id);
            let entry = shard.executions.entry(id.clone()).or_default();
            if entry.changed_at.is_some_and(|at| at > since) {
                return Ok(Wait::Changed);
            }
            notify = Arc::clone(entry.waiters.get_or_insert_with(Default::default));
            let mut notified = Box::pin(notify.notified());
            // Registered before the lock is released, so no change can slip in between.
            notified.as_mut().enable();
            notified
        };
        Ok(match tokio::time::timeout(timeout, notified).await {
            Ok(()) => Wait::Changed,
            Err(_) => Wait::TimedOut,
        })
    }

    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        query.validate()?;
        let items = self
            .shards()
            .flat_map(|shard| {
                shard
                    .leases
                    .values()
                    .filter_map(|entry| entry.slot.record.as_ref())
                    .filter(|r| r.namespace == query.namespace)
                    .map(|r| (r.key.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(page(items, query.after.as_ref(), query.limit))
    }
}
