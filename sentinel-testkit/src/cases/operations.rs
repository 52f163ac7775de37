//! The operational surface: listing with filters and pages, purging in batches, heartbeat batches
//! that mix keyspaces and refusals, and retries after a lost reply.

use std::time::Duration;

use sentinel_core::store::{LeaseListQuery, ListFilter, ListQuery, Page, Renewal};
use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Disposition, EventKind, ExecutionRecord,
    ExecutionState, Key, Keyspace, RejectReason, Timestamp,
};

use crate::StoreFactory;
use crate::harness::{Harness, bogus_token, claim_request, lease_request, owner, result, ttl};

/// Records in every state, listed through every filter and page size, agree with
/// `ListFilter::matches` and come in key order.
pub async fn list_filters_and_pages<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "list").await;
    // Oldest first: completed, reconciling, uncertain, expired claim, then live ones.
    let done = h.acquire("a-done", "w", true).await;
    h.store
        .complete(&h.id("a-done"), done.token, &result(1))
        .await
        .expect("complete");
    h.acquire("b-reconciling", "w", true).await;
    h.acquire("c-uncertain", "w", true).await;
    h.acquire("d-claimed-expired", "w", false).await;
    h.advance(Duration::from_secs(2));
    h.store
        .reconcile(&h.id("b-reconciling"), &owner("op"))
        .await
        .expect("reconcile");
    h.advance(Duration::from_secs(10));
    h.acquire("e-executing", "w", true).await;
    h.acquire("f-claimed", "w", false).await;
    let now = h.clock.now();

    let mut all = Vec::new();
    for key in [
        "a-done",
        "b-reconciling",
        "c-uncertain",
        "d-claimed-expired",
        "e-executing",
        "f-claimed",
    ] {
        all.push(
            h.store
                .inspect(&h.id(key))
                .await
                .expect("inspect")
                .expect("present"),
        );
    }
    let mut filters = vec![ListFilter::default(), ListFilter::uncertain()];
    for state in ExecutionState::ALL {
        filters.push(ListFilter {
            state: Some(state),
            ..Default::default()
        });
    }
    filters.push(ListFilter {
        expired: true,
        ..Default::default()
    });
    filters.push(ListFilter {
        older_than: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    filters.push(ListFilter {
        state: Some(ExecutionState::Claimed),
        expired: true,
        ..Default::default()
    });
    filters.push(ListFilter {
        uncertain: true,
        older_than: Some(Duration::from_secs(100)),
        ..Default::default()
    });
    // Uncertain with a state: the executing ones, or none.
    for state in [ExecutionState::Executing, ExecutionState::Completed] {
        filters.push(ListFilter {
            state: Some(state),
            uncertain: true,
            ..Default::default()
        });
    }
    for filter in filters {
        let want: Vec<_> = all
            .iter()
            .filter(|r| filter.matches(r, now))
            .cloned()
            .collect();
        for limit in [1, 2, 100] {
            let context = format!("[list_filters_and_pages] filter {filter:?}, {limit} per page");
            let got = executions(&h, &filter, limit, 10, &context).await;
            assert_eq!(got, want, "{context}");
        }
    }
    let uncertain: Vec<_> = all
        .iter()
        .filter(|r| r.is_uncertain(now))
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(
        uncertain,
        ["c-uncertain"],
        "[list_filters_and_pages] the reconciliation queue"
    );
}

/// A few matching records far apart among hundreds that do not match (more than a store might
/// read in one batch), listed at several page sizes: all of them, in key order. The same for held
/// leases among released ones.
pub async fn list_pages_through_sparse_matches<F: StoreFactory>(factory: &F) {
    const RECORDS: usize = 600;
    const MATCHING: [usize; 6] = [0, 1, 300, 301, 302, 599];
    let h = Harness::new(factory, "sparse").await;
    let key = |i: usize| format!("k{i:03}");
    for i in 0..RECORDS {
        let matching = MATCHING.contains(&i);
        // Executing records match; the others are claimed and not started.
        h.acquire(&key(i), "w", matching).await;
        let lease = h.acquire_lease(&key(i), "w").await;
        if !matching {
            h.store
                .release_lease(&h.id(&key(i)), lease.token)
                .await
                .expect("release");
        }
    }
    let want: Vec<String> = MATCHING.iter().map(|&i| key(i)).collect();
    let filter = ListFilter {
        state: Some(ExecutionState::Executing),
        ..Default::default()
    };
    for limit in [1, 2, 3, 4, 100] {
        let context = format!("[list_pages_through_sparse_matches] {limit} per page");
        let pages = MATCHING.len() + 1;
        let executions = executions(&h, &filter, limit, pages, &context).await;
        let store = &h.store;
        let leases = every_page(&context, limit, pages, |after| {
            let query = LeaseListQuery {
                namespace: h.namespace.clone(),
                after,
                limit,
            };
            async move { store.list_leases(&query).await.expect("list_leases") }
        })
        .await;
        let executions: Vec<&str> = executions.iter().map(|r| r.key.as_str()).collect();
        let leases: Vec<&str> = leases.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(executions, want, "{context}: executing records");
        assert_eq!(leases, want, "{context}: held leases");
    }
}

/// The execution records of the harness's namespace that `filter` selects, read page by page
/// (see [`every_page`]).
pub(crate) async fn executions<S: CoordinationStore + Clone>(
    h: &Harness<S>,
    filter: &ListFilter,
    limit: u32,
    max_pages: usize,
    context: &str,
) -> Vec<ExecutionRecord> {
    let store = &h.store;
    every_page(context, limit, max_pages, |after| {
        let query = ListQuery {
            namespace: h.namespace.clone(),
            filter: filter.clone(),
            after,
            limit,
        };
        async move { store.list(&query).await.expect("list") }
    })
    .await
}

/// Every item of a listing, read from the first page: `read(after)` answers the page after
/// `after`. A page holds at most `limit` items, a page after a `next` is not empty (`next` is
/// `None` on the last page) and each `next` is after the one before (a listing moves forward); at
/// most `max_pages` pages are read. `context` names the listing.
async fn every_page<T, Fut>(
    context: &str,
    limit: u32,
    max_pages: usize,
    mut read: impl FnMut(Option<Key>) -> Fut,
) -> Vec<T>
where
    Fut: Future<Output = Page<T>>,
{
    let mut items = Vec::new();
    let mut after = None;
    for _ in 0..max_pages {
        let first = after.is_none();
        let page = read(after.clone()).await;
        assert!(
            page.items.len() <= limit as usize,
            "{context}: at most {limit} a page"
        );
        assert!(
            first || !page.items.is_empty(),
            "{context}: a page after a `next` is not empty (`next` is None on the last page)"
        );
        items.extend(page.items);
        if let (Some(next), Some(before)) = (&page.next, &after) {
            assert!(
                next > before,
                "{context}: the listing moves forward: `next` {next:?} after {before:?}"
            );
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    items
}

/// Purge removes completed records older than the cutoff, oldest first, at most `limit` per call;
/// never uncertain or reconciling ones; tokens survive.
pub async fn purge_in_batches<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "purge").await;
    // The lease of the same name as a purged execution keeps its history.
    let lock = h.acquire_lease("done-0", "w").await;
    h.store
        .release_lease(&h.id("done-0"), lock.token)
        .await
        .expect("release");
    let lease_history = h.history(Keyspace::Lease, "done-0").await;
    let mut tokens = Vec::new();
    for n in 0..7 {
        let key = format!("done-{n}");
        let grant = h.acquire(&key, "w", true).await;
        h.store
            .complete(&h.id(&key), grant.token, &result(n))
            .await
            .expect("complete");
        tokens.push(grant.token);
        h.advance(Duration::from_secs(1));
    }
    h.acquire("uncertain", "w", true).await;
    h.acquire("reconciling", "w", true).await;
    h.advance(Duration::from_secs(2));
    h.store
        .reconcile(&h.id("reconciling"), &owner("op"))
        .await
        .expect("reconcile");
    h.advance(Duration::from_secs(100));
    let recent = h.acquire("recent", "w", true).await;
    h.store
        .complete(&h.id("recent"), recent.token, &result(99))
        .await
        .expect("complete");

    let older_than = Duration::from_secs(50);
    let mut counts = Vec::new();
    loop {
        let n = h
            .store
            .purge(&h.namespace, older_than, 3)
            .await
            .expect("purge");
        counts.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(
        counts,
        [3, 3, 1],
        "[purge_in_batches] batches of at most three"
    );
    for (n, token) in tokens.iter().enumerate() {
        h.assert_purged(&format!("done-{n}"), *token, "[purge_in_batches]")
            .await;
    }
    assert_eq!(
        h.history(Keyspace::Lease, "done-0").await,
        lease_history,
        "[purge_in_batches] purging an execution touched the lease of the same name"
    );
    for key in ["uncertain", "reconciling", "recent"] {
        assert!(
            h.store
                .inspect(&h.id(key))
                .await
                .expect("inspect")
                .is_some(),
            "[purge_in_batches] {key} must stay"
        );
    }
    // Tokens survive the purge, whatever the clock says.
    h.clock.set(Timestamp::from_micros(1));
    let again = h.acquire("done-6", "w", true).await;
    assert!(
        again.token > tokens[6],
        "[purge_in_batches] a purged key's next token is higher"
    );
}

/// One heartbeat call carries executions and leases, current and stale tokens, live and expired
/// and missing records, and answers each in order. Renewals stop at the hard expiry in both
/// keyspaces: each answers `min(now + ttl, hard)`, the record keeps it, and a renewal at the hard
/// expiry is refused as expired.
pub async fn heartbeat_batch<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "heartbeat").await;
    let live = h.acquire("live", "w", true).await;
    let claimed = h.acquire("claimed", "w", false).await;
    let lease = h.acquire_lease("lock", "w").await;
    let expired = h.acquire("expired", "w", true).await;
    let done = h.acquire("done", "w", true).await;
    h.store
        .complete(&h.id("done"), done.token, &result(1))
        .await
        .expect("complete");
    h.advance(Duration::from_millis(900));
    // Renew all but "expired", then let "expired" run out.
    let keep = |keyspace, key: &str, token| Renewal {
        keyspace,
        id: h.id(key),
        token,
    };
    let first = h
        .store
        .heartbeat(&[
            keep(Keyspace::Execution, "live", live.token),
            keep(Keyspace::Execution, "claimed", claimed.token),
            keep(Keyspace::Lease, "lock", lease.token),
        ])
        .await
        .expect("heartbeat");
    let at = h.clock.now();
    assert!(
        first.iter().all(|r| r
            .as_ref()
            .is_ok_and(|t| *t == at.saturating_add(Duration::from_secs(1)))),
        "{first:?}"
    );
    h.advance(Duration::from_millis(200));
    let batch = [
        keep(Keyspace::Execution, "live", live.token),
        keep(Keyspace::Lease, "lock", lease.token),
        keep(Keyspace::Execution, "expired", expired.token),
        keep(Keyspace::Execution, "claimed", bogus_token()),
        keep(Keyspace::Execution, "done", done.token),
        keep(Keyspace::Execution, "missing", live.token),
        keep(Keyspace::Lease, "missing", lease.token),
    ];
    let answers = h.store.heartbeat(&batch).await.expect("heartbeat");
    let reasons: Vec<_> = answers
        .iter()
        .map(|a| a.as_ref().err().map(|r| r.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            None,
            Some(RejectReason::Expired),
            Some(RejectReason::Fenced),
            Some(RejectReason::WrongState),
            Some(RejectReason::NotFound),
            Some(RejectReason::NotFound),
        ],
        "[heartbeat_batch] {answers:?}"
    );
    assert!(
        h.store
            .heartbeat(&[])
            .await
            .expect("an empty batch")
            .is_empty()
    );

    // The hard expiry caps every renewal, in both keyspaces: renewed every 0.9 s with a ttl of
    // 1 s, a lease reaches the hard expiry (5 s) and ends there.
    let capped = h.acquire("capped", "w", true).await;
    let capped_lock = h.acquire_lease("capped-lock", "w").await;
    let start = h.clock.now();
    let batch = [
        keep(Keyspace::Execution, "capped", capped.token),
        keep(Keyspace::Lease, "capped-lock", capped_lock.token),
    ];
    for (grant, what) in [(&capped, "execution"), (&capped_lock, "lease")] {
        assert_eq!(
            grant.hard_expires_at,
            start.saturating_add(ttl().hard()),
            "[heartbeat_batch] the hard expiry of the {what}"
        );
    }
    for step in 1..=5u32 {
        h.clock
            .set(start.saturating_add(Duration::from_millis(900) * step));
        let now = h.clock.now();
        let answers = h.store.heartbeat(&batch).await.expect("heartbeat");
        for (answer, (grant, what)) in answers
            .iter()
            .zip([(&capped, "execution"), (&capped_lock, "lease")])
        {
            let want = now.saturating_add(ttl().ttl()).min(grant.hard_expires_at);
            assert_eq!(
                answer.as_ref().ok(),
                Some(&want),
                "[heartbeat_batch] the {what} renewed {} ms after its grant: min(now + ttl, hard \
                 expiry), got {answer:?}",
                900 * step
            );
        }
    }
    let hard = capped.hard_expires_at;
    let execution = h.store.inspect(&h.id("capped")).await.expect("inspect");
    assert_eq!(
        execution.as_ref().map(|r| r.lease_expires_at),
        Some(hard),
        "[heartbeat_batch] the execution's lease stops at its hard expiry: {execution:?}"
    );
    let lease = h
        .store
        .inspect_lease(&h.id("capped-lock"))
        .await
        .expect("inspect_lease");
    assert_eq!(
        lease.as_ref().map(|r| r.lease_expires_at),
        Some(capped_lock.hard_expires_at),
        "[heartbeat_batch] the lease stops at its hard expiry: {lease:?}"
    );
    h.clock.set(hard);
    let answers = h.store.heartbeat(&batch).await.expect("heartbeat");
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(r) if r.reason == RejectReason::Expired)),
        "[heartbeat_batch] renewals at the hard expiry are refused as expired: {answers:?}"
    );
}

