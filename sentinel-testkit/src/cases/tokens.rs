//! Case 3: fencing tokens strictly increase per key across acquisition, expiry, reconcile, purge,
//! release and a restart of the store.

use std::time::Duration;

use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Disposition, FencingToken, Keyspace, TimeSource,
    Timestamp,
};

use crate::StoreFactory;
use crate::harness::{Harness, lease_request, owner, result};

fn increasing(case: &str, tokens: &[FencingToken]) {
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "[{case}] token {} was followed by {}",
            pair[0],
            pair[1]
        );
    }
}

/// Every way a key changes hands issues a higher token, even with the clock moved backwards.
pub async fn tokens_strictly_increase<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "tokens").await;
    let key = "ledger-1";
    let id = h.id(key);
    // An operator's reconcile: the token it issues, and when.
    let reconciled = || async {
        let token = h
            .store
            .reconcile(&id, &owner("op"))
            .await
            .expect("reconcile");
        (token, h.clock.now())
    };
    // Each token with the store's time when it was issued.
    let mut issued = vec![(h.acquire(key, "a", false).await.token, h.clock.now())];
    // Expiry of a claim: re-claimed.
    h.advance(Duration::from_secs(2));
    issued.push((h.acquire(key, "b", true).await.token, h.clock.now()));
    // Expiry of an execution, then reconcile.
    h.advance(Duration::from_secs(2));
    issued.push(reconciled().await);
    h.store
        .reset_to_claimed(&id, &owner("op"))
        .await
        .expect("reset");
    let grant = h.acquire(key, "c", true).await;
    issued.push((grant.token, h.clock.now()));
    h.store
        .abort(&id, grant.token, Disposition::NotApplied)
        .await
        .expect("abort");
    let grant = h.acquire(key, "d", true).await;
    issued.push((grant.token, h.clock.now()));
    h.store
        .complete(&id, grant.token, &result(1))
        .await
        .expect("complete");
    // Purge keeps the token.
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.store
            .purge(&h.namespace, Duration::from_secs(1), 10)
            .await
            .expect("purge"),
        1
    );
    assert!(
        h.store.inspect(&id).await.expect("inspect").is_none(),
        "[tokens] the purged record is gone"
    );
    // The clock jumps back decades: the next token still comes after the purged one.
    h.clock.set(Timestamp::from_micros(1));
    issued.push((h.acquire(key, "e", true).await.token, h.clock.now()));
    // Expired and reconciled while the clock is still far behind the last token.
    h.advance(Duration::from_secs(2));
    issued.push(reconciled().await);
    // Not only increasing: each is exactly max(last + 1, now), whether the clock or the last
    // token decides.
    let mut last = None;
    for (n, (token, at)) in issued.iter().enumerate() {
        assert_eq!(
            *token,
            FencingToken::next(last, *at),
            "[tokens_strictly_increase] token {n} issued at {at:?} after {last:?}"
        );
        last = Some(*token);
    }
    let tokens: Vec<FencingToken> = issued.iter().map(|(token, _)| *token).collect();
    increasing("tokens_strictly_increase", &tokens);

    // The lease keyspace keeps its own sequence, through release and expiry, with the clock
    // standing still far in the past.
    let mut leases = Vec::new();
    for _ in 0..3 {
        let grant = h.acquire_lease(key, "x").await;
        leases.push(grant.token);
        h.store
            .release_lease(&id, grant.token)
            .await
            .expect("release");
    }
    let grant = h.acquire_lease(key, "y").await;
    leases.push(grant.token);
    h.advance(Duration::from_secs(6));
    let grant = h.acquire_lease(key, "z").await;
    leases.push(grant.token);
    increasing("tokens_strictly_increase (leases)", &leases);
}

