//! Case 6: the event log. Every accepted transition appends exactly one event with the right kind,
//! token, owner and state, in order; reads, heartbeats, refusals and idempotent repeats append
//! nothing (a refused completion is the one refusal that is logged, with the worker's result).

use std::time::Duration;

use serde_json::json;

use sentinel_core::store::{HistoryQuery, LeaseListQuery, ListQuery, Renewal};
use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Disposition, Event, EventKind, ExecutionState,
    FencingToken, Fingerprint, Keyspace, OwnerId, RejectReason,
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

/// Reads, heartbeats, refused commands and repeated commands leave the history as it was: every
/// read (`inspect`, `list`, `list_leases`, `history`, `wait_for_change`), claims answered busy,
/// uncertain, reconciling, completed or refused for a fingerprint, a held lease, a renewal that
/// moves a lease in either keyspace.
pub async fn event_log_ignores_reads_and_refusals<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "quiet").await;
    let id = h.id("k");
    // A record in every state a claim can find but `claimed`: uncertain, reconciling, completed.
    h.acquire("uncertain", "a", true).await;
    h.acquire("reconciling", "a", true).await;
    h.advance(Duration::from_secs(2));
    h.store
        .reconcile(&h.id("reconciling"), &owner("op"))
        .await
        .expect("reconcile");
    let done = h.acquire("done", "a", true).await;
    h.store
        .complete(&h.id("done"), done.token, &result(9))
        .await
        .expect("complete");
    let grant = h.acquire("k", "a", true).await;
    let lease = h.acquire_lease("k", "a").await;
    let executions = h.history(Keyspace::Execution, "k").await;
    let leases = h.history(Keyspace::Lease, "k").await;
    let all = histories(&h).await;
    // Panics naming `what` when a history is no longer what it was before the first read.
    let unchanged = async |what: &str| {
        assert_eq!(
            histories(&h).await,
            all,
            "[event_log] {what} logged something"
        );
    };

    // Reads, the history first (every comparison reads it again).
    for keyspace in [Keyspace::Execution, Keyspace::Lease] {
        h.store
            .history(keyspace, &id, &HistoryQuery::default())
            .await
            .expect("history");
    }
    unchanged("reading a history").await;
    h.store.inspect(&id).await.expect("inspect");
    h.store.inspect_lease(&id).await.expect("inspect_lease");
    h.store
        .list(&ListQuery::new(h.namespace.clone()))
        .await
        .expect("list");
    h.store.now().await.expect("now");
    unchanged("inspect, inspect_lease, list or now").await;
    h.store
        .list_leases(&LeaseListQuery::new(h.namespace.clone()))
        .await
        .expect("list_leases");
    unchanged("list_leases").await;
    let waited = h
        .store
        .wait_for_change(&id, tokio::time::Instant::now(), Duration::from_millis(20))
        .await;
    assert!(waited.is_ok(), "[event_log] wait_for_change: {waited:?}");
    unchanged("wait_for_change").await;
    // A busy claim and a held lease are reads too.
    assert!(matches!(
        h.store.claim(&id, &claim_request("b", true)).await,
        Ok(ClaimOutcome::Busy { .. })
    ));
    assert!(matches!(
        h.store.acquire_lease(&id, &lease_request("b")).await,
        Ok(Acquisition::Held { .. })
    ));
    unchanged("a busy claim or a held lease").await;
    // So are claims answered with what the record holds, and one refused for its fingerprint.
    let claim = async |key: &str| h.store.claim(&h.id(key), &claim_request("b", true)).await;
    let answer = claim("uncertain").await;
    assert!(
        matches!(answer, Ok(ClaimOutcome::Uncertain { .. })),
        "[event_log] a claim of an uncertain execution: {answer:?}"
    );
    unchanged("a claim answered uncertain").await;
    let answer = claim("reconciling").await;
    assert!(
        matches!(answer, Ok(ClaimOutcome::Reconciling { .. })),
        "[event_log] a claim of a reconciling execution: {answer:?}"
    );
    unchanged("a claim answered reconciling").await;
    let answer = claim("done").await;
    assert!(
        matches!(answer, Ok(ClaimOutcome::Completed { .. })),
        "[event_log] a claim of a completed execution: {answer:?}"
    );
    unchanged("a claim answered completed").await;
    let mut other = claim_request("b", true);
    other.fingerprint = Some(Fingerprint::new("sha256:other").expect("a valid fingerprint"));
    let answer = h.store.claim(&id, &other).await;
    assert!(
        matches!(
            answer
                .as_ref()
                .map_err(|e| e.rejection().map(|r| r.reason.clone())),
            Err(Some(RejectReason::FingerprintMismatch { .. }))
        ),
        "[event_log] a claim with another fingerprint: {answer:?}"
    );
    unchanged("a claim refused for its fingerprint").await;
    // Heartbeats: half a ttl on, each renewal moves its lease, and is still not logged.
    h.advance(Duration::from_millis(500));
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
    let moved = h.clock.now().saturating_add(Duration::from_secs(1));
    assert!(
        grant.lease_expires_at < moved && lease.lease_expires_at < moved,
        "[event_log] the renewal moves the leases"
    );
    assert!(
        renewed.iter().all(|r| r.as_ref().ok() == Some(&moved)),
        "[event_log] renewals half a ttl on: {renewed:?}"
    );
    unchanged("a renewal").await;
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
    unchanged("a refusal or a repeated start").await;
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

/// The keys of `event_log_ignores_reads_and_refusals`.
const QUIET_KEYS: [&str; 4] = ["k", "uncertain", "reconciling", "done"];

/// The history of every key of [`QUIET_KEYS`] in both keyspaces.
async fn histories<S: CoordinationStore + Clone>(h: &Harness<S>) -> Vec<Vec<Event>> {
    let mut all = Vec::new();
    for key in QUIET_KEYS {
        for keyspace in [Keyspace::Execution, Keyspace::Lease] {
            all.push(h.history(keyspace, key).await);
        }
    }
    all
}
