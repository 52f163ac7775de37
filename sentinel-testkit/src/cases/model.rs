//! Case 1: random command sequences over a few keys, owners and both keyspaces, each step's
//! outcome and the resulting records and histories compared with the core's pure transition
//! functions. Proptest shrinks a failure to a minimal sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use sentinel_core::execution::{self, ExecutionCommand};
use sentinel_core::lease::{self, LeaseCommand};
use sentinel_core::store::{ListFilter, ListQuery, Renewal};
use sentinel_core::{
    ClaimRequest, CoordinationStore, Disposition, Error, EventDraft, ExecutionOutcome,
    ExecutionSlot, ExecutionState, FencingToken, Fingerprint, HistoryQuery, Key, Keyspace,
    LeaseOutcome, LeaseRequest, LeaseSlot, ManualClock, Namespace, RecordId, Rejection, RequestId,
    Step, Timestamp, Ttl,
};

use crate::StoreFactory;
use crate::harness::{Harness, bogus_token, owner, unique_namespace};

/// Keys with characters that trip naive key layouts.
const KEYS: [&str; 3] = ["k:0", "{k}:1", "k/2 ü"];

#[derive(Clone, Debug)]
enum Pick {
    Current,
    Older(u8),
    Bogus,
}

#[derive(Clone, Debug)]
enum Op {
    Claim {
        key: u8,
        owner: u8,
        start: bool,
        request: u8,
        fingerprint: Option<u8>,
    },
    Start(u8, Pick),
    Heartbeat(Vec<(Keyspace, u8, Pick)>),
    Complete(u8, Pick, u8),
    Abort(u8, Pick, bool),
    Reconcile(u8),
    ForceComplete(u8, u8),
    Reset(u8),
    Purge {
        older_ms: u16,
        limit: u8,
    },
    Acquire {
        key: u8,
        owner: u8,
        request: u8,
    },
    Release(u8, Pick),
    Advance(u16),
    /// Moves the clock to a record's lease expiry, one microsecond before it, or one after.
    ToExpiry(Keyspace, u8, i8),
    List {
        state: Option<u8>,
        uncertain: bool,
        expired: bool,
        older_ms: Option<u16>,
        limit: u8,
    },
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![6 => Just(Pick::Current), 2 => (0u8..3).prop_map(Pick::Older), 1 => Just(Pick::Bogus)]
}

fn keyspace() -> impl Strategy<Value = Keyspace> {
    prop_oneof![Just(Keyspace::Execution), Just(Keyspace::Lease)]
}

fn op() -> impl Strategy<Value = Op> {
    let k = || 0u8..KEYS.len() as u8;
    prop_oneof![
        4 => (k(), 0u8..3, any::<bool>(), 0u8..3, proptest::option::weighted(0.2, 0u8..2)).prop_map(
            |(key, owner, start, request, fingerprint)| Op::Claim { key, owner, start, request, fingerprint }
        ),
        2 => (k(), pick()).prop_map(|(k, p)| Op::Start(k, p)),
        3 => proptest::collection::vec((keyspace(), k(), pick()), 1..4).prop_map(Op::Heartbeat),
        3 => (k(), pick(), 0u8..3).prop_map(|(k, p, r)| Op::Complete(k, p, r)),
        2 => (k(), pick(), any::<bool>()).prop_map(|(k, p, n)| Op::Abort(k, p, n)),
        2 => k().prop_map(Op::Reconcile),
        1 => (k(), 0u8..3).prop_map(|(k, r)| Op::ForceComplete(k, r)),
        1 => k().prop_map(Op::Reset),
        1 => (0u16..4000, 1u8..5).prop_map(|(older_ms, limit)| Op::Purge { older_ms, limit }),
        3 => (k(), 0u8..3, 0u8..3).prop_map(|(key, owner, request)| Op::Acquire { key, owner, request }),
        2 => (k(), pick()).prop_map(|(k, p)| Op::Release(k, p)),
        4 => (0u16..1500).prop_map(Op::Advance),
        2 => (keyspace(), k(), -1i8..=1).prop_map(|(s, k, o)| Op::ToExpiry(s, k, o)),
        1 => (proptest::option::of(0u8..4), any::<bool>(), any::<bool>(), proptest::option::of(0u16..3000), 1u8..4)
            .prop_map(|(state, uncertain, expired, older_ms, limit)| Op::List { state, uncertain, expired, older_ms, limit }),
    ]
}