/// A reply lost after the store applied the command: sending the same command again is safe.
pub async fn retries_after_a_lost_reply<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "retry").await;
    let id = h.id("k");
    let request = claim_request("w", true);
    let first = h.store.claim(&id, &request).await.expect("claim");
    let again = h.store.claim(&id, &request).await.expect("retried claim");
    assert_eq!(
        again, first,
        "[retries_after_a_lost_reply] the retried claim adopts its own grant"
    );
    let ClaimOutcome::Acquired(grant) = first else {
        panic!("[retries_after_a_lost_reply] a grant")
    };
    let other = h
        .store
        .claim(&id, &claim_request("w", true))
        .await
        .expect("claim");
    assert!(
        matches!(other, ClaimOutcome::Busy { .. }),
        "[retries_after_a_lost_reply] another request id is not adopted"
    );
    h.store
        .complete(&id, grant.token, &result(1))
        .await
        .expect("complete");
    h.store
        .complete(&id, grant.token, &result(1))
        .await
        .expect("a repeated completion succeeds");
    let refused = h.store.complete(&id, grant.token, &result(2)).await;
    assert!(
        matches!(&refused, Err(sentinel_core::Error::Rejected(r)) if r.reason == RejectReason::WrongState),
        "[retries_after_a_lost_reply] a different result is refused: {refused:?}"
    );
    let kinds: Vec<_> = h
        .history(Keyspace::Execution, "k")
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.len(),
        3,
        "[retries_after_a_lost_reply] claimed, completed, completion_rejected: {kinds:?}"
    );

    let lease = lease_request("w");
    let first = h.store.acquire_lease(&id, &lease).await.expect("acquire");
    assert_eq!(
        h.store
            .acquire_lease(&id, &lease)
            .await
            .expect("retried acquire"),
        first
    );
    let Acquisition::Acquired(grant) = first else {
        panic!("[retries_after_a_lost_reply] a lease")
    };
    h.store
        .release_lease(&id, grant.token)
        .await
        .expect("release");
    let repeated = h.store.release_lease(&id, grant.token).await;
    assert!(
        matches!(&repeated, Err(sentinel_core::Error::Rejected(r)) if r.reason == RejectReason::NotFound),
        "[retries_after_a_lost_reply] a repeated release finds the lease free: {repeated:?}"
    );

    let aborted = h.acquire("a", "w", true).await;
    h.store
        .abort(&h.id("a"), aborted.token, Disposition::Uncertain)
        .await
        .expect("abort");
    h.store
        .abort(&h.id("a"), aborted.token, Disposition::Uncertain)
        .await
        .expect("a repeated abort succeeds");
    assert_eq!(h.history(Keyspace::Execution, "a").await.len(), 2);
}

