//! Case 6: the event log. Every accepted transition appends exactly one event with the right kind,
//! token, owner and state, in order; reads, heartbeats, refusals and idempotent repeats append
//! nothing (a refused completion is the one refusal that is logged, with the worker's result).

use std::time::Duration;

use serde_json::json;

use sentinel_core::store::{HistoryQuery, ListQuery, Renewal};
use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Disposition, EventKind, ExecutionState,
    FencingToken, Keyspace, OwnerId, RejectReason,
};

use crate::StoreFactory;
use crate::harness::{Harness, bogus_token, claim_request, lease_request, owner, result};

type Expected = (
    EventKind,
    FencingToken,
    Option<OwnerId>,
    Option<ExecutionState>,
);

async fn assert_history<S: CoordinationStore + Clone>(
    h: &Harness<S>,
    keyspace: Keyspace,
    key: &str,
    expected: &[Expected],
) {
    let history = h.history(keyspace, key).await;
    let got: Vec<Expected> = history
        .iter()
        .map(|e| (e.kind, e.token, e.owner.clone(), e.state))
        .collect();
    assert_eq!(got, expected, "[event_log] history of {keyspace} {key:?}");
    for pair in history.windows(2) {
        assert!(pair[0].id < pair[1].id, "[event_log] event ids increase");
        assert!(
            pair[0].at <= pair[1].at,
            "[event_log] event times do not go back"
        );
    }
}

