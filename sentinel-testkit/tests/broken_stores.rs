//! The suite must catch bugs: stores with one deliberate defect each must fail it, and the memory
//! store must pass it.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::execution::{self, ExecutionCommand};
use sentinel_core::lease::{self, LeaseCommand};
use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, Clock, CoordinationStore, Disposition, Error, Event,
    ExecutionOutcome, ExecutionRecord, ExecutionSlot, FencingToken, Key, Keyspace, LeaseOutcome,
    LeaseRecord, LeaseRequest, LeaseSlot, ManualClock, Namespace, OwnerId, RecordId, Result, Step,
    SystemClock, TimeSource, Timestamp,
};
use sentinel_testkit::{MemoryFactory, StoreFactory};

/// One deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// Reconcile moves to `reconciling` but keeps the old token.
    ReconcileKeepsToken,
    /// Claim reads, awaits, then writes: two claimers can both win.
    NonAtomicClaim,
    /// A renewal of an expired lease succeeds.
    HeartbeatRevives,
    /// Completion accepts any token.
    CompleteIgnoresToken,
    /// Purge forgets the last token, so tokens can go backwards.
    PurgeForgetsToken,
    /// A repeated completion is logged again.
    RepeatedCompletionLogged,
    /// The uncertain filter of `list` ignores whether the lease expired.
    UncertainIgnoresExpiry,
    /// A history page after `after` starts with the event `after` names.
    HistoryRepeatsCursor,
    /// A full last page of a listing says there is more (`next` is not `None`).
    FullLastPageHasNext,
    /// `wait_for_change` only hears of changes made while it waits, not of one made since
    /// `since` but before the call.
    WaitMissesEarlierChange,
    /// Purge reads its candidates, awaits, then purges each and fails on one that another purge
    /// removed meanwhile.
    PurgeFailsOnARacingPurge,
    /// `list` reads one batch of 256 records after `after` and pages through what matched there
    /// only, as a store reading in batches that stops too early would.
    ListingReadsOneBatch,
    /// Every page of a listing starts from the first record, whatever `after` says.
    ListingIgnoresItsCursor,
}

#[derive(Default)]
struct Entry<S> {
    slot: S,
    events: Vec<Event>,
}

#[derive(Default)]
struct Data {
    executions: HashMap<RecordId, Entry<ExecutionSlot>>,
    leases: HashMap<RecordId, Entry<LeaseSlot>>,
    next_event: i64,
}

/// A small store built on the core's transitions, with one defect injected.
#[derive(Clone)]
struct Mutant {
    defect: Defect,
    clock: Arc<dyn Clock>,
    data: Arc<Mutex<Data>>,
    /// Woken by every execution transition, for `wait_for_change`.
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Mutant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mutant({:?})", self.defect)
    }
}

fn commit<S, O>(entry: &mut Entry<S>, next_event: &mut i64, step: Step<S, O>) -> Result<O> {
    if let Some(slot) = step.slot {
        entry.slot = slot;
    }
    if step.clears_history {
        entry.events.clear();
    }
    if let Some(event) = step.event {
        *next_event += 1;
        entry.events.push(event.into_event(*next_event));
    }
    step.outcome.map_err(Error::Rejected)
}

impl Mutant {
    fn execute(&self, id: &RecordId, command: &ExecutionCommand) -> Result<ExecutionOutcome> {
        let mut data = self.data.lock().unwrap();
        let now = self.clock.now();
        let Data {
            executions,
            next_event,
            ..
        } = &mut *data;
        let entry = executions.entry(id.clone()).or_default();
        let mut command = command.clone();
        let mut at = now;
        match (&mut command, self.defect, entry.slot.record.as_ref()) {
            (ExecutionCommand::Complete { token, .. }, Defect::CompleteIgnoresToken, Some(r)) => {
                *token = r.token
            }
            (ExecutionCommand::Heartbeat { .. }, Defect::HeartbeatRevives, Some(r))
                if now >= r.lease_expires_at =>
            {
                at = Timestamp::from_micros(r.lease_expires_at.as_micros() - 1);
            }
            _ => {}
        }
        let old = entry.slot.clone();
        let mut step = execution::transition(id, &entry.slot, &command, at);
        match (
            &command,
            self.defect,
            step.slot.as_mut(),
            old.record.as_ref(),
        ) {
            (
                ExecutionCommand::Reconcile { .. },
                Defect::ReconcileKeepsToken,
                Some(slot),
                Some(before),
            ) => {
                if let Some(r) = slot.record.as_mut() {
                    r.token = before.token;
                }
                slot.last_token = old.last_token;
                if let Some(e) = step.event.as_mut() {
                    e.token = before.token;
                }
                step.outcome = Ok(ExecutionOutcome::Reconciling {
                    token: before.token,
                });
            }
            (ExecutionCommand::Purge { .. }, Defect::PurgeForgetsToken, Some(slot), _) => {
                slot.last_token = None
            }
            _ => {}
        }
        if let (ExecutionCommand::Complete { token, .. }, Defect::RepeatedCompletionLogged) =
            (&command, self.defect)
            && step.slot.is_none()
            && step.outcome.is_ok()
        {
            step.event = Some(sentinel_core::EventDraft {
                kind: sentinel_core::EventKind::Completed,
                token: *token,
                owner: old.record.as_ref().map(|r| r.owner.clone()),
                state: old.record.as_ref().map(|r| r.state),
                at: now,
                detail: None,
            });
        }
        if step.slot.is_some() {
            self.changed.notify_waiters();
        }
        commit(entry, next_event, step)
    }

