//! Case 2: races with real concurrency, repeated over many keys.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use sentinel_core::store::Renewal;
use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Error, EventKind, ExecutionState, Keyspace,
    RejectReason,
};

use crate::StoreFactory;
use crate::harness::{Harness, claim_request, lease_request, owner, result};

const KEYS: usize = 50;
const CONTENDERS: usize = 32;

/// Runs `contenders` copies of `call` at the same instant (behind a barrier) and collects the
/// answers.
async fn at_once<S, T, F, Fut>(store: &S, contenders: usize, call: F) -> Vec<T>
where
    S: CoordinationStore + Clone,
    T: Send + 'static,
    F: Fn(S, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(contenders));
    let tasks: Vec<_> = (0..contenders)
        .map(|n| {
            let barrier = Arc::clone(&barrier);
            let work = call(store.clone(), n);
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(contenders);
    for task in tasks {
        answers.push(task.await.expect("a contender panicked"));
    }
    answers
}

/// 32 concurrent claims on one key: exactly one acquires, the others see it busy, and each
/// answer is its own caller's (the grant goes to the contender the record names as its owner);
/// over 50 keys, each raced three times: never claimed, purged (a tombstone keeps its last
/// token), and held by a claim that expired (a takeover, where a store must judge the record
/// again once it holds it: every contender read it claimable).
pub async fn claim_race<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "claim_race").await;
    let mut tokens = Vec::new();
    for k in 0..KEYS {
        tokens.push(race_for_claim(&h, k, "a key never claimed", true).await);
    }
    for (k, token) in tokens.iter().enumerate() {
        h.store
            .complete(&h.id(&format!("race-{k}")), *token, &result(k as u64))
            .await
            .expect("complete");
    }
    h.advance(Duration::from_secs(1));
    let purged = h
        .store
        .purge(&h.namespace, Duration::ZERO, KEYS as u32)
        .await
        .expect("purge");
    assert_eq!(purged, KEYS as u64, "[claim_race] every key purged");
    for (k, token) in tokens.iter_mut().enumerate() {
        let next = race_for_claim(&h, k, "a purged key", false).await;
        assert!(
            next > *token,
            "[claim_race] key {k}: the token went back after purge"
        );
        *token = next;
    }
    // The claims were not started and their ttl is 1 s: all expired.
    h.advance(Duration::from_secs(2));
    for (k, token) in tokens.iter().enumerate() {
        let next = race_for_claim(&h, k, "an expired claim", true).await;
        assert!(
            next > *token,
            "[claim_race] key {k}: a takeover kept the old token"
        );
    }
}

