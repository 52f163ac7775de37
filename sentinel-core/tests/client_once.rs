//! The `once` client on the memory store: replay, races, failures, panics, cancellation,
//! heartbeats, lost authority and the reconcile flow.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sentinel_core::{
    CoordinationStore, Disposition, Error, EventKind, ExecutionState, Failure, InvalidInput,
    ListFilter, LostReason, ManualClock, Once, OnceOptions, RejectReason, Sentinel, TimeSource,
};
use sentinel_memory::MemoryStore;
use support::{Renewals, TokioClock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    payment_id: String,
    amount_cents: u64,
}

/// The kinds of the events in `key`'s history, oldest first.
async fn kinds(sentinel: &Sentinel, key: &str) -> Vec<EventKind> {
    let events = sentinel.history(key).await.unwrap();
    events.iter().map(|e| e.kind).collect()
}

fn manual() -> (Sentinel, ManualClock) {
    let (store, clock) = MemoryStore::with_manual_clock();
    let sentinel = Sentinel::builder(store)
        .namespace("payments")
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    (sentinel, clock)
}

#[tokio::test]
async fn executes_once_then_replays_the_typed_result() {
    let (sentinel, _clock) = manual();
    let runs = AtomicUsize::new(0);
    let charge = |_| async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Failure>(Receipt {
            payment_id: "pay_1".into(),
            amount_cents: 9_900,
        })
    };
    let first = sentinel.once("order-1", charge).await.unwrap();
    assert!(first.is_executed() && !first.is_cached());
    assert_eq!(first.status(), Some(ExecutionState::Completed));
    let second: Once<Receipt> = sentinel
        .once("order-1", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(second.is_cached() && !second.is_executed());
    assert_eq!(second.value(), first.value());
    assert_eq!(second.token(), first.token());
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A cached value that does not fit the caller's type is a typed error, not a panic.
    let wrong: Result<Once<Vec<bool>>, _> =
        sentinel.once("order-1", |_| async { unreachable!() }).await;
    assert!(matches!(wrong, Err(Error::ResultDecode(_))));

    let kinds = kinds(&sentinel, "order-1").await;
    assert_eq!(kinds, [EventKind::Claimed, EventKind::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_callers_run_the_work_exactly_once_per_key() {
    let sentinel = Sentinel::builder(MemoryStore::new()).build().unwrap();
    for key in 0..200 {
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (sentinel, runs, barrier) =
                    (sentinel.clone(), Arc::clone(&runs), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    sentinel
                        .once(&format!("race-{key}"), |_| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<_, Failure>(key)
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut executed = 0;
        for task in tasks {
            let outcome = task.await.unwrap();
            match &outcome {
                Once::Executed { .. } => executed += 1,
                Once::Cached { value, .. } => assert_eq!(*value, key),
                Once::InProgress { .. } => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(executed, 1, "key {key}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "key {key}");
    }
}

#[tokio::test]
async fn an_error_leaves_the_execution_uncertain() {
    let (sentinel, _clock) = manual();
    let outcome: Once<()> = sentinel
        .once("order-2", |_| async {
            // `?` on any error: the charge may have gone through.
            Err(std::io::Error::other("gateway timed out"))?;
            Ok(())
        })
        .await
        .unwrap();
    let Once::Failed { failure, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failure.disposition(), Disposition::Uncertain);
    assert!(failure.downcast_ref::<std::io::Error>().is_some());
    assert!(outcome.is_uncertain());
    let again: Once<()> = sentinel
        .once("order-2", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(matches!(again, Once::Uncertain { .. }), "{again:?}");
    assert!(again.is_uncertain() && !again.is_execution_alive());
    let queue = sentinel
        .list(ListFilter::uncertain(), None, 10)
        .await
        .unwrap();
    assert_eq!(queue.items.len(), 1);
}

#[tokio::test]
async fn not_applied_makes_the_key_claimable_again() {
    let (sentinel, _clock) = manual();
    let declined: Once<String> = sentinel
        .once("order-3", |_| async {
            Err(Failure::not_applied("card declined before any charge"))
        })
        .await
        .unwrap();
    assert!(!declined.is_uncertain());
    assert_eq!(declined.status(), Some(ExecutionState::Claimed));
    let retried = sentinel
        .once("order-3", |_| async {
            Ok::<_, Failure>("charged".to_owned())
        })
        .await
        .unwrap();
    assert!(retried.is_executed());
    assert!(retried.token() > declined.token());
}

#[tokio::test]
async fn a_panic_is_caught_and_leaves_the_execution_uncertain() {
    let (sentinel, _clock) = manual();
    let outcome: Once<u8> = sentinel
        .once("order-4", |_| async {
            if true {
                panic!("gateway client bug");
            }
            Ok(1)
        })
        .await
        .unwrap();
    let Once::Panicked { message, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(message, "gateway client bug");
    assert!(outcome.is_uncertain());
    let again: Once<u8> = sentinel.once("order-4", |_| async { Ok(2) }).await.unwrap();
    assert!(matches!(again, Once::Uncertain { .. }), "{again:?}");
    assert_eq!(sentinel.held(), 0);
}

#[tokio::test]
async fn a_dropped_once_future_leaves_the_execution_uncertain_and_stops_heartbeats() {
    let (sentinel, _clock) = manual();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let worker = sentinel.clone();
    let task = tokio::spawn(async move {
        worker
            .once("order-5", |_| async move {
                started_tx.send(()).unwrap();
                std::future::pending::<Result<u8, Failure>>().await
            })
            .await
    });
    started_rx.await.unwrap();
    assert_eq!(sentinel.held(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        sentinel.held(),
        0,
        "heartbeats for a cancelled execution stop"
    );
    // The abort runs in the background; give it a moment.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let record = sentinel.inspect("order-5").await.unwrap().unwrap();
    assert_eq!(
        record.state,
        ExecutionState::Executing,
        "never completed, never re-claimable"
    );
    let again: Once<u8> = sentinel.once("order-5", |_| async { Ok(2) }).await.unwrap();
    assert!(matches!(again, Once::Uncertain { .. }), "{again:?}");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_carry_long_work_past_the_ttl_up_to_the_hard_ttl_and_no_further() {
    let store = MemoryStore::with_clock(TokioClock::new());
    let worker = Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let observer = Sentinel::builder(store)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let options = OnceOptions::new()
        .ttl(Duration::from_secs(1))
        .hard_ttl(Duration::from_secs(5));
    let started = tokio::time::Instant::now();

    let work = worker.once_with("long-job", &options, |ctx| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            ctx.is_authoritative(),
            "three ttls in, heartbeats still hold the lease"
        );
        let reason = ctx.authority_lost().await;
        let lost_after = started.elapsed();
        // Keep working past the hard ttl: nothing renews the lease any more.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, Failure>((reason, lost_after))
    });
    let watch = async {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let mid: Once<(LostReason, Duration)> = observer
            .once("long-job", |_| async { unreachable!() })
            .await
            .unwrap();
        assert!(mid.is_execution_alive(), "alive past its ttl: {mid:?}");
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let late: Once<(LostReason, Duration)> = observer
            .once("long-job", |_| async { unreachable!() })
            .await
            .unwrap();
        late
    };
    let (worked, late) = tokio::join!(work, watch);
    let Once::Executed {
        value: (reason, lost_after),
        ..
    } = worked.unwrap()
    else {
        panic!("the work completes")
    };
    assert_eq!(reason, LostReason::HardTtl);
    assert!(
        lost_after <= Duration::from_secs(5),
        "authority ends by the hard ttl, not after: {lost_after:?}"
    );
    assert!(
        lost_after >= Duration::from_millis(4_900),
        "heartbeats kept it until the hard ttl: {lost_after:?}"
    );
    // At 5.5 s the work still runs but its lease has ended: observers see it uncertain.
    assert!(matches!(late, Once::Uncertain { .. }), "{late:?}");
    let record = observer.inspect("long-job").await.unwrap().unwrap();
    assert_eq!(
        record.lease_expires_at, record.hard_expires_at,
        "renewed right up to the hard ttl"
    );
    assert_eq!(
        record.state,
        ExecutionState::Completed,
        "a late completion with the current token is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_renewals_signal_lost_authority_to_the_work() {
    let (store, sentinel) = support::renewing_client();
    store.set(Renewals::Refused);
    let started = tokio::time::Instant::now();
    let outcome = sentinel
        .once("order-6", |ctx| async move {
            let reason = ctx.authority_lost().await;
            assert!(!ctx.is_authoritative());
            Ok::<_, Failure>((format!("{reason:?}"), started.elapsed()))
        })
        .await
        .unwrap();
    let (reason, after) = outcome.into_value().unwrap();
    assert!(reason.starts_with("Rejected"), "{reason}");
    assert!(
        after < Duration::from_secs(3),
        "signalled at the first refused renewal, not at expiry: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_signals_lost_authority_no_later_than_the_ttl() {
    let (store, sentinel) = support::renewing_client();
    store.set(Renewals::Unreachable);
    let started = tokio::time::Instant::now();
    let outcome = sentinel
        .once("order-7", |ctx| async move {
            let reason = ctx.authority_lost().await;
            Ok::<_, Failure>((reason, started.elapsed()))
        })
        .await
        .unwrap();
    let (reason, after) = outcome.into_value().unwrap();
    assert_eq!(reason, LostReason::Expired);
    assert!(after <= Duration::from_secs(3), "{after:?}");
    assert!(
        store.heartbeats.lock().unwrap().len() >= 2,
        "the heartbeat kept retrying"
    );
}

/// The client's deadline runs from when the claim was sent, not from when its answer came: the
/// store measured the lease from when it applied the claim (DESIGN §4). With the answer 2 s late
/// and no renewal getting through, authority is lost 3 s (the ttl) after the call began, not 5 s.
#[tokio::test(start_paused = true)]
async fn the_deadline_runs_from_when_the_claim_was_sent() {
    let (store, sentinel) = support::renewing_client();
    *store.slow_replies.lock().unwrap() = Duration::from_secs(2);
    store.set(Renewals::Unreachable);
    let started = tokio::time::Instant::now();
    let outcome = sentinel
        .once("order-8", |ctx| async move {
            let began = started.elapsed();
            let reason = ctx.authority_lost().await;
            Ok::<_, Failure>((began, reason, started.elapsed()))
        })
        .await
        .unwrap();
    let (began, reason, lost) = outcome.into_value().unwrap();
    assert!(
        began >= Duration::from_secs(2),
        "the work began at {began:?}"
    );
    assert_eq!(reason, LostReason::Expired);
    assert!(lost <= Duration::from_secs(3), "lost at {lost:?}");
}

#[tokio::test(start_paused = true)]
async fn one_heartbeat_call_renews_every_held_execution_and_lease() {
    let (store, sentinel) = support::renewing_client();
    let mut guards = Vec::new();
    for n in 0..5 {
        guards.push(
            sentinel
                .lease(&format!("lease-{n}"))
                .await
                .unwrap()
                .acquired()
                .unwrap(),
        );
    }
    let mut works = tokio::task::JoinSet::new();
    for n in 0..5 {
        let sentinel = sentinel.clone();
        works.spawn(async move {
            sentinel
                .once(&format!("job-{n}"), |_| async {
                    tokio::time::sleep(Duration::from_millis(9_500)).await;
                    Ok::<_, Failure>(())
                })
                .await
        });
    }
    while let Some(outcome) = works.join_next().await {
        assert!(outcome.unwrap().unwrap().is_executed());
    }
    let calls = store.heartbeats.lock().unwrap().clone();
    assert!(
        calls.len() >= 9,
        "one tick per second (a third of the ttl) for 9.5 seconds: {calls:?}"
    );
    assert!(
        calls.iter().all(|&n| n == 10),
        "every tick renews all ten held records in one call: {calls:?}"
    );
    assert!(guards.iter().all(|g| g.is_held()));
}

#[tokio::test]
async fn reconcile_then_force_complete_replays_the_known_result() {
    let (sentinel, _clock) = manual();
    let died: Once<Receipt> = sentinel
        .once("order-8", |_| async {
            Err(Failure::uncertain("worker lost mid-charge"))
        })
        .await
        .unwrap();
    assert!(died.is_uncertain());
    let token = sentinel.reconcile("order-8").await.unwrap();
    assert!(token > died.token());
    let busy: Once<Receipt> = sentinel
        .once("order-8", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(matches!(busy, Once::Reconciling { .. }));
    let receipt = Receipt {
        payment_id: "pay_8".into(),
        amount_cents: 100,
    };
    sentinel.force_complete("order-8", &receipt).await.unwrap();
    let replay: Once<Receipt> = sentinel
        .once("order-8", |_| async { unreachable!() })
        .await
        .unwrap();
    assert_eq!(replay.into_value(), Some(receipt));
    let kinds = kinds(&sentinel, "order-8").await;
    assert_eq!(
        kinds,
        [
            EventKind::Claimed,
            EventKind::Aborted,
            EventKind::Reconciling,
            EventKind::ForceCompleted
        ]
    );
}

#[tokio::test]
async fn reconcile_then_reset_runs_the_work_again() {
    let (sentinel, _clock) = manual();
    let _: Once<u8> = sentinel
        .once("order-9", |_| async { Err(Failure::uncertain("lost")) })
        .await
        .unwrap();
    sentinel.reconcile("order-9").await.unwrap();
    sentinel.reset_to_claimed("order-9").await.unwrap();
    let rerun = sentinel
        .once("order-9", |_| async { Ok::<_, Failure>(9u8) })
        .await
        .unwrap();
    assert!(rerun.is_executed());
    assert_eq!(rerun.into_value(), Some(9));
}

#[tokio::test(start_paused = true)]
async fn reconcile_and_reset_whose_replies_were_lost_succeed_on_their_retry() {
    // Each is applied and its reply lost; the client's retry finds the record already moved on
    // (reconciling, then claimed) by this client: that is success, not a wrong-state refusal.
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    let died: Once<u8> = sentinel
        .once("pay-5", |_| async {
            Err(std::io::Error::other("connection reset").into())
        })
        .await
        .unwrap();
    assert!(died.is_uncertain());
    store.lost_reconcile_replies.store(1, Ordering::SeqCst);
    let token = sentinel.reconcile("pay-5").await.unwrap();
    let record = sentinel.inspect("pay-5").await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.token),
        (ExecutionState::Reconciling, token)
    );
    store.lost_reset_replies.store(1, Ordering::SeqCst);
    sentinel.reset_to_claimed("pay-5").await.unwrap();
    assert_eq!(
        kinds(&sentinel, "pay-5").await,
        [
            EventKind::Claimed,
            EventKind::Aborted,
            EventKind::Reconciling,
            EventKind::Reset
        ],
        "each applied once"
    );
    // Refusals that are not this client's own earlier attempt are still reported.
    let other = Sentinel::builder(store.clone()).build().unwrap();
    let again: Once<u8> = other
        .once("pay-5", |_| async {
            Err(std::io::Error::other("reset").into())
        })
        .await
        .unwrap();
    assert!(again.is_uncertain());
    other.reconcile("pay-5").await.unwrap();
    store.lost_reconcile_replies.store(1, Ordering::SeqCst);
    let refused = sentinel.reconcile("pay-5").await.unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| r.reason.clone()),
        Some(RejectReason::WrongState),
        "reconciling, but by another client"
    );
    other.reset_to_claimed("pay-5").await.unwrap();
    store.lost_reset_replies.store(1, Ordering::SeqCst);
    let refused = sentinel.reset_to_claimed("pay-5").await.unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| r.reason.clone()),
        Some(RejectReason::WrongState),
        "reset, but by another client"
    );
}

#[tokio::test]
async fn reconcile_of_a_live_execution_is_refused() {
    let (sentinel, _clock) = manual();
    let observer = sentinel.clone();
    let outcome = sentinel
        .once("order-10", |_| async move {
            let refused = observer.reconcile("order-10").await.unwrap_err();
            Ok::<_, Failure>(refused.rejection().map(|r| r.reason.clone()))
        })
        .await
        .unwrap();
    assert_eq!(outcome.into_value(), Some(Some(RejectReason::StillAlive)));
}

#[tokio::test]
async fn a_stale_workers_completion_is_rejected_after_reconcile() {
    let (store, clock) = MemoryStore::with_manual_clock();
    let stale = Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let operator = Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let outcome = stale
        .once("order-11", |_| async {
            // The worker freezes past its lease; an operator reconciles meanwhile.
            clock.advance(Duration::from_secs(6));
            operator.reconcile("order-11").await.unwrap();
            Ok::<_, Failure>("charged late".to_owned())
        })
        .await
        .unwrap();
    let Once::CompletionFailed { value, error, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(value, "charged late");
    assert_eq!(error.rejection().unwrap().reason, RejectReason::Fenced);
    assert!(outcome.is_uncertain());
    assert_eq!(outcome.status(), Some(ExecutionState::Reconciling));
    let record = operator.inspect("order-11").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Reconciling);
    let history = operator.history("order-11").await.unwrap();
    let rejected = history
        .iter()
        .find(|e| e.kind == EventKind::CompletionRejected)
        .unwrap();
    assert_eq!(
        rejected.detail.as_ref().unwrap()["result"],
        "charged late",
        "the operator can see the late result"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error_and_writes_nothing() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = Sentinel::builder(store.clone())
        .namespace("ns")
        .max_result_bytes(64)
        .build()
        .unwrap();
    let work = |_| async { Ok::<_, Failure>(1u8) };
    let invalid = |r: Result<Once<u8>, Error>| match r {
        Err(Error::InvalidInput(e)) => e,
        other => panic!("expected invalid input, got {other:?}"),
    };
    assert_eq!(
        invalid(sentinel.once("", work).await),
        InvalidInput::Empty { what: "key" }
    );
    assert!(matches!(
        invalid(sentinel.once(&"k".repeat(1025), work).await),
        InvalidInput::TooLong {
            len: 1025,
            max: 1024,
            ..
        }
    ));
    assert_eq!(
        invalid(sentinel.once("a\0b", work).await),
        InvalidInput::Nul { what: "key" }
    );
    let zero = OnceOptions::new().ttl(Duration::ZERO);
    assert!(matches!(
        invalid(sentinel.once_with("k", &zero, work).await),
        InvalidInput::TtlTooShort { .. }
    ));
    let below = OnceOptions::new()
        .ttl(Duration::from_secs(2))
        .hard_ttl(Duration::from_secs(1));
    assert!(matches!(
        invalid(sentinel.once_with("k", &below, work).await),
        InvalidInput::HardTtlBelowTtl { .. }
    ));
    let fingerprint = OnceOptions::new().fingerprint("");
    assert!(matches!(
        invalid(sentinel.once_with("k", &fingerprint, work).await),
        InvalidInput::Empty { .. }
    ));
    assert!(matches!(
        sentinel.lease("").await,
        Err(Error::InvalidInput(InvalidInput::Empty { .. }))
    ));
    assert!(matches!(
        sentinel.force_complete("k", &"x".repeat(100)).await,
        Err(Error::InvalidInput(InvalidInput::ResultTooLarge { .. }))
    ));
    assert!(matches!(
        sentinel.list(ListFilter::default(), None, 0).await,
        Err(Error::InvalidInput(_))
    ));
    for builder in [
        Sentinel::builder(store.clone()).namespace(""),
        Sentinel::builder(store.clone()).namespace("n".repeat(1025)),
        Sentinel::builder(store.clone()).namespace("a\0b"),
        Sentinel::builder(store.clone()).ttl(Duration::ZERO),
        Sentinel::builder(store.clone())
            .ttl(Duration::from_secs(5))
            .hard_ttl(Duration::from_secs(1)),
    ] {
        assert!(matches!(builder.build(), Err(Error::InvalidInput(_))));
    }
    let namespace = sentinel.namespace().clone();
    let page = store
        .list(&sentinel_core::ListQuery::new(namespace.clone()))
        .await
        .unwrap();
    assert!(page.items.is_empty(), "nothing was written: {page:?}");
    let leases = store
        .list_leases(&sentinel_core::LeaseListQuery::new(namespace))
        .await
        .unwrap();
    assert!(leases.items.is_empty());
}

#[tokio::test]
async fn an_oversized_result_is_not_recorded_and_the_execution_is_left_uncertain() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = Sentinel::builder(store)
        .max_result_bytes(16)
        .build()
        .unwrap();
    let outcome = sentinel
        .once("big", |_| async { Ok::<_, Failure>("y".repeat(100)) })
        .await
        .unwrap();
    let Once::CompletionFailed { error, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(matches!(
        error,
        Error::InvalidInput(InvalidInput::ResultTooLarge { len: 102, max: 16 })
    ));
    let again: Once<String> = sentinel
        .once("big", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(matches!(again, Once::Uncertain { .. }));
}

#[tokio::test]
async fn a_result_of_exactly_the_limit_is_recorded() {
    let sentinel = Sentinel::builder(MemoryStore::new())
        .max_result_bytes(16)
        .build()
        .unwrap();
    // 14 characters and their quotes: 16 bytes of JSON.
    let fits = sentinel
        .once("k", |_| async { Ok::<_, Failure>("y".repeat(14)) })
        .await
        .unwrap();
    assert!(fits.is_executed(), "{fits:?}");
    let over = sentinel
        .once("j", |_| async { Ok::<_, Failure>("y".repeat(15)) })
        .await
        .unwrap();
    assert!(matches!(over, Once::CompletionFailed { .. }), "{over:?}");
}

#[tokio::test]
async fn dropping_the_client_ends_its_heartbeat_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let sentinel = Sentinel::builder(MemoryStore::new()).build().unwrap();
    let before = metrics.num_alive_tasks();
    let outcome = sentinel
        .once("k", |_| async { Ok::<_, Failure>(1u8) })
        .await
        .unwrap();
    assert!(outcome.is_executed());
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the heartbeat task");
    drop(sentinel);
    for _ in 0..100 {
        if metrics.num_alive_tasks() == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the heartbeat task outlived its client");
}

#[tokio::test]
async fn the_same_key_in_two_namespaces_is_two_executions() {
    let store = MemoryStore::with_time(TimeSource::Manual(ManualClock::new()));
    let a = Sentinel::builder(store.clone())
        .namespace("a:b")
        .build()
        .unwrap();
    let b = Sentinel::builder(store).namespace("a").build().unwrap();
    let x = a
        .once("c", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    let y = b
        .once("b:c", |_| async { Ok::<_, Failure>(2) })
        .await
        .unwrap();
    assert!(x.is_executed() && y.is_executed());
}

#[tokio::test(start_paused = true)]
async fn a_lost_claim_reply_is_adopted_by_the_retry_not_left_uncertain() {
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.lost_claim_replies.store(1, Ordering::SeqCst);
    let outcome = sentinel
        .once("pay-1", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    assert!(outcome.is_executed());
    assert_eq!(
        store.claims.load(Ordering::SeqCst),
        2,
        "one lost reply, one retry"
    );
    let kinds = kinds(&sentinel, "pay-1").await;
    assert_eq!(
        kinds,
        [EventKind::Claimed, EventKind::Completed],
        "one claim, adopted by the retry"
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_every_reply_was_lost_is_given_up_not_left_uncertain() {
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.lost_claim_replies.store(3, Ordering::SeqCst);
    let runs = AtomicUsize::new(0);
    let failed: Result<Once<u8>, _> = sentinel
        .once("pay-2", |_| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        })
        .await;
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // The claim was applied: it holds the key for now, but no code runs under it...
    assert_eq!(
        sentinel.inspect("pay-2").await.unwrap().unwrap().state,
        ExecutionState::Executing
    );
    // ...so the client gives it up as not applied, in the background.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = sentinel.inspect("pay-2").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Claimed);
    let retried = sentinel
        .once("pay-2", |_| async { Ok::<_, Failure>(2u8) })
        .await
        .unwrap();
    assert!(
        retried.is_executed(),
        "claimable at once, never uncertain: {retried:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_once_dropped_while_its_claim_is_unanswered_leaves_it_to_expire_uncertain() {
    // The claim is applied, its reply lost, and the caller's timeout drops `once` during the
    // retry's pause. Meanwhile others are told the key is in progress and may let their
    // deliveries go: the claim must not be made claimable behind their backs. It expires as
    // uncertain, as a worker that died would, for the reconciler.
    let (memory, clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    store.lost_claim_replies.store(1, Ordering::SeqCst);
    let runs = AtomicUsize::new(0);
    let dropped = tokio::time::timeout(
        Duration::from_millis(10),
        sentinel.once("pay-3", |_| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failure>(1u8)
        }),
    )
    .await;
    assert!(dropped.is_err(), "dropped while the claim was unanswered");
    let other: Once<u8> = sentinel.once("pay-3", |_| async { Ok(2) }).await.unwrap();
    assert!(matches!(other, Once::InProgress { .. }), "{other:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        sentinel.inspect("pay-3").await.unwrap().unwrap().state,
        ExecutionState::Executing,
        "never given up behind the back of whoever was told it was in progress"
    );
    clock.advance(Duration::from_secs(6));
    let later: Once<u8> = sentinel.once("pay-3", |_| async { Ok(3) }).await.unwrap();
    assert!(matches!(later, Once::Uncertain { .. }), "{later:?}");
}

#[tokio::test(start_paused = true)]
async fn a_not_applied_failure_whose_abort_failed_is_given_up_in_the_background() {
    // The work says nothing was applied, and the store cannot be reached to record the abort
    // (three tries, then the first background try): the client keeps trying, and the key becomes
    // claimable instead of turning uncertain.
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.failed_aborts.store(4, Ordering::SeqCst);
    let failed: Once<u8> = sentinel
        .once("pay-4", |_| async {
            Err(Failure::not_applied("card declined"))
        })
        .await
        .unwrap();
    assert!(
        matches!(failed, Once::Failed { .. }) && !failed.is_uncertain(),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.failed_aborts.load(Ordering::SeqCst), 0);
    let record = sentinel.inspect("pay-4").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Claimed);
    let retried = sentinel
        .once("pay-4", |_| async { Ok::<_, Failure>(2u8) })
        .await
        .unwrap();
    assert!(retried.is_executed(), "{retried:?}");
}

#[tokio::test(start_paused = true)]
async fn a_completion_the_store_could_not_take_is_sent_again_in_the_background() {
    // The work charged the card; the store is unreachable for longer than the client's own
    // retries. The outcome says the completion was not recorded (uncertain, honestly), but the
    // result is known and safe to send again: once the store is back it is recorded, and the key
    // replays it instead of turning uncertain.
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.failed_completions.store(5, Ordering::SeqCst);
    let charged = sentinel
        .once("pay-6", |_| async { Ok::<_, Failure>("ch_6".to_owned()) })
        .await
        .unwrap();
    assert!(
        matches!(charged, Once::CompletionFailed { .. }) && charged.is_uncertain(),
        "{charged:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.failed_completions.load(Ordering::SeqCst), 0);
    let replay: Once<String> = sentinel
        .once("pay-6", |_| async { unreachable!("completed") })
        .await
        .unwrap();
    assert_eq!(
        replay.value().map(String::as_str),
        Some("ch_6"),
        "{replay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_completion_sent_in_the_background_backs_off_and_stops_at_a_refusal() {
    // The client's three attempts and the background's first three fail; then an operator
    // reconciles the expired execution, and the background's fourth attempt is refused: that
    // ends it (the token is fenced, sending again cannot help).
    let (memory, clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.failed_completions.store(6, Ordering::SeqCst);
    let charged = sentinel
        .once("pay-10", |_| async { Ok::<_, Failure>(10u8) })
        .await
        .unwrap();
    assert!(
        matches!(charged, Once::CompletionFailed { .. }),
        "{charged:?}"
    );
    let sent_by_the_call = store.completions.lock().unwrap().len();
    assert_eq!(sent_by_the_call, 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    clock.advance(Duration::from_secs(3600));
    let operator = Sentinel::builder(store.clone()).build().unwrap();
    operator.reconcile("pay-10").await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let sent = store.completions.lock().unwrap().clone();
    let background: Vec<Duration> = sent[sent_by_the_call..]
        .iter()
        .map(|at| *at - sent[sent_by_the_call])
        .collect();
    assert_eq!(
        background,
        [0, 100, 300, 700].map(Duration::from_millis),
        "pauses of 100, 200 and 400 ms, and nothing after the refusal"
    );
}

#[tokio::test(start_paused = true)]
async fn a_once_dropped_while_recording_its_outcome_still_records_it() {
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    // Dropped during the completion's retry pause: the result is recorded in the background.
    store.failed_completions.store(1, Ordering::SeqCst);
    let dropped = tokio::time::timeout(
        Duration::from_millis(10),
        sentinel.once("pay-7", |_| async { Ok::<_, Failure>(7u8) }),
    )
    .await;
    assert!(dropped.is_err());
    // Dropped during the abort's retry pause of a not-applied failure: the abort is recorded in
    // the background, and the key is claimable, not left to turn uncertain.
    store.failed_aborts.store(1, Ordering::SeqCst);
    let dropped = tokio::time::timeout(
        Duration::from_millis(10),
        sentinel.once("pay-8", |_| async {
            Err::<u8, _>(Failure::not_applied("declined"))
        }),
    )
    .await;
    assert!(dropped.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replay: Once<u8> = sentinel
        .once("pay-7", |_| async { unreachable!("completed") })
        .await
        .unwrap();
    assert_eq!(replay.value(), Some(&7), "{replay:?}");
    let record = sentinel.inspect("pay-8").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Claimed);
}

#[tokio::test]
async fn a_wait_without_end_is_a_wait_without_deadline() {
    // `Duration::MAX` cannot be added to the clock: it means no deadline, not a panic (which,
    // after the claim was applied, would leave a phantom execution behind).
    let (sentinel, _clock) = manual();
    let forever = OnceOptions::new().wait(Duration::MAX);
    let fresh: Once<u8> = sentinel
        .once_with("order-10", &forever, |_| async { Ok(1) })
        .await
        .unwrap();
    assert!(fresh.is_executed(), "{fresh:?}");
    let (finish_tx, held) = support::holding(&sentinel, "order-11", 7).await;
    let waiter = sentinel.clone();
    let waited = tokio::spawn(async move {
        waiter
            .once_with("order-11", &forever, |_| async { Ok::<_, Failure>(8u8) })
            .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    finish_tx.send(()).unwrap();
    assert!(held.await.unwrap().unwrap().is_executed());
    let waited = waited.await.unwrap().unwrap();
    assert_eq!(waited.value(), Some(&7), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_claim_the_server_ran_after_the_client_gave_up_is_found_and_given_up() {
    // Every attempt timed out, and the server ran the claim 300 ms later all the same: the
    // background look for it must not stop at its first look (100 ms, nothing there yet).
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    *store.late_store.lock().unwrap() = Some(store.inner().clone());
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.late_claims.store(3, Ordering::SeqCst);
    let failed: Result<Once<u8>, _> = sentinel.once("pay-9", |_| async { Ok(1) }).await;
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let record = sentinel.inspect("pay-9").await.unwrap().unwrap();
    assert_eq!(
        record.state,
        ExecutionState::Claimed,
        "the late claim was found and given up as not applied"
    );
    let retried: Once<u8> = sentinel.once("pay-9", |_| async { Ok(2) }).await.unwrap();
    assert!(retried.is_executed(), "{retried:?}");
}

#[tokio::test(start_paused = true)]
async fn giving_up_a_lost_claim_never_touches_another_workers_execution() {
    // Every claim attempt of `a` failed before reaching the store: nothing of `a`'s was applied,
    // but `a` cannot know that and looks for its claim in the background. Meanwhile `b` claims
    // the key and works: `a` must leave `b`'s execution alone.
    let store = support::faulty(MemoryStore::with_clock(TokioClock::new()));
    let a = Sentinel::builder(store.clone()).build().unwrap();
    let b = Sentinel::builder(store.clone()).build().unwrap();
    store.failed_claims.store(3, Ordering::SeqCst);
    let failed: Result<Once<u8>, _> = a.once("pay-3", |_| async { Ok(1) }).await;
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    let outcome = b
        .once("pay-3", |_| async {
            // Long enough for every look `a` takes (about a minute in all).
            tokio::time::sleep(Duration::from_secs(90)).await;
            Ok::<_, Failure>(2u8)
        })
        .await
        .unwrap();
    assert!(outcome.is_executed(), "{outcome:?}");
    let kinds = kinds(&b, "pay-3").await;
    assert_eq!(kinds, [EventKind::Claimed, EventKind::Completed]);
}

#[tokio::test]
async fn once_spends_two_store_calls_on_a_fresh_key_and_one_on_a_completed_key() {
    // DESIGN §6: claim (started) and complete; a replay, a busy or an uncertain key is the claim
    // alone; a lease is one call to acquire and one to release. Nothing else, and
    // nothing left behind once the call returned. Counts are cumulative.
    let store = sentinel_testkit::Counted::counting(MemoryStore::new());
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    let calls_so_far = async |expected: &[(&'static str, u64)]| {
        // Anything the call left running gets its chance to reach the store.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let want: std::collections::BTreeMap<_, _> = expected.iter().copied().collect();
        assert_eq!(store.counts(), want);
    };
    let fresh = sentinel
        .once("k", |_| async { Ok::<_, Failure>(1u8) })
        .await
        .unwrap();
    assert!(fresh.is_executed());
    calls_so_far(&[("claim", 1), ("complete", 1)]).await;
    let cached: Once<u8> = sentinel
        .once("k", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(cached.is_cached());
    calls_so_far(&[("claim", 2), ("complete", 1)]).await;
    let failed: Once<u8> = sentinel
        .once("j", |_| async {
            Err(Failure::uncertain("gateway timed out"))
        })
        .await
        .unwrap();
    assert!(failed.is_uncertain());
    calls_so_far(&[("abort", 1), ("claim", 3), ("complete", 1)]).await;
    // An uncertain key, and a busy one: the claim alone.
    let uncertain: Once<u8> = sentinel
        .once("j", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(uncertain.is_uncertain());
    calls_so_far(&[("abort", 1), ("claim", 4), ("complete", 1)]).await;
    let (hold, holder) = support::holding(&sentinel, "b", 2).await;
    let busy: Once<u8> = sentinel
        .once("b", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(busy.is_execution_alive(), "{busy:?}");
    calls_so_far(&[("abort", 1), ("claim", 6), ("complete", 1)]).await;
    hold.send(()).unwrap();
    assert!(holder.await.unwrap().unwrap().is_executed());
    calls_so_far(&[("abort", 1), ("claim", 6), ("complete", 2)]).await;
    // A lease: one call to acquire it, one to release it.
    let guard = sentinel.lease("l").await.unwrap().acquired().unwrap();
    calls_so_far(&[
        ("abort", 1),
        ("acquire_lease", 1),
        ("claim", 6),
        ("complete", 2),
    ])
    .await;
    guard.release().await.unwrap();
    calls_so_far(&[
        ("abort", 1),
        ("acquire_lease", 1),
        ("claim", 6),
        ("complete", 2),
        ("release_lease", 1),
    ])
    .await;
}

#[tokio::test]
async fn purge_says_how_many_records_it_removed() {
    let (sentinel, clock) = manual();
    for key in ["a", "b", "c"] {
        let done = sentinel
            .once(key, |_| async { Ok::<_, Failure>(1u8) })
            .await
            .unwrap();
        assert!(done.is_executed());
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 3);
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 0);
}

#[tokio::test]
async fn purge_goes_on_until_the_store_has_nothing_left_to_remove() {
    // More than two of the client's purge batches (500 records each), the first two full.
    let (sentinel, clock) = manual();
    for n in 0..1001 {
        let done = sentinel
            .once(&format!("k{n}"), |_| async { Ok::<_, Failure>(1u8) })
            .await
            .unwrap();
        assert!(done.is_executed());
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 1001);
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 0);
}

#[tokio::test]
async fn a_store_that_reports_more_purged_than_its_limit_is_an_error_not_a_count() {
    let store = support::faulty(MemoryStore::new());
    store.purge_overcounts.store(1, Ordering::SeqCst);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    let err = sentinel.purge(Duration::from_secs(30)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backend { source, .. } if source.to_string().contains("501")),
        "{err}"
    );
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_while_the_key_is_busy_answers_in_progress_at_its_deadline() {
    // Real time: the holder works for 3 s; a 300 ms wait must end near 300 ms, with and without
    // notifications, not carry on claiming until the holder is done.
    for store in [
        support::faulty(MemoryStore::new()),
        support::without_notifications(MemoryStore::new()),
    ] {
        let holder = Sentinel::builder(store.clone()).build().unwrap();
        let waiter = Sentinel::builder(store.clone()).build().unwrap();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let held = tokio::spawn(async move {
            holder
                .once("busy-1", |_| async move {
                    let _ = started_tx.send(());
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok::<_, Failure>(1u8)
                })
                .await
                .unwrap()
        });
        started.await.unwrap();
        let begun = std::time::Instant::now();
        let outcome: Once<u8> = waiter
            .once_with(
                "busy-1",
                &OnceOptions::new().wait(Duration::from_millis(300)),
                |_| async { unreachable!("held") },
            )
            .await
            .unwrap();
        let took = begun.elapsed();
        assert!(matches!(outcome, Once::InProgress { .. }), "{outcome:?}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1_500),
            "answered after {took:?}"
        );
        assert!(held.await.unwrap().is_executed());
    }
}

#[tokio::test(start_paused = true)]
async fn an_abort_the_store_refused_is_not_sent_again() {
    // The work outlived its lease and an operator reconciled the key before the work said
    // "not applied": the abort is refused (the token is fenced), and sending it again cannot
    // help, so nothing is sent in the background.
    let (memory, clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    let operator = Sentinel::builder(store.clone()).build().unwrap();
    let outcome: Once<u8> = sentinel
        .once("pay-11", |_| async {
            clock.advance(Duration::from_secs(3600));
            operator.reconcile("pay-11").await.unwrap();
            Err(Failure::not_applied("declined"))
        })
        .await
        .unwrap();
    assert!(matches!(outcome, Once::Failed { .. }), "{outcome:?}");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(store.aborts.load(Ordering::SeqCst), 1);
    let record = sentinel.inspect("pay-11").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Reconciling);
}

#[tokio::test(start_paused = true)]
async fn prepared_work_that_never_began_and_whose_start_failed_is_given_up_as_not_applied() {
    // The work returned without crossing its boundary, so nothing was applied; recording its
    // value needs a start first, and every attempt of it failed. The execution is given up as
    // not applied (the key is claimable at once), not completed in the background.
    let (memory, _clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let sentinel = Sentinel::builder(store.clone()).build().unwrap();
    store.failed_starts.store(3, Ordering::SeqCst);
    let outcome: Once<u8> = sentinel
        .once_prepared("refund-9", &OnceOptions::new(), |_prep| async { Ok(9) })
        .await
        .unwrap();
    assert!(
        matches!(outcome, Once::CompletionFailed { .. }),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again: Once<u8> = sentinel
        .once("refund-9", |_| async { Ok(10) })
        .await
        .unwrap();
    assert!(again.is_executed(), "claimable at once: {again:?}");
}