/// A lease ends at its expiry instant: at `lease_expires_at` exactly a record is expired (start
/// and heartbeat refused, a claim taken over or reported uncertain, listed as expired or
/// uncertain, a lease taken), one microsecond before it is alive. And what `start` answers: the
/// renewed expiry when it starts the execution, the record's current one when it was already
/// started. A reconcile one microsecond before the expiry is refused as `StillAlive` and changes
/// nothing; at the instant it succeeds under a higher token. A completion with the current token
/// succeeds at the expiry instant and long after the hard expiry, and is logged. Listings draw the
/// line of `older_than` the same way: a record is older than `d` from `d` after its last change
/// on.
pub async fn expiry_is_exclusive<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "expiry").await;
    let micro = Duration::from_micros(1);
    let expired = |what: &str, answer: Result<Timestamp, sentinel_core::Error>| {
        let reason = answer
            .as_ref()
            .map_err(|e| e.rejection().map(|r| r.reason.clone()));
        assert!(
            matches!(reason, Err(Some(RejectReason::Expired))),
            "[expiry_is_exclusive] {what} at the expiry instant: expected Expired, got {answer:?}"
        );
    };
    let renewal = |key: &str, token| Renewal {
        keyspace: Keyspace::Execution,
        id: h.id(key),
        token,
    };

    // A claim started one microsecond before its expiry: renewed from then on.
    let t0 = h.clock.now();
    let grant = h.acquire("early", "w", false).await;
    let lease = grant.lease_expires_at;
    h.clock.set(lease.saturating_sub(micro));
    let started = h
        .store
        .start(&h.id("early"), grant.token)
        .await
        .expect("alive one microsecond before its expiry");
    let renewed = lease
        .saturating_sub(micro)
        .saturating_add(ttl().ttl())
        .min(grant.hard_expires_at);
    assert_eq!(
        started, renewed,
        "[expiry_is_exclusive] start renews the lease"
    );
    // Started again (its reply was lost): the lease as it stands, not renewed again.
    h.advance(Duration::from_millis(10));
    let again = h
        .store
        .start(&h.id("early"), grant.token)
        .await
        .expect("a repeated start");
    assert_eq!(again, renewed, "[expiry_is_exclusive] a repeated start");

    // A claim not started by its expiry instant.
    h.clock.set(t0);
    let grant = h.acquire("late", "w", false).await;
    h.clock.set(grant.lease_expires_at);
    expired("start", h.store.start(&h.id("late"), grant.token).await);
    let renewals = h
        .store
        .heartbeat(&[renewal("late", grant.token)])
        .await
        .expect("heartbeat");
    assert!(
        matches!(&renewals[0], Err(r) if r.reason == RejectReason::Expired),
        "[expiry_is_exclusive] a heartbeat at the expiry instant: {renewals:?}"
    );
    assert!(
        matches!(
            h.claim("late", "x", true).await,
            Ok(ClaimOutcome::Acquired(_))
        ),
        "[expiry_is_exclusive] an expired claim is taken over at its expiry instant"
    );

    // An execution: alive one microsecond before its expiry, uncertain at it.
    h.clock.set(t0);
    let grant = h.acquire("running", "w", true).await;
    h.clock.set(grant.lease_expires_at.saturating_sub(micro));
    assert!(
        matches!(
            h.claim("running", "x", true).await,
            Ok(ClaimOutcome::Busy { .. })
        ),
        "[expiry_is_exclusive] busy one microsecond before the expiry"
    );
    h.clock.set(grant.lease_expires_at);
    assert!(
        matches!(
            h.claim("running", "x", true).await,
            Ok(ClaimOutcome::Uncertain { .. })
        ),
        "[expiry_is_exclusive] uncertain at the expiry instant"
    );

    // A lease: held one microsecond before its expiry, free at it.
    h.clock.set(t0);
    let id = h.id("lock");
    let held = h.acquire_lease("lock", "w").await;
    h.clock.set(held.lease_expires_at.saturating_sub(micro));
    assert!(
        matches!(
            h.store.acquire_lease(&id, &lease_request("x")).await,
            Ok(Acquisition::Held { .. })
        ),
        "[expiry_is_exclusive] held one microsecond before the expiry"
    );
    h.clock.set(held.lease_expires_at);
    assert!(
        matches!(
            h.store.acquire_lease(&id, &lease_request("x")).await,
            Ok(Acquisition::Acquired(_))
        ),
        "[expiry_is_exclusive] a lease is free at its expiry instant"
    );

    // Reconcile: refused one microsecond before the expiry (the execution is alive), the record
    // and its history as they were; at the expiry instant it fences the worker out under a new
    // token.
    h.clock.set(t0);
    let worker = h.acquire("reconciled", "w", true).await;
    let id = h.id("reconciled");
    let before = h.store.inspect(&id).await.expect("inspect");
    let history = h.history(Keyspace::Execution, "reconciled").await;
    h.clock.set(worker.lease_expires_at.saturating_sub(micro));
    let refused = h.store.reconcile(&id, &owner("op")).await;
    assert!(
        matches!(
            refused
                .as_ref()
                .map_err(|e| e.rejection().map(|r| r.reason.clone())),
            Err(Some(RejectReason::StillAlive))
        ),
        "[expiry_is_exclusive] a reconcile one microsecond before the expiry: expected \
         StillAlive, got {refused:?}"
    );
    assert_eq!(
        h.store.inspect(&id).await.expect("inspect"),
        before,
        "[expiry_is_exclusive] a refused reconcile changed the record"
    );
    assert_eq!(
        h.history(Keyspace::Execution, "reconciled").await,
        history,
        "[expiry_is_exclusive] a refused reconcile was logged"
    );
    h.clock.set(worker.lease_expires_at);
    let token = h
        .store
        .reconcile(&id, &owner("op"))
        .await
        .unwrap_or_else(|e| {
            panic!("[expiry_is_exclusive] a reconcile at the expiry instant: refused with {e}")
        });
    assert!(
        token > worker.token,
        "[expiry_is_exclusive] the reconcile's token {token} is not above the worker's {}",
        worker.token
    );
    let record = h.store.inspect(&id).await.expect("inspect");
    assert!(
        record
            .as_ref()
            .is_some_and(|r| r.state == ExecutionState::Reconciling && r.token == token),
        "[expiry_is_exclusive] reconciling under token {token} after a reconcile at the expiry \
         instant: {record:?}"
    );

    // A completion with the current token is accepted once the lease has expired: at the expiry
    // instant, and an hour after the hard expiry (no other generation exists).
    for (key, late, when) in [
        ("completed-at-expiry", false, "at the expiry instant"),
        ("completed-past-hard", true, "an hour after the hard expiry"),
    ] {
        h.clock.set(t0);
        let worker = h.acquire(key, "w", true).await;
        let id = h.id(key);
        h.clock.set(if late {
            worker
                .hard_expires_at
                .saturating_add(Duration::from_secs(3600))
        } else {
            worker.lease_expires_at
        });
        let completed = h.store.complete(&id, worker.token, &result(5)).await;
        assert!(
            completed.is_ok(),
            "[expiry_is_exclusive] a completion with the current token {when}: {completed:?}"
        );
        let record = h.store.inspect(&id).await.expect("inspect");
        assert!(
            record
                .as_ref()
                .is_some_and(|r| r.state == ExecutionState::Completed
                    && r.token == worker.token
                    && r.result == Some(result(5))),
            "[expiry_is_exclusive] completed with its result by a completion {when}: {record:?}"
        );
        let history = h.history(Keyspace::Execution, key).await;
        assert!(
            history
                .last()
                .is_some_and(|e| e.kind == EventKind::Completed && e.token == worker.token),
            "[expiry_is_exclusive] the history ends with the completion {when}: {history:?}"
        );
    }

    // Listings, on the same lines: an execution and a claim not started, each through filters
    // with and without a state (a store may serve them by different queries).
    h.clock.set(t0);
    let executing = h.acquire("listed-executing", "w", true).await;
    let claimed = h.acquire("listed-claimed", "w", false).await;
    let executing_state = Some(ExecutionState::Executing);
    let expiries = [
        (
            &executing,
            "listed-executing",
            ListFilter {
                uncertain: true,
                ..Default::default()
            },
        ),
        (
            &executing,
            "listed-executing",
            ListFilter {
                expired: true,
                state: executing_state,
                ..Default::default()
            },
        ),
        (
            &executing,
            "listed-executing",
            ListFilter {
                expired: true,
                ..Default::default()
            },
        ),
        (
            &claimed,
            "listed-claimed",
            ListFilter {
                expired: true,
                ..Default::default()
            },
        ),
    ];
    for (grant, key, filter) in &expiries {
        h.clock.set(grant.lease_expires_at.saturating_sub(micro));
        assert!(
            !lists(&h, filter, key).await,
            "[expiry_is_exclusive] {key} listed with {filter:?} one microsecond before its expiry"
        );
        h.clock.set(grant.lease_expires_at);
        assert!(
            lists(&h, filter, key).await,
            "[expiry_is_exclusive] {key} not listed with {filter:?} at its expiry instant"
        );
    }
    let age = Duration::from_millis(1);
    let older = [
        (
            "listed-executing",
            ListFilter {
                older_than: Some(age),
                state: executing_state,
                ..Default::default()
            },
        ),
        (
            "listed-executing",
            ListFilter {
                older_than: Some(age),
                ..Default::default()
            },
        ),
        (
            "listed-claimed",
            ListFilter {
                older_than: Some(age),
                ..Default::default()
            },
        ),
    ];
    for (key, filter) in &older {
        h.clock.set(t0.saturating_add(age).saturating_sub(micro));
        assert!(
            !lists(&h, filter, key).await,
            "[expiry_is_exclusive] {key} listed with {filter:?} one microsecond early"
        );
        h.clock.set(t0.saturating_add(age));
        assert!(
            lists(&h, filter, key).await,
            "[expiry_is_exclusive] {key} not listed with {filter:?} at the instant"
        );
    }
}

/// Whether the listing of the harness's namespace with `filter` holds `key`.
async fn lists<S: CoordinationStore + Clone>(
    h: &Harness<S>,
    filter: &ListFilter,
    key: &str,
) -> bool {
    executions(h, filter, 100, 2, "[expiry_is_exclusive]")
        .await
        .iter()
        .any(|r| r.key.as_str() == key)
}