/// The model: the core's transition functions applied to in-memory slots and histories.
#[derive(Default)]
struct Model {
    executions: BTreeMap<u8, (ExecutionSlot, Vec<EventDraft>)>,
    leases: BTreeMap<u8, (LeaseSlot, Vec<EventDraft>)>,
    issued: BTreeMap<(Keyspace, u8), Vec<FencingToken>>,
}

impl Model {
    fn token(&self, keyspace: Keyspace, key: u8, pick: &Pick) -> FencingToken {
        let issued = self
            .issued
            .get(&(keyspace, key))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match pick {
            Pick::Current => issued.last().copied().unwrap_or_else(bogus_token),
            Pick::Older(n) => {
                let n = usize::from(*n) + 1;
                if n < issued.len() {
                    issued[issued.len() - 1 - n]
                } else {
                    bogus_token()
                }
            }
            Pick::Bogus => bogus_token(),
        }
    }

    fn execution(
        &mut self,
        key: u8,
        command: &ExecutionCommand,
        id: &RecordId,
        now: Timestamp,
    ) -> Result<ExecutionOutcome, Rejection> {
        let entry = self.executions.entry(key).or_default();
        let step = execution::transition(id, &entry.0, command, now);
        let before = entry.0.last_token;
        let outcome = apply(entry, step);
        if entry.0.last_token != before
            && let Some(token) = entry.0.last_token
        {
            self.issued
                .entry((Keyspace::Execution, key))
                .or_default()
                .push(token);
        }
        outcome
    }

    fn lease(
        &mut self,
        key: u8,
        command: &LeaseCommand,
        id: &RecordId,
        now: Timestamp,
    ) -> Result<LeaseOutcome, Rejection> {
        let entry = self.leases.entry(key).or_default();
        let step = lease::transition(id, &entry.0, command, now);
        let before = entry.0.last_token;
        let outcome = apply(entry, step);
        if entry.0.last_token != before
            && let Some(token) = entry.0.last_token
        {
            self.issued
                .entry((Keyspace::Lease, key))
                .or_default()
                .push(token);
        }
        outcome
    }
}

fn apply<S, O>(entry: &mut (S, Vec<EventDraft>), step: Step<S, O>) -> Result<O, Rejection> {
    if let Some(slot) = step.slot {
        entry.0 = slot;
    }
    if step.clears_history {
        entry.1.clear();
    }
    if let Some(event) = step.event {
        entry.1.push(event);
    }
    step.outcome
}

/// The store's answer as the model states it: an outcome or a rejection. Any other error fails
/// the case.
fn answer<T, O>(
    what: &str,
    result: Result<T, Error>,
    into: impl FnOnce(T) -> O,
) -> Result<O, Rejection> {
    match result {
        Ok(value) => Ok(into(value)),
        Err(Error::Rejected(rejection)) => Err(rejection),
        Err(error) => panic!("{what}: the store failed instead of answering: {error}"),
    }
}

fn ttl() -> Ttl {
    Ttl::with_hard(Duration::from_millis(1_000), Duration::from_millis(2_500)).expect("a valid ttl")
}

struct Run<'a, S> {
    store: &'a S,
    clock: &'a ManualClock,
    namespace: Namespace,
    model: Model,
}

