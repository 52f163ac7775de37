//! Time: the store's own clock in real time, and exact arithmetic over the whole range of
//! timestamps.

use std::time::{Duration, Instant};

use sentinel_core::store::Renewal;
use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, EventKind, FencingToken, HistoryQuery, Key,
    Keyspace, RecordId, RequestId, TimeSource, Timestamp, Ttl,
};

use crate::StoreFactory;
use crate::harness::{Harness, owner, result, unique_namespace};

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

/// 2^53: from here on a double cannot hold every integer, so a store that does its arithmetic in
/// floating point (Lua numbers, JavaScript) rounds timestamps and tokens.
const TWO_POW_53: i64 = 1 << 53;

/// Times, expiries, tokens and event times are exact to the microsecond over the whole range of
/// [`Timestamp`]: around 2^53 µs (the year 2255, where doubles stop being exact) and at the end of
/// time (9999-12-31, where expiries saturate), with a ttl that is not a round number.
pub async fn numbers_stay_exact<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "exact").await;
    // An odd number of microseconds: a sum that crosses 2^53 is odd, and a double rounds it.
    let ttl = Ttl::from_micros(1_000_003, 3_000_005).expect("a valid ttl");
    let starts = [
        123_456_789, // nine digits
        // Sums that carry into the next 10^9: the heartbeat's new expiry is exactly 2 * 10^15
        // (start + 1 µs + ttl), and so is the token after the first (start + 1).
        2_000_000_000_000_000 - 1_000_004,
        2_000_000_000_000_000 - 1,
        TWO_POW_53 - 1_000_004, // the lease crosses 2^53, the claim does not
        TWO_POW_53 - 3_000_004, // only the hard expiry crosses it
        TWO_POW_53 - 1,
        TWO_POW_53 + 1,
        Timestamp::MAX.as_micros() - 2_000_001, // the hard expiry saturates
        Timestamp::MAX.as_micros() - 2,         // both saturate
    ];
    for (i, start) in starts.into_iter().enumerate() {
        let case = format!("numbers_stay_exact, start {start} µs");
        // A namespace per start, so that each purge sees only its own record.
        let namespace = unique_namespace(&format!("exact-{i}"));
        let id = RecordId::new(namespace.clone(), Key::new("exact").expect("a valid key"));
        let claim = |who: &str| {
            let (store, id, case) = (h.store.clone(), id.clone(), case.clone());
            let request = ClaimRequest {
                owner: owner(who),
                ttl,
                start: true,
                request_id: RequestId::random(),
                fingerprint: None,
            };
            async move {
                match store.claim(&id, &request).await {
                    Ok(ClaimOutcome::Acquired(grant)) => grant,
                    other => {
                        panic!("[{case}] claiming a free key: expected a grant, got {other:?}")
                    }
                }
            }
        };
        let now = Timestamp::from_micros(start);
        h.clock.set(now);
        let grant = claim("a").await;
        let lease = now.saturating_add(ttl.ttl());
        let hard = now.saturating_add(ttl.hard());
        assert_eq!(grant.token, FencingToken::next(None, now), "[{case}] token");
        assert_eq!(grant.lease_expires_at, lease, "[{case}] lease expiry");
        assert_eq!(grant.hard_expires_at, hard, "[{case}] hard expiry");

        // A heartbeat one microsecond later: min(now + ttl, hard).
        let later = h.clock.advance(Duration::from_micros(1));
        let renewed = h
            .store
            .heartbeat(&[Renewal {
                keyspace: Keyspace::Execution,
                id: id.clone(),
                token: grant.token,
            }])
            .await
            .expect("heartbeat");
        let expected = later.saturating_add(ttl.ttl()).min(hard);
        assert_eq!(renewed, vec![Ok(expected)], "[{case}] renewed expiry");

        // Completed a microsecond later still; the history's times are exact.
        let completed_at = h.clock.advance(Duration::from_micros(1));
        h.store
            .complete(&id, grant.token, &result(1))
            .await
            .expect("complete");
        let history = |h: &Harness<F::Store>| {
            let id = id.clone();
            let store = h.store.clone();
            async move {
                let events = store
                    .history(Keyspace::Execution, &id, &HistoryQuery::default())
                    .await
                    .expect("history");
                assert!(
                    events.windows(2).all(|w| w[0].id < w[1].id),
                    "event ids increase: {events:?}"
                );
                events
                    .iter()
                    .map(|e| (e.kind, e.token, e.at))
                    .collect::<Vec<(EventKind, FencingToken, Timestamp)>>()
            }
        };
        assert_eq!(
            history(&h).await,
            [
                (EventKind::Claimed, grant.token, now),
                (EventKind::Completed, grant.token, completed_at)
            ],
            "[{case}] the history"
        );

        // Purged, then claimed again with the clock set back centuries: last + 1, exactly.
        assert_eq!(
            h.store
                .purge(&namespace, Duration::ZERO, 100)
                .await
                .expect("purge"),
            1,
            "[{case}] purged"
        );
        h.clock.set(Timestamp::from_micros(1));
        let next = claim("b").await;
        assert_eq!(
            next.token.get(),
            grant.token.get() + 1,
            "[{case}] the token after purge"
        );
        // And completed at once: its events come after the purge's, centuries later in time.
        h.store
            .complete(&id, next.token, &result(2))
            .await
            .expect("complete");
        let events = history(&h).await;
        let one = Timestamp::from_micros(1);
        assert_eq!(
            events[events.len().saturating_sub(2)..],
            [
                (EventKind::Claimed, next.token, one),
                (EventKind::Completed, next.token, one)
            ],
            "[{case}] the history after purge: {events:?}"
        );
    }
}
