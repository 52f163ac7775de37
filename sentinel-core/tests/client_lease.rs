//! The lease client on the memory store: acquire, renew, release, release on drop, the closure
//! form and lost authority.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use sentinel_core::{
    CoordinationStore, Error, EventKind, Keyspace, LeaseAttempt, LeaseOptions, Leased, LostReason,
    RecordId, RejectReason, Sentinel,
};
use sentinel_memory::MemoryStore;
use support::{Renewals, TokioClock};

fn clients<S: CoordinationStore + Clone>(store: S) -> (Sentinel, Sentinel) {
    let build = |store: S| {
        Sentinel::builder(store)
            .namespace("jobs")
            .ttl(Duration::from_secs(1))
            .hard_ttl(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    (build(store.clone()), build(store))
}

#[tokio::test]
async fn acquire_excludes_others_and_release_frees_with_a_higher_token_next() {
    let (a, b) = clients(MemoryStore::with_manual_clock().0);
    let guard = a.lease("report").await.unwrap().acquired().unwrap();
    let LeaseAttempt::Held { owner, token, .. } = b.lease("report").await.unwrap() else {
        panic!("held by a")
    };
    assert_eq!((&owner, token), (a.owner(), guard.token()));
    let first = guard.token();
    guard.release().await.unwrap();
    let next = b.lease("report").await.unwrap().acquired().unwrap();
    assert!(next.token() > first);
    let kinds: Vec<_> = b
        .history_of(Keyspace::Lease, "report", &Default::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::LeaseAcquired,
            EventKind::LeaseReleased,
            EventKind::LeaseAcquired
        ]
    );
    next.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_renews_a_held_lease_past_its_ttl() {
    let (a, b) = clients(MemoryStore::with_clock(TokioClock::new()));
    let guard = a.lease("poller").await.unwrap().acquired().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guard.is_held(), "five ttls later the lease still holds");
    assert!(b.lease("poller").await.unwrap().acquired().is_none());
    let record = b.inspect_lease("poller").await.unwrap().unwrap();
    assert!(record.lease_expires_at > record.acquired_at.saturating_add(Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!guard.is_held(), "no renewal passes the hard ttl");
    assert_eq!(guard.lost().await, LostReason::HardTtl);
    assert!(b.lease("poller").await.unwrap().acquired().is_some());
}

#[tokio::test]
async fn dropping_the_guard_releases_the_lease() {
    let (a, b) = clients(MemoryStore::with_manual_clock().0);
    let guard = a.lease("drop-me").await.unwrap().acquired().unwrap();
    drop(guard);
    assert_eq!(a.held(), 0, "renewals stop at once");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(b.inspect_lease("drop-me").await.unwrap().is_none());
    assert!(b.lease("drop-me").await.unwrap().acquired().is_some());
}

#[tokio::test]
async fn the_closure_form_runs_only_when_acquired_and_releases_after() {
    let (a, b) = clients(MemoryStore::with_manual_clock().0);
    let ran = a
        .with_lease("compact", |authority| async move { authority.token() })
        .await
        .unwrap();
    let Leased::Ran(token) = ran else {
        panic!("acquired")
    };
    assert!(
        a.inspect_lease("compact").await.unwrap().is_none(),
        "released after the work"
    );
    let holder = b.lease("compact").await.unwrap().acquired().unwrap();
    assert!(holder.token() > token);
    let blocked = a
        .with_lease("compact", |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(matches!(blocked, Leased::Held { token, .. } if token == holder.token()));
}

#[tokio::test(start_paused = true)]
async fn refused_renewals_signal_the_guard() {
    let faulty = support::faulty(MemoryStore::with_clock(TokioClock::new()));
    let sentinel = Sentinel::builder(faulty.clone())
        .ttl(Duration::from_secs(3))
        .hard_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let guard = sentinel.lease("fenced").await.unwrap().acquired().unwrap();
    faulty.set(Renewals::Refused);
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost())
        .await
        .unwrap();
    assert!(matches!(reason, LostReason::Rejected(_)), "{reason:?}");
    assert!(!guard.is_held());
}

/// A guard's deadline runs from when the acquire was sent, not from when its answer came (DESIGN
/// §4): with the answer 2 s late and no renewal getting through, the guard is lost 3 s (the ttl)
/// after the call began, when the store's lease ends, not 5 s.
#[tokio::test(start_paused = true)]
async fn a_guards_deadline_runs_from_when_the_acquire_was_sent() {
    let (faulty, sentinel) = support::renewing_client();
    *faulty.slow_replies.lock().unwrap() = Duration::from_secs(2);
    faulty.set(Renewals::Unreachable);
    let started = tokio::time::Instant::now();
    let guard = sentinel.lease("slow").await.unwrap().acquired().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(guard.lost().await, LostReason::Expired);
    let lost = started.elapsed();
    assert!(lost <= Duration::from_secs(3), "lost at {lost:?}");
}

#[tokio::test]
async fn releasing_after_another_worker_took_over_reports_the_fence() {
    let (store, clock) = MemoryStore::with_manual_clock();
    let (a, b) = clients(store);
    let options = LeaseOptions::new().ttl(Duration::from_secs(1));
    let stale = a
        .lease_with("k", &options)
        .await
        .unwrap()
        .acquired()
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let fresh = b.lease("k").await.unwrap().acquired().unwrap();
    let error = stale.release().await.unwrap_err();
    assert!(
        matches!(&error, Error::Rejected(r) if r.reason == RejectReason::Fenced),
        "{error}"
    );
    assert!(
        b.inspect_lease("k").await.unwrap().is_some(),
        "the new holder keeps it"
    );
    fresh.release().await.unwrap();
    let id = RecordId::parse("jobs", "k").unwrap();
    assert!(b.store().inspect_lease(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn per_call_options_set_the_lease_window() {
    let (a, _) = clients(MemoryStore::with_manual_clock().0);
    let set = LeaseOptions::new()
        .ttl(Duration::from_secs(3))
        .hard_ttl(Duration::from_secs(30));
    // Unset options take the client's defaults (1 s, hard 10 s).
    for (options, ttl, hard) in [(set, 3, 30), (LeaseOptions::new(), 1, 10)] {
        let guard = a
            .lease_with("k", &options)
            .await
            .unwrap()
            .acquired()
            .unwrap();
        let record = a.inspect_lease("k").await.unwrap().unwrap();
        let (ttl, hard) = (Duration::from_secs(ttl), Duration::from_secs(hard));
        assert_eq!((record.ttl.ttl(), record.ttl.hard()), (ttl, hard));
        assert_eq!(
            record.lease_expires_at,
            record.acquired_at.saturating_add(ttl)
        );
        assert_eq!(
            record.hard_expires_at,
            record.acquired_at.saturating_add(hard)
        );
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_release_sent_again_after_it_applied_succeeds() {
    // The first release reached the store but its reply was lost; the guard's release is the
    // retry and finds the lease already free.
    let (a, b) = clients(MemoryStore::with_manual_clock().0);
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    let id = RecordId::parse("jobs", "k").unwrap();
    a.store().release_lease(&id, guard.token()).await.unwrap();
    guard.release().await.unwrap();
    assert!(b.lease("k").await.unwrap().acquired().is_some());
}

/// Two clients of the lease namespace over one faulty memory store (manual clock).
fn faulty_clients() -> (support::Faulty, Sentinel, Sentinel) {
    let store = support::faulty(MemoryStore::with_manual_clock().0);
    let (a, b) = clients(store.clone());
    (store, a, b)
}

#[tokio::test(start_paused = true)]
async fn a_release_whose_reply_was_lost_is_not_reported_as_fenced_when_another_took_the_lease() {
    // The release is applied and its reply lost; during the retry's pause another worker takes
    // the free lease, so the retry is refused as fenced. The lease was released in time: that
    // is success, not "work done after it expired was not protected".
    let (store, a, b) = faulty_clients();
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    store.lost_release_replies.store(1, SeqCst);
    let releasing = tokio::spawn(guard.release());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let taken = b
        .lease("k")
        .await
        .unwrap()
        .acquired()
        .expect("the lease was free");
    releasing.await.unwrap().unwrap();
    assert!(taken.is_held());
    // A release that really came too late is still reported as fenced.
    let (_, c, d) = faulty_clients();
    let late = c.lease("k").await.unwrap().acquired().unwrap();
    let id = RecordId::parse("jobs", "k").unwrap();
    c.store().release_lease(&id, late.token()).await.unwrap();
    let _other = d.lease("k").await.unwrap().acquired().unwrap();
    let refused = late.release().await.unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| r.reason.clone()),
        Some(RejectReason::Fenced)
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_dropped_before_the_store_answered_still_frees_the_lease() {
    let (store, a, b) = faulty_clients();
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    store.failed_releases.store(1, SeqCst);
    let dropped = tokio::time::timeout(Duration::from_millis(10), guard.release()).await;
    assert!(dropped.is_err(), "dropped during the retry's pause");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        b.lease("k").await.unwrap().acquired().is_some(),
        "freed by the guard's drop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_granted_to_an_acquire_whose_every_reply_was_lost_is_released_in_the_background() {
    // Every attempt was applied (the first granted, the retries adopted it) and every reply
    // lost: the caller was told the acquire failed and holds no guard, so nobody would release
    // the lease before its ttl ended (never, on this manual clock).
    let (store, a, b) = faulty_clients();
    store.lost_acquire_replies.store(3, SeqCst);
    let failed = a.lease("k").await;
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        b.lease("k").await.unwrap().acquired().is_some(),
        "the lost grant was released"
    );
    let id = RecordId::parse("jobs", "k").unwrap();
    let history = a
        .store()
        .history(Keyspace::Lease, &id, &Default::default())
        .await
        .unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::LeaseAcquired,
            EventKind::LeaseReleased,
            EventKind::LeaseAcquired
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn releasing_a_lost_grant_never_touches_another_workers_lease() {
    // None of `a`'s attempts reached the store, but `a` cannot know that and looks for its
    // grant in the background; `b` takes the lease meanwhile and must keep it.
    let (store, a, b) = faulty_clients();
    store.failed_acquires.store(3, SeqCst);
    assert!(a.lease("k").await.is_err());
    let guard = b.lease("k").await.unwrap().acquired().unwrap();
    // Longer than every look `a` takes (about a minute in all). The store's clock stands
    // still, so only a release could end `b`'s lease.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let id = RecordId::parse("jobs", "k").unwrap();
    let held = a.store().inspect_lease(&id).await.unwrap().unwrap();
    assert_eq!(held.token, guard.token());
    let history = a
        .store()
        .history(Keyspace::Lease, &id, &Default::default())
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_guard_whose_release_failed_sends_it_again() {
    let (store, a, b) = faulty_clients();
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    store.failed_releases.store(2, SeqCst);
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        b.lease("k").await.unwrap().acquired().is_some(),
        "freed by the drop's later attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_that_failed_is_sent_again_by_the_guard_and_one_that_succeeded_is_not() {
    let (store, a, b) = faulty_clients();
    // Every attempt of the call fails: the caller is told, and the guard's drop sends it again.
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    store.failed_releases.store(3, SeqCst);
    let failed = guard.release().await;
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = b
        .lease("k")
        .await
        .unwrap()
        .acquired()
        .expect("released by the guard");
    // A release the store answered leaves the guard nothing to send.
    let before = store.releases.load(SeqCst);
    next.release().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.releases.load(SeqCst), before + 1);
}

/// `a` takes "k" after 501 acquisitions and releases (more than a page of history, 1,000
/// events, before the ones the release's retry looks for), the first attempt of its release
/// meets the faults `fault` sets, and during the retry's pause `b` takes the lease (first
/// letting it expire, if `expire`), taking and releasing it `cycles` times before it takes it
/// for good. What the release answers, and how many history pages the retry read to find out.
async fn release_retried_after_a_takeover(
    fault: fn(&support::Faults),
    expire: bool,
    cycles: usize,
) -> (sentinel_core::Result<()>, usize) {
    let (memory, clock) = MemoryStore::with_manual_clock();
    let store = support::faulty(memory);
    let (a, b) = clients(store.clone());
    for _ in 0..501 {
        let earlier = a.lease("k").await.unwrap().acquired().unwrap();
        earlier.release().await.unwrap();
    }
    let guard = a.lease("k").await.unwrap().acquired().unwrap();
    fault(&store);
    let releasing = tokio::spawn(guard.release());
    tokio::time::sleep(Duration::from_millis(5)).await;
    if expire {
        clock.advance(Duration::from_secs(60));
    }
    for _ in 0..cycles {
        let later = b.lease("k").await.unwrap().acquired().unwrap();
        later.release().await.unwrap();
    }
    let _taken = b.lease("k").await.unwrap().acquired().unwrap();
    let answer = releasing.await.unwrap();
    (answer, store.history_reads.load(SeqCst))
}

/// `answer` is the store's refusal of a fenced release.
fn fenced(answer: sentinel_core::Result<()>) {
    let refused = answer.unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| r.reason.clone()),
        Some(RejectReason::Fenced),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_release_that_never_applied_is_reported_as_fenced_when_another_took_the_lease() {
    // The first attempt never reached the store; the lease expired during the retry's pause and
    // another worker took it, so the retry is refused as fenced. The history shows no release of
    // this token: the work after the expiry was not protected, and the caller must hear so.
    // Reading from the newest end, the search stops at the acquisition of the token: one page,
    // not the whole history.
    let (answer, reads) =
        release_retried_after_a_takeover(|f| f.failed_releases.store(1, SeqCst), true, 0).await;
    fenced(answer);
    assert_eq!(reads, 1, "history pages read");
}

#[tokio::test(start_paused = true)]
async fn a_retried_release_is_not_taken_for_the_release_of_a_later_token() {
    // As above, and the worker that took the lease released it once before taking it again:
    // that release is of another token, and says nothing of this one.
    let (answer, _) =
        release_retried_after_a_takeover(|f| f.failed_releases.store(1, SeqCst), true, 1).await;
    fenced(answer);
}

#[tokio::test(start_paused = true)]
async fn a_retried_release_finds_its_own_release_in_a_long_history() {
    // The first attempt was applied and its reply lost: the retry's "fenced" is the store having
    // done it, and the release event is found among the newest, in one read; or, when the lease
    // was taken and released 500 times meanwhile, on the second page from the newest end.
    for (later_cycles, pages) in [(0, 1), (500, 2)] {
        let (answer, reads) = release_retried_after_a_takeover(
            |f| f.lost_release_replies.store(1, SeqCst),
            false,
            later_cycles,
        )
        .await;
        answer.unwrap();
        assert_eq!(
            reads, pages,
            "history pages read after {later_cycles} cycles"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_history_does_not_go_back_in_time_is_an_error_not_an_answer() {
    // A store written before histories could be read from the newest end answers the oldest
    // events, oldest first: read as newest first, they would end the search at the first
    // acquisition and call an applied release fenced. One that ignores only `before` answers
    // the same newest page again and again: the search would never end.
    for ignores_order in [true, false] {
        let fault = if ignores_order {
            |f: &support::Faults| {
                f.lost_release_replies.store(1, SeqCst);
                f.history_oldest_first_only.store(true, SeqCst);
            }
        } else {
            |f: &support::Faults| {
                f.lost_release_replies.store(1, SeqCst);
                f.history_ignores_before.store(true, SeqCst);
            }
        };
        // 500 later cycles: the release looked for is past the first page.
        let (answer, _) = release_retried_after_a_takeover(fault, false, 500).await;
        let error = answer.unwrap_err();
        assert!(
            matches!(&error, Error::Backend { source, .. }
                if source.to_string().contains("out of order")),
            "ignores the order too: {ignores_order}: {error:?}"
        );
    }
}
