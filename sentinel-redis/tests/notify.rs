//! `wait_for_change` on Redis: a waiter is woken by the `SPUBLISH` of another store's transition,
//! standalone and on a cluster; a change between the claim and the wait is not missed; a store
//! that cannot subscribe answers `Wait::Unsupported`; a dropped subscription connection wakes its
//! waiters and is re-established; a wait longer than the notifier's idle time keeps its channel,
//! while channels nobody waits on are unsubscribed (but not the one a wait is for again); no wait
//! takes much longer than its timeout while the subscription cannot connect, and `Duration::MAX`
//! means no deadline.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sentinel_core::store::{Renewal, Wait};
use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, Failure, Grant, Keyspace, Once,
    OnceOptions, OwnerId, RecordId, RequestId, Sentinel, TimeSource, Ttl,
};
use sentinel_redis::RedisStore;
use sentinel_testkit::{Counted, servers, unique_namespace};
use tokio::time::Instant;

fn claim(who: &str) -> ClaimRequest {
    claim_for(who, Duration::from_secs(30))
}

fn claim_for(who: &str, ttl: Duration) -> ClaimRequest {
    ClaimRequest {
        owner: OwnerId::new(who).unwrap(),
        ttl: Ttl::new(ttl).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

fn id(key: &str) -> RecordId {
    RecordId::new(
        unique_namespace("notify"),
        sentinel_core::Key::new(key).unwrap(),
    )
}

fn granted(outcome: ClaimOutcome) -> Grant {
    match outcome {
        ClaimOutcome::Acquired(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// `store` claims `id`, which another store holds, as "b", and checks it is busy. Returns when
/// the claim was sent: what a wait on it starts from.
async fn claim_busy<S: CoordinationStore>(store: &S, id: &RecordId) -> Instant {
    let since = Instant::now();
    let busy = store.claim(id, &claim("b")).await.unwrap();
    assert!(matches!(busy, ClaimOutcome::Busy { .. }), "{busy:?}");
    since
}

/// `b` finds the key busy and waits; `change` runs after 300 ms of nothing happening. Returns
/// how long after `change` was sent the waiter woke.
async fn wake_latency<S, F, Fut>(b: &S, id: &RecordId, change: F) -> Duration
where
    S: CoordinationStore + Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let since = claim_busy(b, id).await;
    let waiter = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move {
            let answer = b
                .wait_for_change(&id, since, Duration::from_secs(5))
                .await
                .unwrap();
            (answer, Instant::now())
        })
    };
    // Nothing changes: the waiter keeps waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "woke with no change");
    let changed = Instant::now();
    change().await;
    let (answer, woke) = waiter.await.unwrap();
    assert_eq!(answer, Wait::Changed);
    woke - changed
}

/// Store `a` claims, store `b` finds it busy and waits; `a` changes the record: `b` wakes within
/// 100 ms. First on a fresh subscription (the wait subscribes), then on the established one; a
/// heartbeat (not a logged transition) wakes nobody.
async fn a_waiter_wakes_on_another_stores_completion<S: CoordinationStore + Clone>(a: S, b: S) {
    let id = id("wake");
    let first = granted(a.claim(&id, &claim("a")).await.unwrap());
    let latency = wake_latency(&b, &id, || async {
        a.abort(&id, first.token, Disposition::NotApplied)
            .await
            .unwrap();
    })
    .await;
    eprintln!("first wait (it subscribes): woke {latency:?} after the abort was sent");
    assert!(
        latency < Duration::from_millis(100),
        "woke {latency:?} after the change"
    );

    let second = granted(a.claim(&id, &claim("a")).await.unwrap());
    // The claim's own message reaches `b` a moment after `a` has its reply: let it pass.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A heartbeat is not a logged transition: it wakes nobody.
    let since = Instant::now();
    let renewal = Renewal {
        keyspace: Keyspace::Execution,
        id: id.clone(),
        token: second.token,
    };
    assert!(a.heartbeat(&[renewal]).await.unwrap()[0].is_ok());
    let t0 = Instant::now();
    assert_eq!(
        b.wait_for_change(&id, since, Duration::from_millis(200))
            .await
            .unwrap(),
        Wait::TimedOut,
        "a heartbeat is no change"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));

    let latency = wake_latency(&b, &id, || async {
        a.complete(&id, second.token, &serde_json::json!("done"))
            .await
            .unwrap();
    })
    .await;
    eprintln!("established subscription: woke {latency:?} after the completion was sent");
    assert!(
        latency < Duration::from_millis(100),
        "woke {latency:?} after the change"
    );
}

/// `b` claims (busy), then `a` completes, and only then does `b` wait: the change happened after
/// `since`, before the wait, so the wait answers `Changed` at once. Both on a store that never
/// subscribed before and on one whose subscription to the key already exists.
async fn a_change_between_the_claim_and_the_wait_is_not_missed<S: CoordinationStore + Clone>(
    a: S,
    b: S,
) {
    for established in [false, true] {
        let id = id("since");
        let grant = granted(a.claim(&id, &claim("a")).await.unwrap());
        if established {
            // Subscribe first: a wait that times out.
            let since = claim_busy(&b, &id).await;
            assert_eq!(
                b.wait_for_change(&id, since, Duration::from_millis(50))
                    .await
                    .unwrap(),
                Wait::TimedOut
            );
        }
        let since = claim_busy(&b, &id).await;
        a.complete(&id, grant.token, &serde_json::json!(1))
            .await
            .unwrap();
        if established {
            // Let the message arrive before the wait is registered.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = Instant::now();
        let answer = b
            .wait_for_change(&id, since, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Wait::Changed,
            "established subscription: {established}"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "answered after {:?}",
            t0.elapsed()
        );
        // A wait from after the change, on the same key, does wait.
        let since = Instant::now();
        let t0 = Instant::now();
        assert_eq!(
            b.wait_for_change(&id, since, Duration::from_millis(100))
                .await
                .unwrap(),
            Wait::TimedOut,
            "a change before `since` does not count"
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }
    // Subscribed by another wait after the claim and after the change: the change went unheard,
    // so the caller's wait compares instead of trusting the subscription.
    let id = id("between");
    let grant = granted(a.claim(&id, &claim("a")).await.unwrap());
    let since = claim_busy(&b, &id).await;
    a.complete(&id, grant.token, &serde_json::json!(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.wait_for_change(&id, Instant::now(), Duration::from_millis(50))
        .await
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(
        b.wait_for_change(&id, since, Duration::from_secs(5))
            .await
            .unwrap(),
        Wait::Changed,
        "subscribed after the caller's claim"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "answered after {:?}",
        t0.elapsed()
    );
}

/// The conformance case `waiting_for_a_result` (50 waiters, one slow executor), with the store
/// calls printed: claims and waits per run.
async fn waiting_counts<S: CoordinationStore + Clone>(store: S, label: &str) -> (u64, u64) {
    let store = Counted::counting(store);
    let namespace = unique_namespace("waiting");
    let client = |who: String| {
        Sentinel::builder(store.clone())
            .namespace(namespace.as_str())
            .owner(OwnerId::new(who).unwrap())
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap()
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
    started_rx.await.unwrap();
    let claims_before = store.count("claim");
    let waits_before = store.count("wait_for_change");
    let options = OnceOptions::new().wait(Duration::from_secs(30));
    let t0 = Instant::now();
    let waiters: Vec<_> = (0..50)
        .map(|n| {
            let (waiter, options) = (client(format!("waiter-{n}")), options.clone());
            tokio::spawn(async move {
                let out = waiter
                    .once_with("report", &options, |_| async {
                        Ok::<_, Failure>("a second run".to_owned())
                    })
                    .await;
                (out, Instant::now())
            })
        })
        .collect();
    let mut done = Vec::new();
    for waiter in waiters {
        let (out, at) = waiter.await.unwrap();
        match out {
            Ok(Once::Cached { value, .. }) => assert_eq!(value, "the one result"),
            other => panic!("a waiter got {other:?}"),
        }
        done.push(at);
    }
    let finished = slow.await.unwrap().unwrap();
    assert!(finished.is_executed());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let claims = store.count("claim") - claims_before;
    let waits = store.count("wait_for_change") - waits_before;
    let last = done.iter().max().copied().unwrap_or(t0) - t0;
    eprintln!(
        "[{label}] waiting_for_a_result: {claims} claims and {waits} waits for 50 waiters; the \
         last waiter returned {last:?} after the waiters started (the work takes 600 ms)"
    );
    assert!(claims <= 50 * 8);
    assert!(waits <= 50 * 4);
    (claims, waits)
}

/// Two standalone stores over the same records (two processes), each with its own connections.
async fn standalone_pair() -> (RedisStore, RedisStore) {
    let a = support::standalone(TimeSource::Server).await;
    let b = RedisStore::builder()
        .prefix(a.prefix())
        .connect(&support::redis_url())
        .await
        .unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_waiter_wakes_on_another_stores_completion() {
    let (a, b) = standalone_pair().await;
    a_waiter_wakes_on_another_stores_completion(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_waiter_wakes_on_another_stores_completion() {
    let a = support::cluster(TimeSource::Server).await;
    let b = RedisStore::builder()
        .prefix(a.prefix())
        .connect_cluster(support::cluster_urls())
        .await
        .unwrap();
    a_waiter_wakes_on_another_stores_completion(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_change_between_claim_and_wait_is_not_missed() {
    let (a, b) = standalone_pair().await;
    a_change_between_the_claim_and_the_wait_is_not_missed(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_change_between_claim_and_wait_is_not_missed() {
    let a = support::cluster(TimeSource::Server).await;
    let b = RedisStore::builder()
        .prefix(a.prefix())
        .connect_cluster(support::cluster_urls())
        .await
        .unwrap();
    a_change_between_the_claim_and_the_wait_is_not_missed(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_waiting_for_a_result_counts() {
    let store = support::standalone(TimeSource::Server).await;
    let (claims, waits) = waiting_counts(store, "standalone").await;
    assert!(
        claims <= 50 * 3,
        "{claims} claims: notified waiters claim about twice"
    );
    assert!(waits <= 50 * 2, "{waits} waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_waiting_for_a_result_counts() {
    let store = support::cluster(TimeSource::Server).await;
    let (claims, waits) = waiting_counts(store, "cluster").await;
    assert!(
        claims <= 50 * 3,
        "{claims} claims: notified waiters claim about twice"
    );
    assert!(waits <= 50 * 2, "{waits} waits");
}

/// The channels `store` (standalone) is subscribed to, among those of its prefix.
async fn subscribed_channels(store: &RedisStore) -> Vec<Vec<u8>> {
    let mut admin = support::raw(&support::redis_url()).await;
    let mut channels: Vec<Vec<u8>> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .arg(format!("{}*", store.prefix()))
        .query_async(&mut admin)
        .await
        .unwrap();
    channels.sort();
    channels
}

/// A record's entry in the notifier outlives its idle time (30 s) only while someone waits on
/// it: a wait of a minute keeps its subscription and is woken by a change at 36 s, while records
/// nobody waits on are forgotten by the next sweep (here a busy claim's) and their channels
/// unsubscribed by the next wait; except the channel of the record that wait is for, which stays
/// subscribed and delivers its next change. On a current-thread runtime the wait sends its own
/// `SSUBSCRIBE` before the unsubscribing task runs: a wait that unsubscribed its own record's
/// channel would be left unsubscribed (and, from then on, believe it was subscribed).
#[tokio::test]
async fn a_long_wait_keeps_its_channel_and_forgotten_channels_are_unsubscribed() {
    let (a, b) = standalone_pair().await;
    let (idle, gone, long) = (id("idle"), id("gone"), id("long"));

    // `idle` and `gone`: one short wait each subscribes to their channel; nobody waits on them
    // afterwards.
    // (Held for longer than the test, so the keys are still busy at 36 s.)
    let held = claim_for("a", Duration::from_secs(120));
    let mut idle_token = None;
    for key in [&idle, &gone] {
        let grant = granted(a.claim(key, &held).await.unwrap());
        idle_token.get_or_insert(grant.token);
        let since = claim_busy(&b, key).await;
        assert_eq!(
            b.wait_for_change(key, since, Duration::from_millis(100))
                .await
                .unwrap(),
            Wait::TimedOut
        );
    }
    // `long`: a wait of a minute.
    let grant = granted(a.claim(&long, &claim("a")).await.unwrap());
    let since = claim_busy(&b, &long).await;
    let started = Instant::now();
    let waiter = {
        let (b, long) = (b.clone(), long.clone());
        tokio::spawn(async move {
            b.wait_for_change(&long, since, Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = subscribed_channels(&b).await;
    assert_eq!(all.len(), 3, "{all:?}");

    // Past the idle time and a sweep interval, a busy claim of `idle` sweeps (forgetting `idle`
    // and `gone`), and the wait that follows unsubscribes what was forgotten.
    tokio::time::sleep_until(started + Duration::from_secs(36)).await;
    assert!(!waiter.is_finished(), "nothing changed");
    let since = claim_busy(&b, &idle).await;
    assert_eq!(
        b.wait_for_change(&idle, since, Duration::from_millis(100))
            .await
            .unwrap(),
        Wait::TimedOut,
        "nothing changed, and nothing was unsubscribed under the wait"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = loop {
        let channels = subscribed_channels(&b).await;
        if channels.len() == 2 || Instant::now() > deadline {
            break channels;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Each record has a namespace of its own, which its channel's name holds.
    let kept = |id: &RecordId| {
        let ns = id.namespace.as_str().as_bytes();
        left.iter().any(|c| c.windows(ns.len()).any(|w| w == ns))
    };
    assert!(
        !kept(&gone),
        "the forgotten channel is unsubscribed: {left:?}"
    );
    assert!(kept(&long), "the waited-on channel is kept: {left:?}");
    assert!(
        kept(&idle),
        "the channel waited on again stays subscribed: {left:?}"
    );

    // `idle` is subscribed, and known to be: a change wakes its next waiter at once.
    let latency = wake_latency(&b, &idle, || async {
        a.complete(&idle, idle_token.unwrap(), &serde_json::json!("done"))
            .await
            .unwrap();
    })
    .await;
    assert!(
        latency < Duration::from_millis(500),
        "the wait on the channel subscribed again was woken after {latency:?}"
    );

    // The long wait is still subscribed: a change wakes it.
    let t0 = Instant::now();
    a.complete(&long, grant.token, &serde_json::json!("done"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the long wait is woken")
        .unwrap();
    assert_eq!(answer, Wait::Changed);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}

/// `Duration::MAX` is a timeout like any other (the port takes any duration): no panic, and a
/// wait without a deadline that ends when the record changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_timeout_waits_without_a_deadline() {
    let (a, b) = standalone_pair().await;
    let key = id("forever");
    // Held before `b` subscribes, so that no message of the grant can reach `b`'s wait below.
    let grant = granted(a.claim(&key, &claim("a")).await.unwrap());
    // No busy claim to compare with: a first wait answers at once.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        b.wait_for_change(&key, Instant::now(), Duration::MAX),
    )
    .await
    .expect("answered at once")
    .unwrap();
    assert_eq!(answer, Wait::Changed);
    // A busy key: the wait lasts until the holder completes.
    let since = claim_busy(&b, &key).await;
    let waiter = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.wait_for_change(&key, since, Duration::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "nothing changed");
    a.complete(&key, grant.token, &serde_json::json!(1))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("woken by the completion")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Wait::Changed);
}

/// A store over a connection the caller built has no URL to open a subscription with: it answers
/// `Unsupported`, and the client polls.
#[tokio::test]
async fn a_supplied_connection_cannot_subscribe_and_says_so() {
    let client = redis::Client::open(support::redis_url()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let store = RedisStore::builder()
        .prefix(support::unique_prefix())
        .build(conn)
        .unwrap();
    let id = id("supplied");
    assert_eq!(
        store
            .wait_for_change(&id, Instant::now(), Duration::from_secs(1))
            .await
            .unwrap(),
        Wait::Unsupported
    );
}

/// A server that cannot be subscribed to (here: one that went away after the store connected)
/// answers `Unsupported` rather than an error; once the server is back the subscription is made
/// and waiting works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscription_means_unsupported_and_a_killed_subscription_is_reestablished() {
    let mut server = support::private_redis(servers::RedisOptions::default());
    let url = server.url().to_owned();
    let prefix = support::unique_prefix();
    let connect = |url: String, prefix: String| async move {
        RedisStore::builder()
            .prefix(prefix)
            .response_timeout(Duration::from_secs(2))
            .connection_timeout(Duration::from_millis(500))
            .connect(&url)
            .await
            .unwrap()
    };
    let a = connect(url.clone(), prefix.clone()).await;
    let b = connect(url.clone(), prefix.clone()).await;
    let id = id("killed");
    let grant = granted(a.claim(&id, &claim("a")).await.unwrap());

    // An established subscription, then its connection is killed server-side: the waiter is
    // woken (something may have been missed), and the next wait subscribes again.
    let since = claim_busy(&b, &id).await;
    let waiter = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.wait_for_change(&id, since, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let mut admin = support::raw(&url).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "a subscriber connection was killed");
    let t0 = Instant::now();
    assert_eq!(waiter.await.unwrap().unwrap(), Wait::Changed);
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Subscribed again: a completion wakes the next waiter.
    let since = claim_busy(&b, &id).await;
    let waiter = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.wait_for_change(&id, since, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let t0 = Instant::now();
    a.complete(&id, grant.token, &serde_json::json!(2))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Wait::Changed);
    assert!(t0.elapsed() < Duration::from_millis(500));

    // The server goes away: a store that has not subscribed yet answers Unsupported, no error.
    let c = connect(url.clone(), prefix.clone()).await;
    server.stop().unwrap();
    let t0 = Instant::now();
    assert_eq!(
        c.wait_for_change(&id, Instant::now(), Duration::from_secs(10))
            .await
            .unwrap(),
        Wait::Unsupported
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    // Back again: the subscription is not tried again at once, but after its delay (5 s).
    let failed_at = Instant::now();
    server.start().unwrap();
    assert_eq!(
        c.wait_for_change(&id, Instant::now(), Duration::from_secs(10))
            .await
            .unwrap(),
        Wait::Unsupported,
        "tried again at once"
    );
    tokio::time::sleep_until(failed_at + Duration::from_secs(6)).await;
    let since = Instant::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        c.wait_for_change(&id, since, Duration::from_secs(10))
            .await
            .unwrap(),
        Wait::Changed,
        "subscribed again after the delay (and, subscribed after `since`, it may have missed a \
         change)"
    );
}

/// A TCP proxy in front of a Redis server, on std threads: it forwards every connection, or,
/// while it stalls, accepts new ones and never answers them (a server that hangs, or a network
/// that drops packets). Connections already forwarded keep working, unless told to go silent
/// ([`StallingProxy::silence_subscribers`]).
struct StallingProxy {
    port: u16,
    stalling: Arc<std::sync::atomic::AtomicBool>,
    /// The silence switches of the forwarded connections that sent an `SSUBSCRIBE`.
    subscribers: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    /// Forwarded connections whose client has not closed them.
    open: Arc<AtomicUsize>,
    /// Connections accepted while stalling (never answered).
    held: Arc<AtomicUsize>,
}

impl StallingProxy {
    fn start(upstream: std::net::SocketAddr) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::AtomicBool;
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let stalling = Arc::new(AtomicBool::new(false));
        let subscribers: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let held_count = Arc::new(AtomicUsize::new(0));
        let (stall, registry, counter, holding) = (
            Arc::clone(&stalling),
            Arc::clone(&subscribers),
            Arc::clone(&open),
            Arc::clone(&held_count),
        );
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in socket.incoming() {
                let Ok(client) = client else { continue };
                if stall.load(Ordering::SeqCst) {
                    held.push(client);
                    holding.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                counter.fetch_add(1, Ordering::SeqCst);
                // Forwards `from` to `to` until either ends; while silent, reads and drops. The
                // client's side (`watch`) also looks for `SSUBSCRIBE` and counts the close.
                let pipe = |mut from: TcpStream, mut to: TcpStream, watch: bool| {
                    let (silent, registry, counter) = (
                        Arc::clone(&silent),
                        Arc::clone(&registry),
                        Arc::clone(&counter),
                    );
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut registered = false;
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if watch
                                && !registered
                                && buf[..n].windows(10).any(|w| w == b"SSUBSCRIBE")
                            {
                                registered = true;
                                registry.lock().unwrap().push(Arc::clone(&silent));
                            }
                            if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        if watch {
                            counter.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                );
                pipe(server, client, false);
            }
        });
        StallingProxy {
            port,
            stalling,
            subscribers,
            open,
            held: held_count,
        }
    }

    /// How many connections were accepted while stalling.
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// How many forwarded connections their clients still hold open.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn stall(&self, stall: bool) {
        self.stalling.store(stall, Ordering::SeqCst);
    }

    /// The connections that sent an `SSUBSCRIBE` so far forward nothing more either way (what
    /// is sent is lost) and stay open: flows a NAT forgot without resetting them. Later
    /// connections are not touched.
    fn silence_subscribers(&self) {
        for silent in self.subscribers.lock().unwrap().drain(..) {
            silent.store(true, Ordering::SeqCst);
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// The server's address, for a proxy in front of it.
fn upstream() -> std::net::SocketAddr {
    let url = support::redis_url();
    let info = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .clone();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            use std::net::ToSocketAddrs;
            (host.as_str(), *port)
                .to_socket_addrs()
                .unwrap()
                .next()
                .unwrap()
        }
        other => panic!("a TCP server expected, not {other:?}"),
    }
}

/// A proxy in front of the test server, a store `a` connected directly and a store `b` built by
/// `builder` through the proxy, both under one new prefix.
async fn behind_a_proxy(
    builder: sentinel_redis::RedisStoreBuilder,
) -> (StallingProxy, RedisStore, RedisStore) {
    let proxy = StallingProxy::start(upstream());
    let prefix = support::unique_prefix();
    let a = RedisStore::builder()
        .prefix(prefix.clone())
        .connect(&support::redis_url())
        .await
        .unwrap();
    let b = builder.prefix(prefix).connect(&proxy.url()).await.unwrap();
    (proxy, a, b)
}

/// The subscription connection goes silent without being reset (a NAT that forgot the flow):
/// nothing arrives and nothing fails, so only the probe can tell. Its waiters are woken once a
/// probe goes unanswered for the response timeout, and the next wait subscribes on a new
/// connection and is woken by changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_is_replaced() {
    let (proxy, a, b) = behind_a_proxy(
        RedisStore::builder()
            .response_timeout(Duration::from_secs(1))
            .subscription_probe(Duration::from_millis(200)),
    )
    .await;
    let key = id("silenced");
    let grant = granted(a.claim(&key, &claim("a")).await.unwrap());
    // Subscribed, and probed a few times without being replaced: a wait waits to its end.
    let since = claim_busy(&b, &key).await;
    let waiting = b
        .wait_for_change(&key, since, Duration::from_millis(700))
        .await
        .unwrap();
    assert_eq!(
        waiting,
        Wait::TimedOut,
        "probes that are answered change nothing"
    );

    proxy.silence_subscribers();
    let since = claim_busy(&b, &key).await;
    let started = Instant::now();
    let woken = b
        .wait_for_change(&key, since, Duration::from_secs(30))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(woken, Wait::Changed);
    assert!(
        took < Duration::from_secs(5),
        "woken after {took:?}: the probe's 200 ms and its 1 s timeout"
    );

    // A new subscription: waits wait again, and are woken by a change.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let since = claim_busy(&b, &key).await;
        let answer = b
            .wait_for_change(&key, since, Duration::from_millis(100))
            .await
            .unwrap();
        if answer == Wait::TimedOut {
            break;
        }
        assert!(Instant::now() < deadline, "never waits again: {answer:?}");
    }
    let latency = wake_latency(&b, &key, || async {
        a.complete(&key, grant.token, &serde_json::json!("r"))
            .await
            .unwrap();
    })
    .await;
    assert!(latency < Duration::from_secs(1), "woken after {latency:?}");
}

/// A dropped store closes its connections, its probed subscription included: the probe's task
/// holds a handle on the subscription and must end with the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_closes_its_subscription() {
    let (proxy, a, b) =
        behind_a_proxy(RedisStore::builder().subscription_probe(Duration::from_millis(100))).await;
    let key = id("dropped");
    granted(a.claim(&key, &claim("a")).await.unwrap());
    let since = claim_busy(&b, &key).await;
    let answer = b
        .wait_for_change(&key, since, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(answer, Wait::TimedOut, "subscribed, and probed meanwhile");
    assert_eq!(
        proxy.open(),
        2,
        "the store's connection and its subscription"
    );
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.open() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still open",
            proxy.open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The subscription connection cannot be opened quickly (the server accepts the connection and
/// never answers; each attempt takes the connection timeout, and is tried twice): a wait of
/// 200 ms still returns after about 200 ms, and so do waits that start meanwhile. Once the
/// server answers again, waits subscribe and are woken by changes: the slow attempt left
/// nothing behind that breaks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_not_held_up_by_a_subscription_that_cannot_connect() {
    let (proxy, a, b) = behind_a_proxy(
        RedisStore::builder()
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2)),
    )
    .await;
    let key = id("stalled");
    let grant = granted(a.claim(&key, &claim("a")).await.unwrap());

    proxy.stall(true);
    let since = claim_busy(&b, &key).await;
    let started = Instant::now();
    let answer = b
        .wait_for_change(&key, since, Duration::from_millis(200))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a 200 ms wait took {took:?} while the subscription could not connect"
    );
    assert_eq!(answer, Wait::TimedOut);
    let started = Instant::now();
    let waits: Vec<_> = (0..4)
        .map(|_| {
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move {
                b.wait_for_change(&key, since, Duration::from_millis(200))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for wait in waits {
        assert_eq!(wait.await.unwrap(), Wait::TimedOut);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "four 200 ms waits took {took:?}"
    );
    // Five waits, one attempt to open the subscription (redis-rs may connect twice for it).
    assert!(
        (1..=2).contains(&proxy.held()),
        "{} connections tried while the first attempt was under way",
        proxy.held()
    );

    // Answered again: a later wait subscribes (after the failed attempt's retry delay at worst).
    proxy.stall(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let since = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Subscribed after `since` with nothing to compare with: Changed once subscribed.
        let answer = b
            .wait_for_change(&key, since, Duration::from_millis(200))
            .await
            .unwrap();
        if answer == Wait::Changed {
            break;
        }
        assert!(Instant::now() < deadline, "never subscribed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latency = wake_latency(&b, &key, || async {
        a.complete(&key, grant.token, &serde_json::json!("done"))
            .await
            .unwrap();
    })
    .await;
    assert!(latency < Duration::from_millis(500), "{latency:?}");
}
