//! Case 4: the store's own clock, in real time.

use std::time::{Duration, Instant};

use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, RequestId, TimeSource, Timestamp, Ttl,
};

use crate::StoreFactory;
use crate::harness::{owner, unique_namespace};

/// With the server clock and a 300 ms ttl: a claim is alive, then expired, then claimable again;
/// the store's time is close to the real time.
pub async fn server_clock<F: StoreFactory>(factory: &F) {
    let store = factory
        .create(TimeSource::Server)
        .await
        .unwrap_or_else(|e| panic!("[server_clock] the factory could not create a store: {e}"));
    let now = store.now().await.expect("the store tells its time");
    let skew = now
        .as_micros()
        .abs_diff(Timestamp::now_system().as_micros());
    assert!(
        skew < 60_000_000,
        "[server_clock] the store's clock is {skew} µs away from this host's"
    );

    let id = sentinel_core::RecordId::new(
        unique_namespace("server_clock"),
        sentinel_core::Key::new("tick").expect("key"),
    );
    let ttl = Ttl::new(Duration::from_millis(300)).expect("ttl");
    let request = |who: &str| ClaimRequest {
        owner: owner(who),
        ttl,
        start: false,
        request_id: RequestId::random(),
        fingerprint: None,
    };
    let sent = Instant::now();
    let first = match store.claim(&id, &request("a")).await {
        Ok(ClaimOutcome::Acquired(grant)) => grant,
        other => panic!("[server_clock] expected a grant, got {other:?}"),
    };
    let busy = store.claim(&id, &request("b")).await;
    if sent.elapsed() < Duration::from_millis(200) {
        assert!(
            matches!(busy, Ok(ClaimOutcome::Busy { .. })),
            "[server_clock] alive right after the claim: {busy:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    match store.claim(&id, &request("c")).await {
        Ok(ClaimOutcome::Acquired(grant)) => assert!(grant.token > first.token),
        other => panic!("[server_clock] expired after 700 ms and claimable again, got {other:?}"),
    }
}