    fn lease(&self, id: &RecordId, command: &LeaseCommand) -> Result<LeaseOutcome> {
        let mut data = self.data.lock().unwrap();
        let now = self.clock.now();
        let Data {
            leases, next_event, ..
        } = &mut *data;
        let entry = leases.entry(id.clone()).or_default();
        let mut at = now;
        if let (LeaseCommand::Renew { .. }, Defect::HeartbeatRevives, Some(r)) =
            (command, self.defect, entry.slot.record.as_ref())
            && now >= r.lease_expires_at
        {
            at = Timestamp::from_micros(r.lease_expires_at.as_micros() - 1);
        }
        let step = lease::transition(id, &entry.slot, command, at);
        commit(entry, next_event, step)
    }

    fn records(&self, namespace: &Namespace) -> Vec<ExecutionRecord> {
        let data = self.data.lock().unwrap();
        data.executions
            .values()
            .filter_map(|e| e.slot.record.clone())
            .filter(|r| &r.namespace == namespace)
            .collect()
    }
}

fn page<T>(mut items: Vec<(Key, T)>, after: Option<&Key>, limit: u32, defect: Defect) -> Page<T> {
    if defect != Defect::ListingIgnoresItsCursor {
        items.retain(|(k, _)| after.is_none_or(|a| k > a));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let more = if defect == Defect::FullLastPageHasNext {
        items.len() >= limit as usize
    } else {
        items.len() > limit as usize
    };
    let next = more.then(|| items[limit as usize - 1].0.clone());
    items.truncate(limit as usize);
    Page {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next,
    }
}

#[async_trait]
impl CoordinationStore for Mutant {
    fn backend(&self) -> &'static str {
        "mutant"
    }
    async fn now(&self) -> Result<Timestamp> {
        Ok(self.clock.now())
    }
    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        let command = ExecutionCommand::Claim(request.clone());
        if self.defect == Defect::NonAtomicClaim {
            // Read, await, write: the classic check-then-act race.
            let snapshot = self
                .data
                .lock()
                .unwrap()
                .executions
                .get(id)
                .map(|e| e.slot.clone())
                .unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let step = execution::transition(id, &snapshot, &command, self.clock.now());
            let mut data = self.data.lock().unwrap();
            let Data {
                executions,
                next_event,
                ..
            } = &mut *data;
            let entry = executions.entry(id.clone()).or_default();
            return match commit(entry, next_event, step)? {
                ExecutionOutcome::Claim(outcome) => Ok(outcome),
                other => panic!("{other:?}"),
            };
        }
        match self.execute(id, &command)? {
            ExecutionOutcome::Claim(outcome) => Ok(outcome),
            other => panic!("{other:?}"),
        }
    }
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        match self.execute(id, &ExecutionCommand::Start { token })? {
            ExecutionOutcome::Started { lease_expires_at } => Ok(lease_expires_at),
            other => panic!("{other:?}"),
        }
    }
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        Ok(renewals
            .iter()
            .map(|r| {
                let answer = match r.keyspace {
                    Keyspace::Execution => self
                        .execute(&r.id, &ExecutionCommand::Heartbeat { token: r.token })
                        .map(|o| match o {
                            ExecutionOutcome::Renewed { lease_expires_at } => lease_expires_at,
                            other => panic!("{other:?}"),
                        }),
                    Keyspace::Lease => self
                        .lease(&r.id, &LeaseCommand::Renew { token: r.token })
                        .map(|o| match o {
                            LeaseOutcome::Renewed { lease_expires_at } => lease_expires_at,
                            other => panic!("{other:?}"),
                        }),
                };
                answer.map_err(|e| match e {
                    Error::Rejected(r) => r,
                    other => panic!("{other}"),
                })
            })
            .collect())
    }
    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        self.execute(
            id,
            &ExecutionCommand::Complete {
                token,
                result: result.clone(),
            },
        )
        .map(drop)
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
        match self.execute(
            id,
            &ExecutionCommand::Reconcile {
                owner: owner.clone(),
            },
        )? {
            ExecutionOutcome::Reconciling { token } => Ok(token),
            other => panic!("{other:?}"),
        }
    }
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.execute(
            id,
            &ExecutionCommand::ForceComplete {
                owner: owner.clone(),
                result: result.clone(),
            },
        )
        .map(drop)
    }
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.execute(
            id,
            &ExecutionCommand::ResetToClaimed {
                owner: owner.clone(),
            },
        )
        .map(drop)
    }
    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        let cutoff = self.clock.now().saturating_sub(older_than);
        let mut candidates: Vec<_> = self
            .records(namespace)
            .into_iter()
            .filter(|r| execution::purgeable(r, cutoff))
            .map(|r| (r.updated_at, r.id()))
            .collect();
        candidates.sort();
        candidates.truncate(limit as usize);
        let strict = self.defect == Defect::PurgeFailsOnARacingPurge;
        if strict {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut n = 0;
        for (_, id) in candidates {
            let purged = self.execute(
                &id,
                &ExecutionCommand::Purge {
                    completed_before: cutoff,
                },
            );
            match purged {
                Ok(_) => n += 1,
                Err(e) if strict => return Err(e),
                Err(_) => {}
            }
        }
        Ok(n)
    }
    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        Ok(self
            .data
            .lock()
            .unwrap()
            .executions
            .get(id)
            .and_then(|e| e.slot.record.clone()))
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        query.validate()?;
        let now = self.clock.now();
        let mut filter = query.filter.clone();
        let sloppy = self.defect == Defect::UncertainIgnoresExpiry && filter.uncertain;
        if sloppy {
            filter.uncertain = false;
            filter.state = Some(sentinel_core::ExecutionState::Executing);
        }
        let mut records = self.records(&query.namespace);
        if self.defect == Defect::ListingReadsOneBatch {
            records.retain(|r| query.after.as_ref().is_none_or(|a| &r.key > a));
            records.sort_by(|a, b| a.key.cmp(&b.key));
            records.truncate(256);
        }
        let items = records
            .into_iter()
            .filter(|r| filter.matches(r, now))
            .map(|r| (r.key.clone(), r))
            .collect();
        Ok(page(items, query.after.as_ref(), query.limit, self.defect))
    }
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        query.validate()?;
        let data = self.data.lock().unwrap();
        let events = match keyspace {
            Keyspace::Execution => data.executions.get(id).map(|e| e.events.clone()),
            Keyspace::Lease => data.leases.get(id).map(|e| e.events.clone()),
        };
        Ok(events
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                query.after.is_none_or(|a| {
                    e.id > a || (self.defect == Defect::HistoryRepeatsCursor && e.id == a)
                })
            })
            .take(query.limit as usize)
            .collect())
    }
    async fn wait_for_change(
        &self,
        _id: &RecordId,
        _since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        if self.defect != Defect::WaitMissesEarlierChange {
            return Ok(Wait::Unsupported);
        }
        // Hears only of what changes from now on: whatever changed since `since` is missed.
        Ok(
            match tokio::time::timeout(timeout, self.changed.notified()).await {
                Ok(()) => Wait::Changed,
                Err(_) => Wait::TimedOut,
            },
        )
    }
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        match self.lease(id, &LeaseCommand::Acquire(request.clone()))? {
            LeaseOutcome::Acquire(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.lease(id, &LeaseCommand::Release { token }).map(drop)
    }
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        Ok(self
            .data
            .lock()
            .unwrap()
            .leases
            .get(id)
            .and_then(|e| e.slot.record.clone()))
    }
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        query.validate()?;
        let data = self.data.lock().unwrap();
        let items = data
            .leases
            .values()
            .filter_map(|e| e.slot.record.clone())
            .filter(|r| r.namespace == query.namespace)
            .map(|r| (r.key.clone(), r))
            .collect();
        Ok(page(items, query.after.as_ref(), query.limit, self.defect))
    }
}

