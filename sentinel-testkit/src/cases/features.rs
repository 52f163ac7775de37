//! The features beyond the state machine table: payload fingerprints, waiting for another
//! worker's result, and two-phase execution.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use sentinel_core::store::Wait;
use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Error, ExecutionState, Failure, Fingerprint,
    Once, OnceOptions, RejectReason, RequestId, Sentinel, TimeSource,
};

use crate::StoreFactory;
use crate::decorate::Counted;
use crate::harness::{Harness, owner, ttl, unique_namespace};

fn with_fingerprint(who: &str, fingerprint: Option<&str>) -> ClaimRequest {
    ClaimRequest {
        owner: owner(who),
        ttl: ttl(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: fingerprint.map(|f| Fingerprint::new(f).expect("fingerprint")),
    }
}

/// A key reused with a different fingerprint is refused with the stored state and fingerprint,
/// never answered with the other request's result.
pub async fn fingerprints_guard_the_key<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "fingerprints").await;
    let id = h.id("charge-42");
    let ClaimOutcome::Acquired(grant) = h
        .store
        .claim(&id, &with_fingerprint("a", Some("sha256:aa")))
        .await
        .expect("claim")
    else {
        panic!("[fingerprints] a fresh key is granted")
    };
    let busy = h
        .store
        .claim(&id, &with_fingerprint("b", Some("sha256:bb")))
        .await;
    let expect_mismatch = |result: Result<ClaimOutcome, Error>, state: ExecutionState| match result
    {
        Err(Error::Rejected(r)) => {
            assert_eq!(
                r.reason,
                RejectReason::FingerprintMismatch {
                    stored: Some(Fingerprint::new("sha256:aa").expect("fp"))
                },
                "[fingerprints] {r}"
            );
            assert_eq!(
                r.state,
                Some(state),
                "[fingerprints] the rejection names the state"
            );
        }
        other => panic!("[fingerprints] expected a fingerprint mismatch, got {other:?}"),
    };
    expect_mismatch(busy, ExecutionState::Executing);
    h.store
        .complete(&id, grant.token, &json!({"receipt": "r-1"}))
        .await
        .expect("complete");
    expect_mismatch(
        h.store
            .claim(&id, &with_fingerprint("b", Some("sha256:bb")))
            .await,
        ExecutionState::Completed,
    );
    expect_mismatch(
        h.store.claim(&id, &with_fingerprint("b", None)).await,
        ExecutionState::Completed,
    );
    match h
        .store
        .claim(&id, &with_fingerprint("c", Some("sha256:aa")))
        .await
    {
        Ok(ClaimOutcome::Completed { result, .. }) => assert_eq!(result, json!({"receipt": "r-1"})),
        other => panic!("[fingerprints] the same fingerprint gets the result, got {other:?}"),
    }
    let stored = h
        .store
        .inspect(&id)
        .await
        .expect("inspect")
        .expect("present");
    assert_eq!(
        stored.fingerprint.map(String::from),
        Some("sha256:aa".to_owned())
    );
}

