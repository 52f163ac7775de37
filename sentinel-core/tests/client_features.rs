//! Two-phase execution, waiting for another worker's result, fingerprints, retention and the
//! observer hook, on the memory store.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_core::client::{Observer, Transition, TransitionKind};
use sentinel_core::{
    Disposition, Error, EventKind, ExecutionState, Failure, Once, OnceOptions, OwnerId,
    RejectReason, Sentinel,
};
use sentinel_memory::MemoryStore;
use support::{Faulty, TokioClock};

fn client(store: impl sentinel_core::CoordinationStore, owner: &str) -> Sentinel {
    Sentinel::builder(store)
        .namespace("features")
        .owner(sentinel_core::OwnerId::new(owner).unwrap())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn two_phase_runs_prepare_then_crosses_the_boundary() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let outcome = sentinel
        .once_prepared("refund-1", &OnceOptions::new(), |prep| async move {
            assert!(prep.is_authoritative());
            let ctx = prep.begin().await?;
            Ok::<_, Failure>(ctx.token().get())
        })
        .await
        .unwrap();
    assert!(outcome.is_executed());
    let history = sentinel.history("refund-1").await.unwrap();
    let steps: Vec<_> = history.iter().map(|e| (e.kind, e.state)).collect();
    assert_eq!(
        steps,
        [
            (EventKind::Claimed, Some(ExecutionState::Claimed)),
            (EventKind::Started, Some(ExecutionState::Executing)),
            (EventKind::Completed, Some(ExecutionState::Completed)),
        ]
    );
}

#[tokio::test]
async fn failing_before_the_boundary_leaves_the_key_claimable_whatever_the_error_says() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let failed: Once<u8> = sentinel
        .once_prepared("refund-2", &OnceOptions::new(), |_prep| async {
            // `?` would normally mean uncertain; before the boundary it cannot be.
            Err(std::io::Error::other("validation service down"))?;
            Ok(1)
        })
        .await
        .unwrap();
    let Once::Failed { failure, .. } = &failed else {
        panic!("{failed:?}")
    };
    assert!(failure.is_not_applied());
    assert!(!failed.is_uncertain());
    assert_eq!(
        sentinel.inspect("refund-2").await.unwrap().unwrap().state,
        ExecutionState::Claimed
    );
    let rerun = sentinel
        .once("refund-2", |_| async { Ok::<_, Failure>(2u8) })
        .await
        .unwrap();
    assert_eq!(rerun.into_value(), Some(2));
}

#[tokio::test]
async fn a_panic_before_the_boundary_is_not_uncertain() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let outcome: Once<u8> = sentinel
        .once_prepared("refund-3", &OnceOptions::new(), |_prep| async {
            if true {
                panic!("bad input parser");
            }
            Ok(1)
        })
        .await
        .unwrap();
    assert!(
        matches!(
            &outcome,
            Once::Panicked {
                disposition: Disposition::NotApplied,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(!outcome.is_uncertain());
    assert!(
        sentinel
            .once("refund-3", |_| async { Ok::<_, Failure>(3u8) })
            .await
            .unwrap()
            .is_executed()
    );
}

#[tokio::test]
async fn cancelling_before_the_boundary_leaves_the_key_claimable() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = sentinel.clone();
    let task = tokio::spawn(async move {
        worker
            .once_prepared("refund-4", &OnceOptions::new(), |_prep| async move {
                tx.send(()).unwrap();
                std::future::pending::<Result<u8, Failure>>().await
            })
            .await
    });
    rx.await.unwrap();
    task.abort();
    let _ = task.await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let record = sentinel.inspect("refund-4").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Claimed);
    assert!(
        sentinel
            .once("refund-4", |_| async { Ok::<_, Failure>(4u8) })
            .await
            .unwrap()
            .is_executed()
    );
}

#[tokio::test]
async fn failing_after_the_boundary_is_uncertain() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let outcome: Once<u8> = sentinel
        .once_prepared("refund-5", &OnceOptions::new(), |prep| async move {
            let _ctx = prep.begin().await?;
            Err(Failure::uncertain("gateway timed out"))
        })
        .await
        .unwrap();
    assert!(outcome.is_uncertain());
    let again: Once<u8> = sentinel
        .once("refund-5", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(matches!(again, Once::Uncertain { .. }));
}

