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
    HistoryQuery, LeaseListQuery, ListFilter, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, Clock, CoordinationStore, Disposition, Error, Event,
    ExecutionOutcome, ExecutionRecord, ExecutionSlot, ExecutionState, FencingToken, Key, Keyspace,
    LeaseOutcome, LeaseRecord, LeaseRequest, LeaseSlot, ManualClock, Namespace, OwnerId, RecordId,
    RejectReason, Rejection, RequestId, Result, Step, SystemClock, TimeSource, Timestamp,
};
use sentinel_testkit::{MemoryFactory, StoreFactory};

/// One deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// Reconcile moves to `reconciling` but keeps the old token.
    ReconcileKeepsToken,
    /// Each command on one record (all but heartbeat batches and purge) reads the record,
    /// awaits, then writes what it made of the read: two contenders can both win.
    CheckThenAct,
    /// A renewal of an expired lease succeeds.
    HeartbeatRevives,
    /// Completion accepts any token.
    CompleteIgnoresToken,
    /// A claim refused as busy says the holder's claim is not started yet, whatever its state.
    BusyAlwaysClaimed,
    /// A command whose token is above the record's is taken as the record's own, as a fence
    /// comparing with `<` instead of `!=` would.
    HigherTokenAccepted,
    /// Purge forgets the last token, so tokens can go backwards.
    PurgeForgetsToken,
    /// Purge keeps the record's history, with the purge event after it.
    PurgeKeepsHistory,
    /// Releasing a lease forgets its last token, so lease tokens can go backwards.
    ReleaseForgetsToken,
    /// A repeated completion is logged again.
    RepeatedCompletionLogged,
    /// Events record the state the record was in before the transition, not the one it left.
    EventStateBefore,
    /// The uncertain filter of `list` ignores whether the lease expired.
    UncertainIgnoresExpiry,
    /// A history page after `after` starts with the event `after` names.
    HistoryRepeatsCursor,
    /// A history read ignores `before` and `newest_first`, as a store written before they
    /// existed would: always the oldest events, oldest first.
    HistoryOldestFirstOnly,
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
    /// The data lives in the store instance: a restarted store starts empty.
    RestartLosesData,
    /// The store's own clock stops when the store is created.
    ServerClockStandsStill,
    /// The store's own clock moves a second forward each time it is read.
    ServerClockRaces,
    /// The store reads its clock as a double, as Lua or JavaScript would: past 2^53 µs the
    /// microseconds round.
    TimeInDoubles,
    /// Records are kept under the namespace and the key joined with `:`, so `("a", ":b")` and
    /// `("a:", "b")` are one record.
    NamespaceJoinedToKey,
    /// `list` ignores the first criterion of its filter when the filter holds the second one too
    /// (`None`: when it holds the first alone), as a store with one query per kind of filter
    /// might get one query wrong.
    ListingDrops(Criterion, Option<Criterion>),
    /// `list` with a state judges the criterion one microsecond late: at its instant a record
    /// does not match yet.
    ListingLate(Criterion),
    /// `list` and `history` accept any page size.
    PageSizeUnchecked,
    /// A heartbeat batch is answered executions first, then leases, not in the order asked.
    HeartbeatAnswersByKeyspace,
    /// An execution's or a lease's lease is still alive at its expiry instant.
    ExpiryInstantAlive,
    /// Request ids are not kept: a retried claim or acquire is refused by its own grant.
    RequestIdIgnored,
    /// A lease renewal is answered as applied, and nothing is written.
    LeaseRenewalNotWritten,
    /// A start is answered as applied, and nothing is written.
    StartNotWritten,
    /// A claim of an existing record takes the stored fingerprint for the request's.
    FingerprintIgnored,
    /// `wait_for_change` gives up after 30 ms, whatever time it was given.
    WaitGivesUpEarly,
    /// Reconcile takes over a live execution, as if its lease had run out.
    ReconcileWhileAlive,
    /// A completion is refused as expired once the lease has run out, although its token is
    /// current.
    CompleteRequiresAlive,
    /// A completion is refused as expired once the hard expiry has passed, although its token is
    /// current.
    CompleteRequiresHard,
    /// A renewal in this keyspace extends the lease to now + ttl, past the hard expiry.
    HeartbeatIgnoresHard(Keyspace),
    /// A restart forgets the tombstones of this keyspace: the last token of a purged execution or
    /// of a released lease.
    RestartForgetsTombstones(Keyspace),
    /// A renewal in this keyspace that moves the lease is logged (as `started` or
    /// `lease_acquired`).
    RenewalLogged(Keyspace),
    /// A claim given this answer is logged, as the Python original writes a row for every
    /// refused acquire.
    ClaimAnswerLogged(Answer),
    /// This read appends an event to the history of what it read.
    ReadLogged(Read),
}