/// Every transition of both keyspaces, each logged once, in order.
pub async fn event_log_records_every_transition<F: StoreFactory>(factory: &F) {
    use EventKind as K;
    use ExecutionState as S;
    let h = Harness::new(factory, "events").await;
    let (a, op) = (owner("a"), owner("op"));
    let id = h.id("pay");

    let claimed = h.acquire("pay", "a", false).await.token;
    h.store.start(&id, claimed).await.expect("start");
    h.store
        .abort(&id, claimed, Disposition::NotApplied)
        .await
        .expect("abort");
    let second = h.acquire("pay", "a", true).await.token;
    h.store
        .abort(&id, second, Disposition::Uncertain)
        .await
        .expect("abort");
    let reconciled = h.store.reconcile(&id, &op).await.expect("reconcile");
    h.store.reset_to_claimed(&id, &op).await.expect("reset");
    let third = h.acquire("pay", "a", true).await.token;
    h.advance(Duration::from_secs(2));
    let fourth = h.store.reconcile(&id, &op).await.expect("reconcile");
    // The worker of `third` finishes late: refused, and logged with its result.
    assert!(h.store.complete(&id, third, &result(3)).await.is_err());
    h.store
        .force_complete(&id, &op, &result(4))
        .await
        .expect("force_complete");
    let mut expected: Vec<Expected> = vec![
        (K::Claimed, claimed, Some(a.clone()), Some(S::Claimed)),
        (K::Started, claimed, Some(a.clone()), Some(S::Executing)),
        (K::Aborted, claimed, Some(a.clone()), Some(S::Claimed)),
        (K::Claimed, second, Some(a.clone()), Some(S::Executing)),
        (K::Aborted, second, Some(a.clone()), Some(S::Executing)),
        (
            K::Reconciling,
            reconciled,
            Some(op.clone()),
            Some(S::Reconciling),
        ),
        (K::Reset, reconciled, Some(op.clone()), Some(S::Claimed)),
        (K::Claimed, third, Some(a.clone()), Some(S::Executing)),
        (
            K::Reconciling,
            fourth,
            Some(op.clone()),
            Some(S::Reconciling),
        ),
        (K::CompletionRejected, third, None, Some(S::Reconciling)),
        (
            K::ForceCompleted,
            fourth,
            Some(op.clone()),
            Some(S::Completed),
        ),
    ];
    assert_history(&h, Keyspace::Execution, "pay", &expected).await;
    let history = h.history(Keyspace::Execution, "pay").await;
    // Every pair of bounds, from either end: the events strictly between them, in the order
    // asked for. Bounds below, on, between (ids need not be consecutive) and beyond the
    // history's ids (event ids are positive: any bound below the first is the whole history),
    // and ranges that hold nothing (`after` at or above `before`).
    let read = async |query: HistoryQuery| {
        h.store
            .history(Keyspace::Execution, &id, &query)
            .await
            .expect("history")
    };
    let ids: Vec<i64> = history.iter().map(|e| e.id).collect();
    let bounds = [
        None,
        Some(i64::MIN),
        Some(-1),
        Some(0),
        Some(1),
        Some(ids[0]),
        Some(ids[1]),
        Some(ids[3]),
        Some(ids[4] - 1),
        Some(ids[5]),
        Some(ids[ids.len() - 1]),
        Some(ids[ids.len() - 1] + 1),
        Some(i64::MAX),
    ];
    for after in bounds {
        for before in bounds {
            let mut want: Vec<_> = history
                .iter()
                .filter(|e| after.is_none_or(|a| e.id > a) && before.is_none_or(|b| e.id < b))
                .cloned()
                .collect();
            for newest_first in [false, true] {
                if newest_first {
                    want.reverse();
                }
                let page = read(HistoryQuery {
                    after,
                    before,
                    newest_first,
                    ..Default::default()
                })
                .await;
                assert_eq!(
                    page, want,
                    "[event_log] after {after:?}, before {before:?}, newest first: {newest_first}"
                );
            }
        }
    }
    // A range, from either end, cut to its limit at the end it starts from.
    let (after, before) = (Some(history[2].id), Some(history[7].id));
    let oldest = read(HistoryQuery {
        after,
        before,
        limit: 2,
        newest_first: false,
    })
    .await;
    assert_eq!(
        oldest,
        history[3..5],
        "[event_log] the oldest two of a range"
    );
    let newest = read(HistoryQuery {
        after,
        before,
        limit: 2,
        newest_first: true,
    })
    .await;
    assert_eq!(
        newest,
        [history[6].clone(), history[5].clone()],
        "[event_log] the newest two of a range, newest first"
    );
    let last = read(HistoryQuery {
        limit: 1,
        newest_first: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        last,
        history[history.len() - 1..],
        "[event_log] the newest event"
    );
    let rejected = &history[9];
    assert_eq!(
        rejected.detail,
        Some(json!({ "reason": "fenced", "result": result(3) })),
        "[event_log] the refused result is kept"
    );
    assert_eq!(
        history[2].detail,
        Some(json!({ "disposition": "not_applied" }))
    );
    assert_eq!(
        history[4].detail,
        Some(json!({ "disposition": "uncertain" }))
    );

    // A normal completion, then a purge: the purge keeps only its own event.
    let done = h.acquire("done", "a", true).await.token;
    h.store
        .complete(&h.id("done"), done, &result(5))
        .await
        .expect("complete");
    assert_history(
        &h,
        Keyspace::Execution,
        "done",
        &[
            (K::Claimed, done, Some(a.clone()), Some(S::Executing)),
            (K::Completed, done, Some(a.clone()), Some(S::Completed)),
        ],
    )
    .await;
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.store
            .purge(&h.namespace, Duration::from_secs(30), 100)
            .await
            .expect("purge"),
        2
    );
    assert_history(
        &h,
        Keyspace::Execution,
        "done",
        &[(K::Purged, done, None, None)],
    )
    .await;
    expected = vec![(K::Purged, fourth, None, None)];
    assert_history(&h, Keyspace::Execution, "pay", &expected).await;

    // Leases.
    let lease = h.acquire_lease("lock", "a").await;
    h.store
        .release_lease(&h.id("lock"), lease.token)
        .await
        .expect("release");
    assert_history(
        &h,
        Keyspace::Lease,
        "lock",
        &[
            (K::LeaseAcquired, lease.token, Some(a.clone()), None),
            (K::LeaseReleased, lease.token, Some(a), None),
        ],
    )
    .await;
}