impl<S: CoordinationStore> Run<'_, S> {
    fn id(&self, key: u8) -> RecordId {
        RecordId::new(
            self.namespace.clone(),
            Key::new(KEYS[usize::from(key)]).expect("a valid key"),
        )
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.clock.now();
        let store = self.store;
        let touched: Vec<(Keyspace, u8)> = match op {
            Op::Claim {
                key,
                owner: o,
                start,
                request,
                fingerprint,
            } => {
                let request = ClaimRequest {
                    owner: owner(&format!("w{o}")),
                    ttl: ttl(),
                    start: *start,
                    request_id: request_id(*request),
                    fingerprint: fingerprint
                        .map(|f| Fingerprint::new(format!("fp{f}")).expect("valid")),
                };
                let id = self.id(*key);
                let got = answer(
                    "claim",
                    store.claim(&id, &request).await,
                    ExecutionOutcome::Claim,
                );
                let want = self
                    .model
                    .execution(*key, &ExecutionCommand::Claim(request), &id, now);
                prop_assert_eq!(got, want, "claim of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Start(key, pick) => {
                let token = self.model.token(Keyspace::Execution, *key, pick);
                let id = self.id(*key);
                let got = answer("start", store.start(&id, token).await, |lease_expires_at| {
                    ExecutionOutcome::Started { lease_expires_at }
                });
                let want = self
                    .model
                    .execution(*key, &ExecutionCommand::Start { token }, &id, now);
                prop_assert_eq!(got, want, "start of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Heartbeat(items) => {
                let mut seen = BTreeSet::new();
                let mut renewals = Vec::new();
                for (keyspace, key, pick) in items {
                    // A batch names each held record once, as the client sends it.
                    if seen.insert((*keyspace, *key)) {
                        let token = self.model.token(*keyspace, *key, pick);
                        renewals.push((
                            *key,
                            Renewal {
                                keyspace: *keyspace,
                                id: self.id(*key),
                                token,
                            },
                        ));
                    }
                }
                let batch: Vec<Renewal> = renewals.iter().map(|(_, r)| r.clone()).collect();
                let got = match store.heartbeat(&batch).await {
                    Ok(results) => results,
                    Err(error) => {
                        panic!("heartbeat: the store failed instead of answering: {error}")
                    }
                };
                prop_assert_eq!(got.len(), batch.len(), "one result per renewal");
                for ((key, renewal), got) in renewals.iter().zip(got) {
                    let want = match renewal.keyspace {
                        Keyspace::Execution => self
                            .model
                            .execution(
                                *key,
                                &ExecutionCommand::Heartbeat {
                                    token: renewal.token,
                                },
                                &renewal.id,
                                now,
                            )
                            .map(|o| match o {
                                ExecutionOutcome::Renewed { lease_expires_at } => lease_expires_at,
                                other => panic!("the model renewed into {other:?}"),
                            }),
                        Keyspace::Lease => self
                            .model
                            .lease(
                                *key,
                                &LeaseCommand::Renew {
                                    token: renewal.token,
                                },
                                &renewal.id,
                                now,
                            )
                            .map(|o| match o {
                                LeaseOutcome::Renewed { lease_expires_at } => lease_expires_at,
                                other => panic!("the model renewed into {other:?}"),
                            }),
                    };
                    prop_assert_eq!(
                        got,
                        want,
                        "renewal of {} {:?}",
                        renewal.keyspace,
                        renewal.id.key
                    );
                }
                renewals.iter().map(|(key, r)| (r.keyspace, *key)).collect()
            }
            Op::Complete(key, pick, result) => {
                let token = self.model.token(Keyspace::Execution, *key, pick);
                let result = json!({ "receipt": result });
                let id = self.id(*key);
                let got = answer(
                    "complete",
                    store.complete(&id, token, &result).await,
                    |()| ExecutionOutcome::Completed,
                );
                let want = self.model.execution(
                    *key,
                    &ExecutionCommand::Complete { token, result },
                    &id,
                    now,
                );
                prop_assert_eq!(got, want, "completion of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Abort(key, pick, not_applied) => {
                let token = self.model.token(Keyspace::Execution, *key, pick);
                let disposition = if *not_applied {
                    Disposition::NotApplied
                } else {
                    Disposition::Uncertain
                };
                let id = self.id(*key);
                let got = answer("abort", store.abort(&id, token, disposition).await, |()| {
                    ExecutionOutcome::Aborted
                });
                let want = self.model.execution(
                    *key,
                    &ExecutionCommand::Abort { token, disposition },
                    &id,
                    now,
                );
                prop_assert_eq!(got, want, "abort of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Reconcile(key) => {
                let operator = owner("operator");
                let id = self.id(*key);
                let got = answer(
                    "reconcile",
                    store.reconcile(&id, &operator).await,
                    |token| ExecutionOutcome::Reconciling { token },
                );
                let want = self.model.execution(
                    *key,
                    &ExecutionCommand::Reconcile { owner: operator },
                    &id,
                    now,
                );
                prop_assert_eq!(got, want, "reconcile of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::ForceComplete(key, result) => {
                let operator = owner("operator");
                let result = json!({ "receipt": result, "forced": true });
                let id = self.id(*key);
                let got = answer(
                    "force_complete",
                    store.force_complete(&id, &operator, &result).await,
                    |()| ExecutionOutcome::ForceCompleted,
                );
                let command = ExecutionCommand::ForceComplete {
                    owner: operator,
                    result,
                };
                let want = self.model.execution(*key, &command, &id, now);
                prop_assert_eq!(got, want, "force_complete of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Reset(key) => {
                let operator = owner("operator");
                let id = self.id(*key);
                let got = answer(
                    "reset_to_claimed",
                    store.reset_to_claimed(&id, &operator).await,
                    |()| ExecutionOutcome::Reset,
                );
                let want = self.model.execution(
                    *key,
                    &ExecutionCommand::ResetToClaimed { owner: operator },
                    &id,
                    now,
                );
                prop_assert_eq!(got, want, "reset of {:?}", id.key);
                vec![(Keyspace::Execution, *key)]
            }
            Op::Purge { older_ms, limit } => self.purge(*older_ms, *limit, now).await?,
            Op::Acquire {
                key,
                owner: o,
                request,
            } => {
                let request = LeaseRequest {
                    owner: owner(&format!("w{o}")),
                    ttl: ttl(),
                    request_id: request_id(*request),
                };
                let id = self.id(*key);
                let got = answer(
                    "acquire_lease",
                    store.acquire_lease(&id, &request).await,
                    LeaseOutcome::Acquire,
                );
                let want = self
                    .model
                    .lease(*key, &LeaseCommand::Acquire(request), &id, now);
                prop_assert_eq!(got, want, "acquire of {:?}", id.key);
                vec![(Keyspace::Lease, *key)]
            }
            Op::Release(key, pick) => {
                let token = self.model.token(Keyspace::Lease, *key, pick);
                let id = self.id(*key);
                let got = answer(
                    "release_lease",
                    store.release_lease(&id, token).await,
                    |()| LeaseOutcome::Released,
                );
                let want = self
                    .model
                    .lease(*key, &LeaseCommand::Release { token }, &id, now);
                prop_assert_eq!(got, want, "release of {:?}", id.key);
                vec![(Keyspace::Lease, *key)]
            }
            Op::Advance(ms) => {
                self.clock.advance(Duration::from_millis(u64::from(*ms)));
                Vec::new()
            }
            Op::ToExpiry(keyspace, key, offset) => {
                let expiry = match keyspace {
                    Keyspace::Execution => self
                        .model
                        .executions
                        .get(key)
                        .and_then(|e| e.0.record.as_ref().map(|r| r.lease_expires_at)),
                    Keyspace::Lease => self
                        .model
                        .leases
                        .get(key)
                        .and_then(|e| e.0.record.as_ref().map(|r| r.lease_expires_at)),
                };
                if let Some(expiry) = expiry {
                    let target = Timestamp::from_micros(expiry.as_micros() + i64::from(*offset));
                    if target > now {
                        self.clock.set(target);
                    }
                }
                Vec::new()
            }
            Op::List {
                state,
                uncertain,
                expired,
                older_ms,
                limit,
            } => {
                let filter = ListFilter {
                    state: state.and_then(|s| ExecutionState::ALL.get(usize::from(s)).copied()),
                    uncertain: *uncertain,
                    expired: *expired,
                    older_than: older_ms.map(|ms| Duration::from_millis(u64::from(ms))),
                };
                self.list(filter, u32::from(*limit), now).await?;
                Vec::new()
            }
        };
        for (keyspace, key) in touched {
            self.compare(keyspace, key).await?;
        }
        Ok(())
    }

    /// Bulk purge: oldest first, at most `limit`. Records tied on their last transition time may
    /// be taken in any order, so the model follows the store's choice among equals.
    async fn purge(
        &mut self,
        older_ms: u16,
        limit: u8,
        now: Timestamp,
    ) -> Result<Vec<(Keyspace, u8)>, TestCaseError> {
        let older_than = Duration::from_millis(u64::from(older_ms));
        let cutoff = now.saturating_sub(older_than);
        let candidates: Vec<(Timestamp, u8)> = self
            .model
            .executions
            .iter()
            .filter_map(|(key, (slot, _))| {
                slot.record
                    .as_ref()
                    .filter(|r| execution::purgeable(r, cutoff))
                    .map(|r| (r.updated_at, *key))
            })
            .collect();
        let purged = match self
            .store
            .purge(&self.namespace, older_than, u32::from(limit))
            .await
        {
            Ok(n) => n,
            Err(error) => panic!("purge: the store failed instead of answering: {error}"),
        };
        let expected = candidates.len().min(usize::from(limit));
        prop_assert_eq!(purged, expected as u64, "purge count");
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        for (updated_at, key) in &candidates {
            let present = self
                .store
                .inspect(&self.id(*key))
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if present.is_none() {
                gone.push((*updated_at, *key))
            } else {
                kept.push((*updated_at, *key))
            }
        }
        prop_assert_eq!(gone.len(), expected, "purged records");
        for (g, _) in &gone {
            for (k, _) in &kept {
                prop_assert!(g <= k, "purge must take the oldest completed records first");
            }
        }
        for (_, key) in &gone {
            let id = self.id(*key);
            let outcome = self.model.execution(
                *key,
                &ExecutionCommand::Purge {
                    completed_before: cutoff,
                },
                &id,
                now,
            );
            prop_assert_eq!(outcome, Ok(ExecutionOutcome::Purged));
        }
        Ok(self
            .model
            .executions
            .keys()
            .map(|k| (Keyspace::Execution, *k))
            .collect())
    }

    async fn list(
        &self,
        filter: ListFilter,
        limit: u32,
        now: Timestamp,
    ) -> Result<(), TestCaseError> {
        let mut want: Vec<_> = self
            .model
            .executions
            .values()
            .filter_map(|(slot, _)| slot.record.clone())
            .filter(|r| filter.matches(r, now))
            .collect();
        want.sort_by(|a, b| a.key.as_str().as_bytes().cmp(b.key.as_str().as_bytes()));
        let mut got = Vec::new();
        let mut after = None;
        for _ in 0..=KEYS.len() {
            let query = ListQuery {
                namespace: self.namespace.clone(),
                filter: filter.clone(),
                after: after.clone(),
                limit,
            };
            let page = self
                .store
                .list(&query)
                .await
                .map_err(|e| TestCaseError::fail(format!("list: {e}")))?;
            prop_assert!(
                page.items.len() <= limit as usize,
                "a page holds at most `limit` records"
            );
            prop_assert!(
                query.after.is_none() || !page.items.is_empty(),
                "a page after a `next` is not empty (`next` is None on the last page)"
            );
            got.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        prop_assert_eq!(got, want, "list with {:?}, {} per page", filter, limit);
        Ok(())
    }

    async fn compare(&self, keyspace: Keyspace, key: u8) -> Result<(), TestCaseError> {
        let id = self.id(key);
        let (history, want_history) = match keyspace {
            Keyspace::Execution => {
                let got = self
                    .store
                    .inspect(&id)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("inspect: {e}")))?;
                let want = self
                    .model
                    .executions
                    .get(&key)
                    .and_then(|e| e.0.record.clone());
                prop_assert_eq!(got, want, "execution record {:?}", id.key);
                (
                    self.history(keyspace, &id).await?,
                    self.model.executions.get(&key).map(|e| e.1.clone()),
                )
            }
            Keyspace::Lease => {
                let got = self
                    .store
                    .inspect_lease(&id)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("inspect_lease: {e}")))?;
                let want = self.model.leases.get(&key).and_then(|e| e.0.record.clone());
                prop_assert_eq!(got, want, "lease record {:?}", id.key);
                (
                    self.history(keyspace, &id).await?,
                    self.model.leases.get(&key).map(|e| e.1.clone()),
                )
            }
        };
        let drafts: Vec<EventDraft> = history.iter().map(|e| e.draft()).collect();
        prop_assert_eq!(
            drafts,
            want_history.unwrap_or_default(),
            "history of {} {:?}",
            keyspace,
            id.key
        );
        for pair in history.windows(2) {
            prop_assert!(
                pair[0].id < pair[1].id,
                "event ids increase along a history"
            );
        }
        Ok(())
    }

    /// The history of a record, read whole, and checked against the same read two events at a
    /// time, each page after the last event of the page before, and again newest first, each
    /// page before the last event of the page before.
    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
    ) -> Result<Vec<sentinel_core::Event>, TestCaseError> {
        let read = |query: HistoryQuery| async move {
            self.store
                .history(keyspace, id, &query)
                .await
                .map_err(|e| TestCaseError::fail(format!("history: {e}")))
        };
        let all = read(HistoryQuery::default()).await?;
        for newest_first in [false, true] {
            let mut query = HistoryQuery {
                limit: 2,
                newest_first,
                ..HistoryQuery::default()
            };
            let mut paged = Vec::new();
            loop {
                let page = read(query).await?;
                let last = page.len() < 2;
                let cursor = page.last().map(|e| e.id);
                if newest_first {
                    query.before = cursor;
                } else {
                    query.after = cursor;
                }
                paged.extend(page);
                prop_assert!(paged.len() <= all.len(), "history pages repeat events");
                if last {
                    break;
                }
            }
            if newest_first {
                paged.reverse();
            }
            prop_assert_eq!(
                &paged,
                &all,
                "history of {:?}, two events a page, newest first: {}",
                id.key,
                newest_first
            );
        }
        Ok(all)
    }
}

/// Proptest settings: `PROPTEST_CASES` cases (256 by default), no failure files written into the
/// caller's crate.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Random command sequences, compared step by step with the core's transition functions.
pub async fn model_based<F: StoreFactory>(factory: &F) {
    let harness = Harness::new(factory, "model").await;
    let store = harness.store.clone();
    let clock = harness.clock.clone();
    let runtime = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(config());
        runner
            .run(&proptest::collection::vec(op(), 1..40), |ops| {
                let mut run = Run {
                    store: &store,
                    clock: &clock,
                    namespace: unique_namespace("model"),
                    model: Model::default(),
                };
                runtime.block_on(async {
                    for op in &ops {
                        run.step(op).await?;
                    }
                    for key in 0..KEYS.len() as u8 {
                        run.compare(Keyspace::Execution, key).await?;
                        run.compare(Keyspace::Lease, key).await?;
                    }
                    Ok(())
                })
            })
            .map_err(|e| e.to_string())
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => {
            panic!("[model_based] the store disagrees with the state machine: {failure}")
        }
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The request id numbered `n` (0..3): 0 and 1 share their first 64 bits and differ after them, 2
/// differs from both from the first hex digit on. Stores that compare a short prefix of the
/// request id first (the Redis store's fast claim path) then meet both a prefix that rules a
/// request out and one that only the whole id can tell apart.
fn request_id(n: u8) -> RequestId {
    RequestId::from_u128((u128::from(n / 2) << 124) | u128::from(n))
}