/// An answer to a claim that grants nothing and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Uncertain,
    Reconciling,
    Completed,
    FingerprintMismatch,
}

impl Answer {
    fn is(self, outcome: &std::result::Result<ExecutionOutcome, Rejection>) -> bool {
        use ExecutionOutcome::Claim;
        match (self, outcome) {
            (Answer::Uncertain, Ok(Claim(ClaimOutcome::Uncertain { .. })))
            | (Answer::Reconciling, Ok(Claim(ClaimOutcome::Reconciling { .. })))
            | (Answer::Completed, Ok(Claim(ClaimOutcome::Completed { .. }))) => true,
            (Answer::FingerprintMismatch, Err(r)) => {
                matches!(r.reason, RejectReason::FingerprintMismatch { .. })
            }
            _ => false,
        }
    }
}

/// A read of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    ListLeases,
    History,
    WaitForChange,
}

/// One criterion of a `ListFilter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Criterion {
    State,
    Uncertain,
    Expired,
    OlderThan,
}

impl Criterion {
    const ALL: [Criterion; 4] = [
        Criterion::State,
        Criterion::Uncertain,
        Criterion::Expired,
        Criterion::OlderThan,
    ];

    fn is_in(self, filter: &ListFilter) -> bool {
        match self {
            Criterion::State => filter.state.is_some(),
            Criterion::Uncertain => filter.uncertain,
            Criterion::Expired => filter.expired,
            Criterion::OlderThan => filter.older_than.is_some(),
        }
    }

    fn clear(self, filter: &mut ListFilter) {
        match self {
            Criterion::State => filter.state = None,
            Criterion::Uncertain => filter.uncertain = false,
            Criterion::Expired => filter.expired = false,
            Criterion::OlderThan => filter.older_than = None,
        }
    }
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
    /// The clock, as this store reads it.
    fn read_clock(&self) -> Timestamp {
        let now = self.clock.now();
        if self.defect == Defect::TimeInDoubles {
            return Timestamp::from_micros(now.as_micros() as f64 as i64);
        }
        now
    }

    /// The instant a transition of a record whose lease ends at `expires` is judged at: `now`, or
    /// just before the end, for the defects that keep an ended lease alive.
    fn judged_at(&self, now: Timestamp, renewal: bool, expires: Option<Timestamp>) -> Timestamp {
        let Some(expires) = expires else {
            return now;
        };
        let revived = match self.defect {
            Defect::HeartbeatRevives => renewal && now >= expires,
            Defect::ExpiryInstantAlive => now == expires,
            _ => false,
        };
        if revived {
            expires.saturating_sub(Duration::from_micros(1))
        } else {
            now
        }
    }

    /// The token a command carrying `token` is judged with, on a record holding `current`.
    fn judged_token(
        &self,
        complete: bool,
        token: FencingToken,
        current: Option<FencingToken>,
    ) -> FencingToken {
        match (self.defect, current) {
            (Defect::CompleteIgnoresToken, Some(current)) if complete => current,
            (Defect::HigherTokenAccepted, Some(current)) if token > current => current,
            _ => token,
        }
    }

    /// Where the record `id` is kept.
    fn stored_id(&self, id: &RecordId) -> RecordId {
        if self.defect != Defect::NamespaceJoinedToKey {
            return id.clone();
        }
        let joined = format!("{}:{}", id.namespace.as_str(), id.key.as_str());
        RecordId::new(Namespace::new("joined").unwrap(), Key::new(joined).unwrap())
    }