/// A slow executor and 50 waiters: every waiter gets the one result, the work runs once, and each
/// waiter makes only a few store calls.
pub async fn waiting_for_a_result<F: StoreFactory>(factory: &F) {
    let store = Counted::counting(
        factory
            .create(TimeSource::Server)
            .await
            .unwrap_or_else(|e| panic!("[waiting] the factory could not create a store: {e}")),
    );
    let namespace = unique_namespace("waiting");
    let client = |who: String| {
        Sentinel::builder(store.clone())
            .namespace(namespace.as_str())
            .owner(owner(&who))
            .ttl(Duration::from_secs(10))
            .build()
            .expect("client")
    };
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let executor = client("executor".into());
    let work_runs = Arc::clone(&runs);
    let slow = tokio::spawn(async move {
        executor
            .once("report", |_| async move {
                work_runs.fetch_add(1, Ordering::SeqCst);
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(600)).await;
                Ok::<_, Failure>("the one result".to_owned())
            })
            .await
    });
    started_rx.await.expect("the executor started");
    let claims_before = store.count("claim");
    let waits_before = store.count("wait_for_change");
    let options = OnceOptions::new().wait(Duration::from_secs(30));
    let waiters: Vec<_> = (0..50)
        .map(|n| {
            let (waiter, options) = (client(format!("waiter-{n}")), options.clone());
            tokio::spawn(async move {
                waiter
                    .once_with("report", &options, |_| async {
                        Ok::<_, Failure>("a second run".to_owned())
                    })
                    .await
            })
        })
        .collect();
    for waiter in waiters {
        match waiter.await.expect("a waiter panicked") {
            Ok(Once::Cached { value, .. }) => assert_eq!(value, "the one result"),
            other => panic!("[waiting] a waiter got {other:?}"),
        }
    }
    assert!(slow.await.expect("executor").expect("once").is_executed());
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "[waiting] the work ran more than once"
    );
    let claims = store.count("claim") - claims_before;
    let waits = store.count("wait_for_change") - waits_before;
    // Notifying stores: a busy claim, a wait, a claim that finds the result. Polling stores: a
    // bounded backoff (20 ms doubling) over 600 ms.
    assert!(claims <= 50 * 8, "[waiting] {claims} claims for 50 waiters");
    assert!(waits <= 50 * 4, "[waiting] {waits} waits for 50 waiters");
}

/// A change made after `since` (the claim that found the key busy) and before the wait is
/// answered at once: no change falls between reading and waiting. Twice, on two keys, so that it
/// holds before and after the store's first wait (a store may set up its notifications then).
/// A store without notifications answers `Unsupported`, which passes.
pub async fn waiting_misses_no_change<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "wait_misses").await;
    for key in ["first", "second"] {
        let grant = h.acquire(key, "worker", true).await;
        let since = tokio::time::Instant::now();
        match h.claim(key, "waiter", true).await {
            Ok(ClaimOutcome::Busy { .. }) => {}
            other => panic!("[waiting_misses_no_change] {key}: expected busy, got {other:?}"),
        }
        h.store
            .complete(&h.id(key), grant.token, &json!("done"))
            .await
            .expect("complete");
        let asked = std::time::Instant::now();
        let wait = h
            .store
            .wait_for_change(&h.id(key), since, Duration::from_secs(10))
            .await
            .expect("wait_for_change");
        match wait {
            Wait::Unsupported => return,
            Wait::Changed => assert!(
                asked.elapsed() < Duration::from_secs(2),
                "[waiting_misses_no_change] {key}: the change was answered after {:?}",
                asked.elapsed()
            ),
            Wait::TimedOut => panic!(
                "[waiting_misses_no_change] {key}: the completion between the busy claim and the \
                 wait was missed"
            ),
        }
    }
}

/// Two-phase `once` on the store: failing before the boundary leaves the key claimable; after it,
/// uncertain.
pub async fn two_phase_execution<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "two_phase").await;
    let sentinel = Sentinel::builder(h.store.clone())
        .namespace(h.namespace.as_str())
        .build()
        .expect("client");
    let before: Once<u8> = sentinel
        .once_prepared("a", &OnceOptions::new(), |_prep| async {
            Err(Failure::uncertain("validation failed"))
        })
        .await
        .expect("once");
    assert!(
        !before.is_uncertain(),
        "[two_phase] before the boundary nothing was applied: {before:?}"
    );
    assert_eq!(
        h.store
            .inspect(&h.id("a"))
            .await
            .expect("inspect")
            .map(|r| r.state),
        Some(ExecutionState::Claimed)
    );
    let after: Once<u8> = sentinel
        .once_prepared("b", &OnceOptions::new(), |prep| async move {
            prep.begin().await?;
            Err(Failure::uncertain("gateway timed out"))
        })
        .await
        .expect("once");
    assert!(after.is_uncertain(), "[two_phase] {after:?}");
    let done = sentinel
        .once_prepared("a", &OnceOptions::new(), |prep| async move {
            Ok::<_, Failure>(prep.begin().await?.token().get())
        })
        .await
        .expect("once");
    assert!(
        done.is_executed(),
        "[two_phase] the key ran again after a failure before the boundary"
    );
}