/// A second store instance over the same data (a restart) keeps records, histories and the token
/// sequence, tombstones included: with the clock set far back after the restart, a purged key and
/// a released lease are granted exactly their last token + 1.
pub async fn tokens_survive_restart<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "restart").await;
    // Tombstones: a purged execution and a released lease leave no record, only their last
    // token.
    let purged = h.acquire("purged", "a", true).await;
    h.store
        .complete(&h.id("purged"), purged.token, &result(1))
        .await
        .expect("complete");
    let released = h.acquire_lease("released", "a").await;
    h.store
        .release_lease(&h.id("released"), released.token)
        .await
        .expect("release");
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.store
            .purge(&h.namespace, Duration::from_secs(5), 100)
            .await
            .expect("purge"),
        1,
        "[restart] purge removes the one old completed record"
    );
    h.assert_purged("purged", purged.token, "[restart]").await;
    let done = h.acquire("done", "a", true).await;
    h.store
        .complete(&h.id("done"), done.token, &result(7))
        .await
        .expect("complete");
    let running = h.acquire("running", "a", true).await;
    let lease = h.acquire_lease("lock", "a").await;
    let before_done = h.store.inspect(&h.id("done")).await.expect("inspect");
    let before_history = h.history(Keyspace::Execution, "done").await;

    let restarted = factory
        .reopen(&h.store, TimeSource::Manual(h.clock.clone()))
        .await
        .unwrap_or_else(|e| panic!("[restart] the factory could not reopen the store: {e}"));
    assert_eq!(
        restarted.inspect(&h.id("done")).await.expect("inspect"),
        before_done,
        "[restart] a completed record survives"
    );
    let history = restarted
        .history(Keyspace::Execution, &h.id("done"), &Default::default())
        .await
        .expect("history");
    assert_eq!(history, before_history, "[restart] history survives");
    match restarted
        .claim(&h.id("done"), &crate::harness::claim_request("b", true))
        .await
    {
        Ok(ClaimOutcome::Completed { result: r, .. }) => assert_eq!(r, result(7)),
        other => panic!("[restart] expected the cached result, got {other:?}"),
    }
    match restarted
        .claim(&h.id("running"), &crate::harness::claim_request("b", true))
        .await
    {
        Ok(ClaimOutcome::Busy { token, .. }) => assert_eq!(token, running.token),
        other => panic!("[restart] the live execution is still held: {other:?}"),
    }
    h.advance(Duration::from_secs(6));
    let token = restarted
        .reconcile(&h.id("running"), &owner("op"))
        .await
        .expect("reconcile after restart");
    assert!(
        token > running.token,
        "[restart] tokens keep increasing after a restart"
    );
    let Acquisition::Acquired(next) = restarted
        .acquire_lease(&h.id("lock"), &lease_request("b"))
        .await
        .expect("acquire")
    else {
        panic!("[restart] the expired lease can be taken")
    };
    assert!(
        next.token > lease.token,
        "[restart] lease tokens keep increasing after a restart"
    );

    // The clock far back: only the tombstones kept through the restart keep tokens increasing.
    h.clock.set(Timestamp::from_micros(1));
    let Ok(ClaimOutcome::Acquired(again)) = restarted
        .claim(&h.id("purged"), &crate::harness::claim_request("b", true))
        .await
    else {
        panic!("[restart] the purged key can be claimed again")
    };
    assert_eq!(
        again.token,
        FencingToken::next(Some(purged.token), h.clock.now()),
        "[restart] the purged key's tombstone survives a restart: its next token follows its \
         last one ({}) with the clock far behind it",
        purged.token
    );
    let Ok(Acquisition::Acquired(again)) = restarted
        .acquire_lease(&h.id("released"), &lease_request("b"))
        .await
    else {
        panic!("[restart] the released lease can be acquired again")
    };
    assert_eq!(
        again.token,
        FencingToken::next(Some(released.token), h.clock.now()),
        "[restart] the released lease's last token survives a restart: its next token follows \
         its last one ({}) with the clock far behind it",
        released.token
    );
}