    fn execute(&self, id: &RecordId, command: &ExecutionCommand) -> Result<ExecutionOutcome> {
        let mut data = self.data.lock().unwrap();
        let now = self.read_clock();
        let Data {
            executions,
            next_event,
            ..
        } = &mut *data;
        let entry = executions.entry(self.stored_id(id)).or_default();
        let mut command = command.clone();
        let current = entry.slot.record.as_ref().map(|r| r.token);
        let complete = matches!(command, ExecutionCommand::Complete { .. });
        if let ExecutionCommand::Start { token }
        | ExecutionCommand::Heartbeat { token }
        | ExecutionCommand::Complete { token, .. }
        | ExecutionCommand::Abort { token, .. } = &mut command
        {
            *token = self.judged_token(complete, *token, current);
        }
        let renewal = matches!(command, ExecutionCommand::Heartbeat { .. });
        let expires = entry.slot.record.as_ref().map(|r| r.lease_expires_at);
        let at = match (&command, self.defect, expires) {
            (ExecutionCommand::Reconcile { .. }, Defect::ReconcileWhileAlive, Some(expires)) => {
                now.max(expires)
            }
            _ => self.judged_at(now, renewal, expires),
        };
        let old = entry.slot.clone();
        let mut step = execution::transition(id, &entry.slot, &command, at);
        if let (ExecutionCommand::Complete { token, .. }, Some(record)) =
            (&command, old.record.as_ref())
        {
            let deadline = match self.defect {
                Defect::CompleteRequiresAlive => Some(record.lease_expires_at),
                Defect::CompleteRequiresHard => Some(record.hard_expires_at),
                _ => None,
            };
            if deadline.is_some_and(|d| now >= d)
                && record.token == *token
                && record.state == ExecutionState::Executing
            {
                step = Step {
                    slot: None,
                    outcome: Err(Rejection {
                        reason: RejectReason::Expired,
                        state: Some(record.state),
                        token: Some(record.token),
                    }),
                    event: None,
                    clears_history: false,
                };
            }
        }
        if renewal && let Some(record) = old.record.as_ref() {
            if self.defect == Defect::HeartbeatIgnoresHard(Keyspace::Execution)
                && let Ok(ExecutionOutcome::Renewed { lease_expires_at }) = step.outcome.as_mut()
            {
                let uncapped = at.saturating_add(record.ttl.ttl()).max(*lease_expires_at);
                *lease_expires_at = uncapped;
                let mut slot = old.clone();
                if let Some(r) = slot.record.as_mut() {
                    r.lease_expires_at = uncapped;
                }
                step.slot = Some(slot);
            }
            if self.defect == Defect::RenewalLogged(Keyspace::Execution)
                && step.slot.is_some()
                && step.event.is_none()
            {
                step.event = Some(sentinel_core::EventDraft {
                    kind: sentinel_core::EventKind::Started,
                    token: record.token,
                    owner: Some(record.owner.clone()),
                    state: Some(record.state),
                    at: now,
                    detail: None,
                });
            }
        }
        if let (ExecutionCommand::Claim(request), Defect::ClaimAnswerLogged(answer), Some(record)) =
            (&command, self.defect, old.record.as_ref())
            && answer.is(&step.outcome)
        {
            step.event = Some(sentinel_core::EventDraft {
                kind: sentinel_core::EventKind::Claimed,
                token: record.token,
                owner: Some(request.owner.clone()),
                state: Some(record.state),
                at: now,
                detail: None,
            });
        }
        if self.defect == Defect::PurgeKeepsHistory {
            step.clears_history = false;
        }
        if matches!(command, ExecutionCommand::Start { .. })
            && self.defect == Defect::StartNotWritten
        {
            unwritten(&mut step);
        }
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
        if let (Some(event), Defect::EventStateBefore) = (step.event.as_mut(), self.defect) {
            event.state = old.record.as_ref().map(|r| r.state);
        }
        if step.slot.is_some() {
            self.changed.notify_waiters();
        }
        commit(entry, next_event, step)
    }

    fn lease(&self, id: &RecordId, command: &LeaseCommand) -> Result<LeaseOutcome> {
        let mut data = self.data.lock().unwrap();
        let now = self.read_clock();
        let Data {
            leases, next_event, ..
        } = &mut *data;
        let entry = leases.entry(self.stored_id(id)).or_default();
        let mut command = command.clone();
        let current = entry.slot.record.as_ref().map(|r| r.token);
        if let LeaseCommand::Renew { token } | LeaseCommand::Release { token } = &mut command {
            *token = self.judged_token(false, *token, current);
        }
        let renewal = matches!(command, LeaseCommand::Renew { .. });
        let expires = entry.slot.record.as_ref().map(|r| r.lease_expires_at);
        let mut step = lease::transition(
            id,
            &entry.slot,
            &command,
            self.judged_at(now, renewal, expires),
        );
        if renewal && self.defect == Defect::LeaseRenewalNotWritten {
            unwritten(&mut step);
        }
        if renewal && let Some(record) = entry.slot.record.as_ref() {
            if self.defect == Defect::HeartbeatIgnoresHard(Keyspace::Lease)
                && let Ok(LeaseOutcome::Renewed { lease_expires_at }) = step.outcome.as_mut()
            {
                let uncapped = now.saturating_add(record.ttl.ttl()).max(*lease_expires_at);
                *lease_expires_at = uncapped;
                let mut slot = entry.slot.clone();
                if let Some(r) = slot.record.as_mut() {
                    r.lease_expires_at = uncapped;
                }
                step.slot = Some(slot);
            }
            if self.defect == Defect::RenewalLogged(Keyspace::Lease)
                && step.slot.is_some()
                && step.event.is_none()
            {
                step.event = Some(sentinel_core::EventDraft {
                    kind: sentinel_core::EventKind::LeaseAcquired,
                    token: record.token,
                    owner: Some(record.owner.clone()),
                    state: None,
                    at: now,
                    detail: None,
                });
            }
        }
        if let (LeaseCommand::Release { .. }, Defect::ReleaseForgetsToken, Some(slot)) =
            (&command, self.defect, step.slot.as_mut())
        {
            slot.last_token = None;
        }
        commit(entry, next_event, step)
    }