struct MutantFactory(Defect);

fn clock_of(time: TimeSource) -> Arc<dyn Clock> {
    match time {
        TimeSource::Server => Arc::new(SystemClock),
        TimeSource::Manual(clock) => Arc::new(clock),
    }
}

#[async_trait]
impl StoreFactory for MutantFactory {
    type Store = Mutant;
    async fn create(&self, time: TimeSource) -> Result<Mutant> {
        Ok(Mutant {
            defect: self.0,
            clock: clock_of(time),
            data: Arc::default(),
            changed: Arc::default(),
        })
    }
    async fn reopen(&self, store: &Mutant, time: TimeSource) -> Result<Mutant> {
        Ok(Mutant {
            defect: self.0,
            clock: clock_of(time),
            data: Arc::clone(&store.data),
            changed: Arc::clone(&store.changed),
        })
    }
}

async fn failing_cases(defect: Defect) -> Vec<&'static str> {
    let report = sentinel_testkit::run_all(MutantFactory(defect)).await;
    let failed = report.failed();
    eprintln!("{defect:?} is caught by {failed:?}");
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_passes_every_case() {
    let report = sentinel_testkit::run_all(MemoryFactory).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.results.len(), sentinel_testkit::case_names().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconcile_that_keeps_the_old_token_fails() {
    let failed = failing_cases(Defect::ReconcileKeepsToken).await;
    assert!(
        failed.contains(&"model_based") && failed.contains(&"tokens_strictly_increase"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_that_is_not_atomic_fails() {
    let failed = failing_cases(Defect::NonAtomicClaim).await;
    assert!(failed.contains(&"claim_race"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_that_revive_an_expired_lease_fail() {
    let failed = failing_cases(Defect::HeartbeatRevives).await;
    assert!(
        failed.contains(&"model_based") && failed.contains(&"renewal_vs_expiry_race"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_that_ignores_the_token_fails() {
    let failed = failing_cases(Defect::CompleteIgnoresToken).await;
    // The race may or may not interleave badly in a given run; these two catch it every time.
    assert!(
        failed.contains(&"model_based") && failed.contains(&"event_log_records_every_transition"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_that_forgets_the_token_fails() {
    let failed = failing_cases(Defect::PurgeForgetsToken).await;
    assert!(
        failed.contains(&"tokens_strictly_increase") && failed.contains(&"purge_in_batches"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_completion_logged_twice_fails() {
    let failed = failing_cases(Defect::RepeatedCompletionLogged).await;
    assert!(
        failed.contains(&"event_log_ignores_reads_and_refusals"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uncertain_filter_that_ignores_expiry_fails() {
    let failed = failing_cases(Defect::UncertainIgnoresExpiry).await;
    assert!(failed.contains(&"list_filters_and_pages"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_page_that_repeats_its_cursor_fails() {
    let failed = failing_cases(Defect::HistoryRepeatsCursor).await;
    assert!(failed.contains(&"model_based"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_last_page_that_says_there_is_more_fails() {
    let failed = failing_cases(Defect::FullLastPageHasNext).await;
    assert!(
        failed.contains(&"model_based") && failed.contains(&"list_filters_and_pages"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_that_misses_an_earlier_change_fails() {
    let failed = failing_cases(Defect::WaitMissesEarlierChange).await;
    assert_eq!(failed, ["waiting_misses_no_change"], "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_that_fails_when_another_purged_first_fails() {
    let failed = failing_cases(Defect::PurgeFailsOnARacingPurge).await;
    assert_eq!(failed, ["purge_race"], "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_that_stops_after_one_batch_fails() {
    let failed = failing_cases(Defect::ListingReadsOneBatch).await;
    assert_eq!(failed, ["list_pages_through_sparse_matches"], "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_that_ignores_its_cursor_fails_at_once() {
    // Its pages repeat forever: each listing case must see that `next` does not move forward,
    // not page on until the case's time limit.
    let report = sentinel_testkit::run_all(MutantFactory(Defect::ListingIgnoresItsCursor)).await;
    for case in [
        "keys_round_trip_and_never_collide",
        "list_filters_and_pages",
        "list_pages_through_sparse_matches",
    ] {
        let outcome = report.results.iter().find(|(name, _)| *name == case);
        match outcome {
            Some((_, Err(message))) => {
                assert!(message.contains("moves forward"), "{case}: {message}")
            }
            other => panic!("{case}: {other:?}"),
        }
    }
}

#[test]
fn the_manual_clock_is_what_the_cases_drive() {
    // The mutants read the clock the kit passes in, like a real store must.
    let clock = ManualClock::new();
    let before = clock.now();
    clock.advance(Duration::from_secs(1));
    assert!(clock.now() > before);
}