/// Reads, heartbeats, refused commands and repeated commands leave the history as it was.
pub async fn event_log_ignores_reads_and_refusals<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "quiet").await;
    let id = h.id("k");
    let grant = h.acquire("k", "a", true).await;
    let lease = h.acquire_lease("k", "a").await;
    let executions = h.history(Keyspace::Execution, "k").await;
    let leases = h.history(Keyspace::Lease, "k").await;

    // Reads.
    h.store.inspect(&id).await.expect("inspect");
    h.store.inspect_lease(&id).await.expect("inspect_lease");
    h.store
        .list(&ListQuery::new(h.namespace.clone()))
        .await
        .expect("list");
    h.store.now().await.expect("now");
    // A busy claim and a held lease are reads too.
    assert!(matches!(
        h.store.claim(&id, &claim_request("b", true)).await,
        Ok(ClaimOutcome::Busy { .. })
    ));
    assert!(matches!(
        h.store.acquire_lease(&id, &lease_request("b")).await,
        Ok(Acquisition::Held { .. })
    ));
    // Heartbeats.
    let renewals = [
        Renewal {
            keyspace: Keyspace::Execution,
            id: id.clone(),
            token: grant.token,
        },
        Renewal {
            keyspace: Keyspace::Lease,
            id: id.clone(),
            token: lease.token,
        },
    ];
    let renewed = h.store.heartbeat(&renewals).await.expect("heartbeat");
    assert!(renewed.iter().all(Result::is_ok));
    // Refusals.
    let op = owner("op");
    assert!(h.store.start(&id, bogus_token()).await.is_err());
    assert!(
        h.store
            .abort(&id, bogus_token(), Disposition::Uncertain)
            .await
            .is_err()
    );
    assert!(h.store.reconcile(&id, &op).await.is_err(), "alive: refused");
    assert!(h.store.force_complete(&id, &op, &json!(1)).await.is_err());
    assert!(h.store.reset_to_claimed(&id, &op).await.is_err());
    assert!(h.store.release_lease(&id, bogus_token()).await.is_err());
    let stale = [Renewal {
        keyspace: Keyspace::Execution,
        id: id.clone(),
        token: bogus_token(),
    }];
    assert!(h.store.heartbeat(&stale).await.expect("heartbeat")[0].is_err());
    // Repeats: a retried start, a retried claim (same request id).
    h.store
        .start(&id, grant.token)
        .await
        .expect("a repeated start is accepted");
    assert_eq!(
        h.history(Keyspace::Execution, "k").await,
        executions,
        "[event_log] reads and refusals logged something"
    );
    assert_eq!(
        h.history(Keyspace::Lease, "k").await,
        leases,
        "[event_log] lease reads and refusals logged something"
    );

    // A repeated completion with the same token and result: accepted, logged once.
    h.store
        .complete(&id, grant.token, &result(1))
        .await
        .expect("complete");
    let completed = h.history(Keyspace::Execution, "k").await;
    h.store
        .complete(&id, grant.token, &result(1))
        .await
        .expect("a repeated completion is accepted");
    assert_eq!(
        h.history(Keyspace::Execution, "k").await,
        completed,
        "[event_log] a repeated completion was logged twice"
    );
    // An operator's force_complete that repeats the recorded result: accepted, nothing logged.
    // With another result: refused, the result stays, nothing logged.
    h.store
        .force_complete(&id, &op, &result(1))
        .await
        .expect("a force_complete repeating the result is accepted");
    let other = h.store.force_complete(&id, &op, &result(2)).await;
    assert!(
        matches!(
            other
                .as_ref()
                .map_err(|e| e.rejection().map(|r| r.reason.clone())),
            Err(Some(RejectReason::WrongState))
        ),
        "[event_log] force_complete with another result than the recorded one: {other:?}"
    );
    assert_eq!(
        h.store
            .inspect(&id)
            .await
            .expect("inspect")
            .and_then(|r| r.result),
        Some(result(1)),
        "[event_log] the recorded result stays"
    );
    assert_eq!(
        h.history(Keyspace::Execution, "k").await,
        completed,
        "[event_log] a repeated or refused force_complete logged something"
    );
}