    /// Applies `command` to the execution `id`.
    async fn apply(&self, id: &RecordId, command: ExecutionCommand) -> Result<ExecutionOutcome> {
        if self.defect == Defect::CheckThenAct {
            let transition = |slot: &_, at| execution::transition(id, slot, &command, at);
            return self.check_then_act(executions, id, transition).await;
        }
        self.execute(id, &command)
    }

    /// Applies `command` to the lease `id`.
    async fn apply_lease(&self, id: &RecordId, command: LeaseCommand) -> Result<LeaseOutcome> {
        if self.defect == Defect::CheckThenAct {
            let transition = |slot: &_, at| lease::transition(id, slot, &command, at);
            return self.check_then_act(leases, id, transition).await;
        }
        self.lease(id, &command)
    }

    /// Reads the record, awaits, then writes what `transition` made of the read: the race of a
    /// store whose transitions are not atomic.
    async fn check_then_act<S: Clone + Default, O>(
        &self,
        table: Table<S>,
        id: &RecordId,
        transition: impl FnOnce(&S, Timestamp) -> Step<S, O>,
    ) -> Result<O> {
        let key = self.stored_id(id);
        let read = table(&mut self.data.lock().unwrap())
            .0
            .get(&key)
            .map(|e| e.slot.clone())
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let step = transition(&read, self.read_clock());
        let mut data = self.data.lock().unwrap();
        let (entries, next_event) = table(&mut data);
        commit(entries.entry(key).or_default(), next_event, step)
    }

    /// The claim as this store takes it in.
    fn received(&self, id: &RecordId, request: &ClaimRequest) -> ClaimRequest {
        let mut request = request.clone();
        match self.defect {
            Defect::RequestIdIgnored => request.request_id = RequestId::random(),
            Defect::FingerprintIgnored => {
                let data = self.data.lock().unwrap();
                if let Some(record) = data
                    .executions
                    .get(&self.stored_id(id))
                    .and_then(|e| e.slot.record.as_ref())
                {
                    request.fingerprint = record.fingerprint.clone();
                }
            }
            _ => {}
        }
        request
    }

