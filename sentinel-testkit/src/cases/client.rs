//! Case 7: through the `Sentinel` client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sentinel_core::{Failure, LeaseOptions, Once, Sentinel, TimeSource};

use crate::StoreFactory;
use crate::harness::{Harness, owner, unique_namespace};

/// 16 clients call `once` on one key at the same time: the work runs once and every other caller
/// ends up with its cached result.
pub async fn once_with_concurrent_callers<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "once16").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let sentinel = Sentinel::builder(h.store.clone())
                .namespace(h.namespace.as_str())
                .owner(owner(&format!("caller-{n}")))
                .ttl(Duration::from_secs(30))
                .build()
                .expect("client");
            let (runs, barrier) = (Arc::clone(&runs), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                // The work takes 50 ms: waiting ten seconds for it means the store lost it.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let outcome = sentinel
                        .once("checkout-1", |ctx| {
                            let runs = Arc::clone(&runs);
                            async move {
                                runs.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Ok::<_, Failure>(format!("receipt under {}", ctx.token()))
                            }
                        })
                        .await
                        .expect("once answers");
                    match outcome {
                        Once::InProgress { .. } => {
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "[once_with_concurrent_callers] still in progress after 10 s \
                                 (the work takes 50 ms): {outcome:?}"
                            );
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let mut executed = Vec::new();
    let mut cached = Vec::new();
    for task in tasks {
        match task.await.expect("a caller panicked") {
            Once::Executed { value, .. } => executed.push(value),
            Once::Cached { value, .. } => cached.push(value),
            other => panic!("[once_with_concurrent_callers] unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "[once_with_concurrent_callers] the work ran more than once"
    );
    assert_eq!(executed.len(), 1);
    assert_eq!(cached.len(), 15);
    assert!(
        cached.iter().all(|v| *v == executed[0]),
        "[once_with_concurrent_callers] everyone reads the one result"
    );
}

/// A lease guard held well past its ttl stays held: the client's heartbeat renews it in the store.
/// Runs on the store's own clock, in real time.
pub async fn lease_renews_under_heartbeat<F: StoreFactory>(factory: &F) {
    let store = factory
        .create(TimeSource::Server)
        .await
        .unwrap_or_else(|e| {
            panic!("[lease_renews_under_heartbeat] the factory could not create a store: {e}")
        });
    let namespace = unique_namespace("lease_hb");
    let client = |who: &str| {
        Sentinel::builder(store.clone())
            .namespace(namespace.as_str())
            .owner(owner(who))
            .build()
            .expect("client")
    };
    let (holder, rival) = (client("holder"), client("rival"));
    // Long enough that a heartbeat delayed by a loaded machine (a CI run's parallel suites)
    // still lands within the ttl: at 600 ms, a CI run once saw the lease lost.
    let ttl = Duration::from_millis(1_500);
    let options = LeaseOptions::new()
        .ttl(ttl)
        .hard_ttl(Duration::from_secs(30));
    let guard = holder
        .lease_with("poller", &options)
        .await
        .expect("acquire")
        .acquired()
        .expect("free");
    tokio::time::sleep(ttl * 3).await;
    assert!(
        guard.is_held(),
        "[lease_renews_under_heartbeat] three ttls later the guard still holds"
    );
    assert!(
        rival
            .lease("poller")
            .await
            .expect("acquire")
            .acquired()
            .is_none(),
        "[lease_renews_under_heartbeat] still held in the store"
    );
    let record = rival
        .inspect_lease("poller")
        .await
        .expect("inspect")
        .expect("held");
    assert!(
        record.lease_expires_at > record.acquired_at.saturating_add(ttl * 5 / 2),
        "[lease_renews_under_heartbeat] the store's lease moved forward: {record:?}"
    );
    guard.release().await.expect("release");
    assert!(
        rival
            .lease("poller")
            .await
            .expect("acquire")
            .acquired()
            .is_some()
    );
}