/// One race of `CONTENDERS` claims (started or not) on key `k`: checks the answers and the one
/// new event, and returns the winner's token.
async fn race_for_claim<S: CoordinationStore + Clone>(
    h: &Harness<S>,
    k: usize,
    what: &str,
    start: bool,
) -> sentinel_core::FencingToken {
    let key = format!("race-{k}");
    let id = h.id(&key);
    let before = h.history(Keyspace::Execution, &key).await.len();
    let answers = at_once(&h.store, CONTENDERS, |store, n| {
        let id = id.clone();
        async move {
            store
                .claim(&id, &claim_request(&format!("w{n}"), start))
                .await
        }
    })
    .await;
    let busy_state = if start {
        ExecutionState::Executing
    } else {
        ExecutionState::Claimed
    };
    let mut granted = Vec::new();
    for (n, answer) in answers.iter().enumerate() {
        match answer {
            Ok(ClaimOutcome::Acquired(grant)) => granted.push((n, grant.token)),
            Ok(ClaimOutcome::Busy { state, .. }) if *state == busy_state => {}
            other => panic!("[claim_race] key {k}, {what}: unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        granted.len(),
        1,
        "[claim_race] key {k}, {what}: {} claims were granted, not one",
        granted.len()
    );
    let (winner, winning_token) = granted[0];
    let record = h
        .store
        .inspect(&id)
        .await
        .expect("inspect")
        .expect("the claimed record");
    assert_eq!(
        record.owner,
        owner(&format!("w{winner}")),
        "[claim_race] key {k}, {what}: the grant went to contender {winner}, not to the record's \
         owner"
    );
    for answer in answers {
        if let Ok(ClaimOutcome::Busy {
            token, owner: busy, ..
        }) = answer
        {
            assert_eq!(
                (token, &busy),
                (winning_token, &record.owner),
                "[claim_race] key {k}, {what}: busy answers name the winner's token and owner"
            );
        }
    }
    let history = h.history(Keyspace::Execution, &key).await;
    assert_eq!(
        history.len(),
        before + 1,
        "[claim_race] key {k}, {what}: one claim, one event: {history:?}"
    );
    winning_token
}

/// A late completion racing a reconcile of the expired execution: exactly one wins and the final
/// state is the winner's.
pub async fn reconcile_vs_complete_race<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "reconcile_race").await;
    let mut wins = [0usize; 2];
    for k in 0..KEYS {
        let key = format!("late-{k}");
        let grant = h.acquire(&key, "worker", true).await;
        h.advance(Duration::from_secs(2));
        let id = h.id(&key);
        // Which contender is spawned first alternates, so both orders get their chances.
        let completer = k % 2;
        let answers = at_once(&h.store, 2, |store, n| {
            let id = id.clone();
            async move {
                if n == completer {
                    store
                        .complete(&id, grant.token, &result(k as u64))
                        .await
                        .map(|()| None)
                } else {
                    store.reconcile(&id, &owner("operator")).await.map(Some)
                }
            }
        })
        .await;
        let record = h
            .store
            .inspect(&id)
            .await
            .expect("inspect")
            .expect("the record exists");
        match (&answers[completer], &answers[1 - completer]) {
            (Ok(None), Err(Error::Rejected(r))) => {
                wins[0] += 1;
                assert_eq!(
                    r.reason,
                    RejectReason::WrongState,
                    "[reconcile_vs_complete_race] {r}"
                );
                assert_eq!(record.state, ExecutionState::Completed);
                assert_eq!(record.result, Some(result(k as u64)));
                assert_eq!(record.token, grant.token);
            }
            (Err(Error::Rejected(r)), Ok(Some(token))) => {
                wins[1] += 1;
                assert_eq!(
                    r.reason,
                    RejectReason::Fenced,
                    "[reconcile_vs_complete_race] {r}"
                );
                assert_eq!(record.state, ExecutionState::Reconciling);
                assert_eq!(record.token, *token);
                assert!(*token > grant.token);
            }
            other => {
                panic!("[reconcile_vs_complete_race] key {k}: not exactly one winner: {other:?}")
            }
        }
    }
    assert_eq!(wins.iter().sum::<usize>(), KEYS);
}

/// Four purges of one namespace at the same instant, over 20 rounds of 20 completed records: every
/// purge answers (none fails because another removed a record first), together they remove each
/// record once, and each purged record's history is one purge event.
pub async fn purge_race<F: StoreFactory>(factory: &F) {
    const ROUNDS: usize = 20;
    const RECORDS: usize = 20;
    let h = Harness::new(factory, "purge_race").await;
    for round in 0..ROUNDS {
        let mut tokens = Vec::new();
        for k in 0..RECORDS {
            let key = format!("r{round}-{k}");
            let grant = h.acquire(&key, "w", true).await;
            h.store
                .complete(&h.id(&key), grant.token, &result(k as u64))
                .await
                .expect("complete");
            tokens.push(grant.token);
        }
        h.advance(Duration::from_secs(1));
        let namespace = h.namespace.clone();
        let answers = at_once(&h.store, 4, |store, _| {
            let namespace = namespace.clone();
            async move { store.purge(&namespace, Duration::ZERO, 1000).await }
        })
        .await;
        let mut purged = 0;
        for answer in answers {
            purged += answer.unwrap_or_else(|e| {
                panic!("[purge_race] round {round}: a purge racing others failed: {e}")
            });
        }
        assert_eq!(
            purged, RECORDS as u64,
            "[purge_race] round {round}: each record purged once"
        );
        for (k, token) in tokens.iter().enumerate() {
            h.assert_purged(&format!("r{round}-{k}"), *token, "[purge_race]")
                .await;
        }
    }
}