    /// Appends a copy of the last event of `id`'s history in `keyspace`, for the defect that logs
    /// `read`.
    fn log_read(&self, read: Read, keyspace: Keyspace, id: &RecordId) {
        if self.defect != Defect::ReadLogged(read) {
            return;
        }
        let mut data = self.data.lock().unwrap();
        let Data {
            executions,
            leases,
            next_event,
        } = &mut *data;
        let id = self.stored_id(id);
        let events = match keyspace {
            Keyspace::Execution => executions.get_mut(&id).map(|e| &mut e.events),
            Keyspace::Lease => leases.get_mut(&id).map(|e| &mut e.events),
        };
        if let Some(events) = events
            && let Some(mut event) = events.last().cloned()
        {
            *next_event += 1;
            event.id = *next_event;
            events.push(event);
        }
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

/// Leaves `step`'s answer and drops its writes.
fn unwritten<S, O>(step: &mut Step<S, O>) {
    step.slot = None;
    step.event = None;
}

/// One keyspace of the data, and the event counter.
type Table<S> = fn(&mut Data) -> (&mut HashMap<RecordId, Entry<S>>, &mut i64);

fn executions(data: &mut Data) -> (&mut HashMap<RecordId, Entry<ExecutionSlot>>, &mut i64) {
    (&mut data.executions, &mut data.next_event)
}

fn leases(data: &mut Data) -> (&mut HashMap<RecordId, Entry<LeaseSlot>>, &mut i64) {
    (&mut data.leases, &mut data.next_event)
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
        let command = ExecutionCommand::Claim(self.received(id, request));
        match self.apply(id, command).await? {
            ExecutionOutcome::Claim(ClaimOutcome::Busy {
                owner,
                token,
                lease_expires_at,
                ..
            }) if self.defect == Defect::BusyAlwaysClaimed => Ok(ClaimOutcome::Busy {
                state: ExecutionState::Claimed,
                owner,
                token,
                lease_expires_at,
            }),
            ExecutionOutcome::Claim(outcome) => Ok(outcome),
            other => panic!("{other:?}"),
        }
    }
    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        match self.apply(id, ExecutionCommand::Start { token }).await? {
            ExecutionOutcome::Started { lease_expires_at } => Ok(lease_expires_at),
            other => panic!("{other:?}"),
        }
    }
    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        let mut order: Vec<&Renewal> = renewals.iter().collect();
        if self.defect == Defect::HeartbeatAnswersByKeyspace {
            order.sort_by_key(|r| r.keyspace);
        }
        Ok(order
            .into_iter()
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
        self.apply(
            id,
            ExecutionCommand::Complete {
                token,
                result: result.clone(),
            },
        )
        .await
        .map(drop)
    }
    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.apply(id, ExecutionCommand::Abort { token, disposition })
            .await
            .map(drop)
    }
    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        let command = ExecutionCommand::Reconcile {
            owner: owner.clone(),
        };
        match self.apply(id, command).await? {
            ExecutionOutcome::Reconciling { token } => Ok(token),
            other => panic!("{other:?}"),
        }
    }
    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.apply(
            id,
            ExecutionCommand::ForceComplete {
                owner: owner.clone(),
                result: result.clone(),
            },
        )
        .await
        .map(drop)
    }
    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.apply(
            id,
            ExecutionCommand::ResetToClaimed {
                owner: owner.clone(),
            },
        )
        .await
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
            .get(&self.stored_id(id))
            .and_then(|e| e.slot.record.clone()))
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        if self.defect != Defect::PageSizeUnchecked {
            query.validate()?;
        }
        let mut now = self.clock.now();
        let mut filter = query.filter.clone();
        match self.defect {
            Defect::UncertainIgnoresExpiry if filter.uncertain => {
                filter.uncertain = false;
                filter.state = Some(sentinel_core::ExecutionState::Executing);
            }
            Defect::ListingDrops(dropped, beside) if dropped.is_in(&filter) => {
                let alone = Criterion::ALL.iter().filter(|c| c.is_in(&filter)).count() == 1;
                if beside.map_or(alone, |other| other.is_in(&filter)) {
                    dropped.clear(&mut filter);
                }
            }
            Defect::ListingLate(late) if late.is_in(&filter) && filter.state.is_some() => {
                now = now.saturating_sub(Duration::from_micros(1));
            }
            _ => {}
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
        if self.defect != Defect::PageSizeUnchecked {
            query.validate()?;
        }
        let data = self.data.lock().unwrap();
        let stored = self.stored_id(id);
        let events = match keyspace {
            Keyspace::Execution => data.executions.get(&stored).map(|e| e.events.clone()),
            Keyspace::Lease => data.leases.get(&stored).map(|e| e.events.clone()),
        };
        let repeats = self.defect == Defect::HistoryRepeatsCursor;
        let oldest_only = self.defect == Defect::HistoryOldestFirstOnly;
        let in_range = events.unwrap_or_default().into_iter().filter(|e| {
            query
                .after
                .is_none_or(|a| e.id > a || (repeats && e.id == a))
                && (oldest_only
                    || query
                        .before
                        .is_none_or(|b| e.id < b || (repeats && e.id == b)))
        });
        let limit = query.limit as usize;
        let events = if query.newest_first && !oldest_only {
            in_range.rev().take(limit).collect()
        } else {
            in_range.take(limit).collect()
        };
        drop(data);
        self.log_read(Read::History, keyspace, id);
        Ok(events)
    }
    async fn wait_for_change(
        &self,
        id: &RecordId,
        _since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        self.log_read(Read::WaitForChange, Keyspace::Execution, id);
        match self.defect {
            // Hears only of what changes from now on: whatever changed since `since` is missed.
            Defect::WaitMissesEarlierChange => Ok(
                match tokio::time::timeout(timeout, self.changed.notified()).await {
                    Ok(()) => Wait::Changed,
                    Err(_) => Wait::TimedOut,
                },
            ),
            Defect::WaitGivesUpEarly => {
                tokio::time::sleep(timeout.min(Duration::from_millis(30))).await;
                Ok(Wait::TimedOut)
            }
            _ => Ok(Wait::Unsupported),
        }
    }
    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        let mut request = request.clone();
        if self.defect == Defect::RequestIdIgnored {
            request.request_id = RequestId::random();
        }
        match self.apply_lease(id, LeaseCommand::Acquire(request)).await? {
            LeaseOutcome::Acquire(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }
    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.apply_lease(id, LeaseCommand::Release { token })
            .await
            .map(drop)
    }
    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        Ok(self
            .data
            .lock()
            .unwrap()
            .leases
            .get(&self.stored_id(id))
            .and_then(|e| e.slot.record.clone()))
    }
    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        if self.defect != Defect::PageSizeUnchecked {
            query.validate()?;
        }
        let items: Vec<_> = self
            .data
            .lock()
            .unwrap()
            .leases
            .values()
            .filter_map(|e| e.slot.record.clone())
            .filter(|r| r.namespace == query.namespace)
            .map(|r| (r.key.clone(), r))
            .collect();
        let listed = page(items, query.after.as_ref(), query.limit, self.defect);
        for record in &listed.items {
            self.log_read(Read::ListLeases, Keyspace::Lease, &record.id());
        }
        Ok(listed)
    }
}

struct MutantFactory(Defect);