#[tokio::test]
async fn work_that_never_crosses_still_records_its_result() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let outcome = sentinel
        .once_prepared("noop", &OnceOptions::new(), |_prep| async {
            Ok::<_, Failure>("nothing to do".to_owned())
        })
        .await
        .unwrap();
    assert!(outcome.is_executed());
    let replay: Once<String> = sentinel
        .once("noop", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(replay.is_cached());
}

#[tokio::test]
async fn begin_is_refused_once_the_claim_expired() {
    let (store, clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let outcome: Once<u8> = sentinel
        .once_prepared("slow-prep", &OnceOptions::new(), |prep| async move {
            clock.advance(Duration::from_secs(6));
            let refused = prep.begin().await.unwrap_err();
            Err(Failure::uncertain(refused))
        })
        .await
        .unwrap();
    assert!(!outcome.is_uncertain(), "nothing was applied: {outcome:?}");
    // Checked out here: a panic inside the work is caught and reported as an outcome.
    let Once::Failed { failure, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    let refused = failure.downcast_ref::<sentinel_core::Error>().unwrap();
    assert_eq!(refused.rejection().unwrap().reason, RejectReason::Expired);
    assert!(
        sentinel
            .once("slow-prep", |_| async { Ok::<_, Failure>(1u8) })
            .await
            .unwrap()
            .is_executed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_preparation_says_when_its_claim_is_lost() {
    let store = support::faulty(MemoryStore::with_clock(TokioClock::new()));
    store.set(support::Renewals::Refused);
    let sentinel = client(store, "w");
    let options = OnceOptions::new()
        .ttl(Duration::from_secs(3))
        .hard_ttl(Duration::from_secs(60));
    let outcome: Once<u8> = sentinel
        .once_prepared("prep-lost", &options, |prep| async move {
            let before = prep.is_authoritative();
            // The first renewal, at a third of the ttl, is refused: another generation took over.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = prep.is_authoritative();
            Err(Failure::not_applied(format!("held {before}, then {after}")))
        })
        .await
        .unwrap();
    // Asserted out here: a panic inside the work is caught and reported as an outcome.
    let Once::Failed { failure, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failure.error().to_string(), "held true, then false");
}

async fn fifty_waiters(store: Faulty) -> (Vec<Once<String>>, usize) {
    let executor = client(store.clone(), "executor");
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let (runs, started) = (Arc::clone(&runs), Arc::clone(&started));
        tokio::spawn(async move {
            executor
                .once("report-7", |_| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok::<_, Failure>("the report".to_owned())
                })
                .await
                .unwrap()
        })
    };
    started.notified().await;
    let before = store.claims.load(Ordering::SeqCst);
    let options = OnceOptions::new().wait(Duration::from_secs(10));
    let waiters: Vec<_> = (0..50)
        .map(|n| {
            let waiter = client(store.clone(), &format!("waiter-{n}"));
            let options = options.clone();
            tokio::spawn(async move {
                waiter
                    .once_with("report-7", &options, |_| async {
                        unreachable!("runs once")
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for w in waiters {
        outcomes.push(w.await.unwrap());
    }
    assert!(slow.await.unwrap().is_executed());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    (outcomes, store.claims.load(Ordering::SeqCst) - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_waiters_get_the_one_result_with_few_round_trips() {
    let (outcomes, claims) = fifty_waiters(support::faulty(MemoryStore::new())).await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.value().map(String::as_str) == Some("the report")),
        "{outcomes:?}"
    );
    // Each waiter: one claim that finds it busy, a notified wait, one claim that finds it done.
    assert!(claims <= 50 * 3, "{claims} claims for 50 waiters");
    eprintln!("notified waiting: {claims} claims for 50 waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_notifications_waiters_poll_with_a_bounded_backoff() {
    let (outcomes, claims) =
        fifty_waiters(support::without_notifications(MemoryStore::new())).await;
    assert!(outcomes.iter().all(|o| o.is_cached()), "{outcomes:?}");
    // 20, 40, 80, 160, 320 ms pauses cover a 400 ms wait: at most about seven claims each.
    assert!(claims <= 50 * 8, "{claims} claims for 50 waiters");
    eprintln!("polled waiting: {claims} claims for 50 waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_wakes_waiters_for_nothing_is_polled_instead() {
    let (outcomes, claims) =
        fifty_waiters(support::spurious_notifications(MemoryStore::new())).await;
    assert!(outcomes.iter().all(|o| o.is_cached()), "{outcomes:?}");
    // Woken at once with the key unchanged, a waiter stops trusting the store's wake-ups and
    // polls with the backoff: a claim or two more each, not a claim per spurious wake-up.
    assert!(claims <= 50 * 9, "{claims} claims for 50 waiters");
    eprintln!("spurious wake-ups: {claims} claims for 50 waiters");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_learns_when_the_executor_dies() {
    let store = MemoryStore::with_clock(TokioClock::new());
    let executor = client(store.clone(), "executor");
    let waiter = client(store, "waiter");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let doomed = tokio::spawn(async move {
        executor
            .once_with(
                "job",
                &OnceOptions::new().ttl(Duration::from_secs(2)),
                |_| async move {
                    tx.send(()).unwrap();
                    std::future::pending::<Result<u8, Failure>>().await
                },
            )
            .await
    });
    rx.await.unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .once_with(
                "job",
                &OnceOptions::new().wait(Duration::from_secs(30)),
                |_| async { Ok::<_, Failure>(1u8) },
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The executor's process dies: its heartbeats stop, nothing is written.
    doomed.abort();
    let outcome = waiting.await.unwrap().unwrap();
    assert!(matches!(outcome, Once::Uncertain { .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_reused_key_with_another_fingerprint_is_refused_not_replayed() {
    let (store, _clock) = MemoryStore::with_manual_clock();
    let sentinel = client(store, "w");
    let charge = |amount: u32| {
        let options = OnceOptions::new().fingerprint(format!("sha256:amount={amount}"));
        let sentinel = sentinel.clone();
        async move {
            sentinel
                .once_with(
                    "order-9",
                    &options,
                    |_| async move { Ok::<_, Failure>(amount) },
                )
                .await
        }
    };
    assert!(charge(100).await.unwrap().is_executed());
    assert_eq!(
        charge(100).await.unwrap().into_value(),
        Some(100),
        "same payload: the cached receipt"
    );
    let refused = charge(999).await.unwrap_err();
    let Error::Rejected(rejection) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(rejection.state, Some(ExecutionState::Completed));
    let RejectReason::FingerprintMismatch { stored } = rejection.reason else {
        panic!("{rejection}")
    };
    assert_eq!(stored.unwrap().as_str(), "sha256:amount=100");
}

#[tokio::test(start_paused = true)]
async fn retention_purges_old_completed_records_but_never_uncertain_ones() {
    let store = MemoryStore::with_clock(TokioClock::new());
    let sentinel = Sentinel::builder(store)
        .ttl(Duration::from_secs(5))
        .retention(Duration::from_secs(60))
        .build()
        .unwrap();
    for n in 0..3 {
        assert!(
            sentinel
                .once(&format!("done-{n}"), |_| async { Ok::<_, Failure>(n) })
                .await
                .unwrap()
                .is_executed()
        );
    }
    let _: Once<u8> = sentinel
        .once("lost", |_| async { Err(Failure::uncertain("died")) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        sentinel.inspect("done-0").await.unwrap().is_some(),
        "younger than the retention"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    for n in 0..3 {
        assert!(
            sentinel
                .inspect(&format!("done-{n}"))
                .await
                .unwrap()
                .is_none(),
            "purged after the retention"
        );
    }
    assert!(
        sentinel.inspect("lost").await.unwrap().is_some(),
        "uncertain records are never purged"
    );
    let again = sentinel
        .once("done-0", |_| async { Ok::<_, Failure>(7) })
        .await
        .unwrap();
    assert!(
        again.is_executed(),
        "a purged key runs again, under a higher token"
    );
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(TransitionKind, Option<String>)>>);

impl Observer for Recorder {
    fn on_transition(&self, t: &Transition<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((t.kind, t.id.map(|id| id.key.to_string())));
    }
}

#[tokio::test]
async fn the_observer_sees_every_transition_the_client_makes() {
    let (store, clock) = MemoryStore::with_manual_clock();
    let recorder = Arc::new(Recorder::default());
    let sentinel = Sentinel::builder(store)
        .observer(recorder.clone())
        .build()
        .unwrap();
    let _ = sentinel
        .once("a", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    let _ = sentinel
        .once("a", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    let _: Once<u8> = sentinel
        .once("b", |_| async { Err(Failure::uncertain("x")) })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    sentinel.reconcile("b").await.unwrap();
    sentinel.reset_to_claimed("b").await.unwrap();
    let guard = sentinel.lease("l").await.unwrap().acquired().unwrap();
    guard.release().await.unwrap();
    // A purge that removes something is one transition; one that removes nothing is none.
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 1);
    assert_eq!(sentinel.purge(Duration::from_secs(30)).await.unwrap(), 0);
    let kinds: Vec<_> = recorder.0.lock().unwrap().iter().map(|(k, _)| *k).collect();
    use TransitionKind as K;
    assert_eq!(
        kinds,
        [
            K::Claimed,
            K::Completed,
            K::Cached,
            K::Claimed,
            K::Aborted(Disposition::Uncertain),
            K::Reconciled,
            K::Reset,
            K::LeaseAcquired,
            K::LeaseReleased,
            K::Purged { count: 1 }
        ]
    );
}

#[test]
fn a_client_and_its_builder_show_what_they_were_given() {
    let builder = Sentinel::builder(MemoryStore::new())
        .namespace("billing")
        .owner(OwnerId::new("worker-1").unwrap())
        .observer(Arc::new(Recorder::default()));
    let shown = format!("{builder:?}");
    assert!(shown.contains("observer: Some(Observer)"), "{shown}");
    let sentinel = builder.build().unwrap();
    let shown = format!("{sentinel:?}");
    for part in [
        "Sentinel {",
        "store: \"memory\"",
        "namespace: \"billing\"",
        "owner: \"worker-1\"",
        "ttl: ",
    ] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
}

/// An observer that, when told of lost authority, asks the client how much it holds: a call back
/// into the client from inside its heartbeat task.
#[derive(Default)]
struct CallsBack {
    client: std::sync::OnceLock<Sentinel>,
    answered: AtomicUsize,
}

impl Observer for CallsBack {
    fn on_transition(&self, transition: &Transition<'_>) {
        if transition.kind == TransitionKind::AuthorityLost
            && let Some(client) = self.client.get()
        {
            let _ = client.held();
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn an_observer_may_call_back_into_the_client() {
    // Run on a thread of its own: if the heartbeat task called the observer with its lock held,
    // the call back would hang that thread for good, and this test reports it instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let answered = runtime.block_on(async {
            let observer = Arc::new(CallsBack::default());
            let store = support::faulty(MemoryStore::with_clock(TokioClock::new()));
            let sentinel = Sentinel::builder(store.clone())
                .ttl(Duration::from_secs(3))
                .hard_ttl(Duration::from_secs(60))
                .observer(observer.clone())
                .build()
                .unwrap();
            let _ = observer.client.set(sentinel.clone());
            // The heartbeat task learns of the loss: its renewal is refused.
            store.set(support::Renewals::Refused);
            let started = tokio::time::Instant::now();
            let outcome = sentinel
                .once("k", |ctx| async move {
                    ctx.authority_lost().await;
                    Ok::<_, Failure>(started.elapsed())
                })
                .await
                .unwrap();
            let after = outcome.into_value().unwrap();
            assert!(
                after < Duration::from_secs(3),
                "lost at a refused renewal: {after:?}"
            );
            observer.answered.load(Ordering::SeqCst)
        });
        tx.send(answered).unwrap();
    });
    let answered = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the observer's call back into the client never returned");
    assert_eq!(answered, 1);
}

/// An observer that panics at every transition.
struct Panics;

impl Observer for Panics {
    fn on_transition(&self, transition: &Transition<'_>) {
        panic!("observer bug at {:?}", transition.kind);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_neither_abandons_the_work_nor_stops_the_heartbeat() {
    let store = support::faulty(MemoryStore::with_clock(TokioClock::new()));
    let sentinel = Sentinel::builder(store.clone())
        .ttl(Duration::from_secs(3))
        .hard_ttl(Duration::from_secs(60))
        .observer(Arc::new(Panics))
        .build()
        .unwrap();
    // The observer panics right after the claim, and again when the heartbeat task reports the
    // refused renewal.
    store.set(support::Renewals::Refused);
    let lost = sentinel
        .once("first", |ctx| async move {
            ctx.authority_lost().await;
            Ok::<_, Failure>(1u8)
        })
        .await
        .unwrap();
    assert!(lost.is_executed(), "{lost:?}");
    // The heartbeat task still runs: work three times the ttl keeps its authority.
    store.set(support::Renewals::Work);
    let long = sentinel
        .once("second", |ctx| async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            Ok::<_, Failure>(ctx.is_authoritative())
        })
        .await
        .unwrap();
    assert_eq!(long.value(), Some(&true), "{long:?}");
}

#[test]
fn a_client_used_again_on_a_new_runtime_still_renews() {
    // The heartbeat task lives on the runtime that first needed it; when that runtime is gone,
    // the next execution or lease starts it again on its own runtime.
    let sentinel = Sentinel::builder(MemoryStore::new())
        .ttl(Duration::from_secs(1))
        .hard_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let guard = sentinel.lease("first").await.unwrap().acquired().unwrap();
        guard.release().await.unwrap();
    });
    runtime().block_on(async {
        let guard = sentinel.lease("second").await.unwrap().acquired().unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(guard.is_held(), "renewed past three ttls");
        guard.release().await.unwrap();
    });
}

#[test]
fn the_builder_refuses_a_zero_call_timeout_and_a_zero_retention() {
    let refused = |builder: sentinel_core::SentinelBuilder| match builder.build() {
        Err(Error::InvalidInput(sentinel_core::InvalidInput::Malformed { what, .. })) => what,
        other => panic!("expected a malformed setting, got {other:?}"),
    };
    let store = MemoryStore::new;
    assert_eq!(
        refused(
            Sentinel::builder(store())
                .retries(3, Duration::from_millis(1))
                .call_timeout(Duration::ZERO)
        ),
        "call timeout"
    );
    assert_eq!(
        refused(Sentinel::builder(store()).retention(Duration::ZERO)),
        "retention"
    );
    assert!(
        Sentinel::builder(store())
            .retention(Duration::from_secs(1))
            .build()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_stays_on_notifications_when_the_holder_crosses_its_boundary() {
    // The holder's begin() (claimed to executing, same token) wakes the waiter at once: a real
    // change, not a store waking it for nothing, so it keeps waiting on notifications and learns
    // of the completion as it happens (4 s in), not at its next poll (4.26 s with the polling
    // backoff).
    let store = MemoryStore::with_clock(TokioClock::new());
    let holder = client(store.clone(), "holder");
    let waiter = client(store, "waiter");
    let started = tokio::time::Instant::now();
    let holding = tokio::spawn(async move {
        holder
            .once_prepared("k", &OnceOptions::new(), |prep| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ctx = prep.begin().await?;
                tokio::time::sleep(Duration::from_millis(4000)).await;
                Ok::<_, Failure>(1u8)
            })
            .await
    });
    tokio::task::yield_now().await;
    let outcome: Once<u8> = waiter
        .once_with(
            "k",
            &OnceOptions::new().wait(Duration::from_secs(30)),
            |_| async { unreachable!("the holder completes") },
        )
        .await
        .unwrap();
    let answered = started.elapsed();
    assert!(holding.await.unwrap().unwrap().is_executed());
    assert!(outcome.is_cached(), "{outcome:?}");
    assert!(
        answered < Duration::from_millis(4055),
        "woken by the completion at 4005 ms, not by a poll: answered at {answered:?}"
    );
}