/// 32 concurrent lease acquires on one key: exactly one holder; over 50 keys.
pub async fn lease_acquire_race<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "lease_race").await;
    for k in 0..KEYS {
        let id = h.id(&format!("mutex-{k}"));
        let answers = at_once(&h.store, CONTENDERS, |store, n| {
            let id = id.clone();
            async move {
                store
                    .acquire_lease(&id, &lease_request(&format!("w{n}")))
                    .await
            }
        })
        .await;
        let holders: Vec<_> = answers
            .iter()
            .filter_map(|a| match a {
                Ok(Acquisition::Acquired(grant)) => Some(grant.token),
                Ok(Acquisition::Held { .. }) => None,
                Err(e) => panic!("[lease_acquire_race] key {k}: {e}"),
            })
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "[lease_acquire_race] key {k}: {} holders",
            holders.len()
        );
        let record = h
            .store
            .inspect_lease(&id)
            .await
            .expect("inspect")
            .expect("held");
        assert_eq!(record.token, holders[0]);
    }
}

/// A renewal racing the clock reaching the lease's expiry, and a competitor claiming at that
/// instant: the renewal and the competitor's grant never both succeed, and a refused renewal says
/// `expired` (or `fenced` once the competitor holds the key).
pub async fn renewal_vs_expiry_race<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "renewal_race").await;
    let mut seen = [0usize; 2];
    for k in 0..KEYS {
        let key = format!("edge-{k}");
        let grant = h.acquire(&key, "holder", false).await;
        h.clock.set(
            grant
                .lease_expires_at
                .saturating_sub(Duration::from_micros(1)),
        );
        let id = h.id(&key);
        let clock = h.clock.clone();
        let expiry = grant.lease_expires_at;
        let answers = at_once(&h.store, 2, move |store, n| {
            let (id, clock) = (id.clone(), clock.clone());
            async move {
                if n == 0 {
                    let renewal = Renewal {
                        keyspace: Keyspace::Execution,
                        id: id.clone(),
                        token: grant.token,
                    };
                    let mut results = store
                        .heartbeat(&[renewal])
                        .await
                        .expect("heartbeat answers");
                    (Some(results.remove(0)), None)
                } else {
                    clock.set(expiry);
                    (
                        None,
                        Some(store.claim(&id, &claim_request("rival", true)).await),
                    )
                }
            }
        })
        .await;
        let mut answers = answers.into_iter();
        let renewed = answers
            .next()
            .and_then(|a| a.0)
            .expect("the renewal's answer");
        let rival = answers
            .next()
            .and_then(|a| a.1)
            .expect("the rival's answer");
        let rival_won = match &rival {
            Ok(ClaimOutcome::Acquired(g)) => {
                assert!(g.token > grant.token);
                true
            }
            Ok(ClaimOutcome::Busy { .. }) => false,
            other => panic!("[renewal_vs_expiry_race] key {k}: rival got {other:?}"),
        };
        match &renewed {
            Ok(_) => assert!(
                !rival_won,
                "[renewal_vs_expiry_race] key {k}: renewed and taken over at once"
            ),
            Err(r) => {
                assert!(
                    matches!(r.reason, RejectReason::Expired | RejectReason::Fenced),
                    "[renewal_vs_expiry_race] key {k}: refused renewal says {r}"
                );
            }
        }
        seen[usize::from(rival_won)] += 1;
        // Whatever happened, the old token's authority is gone once the expiry passed unrenewed.
        if renewed.is_err() {
            let again = Renewal {
                keyspace: Keyspace::Execution,
                id: h.id(&key),
                token: grant.token,
            };
            let results = h
                .store
                .heartbeat(&[again])
                .await
                .expect("heartbeat answers");
            assert!(
                results[0].is_err(),
                "[renewal_vs_expiry_race] key {k}: authority revived"
            );
        }
        // And whoever holds the key now loses it at the exact instant its lease ends.
        let holder = h
            .store
            .inspect(&h.id(&key))
            .await
            .expect("inspect")
            .expect("present");
        h.clock.set(holder.lease_expires_at);
        let at_expiry = Renewal {
            keyspace: Keyspace::Execution,
            id: h.id(&key),
            token: holder.token,
        };
        let results = h
            .store
            .heartbeat(&[at_expiry])
            .await
            .expect("heartbeat answers");
        assert!(
            matches!(&results[0], Err(r) if r.reason == RejectReason::Expired),
            "[renewal_vs_expiry_race] key {k}: a renewal at the expiry instant must be refused, got {:?}",
            results[0]
        );
        let claimed = h
            .history(Keyspace::Execution, &key)
            .await
            .iter()
            .filter(|e| e.kind == EventKind::Claimed)
            .count();
        assert_eq!(claimed, 1 + usize::from(rival_won));
    }
    assert_eq!(seen.iter().sum::<usize>(), KEYS);
}