/// A clock a second further on at every reading.
#[derive(Debug)]
struct Racing(ManualClock);

impl Clock for Racing {
    fn now(&self) -> Timestamp {
        self.0.advance(Duration::from_secs(1))
    }
}

fn clock_of(time: TimeSource, defect: Defect) -> Arc<dyn Clock> {
    match time {
        TimeSource::Server if defect == Defect::ServerClockStandsStill => {
            Arc::new(ManualClock::starting_at(Timestamp::now_system()))
        }
        TimeSource::Server if defect == Defect::ServerClockRaces => {
            Arc::new(Racing(ManualClock::starting_at(Timestamp::now_system())))
        }
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
            clock: clock_of(time, self.0),
            data: Arc::default(),
            changed: Arc::default(),
        })
    }
    async fn reopen(&self, store: &Mutant, time: TimeSource) -> Result<Mutant> {
        if let Defect::RestartForgetsTombstones(keyspace) = self.0 {
            let mut data = store.data.lock().unwrap();
            match keyspace {
                Keyspace::Execution => data
                    .executions
                    .values_mut()
                    .filter(|e| e.slot.record.is_none())
                    .for_each(|e| e.slot.last_token = None),
                Keyspace::Lease => data
                    .leases
                    .values_mut()
                    .filter(|e| e.slot.record.is_none())
                    .for_each(|e| e.slot.last_token = None),
            }
        }
        Ok(Mutant {
            defect: self.0,
            clock: clock_of(time, self.0),
            data: if self.0 == Defect::RestartLosesData {
                Arc::default()
            } else {
                Arc::clone(&store.data)
            },
            changed: Arc::clone(&store.changed),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_passes_every_case() {
    let report = sentinel_testkit::run_all(MemoryFactory).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.results.len(), sentinel_testkit::case_names().len());
}

/// The cases a defect must fail, and how.
struct Caught {
    defect: Defect,
    /// The cases that fail, in the suite's order.
    by: &'static [&'static str],
    /// Whether every other case passes (the whole suite runs).
    only: bool,
    /// Words each failure message holds.
    saying: Option<&'static str>,
}

/// `defect` fails the cases `by` (and perhaps others).
const fn among(defect: Defect, by: &'static [&'static str]) -> Caught {
    Caught {
        defect,
        by,
        only: false,
        saying: None,
    }
}

/// `defect` fails the cases `by` and no other.
const fn only(defect: Defect, by: &'static [&'static str]) -> Caught {
    Caught {
        only: true,
        ..among(defect, by)
    }
}

impl Caught {
    const fn saying(self, words: &'static str) -> Caught {
        Caught {
            saying: Some(words),
            ..self
        }
    }
}

async fn assert_caught(expected: &Caught) {
    let factory = MutantFactory(expected.defect);
    let report = if expected.only {
        sentinel_testkit::run_all(factory).await
    } else {
        sentinel_testkit::run(factory, expected.by).await
    };
    let shown = report.to_string();
    eprintln!("{:?}:\n{shown}", expected.defect);
    assert_eq!(report.failed(), expected.by, "{:?}", expected.defect);
    assert!(
        !report.passed(),
        "{:?}: the report says it passed",
        expected.defect
    );
    for (case, result) in &report.results {
        let Err(message) = result else {
            assert!(shown.contains(&format!("ok      {case}\n")), "{shown}");
            continue;
        };
        assert!(
            shown.contains(&format!("FAILED  {case}: {message}\n")),
            "{shown}"
        );
        if let Some(words) = expected.saying {
            assert!(message.contains(words), "{case}: {message}");
        }
    }
}

/// One test per defect, named for what it shows, and the table of them all.
macro_rules! defects {
    ($($test:ident: $expected:expr;)+) => {
        const CAUGHT: &[Caught] = &[$($expected),+];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                assert_caught(&$expected).await;
            }
        )+
    };
}

defects! {
    a_reconcile_that_keeps_the_old_token_fails: among(
        Defect::ReconcileKeepsToken,
        &["model_based", "tokens_strictly_increase", "expiry_is_exclusive"],
    );
    a_reconcile_of_a_live_execution_fails:
        among(Defect::ReconcileWhileAlive, &["expiry_is_exclusive"]).saying("StillAlive");
    a_completion_refused_once_the_lease_ran_out_fails:
        among(Defect::CompleteRequiresAlive, &["expiry_is_exclusive"])
            .saying("at the expiry instant");
    a_completion_refused_past_the_hard_expiry_fails:
        among(Defect::CompleteRequiresHard, &["expiry_is_exclusive"])
            .saying("an hour after the hard expiry");
    execution_renewals_past_the_hard_expiry_fail: among(
        Defect::HeartbeatIgnoresHard(Keyspace::Execution),
        &["heartbeat_batch"],
    )
    .saying("the execution renewed 4500 ms after its grant");
    lease_renewals_past_the_hard_expiry_fail:
        among(Defect::HeartbeatIgnoresHard(Keyspace::Lease), &["heartbeat_batch"])
            .saying("the lease renewed 4500 ms after its grant");
    a_restart_that_forgets_purged_tokens_fails: among(
        Defect::RestartForgetsTombstones(Keyspace::Execution),
        &["tokens_survive_restart"],
    )
    .saying("the purged key's tombstone survives a restart");
    a_restart_that_forgets_released_lease_tokens_fails: among(
        Defect::RestartForgetsTombstones(Keyspace::Lease),
        &["tokens_survive_restart"],
    )
    .saying("the released lease's last token survives a restart");
    logged_execution_renewals_fail: among(
        Defect::RenewalLogged(Keyspace::Execution),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a renewal logged something");
    logged_lease_renewals_fail: among(
        Defect::RenewalLogged(Keyspace::Lease),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a renewal logged something");
    logged_uncertain_claims_fail: among(
        Defect::ClaimAnswerLogged(Answer::Uncertain),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a claim answered uncertain logged something");
    logged_reconciling_claims_fail: among(
        Defect::ClaimAnswerLogged(Answer::Reconciling),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a claim answered reconciling logged something");
    logged_completed_claims_fail: among(
        Defect::ClaimAnswerLogged(Answer::Completed),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a claim answered completed logged something");
    logged_fingerprint_refusals_fail: among(
        Defect::ClaimAnswerLogged(Answer::FingerprintMismatch),
        &["event_log_ignores_reads_and_refusals"],
    )
    .saying("a claim refused for its fingerprint logged something");
    logged_lease_listings_fail:
        among(Defect::ReadLogged(Read::ListLeases), &["event_log_ignores_reads_and_refusals"])
            .saying("list_leases logged something");
    logged_history_reads_fail:
        among(Defect::ReadLogged(Read::History), &["event_log_ignores_reads_and_refusals"])
            .saying("reading a history logged something");
    logged_waits_fail:
        among(Defect::ReadLogged(Read::WaitForChange), &["event_log_ignores_reads_and_refusals"])
            .saying("wait_for_change logged something");
    busy_answers_that_misname_the_state_fail:
        among(Defect::BusyAlwaysClaimed, &["claim_race"]);
    transitions_that_are_not_atomic_fail: among(
        Defect::CheckThenAct,
        &[
            "claim_race",
            "reconcile_vs_complete_race",
            "lease_acquire_race",
            "once_with_concurrent_callers",
        ],
    );
    heartbeats_that_revive_an_expired_lease_fail:
        among(Defect::HeartbeatRevives, &["model_based", "renewal_vs_expiry_race"]);
    // The race may or may not interleave badly in a given run; these two catch it every time.
    a_completion_that_ignores_the_token_fails: among(
        Defect::CompleteIgnoresToken,
        &["model_based", "event_log_records_every_transition"],
    );
    a_fence_that_accepts_higher_tokens_fails: among(
        Defect::HigherTokenAccepted,
        &[
            "model_based",
            "event_log_ignores_reads_and_refusals",
            "heartbeat_batch",
        ],
    );
    a_purge_that_keeps_the_history_fails: among(
        Defect::PurgeKeepsHistory,
        &["purge_race", "purge_in_batches"],
    );
    a_purge_that_forgets_the_token_fails:
        among(Defect::PurgeForgetsToken, &["tokens_strictly_increase", "purge_in_batches"]);
    // One case checks every kind of filter, each on its own and in the pairs a store may serve by
    // a query of their own.
    a_listing_that_ignores_a_lone_state_fails:
        among(Defect::ListingDrops(Criterion::State, None), &["list_filters_and_pages"]);
    a_listing_that_ignores_a_lone_expired_fails:
        among(Defect::ListingDrops(Criterion::Expired, None), &["list_filters_and_pages"]);
    a_listing_that_ignores_a_lone_age_fails:
        among(Defect::ListingDrops(Criterion::OlderThan, None), &["list_filters_and_pages"]);
    a_listing_that_ignores_the_state_of_expired_records_fails: among(
        Defect::ListingDrops(Criterion::State, Some(Criterion::Expired)),
        &["list_filters_and_pages"],
    );
    a_listing_that_ignores_expiry_beside_a_state_fails: among(
        Defect::ListingDrops(Criterion::Expired, Some(Criterion::State)),
        &["list_filters_and_pages"],
    );
    a_listing_that_ignores_the_state_of_uncertain_records_fails: among(
        Defect::ListingDrops(Criterion::State, Some(Criterion::Uncertain)),
        &["list_filters_and_pages"],
    );
    a_listing_that_ignores_the_age_of_uncertain_records_fails: among(
        Defect::ListingDrops(Criterion::OlderThan, Some(Criterion::Uncertain)),
        &["list_filters_and_pages"],
    );
    a_listing_by_state_that_sees_expiry_late_fails:
        among(Defect::ListingLate(Criterion::Expired), &["expiry_is_exclusive"]);
    a_listing_by_state_that_sees_age_late_fails:
        among(Defect::ListingLate(Criterion::OlderThan), &["expiry_is_exclusive"]);
    a_release_that_forgets_the_token_fails:
        among(Defect::ReleaseForgetsToken, &["tokens_strictly_increase"]);
    a_repeated_completion_logged_twice_fails:
        among(Defect::RepeatedCompletionLogged, &["event_log_ignores_reads_and_refusals"]);
    an_uncertain_filter_that_ignores_expiry_fails:
        among(Defect::UncertainIgnoresExpiry, &["list_filters_and_pages"]);
    events_with_the_state_before_fail:
        among(Defect::EventStateBefore, &["event_log_records_every_transition"]);
    a_history_page_that_repeats_its_cursor_fails:
        among(Defect::HistoryRepeatsCursor, &["model_based"]);
    a_history_that_reads_only_from_the_oldest_end_fails: only(
        Defect::HistoryOldestFirstOnly,
        &["model_based", "event_log_records_every_transition"]
    );
    a_full_last_page_that_says_there_is_more_fails:
        among(Defect::FullLastPageHasNext, &["model_based", "list_filters_and_pages"]);
    a_wait_that_misses_an_earlier_change_fails:
        only(Defect::WaitMissesEarlierChange, &["waiting_misses_no_change"]);
    a_purge_that_fails_when_another_purged_first_fails:
        only(Defect::PurgeFailsOnARacingPurge, &["purge_race"]);
    a_listing_that_stops_after_one_batch_fails:
        only(Defect::ListingReadsOneBatch, &["list_pages_through_sparse_matches"]);
    // Its pages repeat forever: each listing case must see that `next` does not move forward,
    // not page on until the case's time limit.
    a_listing_that_ignores_its_cursor_fails_at_once: among(
        Defect::ListingIgnoresItsCursor,
        &[
            "keys_round_trip_and_never_collide",
            "list_filters_and_pages",
            "list_pages_through_sparse_matches",
        ],
    )
    .saying("moves forward");
    a_store_that_forgets_everything_on_restart_fails:
        among(Defect::RestartLosesData, &["tokens_survive_restart"]);
    a_server_clock_that_stands_still_fails:
        among(Defect::ServerClockStandsStill, &["server_clock"]);
    a_server_clock_that_races_fails: among(Defect::ServerClockRaces, &["server_clock"]);
    a_clock_read_as_a_double_fails: among(Defect::TimeInDoubles, &["numbers_stay_exact"]);
    namespaces_joined_to_keys_fail:
        among(Defect::NamespaceJoinedToKey, &["namespaces_are_separate"]);
    unchecked_page_sizes_fail:
        among(Defect::PageSizeUnchecked, &["invalid_input_writes_nothing"]);
    heartbeat_answers_out_of_order_fail:
        among(Defect::HeartbeatAnswersByKeyspace, &["heartbeat_batch"]);
    a_lease_alive_at_its_expiry_instant_fails: among(
        Defect::ExpiryInstantAlive,
        &["renewal_vs_expiry_race", "expiry_is_exclusive"],
    );
    forgotten_request_ids_fail:
        among(Defect::RequestIdIgnored, &["retries_after_a_lost_reply"]);
    lease_renewals_that_write_nothing_fail:
        among(Defect::LeaseRenewalNotWritten, &["lease_renews_under_heartbeat"]);
    ignored_fingerprints_fail:
        among(Defect::FingerprintIgnored, &["fingerprints_guard_the_key"]);
    a_wait_that_gives_up_early_fails:
        among(Defect::WaitGivesUpEarly, &["waiting_for_a_result"]);
    a_start_that_writes_nothing_fails:
        among(Defect::StartNotWritten, &["two_phase_execution"]);
}

#[test]
fn every_case_is_shown_to_catch_a_defect() {
    let shown: std::collections::BTreeSet<&str> =
        CAUGHT.iter().flat_map(|c| c.by.iter().copied()).collect();
    let never: Vec<_> = sentinel_testkit::case_names()
        .into_iter()
        .filter(|case| !shown.contains(case))
        .collect();
    assert!(never.is_empty(), "no defect is shown to fail {never:?}");
}

#[test]
fn the_manual_clock_is_what_the_cases_drive() {
    // The mutants read the clock the kit passes in, like a real store must.
    let clock = ManualClock::new();
    let before = clock.now();
    clock.advance(Duration::from_secs(1));
    assert!(clock.now() > before);
}
