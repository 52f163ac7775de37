//! `wait_for_change` over LISTEN/NOTIFY: waiters are woken by transitions made anywhere (another
//! store, another process), no change between a claim and its wait is missed, a killed listener
//! connection wakes its waiters and comes back (backing off while the server refuses it), a wait
//! whose claim saw the record watched sends no statement, and a store that cannot listen says so
//! (and does not try again before its retry delay); the listener closes with its store, and its
//! waiters are woken if its runtime stops. No wait takes much longer than its timeout, neither
//! while the listener cannot connect nor while the record's row lock is held by an open
//! transaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{PgFactory, claim, granted, id, pool};
use sentinel_core::store::Wait;
use sentinel_core::{
    ClaimOutcome, CoordinationStore, Disposition, Failure, FencingToken, Once, OnceOptions,
    OwnerId, RecordId, Sentinel, TimeSource,
};
use sentinel_postgres::PostgresStore;
use sentinel_testkit::Counted;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{AssertSqlSafe, Connection};
use tokio::time::Instant;

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

/// A second store over the same schema, with a pool of its own: "another process".
async fn other_store(factory: &PgFactory, store: &PostgresStore) -> PostgresStore {
    PostgresStore::builder(pool(factory.url(), 2).await)
        .schema(store.schema().as_str())
        .build()
        .await
        .unwrap()
}

/// Claims and starts `key` as "worker" on `store` (another process, holding it): its token.
async fn held(store: &PostgresStore, key: &RecordId) -> FencingToken {
    granted(
        store
            .claim(key, &claim("worker", 60_000, true))
            .await
            .unwrap(),
    )
}

/// Claims `key`, which another store holds, as "waiter", and checks it is busy. Returns when the
/// claim was sent: what a wait on it starts from.
async fn claim_busy(store: &PostgresStore, key: &RecordId) -> Instant {
    let since = Instant::now();
    let busy = store
        .claim(key, &claim("waiter", 60_000, true))
        .await
        .unwrap();
    assert!(matches!(busy, ClaimOutcome::Busy { .. }), "{busy:?}");
    since
}

/// The server pids of the connections listening for `store`'s changes.
async fn listener_pids(url: &str, store: &PostgresStore) -> Vec<i32> {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%'",
    )
    .bind(store.schema().as_str())
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    pids.into_iter().map(|(pid,)| pid).collect()
}

/// Starts `store`'s listener (a first wait, which answers at once: listening began after
/// `since`, and no busy claim of this store saw the record).
async fn start_listening(store: &PostgresStore) {
    let warm = id("warm", "up");
    let since = Instant::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store
            .wait_for_change(&warm, since, Duration::from_secs(5))
            .await
            .unwrap(),
        Wait::Changed,
        "listening began after `since`: a change may have been missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_another_store_completes() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;
    start_listening(&store).await;
    let key = id("wake", "k");
    let token = held(&other, &key).await;

    let since = claim_busy(&store, &key).await;
    let waiter = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let outcome = store
                .wait_for_change(&key, since, Duration::from_secs(10))
                .await
                .unwrap();
            (outcome, Instant::now())
        })
    };
    // The waiter is waiting, not answered at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter returned before any change"
    );
    other.complete(&key, token, &json!("done")).await.unwrap();
    let completed = Instant::now();
    let (outcome, woke) = waiter.await.unwrap();
    assert_eq!(outcome, Wait::Changed);
    let latency = woke - completed;
    eprintln!("woken {latency:?} after the completion returned");
    assert!(
        latency < Duration::from_millis(100),
        "woken {latency:?} after the completion"
    );
    assert!(matches!(
        store
            .claim(&key, &claim("waiter", 60_000, true))
            .await
            .unwrap(),
        ClaimOutcome::Completed { .. }
    ));

    // No change: the wait times out.
    let quiet = id("wake", "quiet");
    held(&other, &quiet).await;
    let started = Instant::now();
    assert!(matches!(
        store
            .claim(&quiet, &claim("waiter", 60_000, true))
            .await
            .unwrap(),
        ClaimOutcome::Busy { .. }
    ));
    assert_eq!(
        store
            .wait_for_change(&quiet, started, Duration::from_millis(150))
            .await
            .unwrap(),
        Wait::TimedOut
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_the_claim_and_the_wait_is_not_missed() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;

    // Before the first wait: nobody listens yet when the change happens.
    let key = id("gap", "first");
    let token = held(&other, &key).await;
    let since = claim_busy(&store, &key).await;
    other.complete(&key, token, &json!(1)).await.unwrap();
    assert_eq!(
        tokio::time::timeout(
            Duration::from_secs(1),
            store.wait_for_change(&key, since, Duration::from_secs(30))
        )
        .await
        .expect("answered at once")
        .unwrap(),
        Wait::Changed
    );

    // With the listener running: the notification arrives before the wait begins.
    let key = id("gap", "second");
    let token = held(&other, &key).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = claim_busy(&store, &key).await;
    other
        .abort(&key, token, Disposition::NotApplied)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tokio::time::timeout(
            Duration::from_secs(1),
            store.wait_for_change(&key, since, Duration::from_secs(30))
        )
        .await
        .expect("answered at once")
        .unwrap(),
        Wait::Changed
    );
    // A wait whose claim came after the last notification waits for the next one.
    held(&other, &key).await;
    // (The record is watched now: that grant notified too. A claim sent before its notification
    // arrives would be woken by it, spuriously.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let since = claim_busy(&store, &key).await;
    assert_eq!(
        store
            .wait_for_change(&key, since, Duration::from_millis(100))
            .await
            .unwrap(),
        Wait::TimedOut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_wait_waits_when_nothing_changed() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;
    let key = id("first", "k");
    let token = held(&other, &key).await;
    let since = claim_busy(&store, &key).await;
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            store
                .wait_for_change(&key, since, Duration::from_secs(10))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "nothing changed: the first wait waits"
    );
    other.complete(&key, token, &json!("r")).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("woken by the notification")
        .unwrap();
    assert_eq!(woken, Wait::Changed);

    // A wait with no busy claim of this store to compare with answers at once.
    let unseen = id("first", "unseen");
    held(&other, &unseen).await;
    let since = Instant::now();
    let restarted = PostgresStore::builder(pool(factory.url(), 2).await)
        .schema(store.schema().as_str())
        .build()
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(
            Duration::from_secs(2),
            restarted.wait_for_change(&unseen, since, Duration::from_secs(30))
        )
        .await
        .expect("answered at once")
        .unwrap(),
        Wait::Changed
    );
}

/// The version a wait compares with is its own record's, never a neighbour's: here the record
/// is marked watched between the claim and the wait (as another waiter would), so the wait reads
/// its version without marking it, beside records of the same namespace (and of the same key in
/// other namespaces) that are watched and at other versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_compares_with_its_own_records_version() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;
    let key = id("own", "k");
    let neighbours = [
        id("own", "a"),
        id("own", "b"),
        id("own", "z"),
        id("elsewhere", "k"),
    ];
    for neighbour in &neighbours {
        let token = held(&other, neighbour).await;
        other.complete(neighbour, token, &json!("r")).await.unwrap();
        common::set_row(
            store.pool(),
            &store,
            "executions",
            neighbour,
            "watched = true",
        )
        .await;
    }
    held(&other, &key).await;
    let since = claim_busy(&store, &key).await;
    common::set_row(store.pool(), &store, "executions", &key, "watched = true").await;
    assert_eq!(
        store
            .wait_for_change(&key, since, Duration::from_millis(300))
            .await
            .unwrap(),
        Wait::TimedOut,
        "nothing changed since the claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_saw_the_record_watched_waits_without_another_statement() {
    let factory = factory!();
    let options: PgConnectOptions = factory.url().parse().unwrap();
    let (pool, proxy) = proxy::CountingProxy::pool(&options, 1).await.unwrap();
    let counted = PostgresStore::builder(pool)
        .schema(factory.adopt(common::unique_schema("sentinel_watched")))
        .build()
        .await
        .unwrap();
    let (worker, first) = (
        other_store(&factory, &counted).await,
        other_store(&factory, &counted).await,
    );
    let key = id("watched", "k");
    let token = held(&worker, &key).await;
    // The first waiter (another process) saw the record unwatched: its wait marks it watched.
    let first = busy_then_wait(&first, &key, Duration::from_secs(10)).await;
    start_listening(&counted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!first.is_finished(), "nothing changed");
    // This store's claim sees it watched: its wait registers and waits, sending nothing.
    let before = proxy.counts();
    let second = busy_then_wait(&counted, &key, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "nothing changed");
    assert_eq!(
        proxy.counts().since(before).statements,
        1,
        "the claim, and nothing for the wait"
    );
    worker.complete(&key, token, &json!("r")).await.unwrap();
    for waiter in [first, second] {
        let woken = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken by the notification")
            .unwrap();
        assert_eq!(woken, Wait::Changed);
    }
}

/// A busy claim of `key` by `store` (another store holds it), then a wait from before that claim,
/// in a task.
async fn busy_then_wait(
    store: &PostgresStore,
    key: &RecordId,
    timeout: Duration,
) -> tokio::task::JoinHandle<Wait> {
    let since = claim_busy(store, key).await;
    let (store, key) = (store.clone(), key.clone());
    tokio::spawn(async move { store.wait_for_change(&key, since, timeout).await.unwrap() })
}

/// After `store`'s listener was replaced: once the new one listens, waits on `key` (held by
/// `other` under `token`) wait again, and `other`'s completion wakes them.
async fn heard_again(
    store: &PostgresStore,
    other: &PostgresStore,
    key: &RecordId,
    token: FencingToken,
) {
    let mut settled = false;
    for _ in 0..50 {
        let waiter = busy_then_wait(store, key, Duration::from_millis(20)).await;
        if waiter.await.unwrap() == Wait::TimedOut {
            settled = true;
            break;
        }
    }
    assert!(settled, "waits wait again after the reconnect");
    let waiter = busy_then_wait(store, key, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiter.is_finished(), "a wait after the reconnect waits");
    other.complete(key, token, &json!("r")).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("woken by the notification")
        .unwrap();
    assert_eq!(woken, Wait::Changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_watch_statement_fails_answers_changed() {
    // The statement that marks the record watched fails (here a trigger refuses the update):
    // nothing says whether the record changed, so the wait answers Changed at once and the
    // client claims again; only a lock wait given up answers TimedOut.
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;
    let schema = store.schema().as_str().to_owned();
    for statement in [
        format!(
            "CREATE FUNCTION \"{schema}\".refuse_watch() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'watching is refused'; END $$"
        ),
        format!(
            "CREATE TRIGGER refuse_watch BEFORE UPDATE ON \"{schema}\".executions FOR EACH ROW \
             WHEN (NEW.watched AND NOT OLD.watched) EXECUTE FUNCTION \"{schema}\".refuse_watch()"
        ),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(store.pool())
            .await
            .unwrap();
    }
    start_listening(&store).await;
    let key = id("refused", "k");
    held(&other, &key).await;
    let since = claim_busy(&store, &key).await;
    let started = Instant::now();
    let answer = store
        .wait_for_change(&key, since, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer, Wait::Changed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_wakes_its_waiters_and_comes_back() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    let other = other_store(&factory, &store).await;
    start_listening(&store).await;
    let pids = listener_pids(factory.url(), &store).await;
    assert_eq!(
        pids.len(),
        1,
        "one listening connection per store: {pids:?}"
    );

    let key = id("killed", "k");
    let token = held(&other, &key).await;
    let waiter = busy_then_wait(&store, &key, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiter.is_finished(), "nothing changed: it waits");
    common::kill_pid(factory.url(), pids[0]).await;
    let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter is woken when the listener's connection dies")
        .unwrap();
    assert_eq!(woken, Wait::Changed);

    // It reconnects by itself; meanwhile waits answer at once (something may have been missed).
    let mut back = Vec::new();
    for _ in 0..100 {
        back = listener_pids(factory.url(), &store).await;
        if !back.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back.len(), 1, "listening again");
    assert_ne!(back[0], pids[0]);
    heard_again(&store, &other, &key, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_stops_answering_is_replaced() {
    // A flow cut off without a reset (a NAT that forgot it): nothing arrives and nothing fails,
    // so only the listener's probe can tell.
    let factory = factory!();
    let options: PgConnectOptions = factory.url().parse().unwrap();
    let (pool, proxy) = proxy::CountingProxy::pool(&options, 2).await.unwrap();
    let store = PostgresStore::builder(pool)
        .schema(factory.adopt(common::unique_schema("sentinel_probe")))
        .listener_probe(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let other = other_store(&factory, &store).await;
    start_listening(&store).await;
    let first = listener_pids(factory.url(), &store).await;
    assert_eq!(first.len(), 1, "{first:?}");

    // A connection that answers is probed and kept.
    let before = proxy.counts();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let probes = proxy.counts().since(before).statements;
    assert!(
        (1..=4).contains(&probes),
        "{probes} probes in 1 s (one every 300 ms)"
    );
    assert_eq!(listener_pids(factory.url(), &store).await, first);

    let key = id("probe", "k");
    let token = held(&other, &key).await;
    proxy.stall_listeners();
    let waiter = busy_then_wait(&store, &key, Duration::from_secs(60)).await;
    // The probe goes unanswered for the pool's acquire timeout (5 s): then the listener is
    // taken for dead, its waiters are woken, and another one is opened.
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken once the probe found the connection dead")
        .unwrap();
    assert_eq!(woken, Wait::Changed);
    // Another connection listens. (The stalled one stays open until its socket gives up, which
    // the proxy, acknowledging everything, never lets happen.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = listener_pids(factory.url(), &store).await;
        if pids.iter().any(|pid| *pid != first[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "not listening again: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    heard_again(&store, &other, &key, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_reconnect_backs_off() {
    let factory = factory!();
    let options: PgConnectOptions = factory.url().parse().unwrap();
    let (pool, proxy) = proxy::CountingProxy::pool(&options, 2).await.unwrap();
    let store = PostgresStore::builder(pool)
        .schema(factory.adopt(common::unique_schema("sentinel_notify")))
        .build()
        .await
        .unwrap();
    start_listening(&store).await;
    let pids = listener_pids(factory.url(), &store).await;
    assert_eq!(pids.len(), 1, "{pids:?}");

    // The server refuses new connections (through the proxy) and the listener's dies.
    proxy.refuse(true);
    common::kill_pid(factory.url(), pids[0]).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let attempts = proxy.refused();
    // Pauses of 50, 100, 200, 400, 800 and 1,600 ms: five attempts in 2.5 s (fewer if timers
    // run late); at a steady 50 ms, fifty.
    assert!(
        (3..=6).contains(&attempts),
        "{attempts} reconnection attempts in 2.5 s"
    );

    // Served again: the attempt due at ~3.2 s succeeds.
    proxy.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while listener_pids(factory.url(), &store).await.len() != 1 {
        assert!(Instant::now() < deadline, "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_no_pooled_connection() {
    let factory = factory!();
    // A pool of one connection: the listener must not take it.
    let store = PostgresStore::builder(pool(factory.url(), 1).await)
        .schema(factory.adopt(common::unique_schema("sentinel_notify")))
        .build()
        .await
        .unwrap();
    let key = id("pool", "k");
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            store
                .wait_for_change(&key, Instant::now(), Duration::from_secs(10))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The pool still serves calls while the listener listens.
    let token = granted(
        tokio::time::timeout(
            Duration::from_secs(2),
            store.claim(&key, &claim("w", 60_000, true)),
        )
        .await
        .expect("the pool is not exhausted by the listener")
        .unwrap(),
    );
    store.complete(&key, token, &json!(1)).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), waiter).await;
    // Later waits use the same listener.
    for _ in 0..3 {
        store
            .wait_for_change(&key, Instant::now(), Duration::from_millis(10))
            .await
            .unwrap();
    }
    assert_eq!(listener_pids(factory.url(), &store).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_listen_says_unsupported() {
    // Nothing listens on this port: the listener cannot be opened.
    let unreachable = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        drop(socket);
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    };
    let pool = PostgresStore::pool_options()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&unreachable)
        .unwrap();
    let store = PostgresStore::new(pool);
    let key = id("unsupported", "k");
    answers_unsupported(&store, &key).await;

    // Turned off: Unsupported without trying.
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let quiet = PostgresStore::builder(pool_for(&factory).await)
        .schema(factory.adopt(common::unique_schema("sentinel_notify")))
        .listen(false)
        .build()
        .await
        .unwrap();
    assert_eq!(
        quiet
            .wait_for_change(&key, Instant::now(), Duration::from_secs(30))
            .await
            .unwrap(),
        Wait::Unsupported
    );
    assert!(listener_pids(factory.url(), &quiet).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_failed_is_not_tried_again_at_once() {
    // A socket that accepts connections and closes them at once, counting them.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for connection in socket.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    let pool = PostgresStore::pool_options()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .unwrap();
    let store = PostgresStore::new(pool);
    let key = id("unsupported", "k");
    for _ in 0..3 {
        answers_unsupported(&store, &key).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one attempt; the next is due after 5 s"
    );
    // Once the delay has passed, a wait tries again (in vain here).
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    answers_unsupported(&store, &key).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "tried again after the delay"
    );
}

/// A login role whose CONNECTION LIMIT can be reached (superusers are exempt, so the test uses a
/// role of its own), allowed to use the store's schema; dropped with its privileges, and its
/// connections ended, when the guard is dropped.
struct LimitedRole {
    url: String,
    name: String,
}

impl LimitedRole {
    async fn create(url: &str, schema: &str, limit: i32) -> Self {
        let name = common::unique_schema("sentinel_limited");
        let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
        for statement in [
            format!("CREATE ROLE \"{name}\" LOGIN CONNECTION LIMIT {limit}"),
            format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{name}\""),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{name}\""
            ),
            format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{name}\""),
            format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"{schema}\" TO \"{name}\""),
        ] {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let _ = admin.close().await;
        LimitedRole {
            url: url.to_owned(),
            name,
        }
    }

    fn options(&self) -> PgConnectOptions {
        let options: PgConnectOptions = self.url.parse().unwrap();
        options.username(&self.name)
    }

    async fn set_limit(&self, limit: i32) {
        let mut admin = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE \"{}\" CONNECTION LIMIT {limit}",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
    }
}

impl Drop for LimitedRole {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        common::clean_up(async move {
            let Ok(mut admin) = sqlx::PgConnection::connect(&url).await else {
                return;
            };
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            )
            .bind(&name)
            .execute(&mut admin)
            .await;
            for statement in [
                format!("DROP OWNED BY \"{name}\""),
                format!("DROP ROLE IF EXISTS \"{name}\""),
            ] {
                let _ = sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut admin)
                    .await;
            }
            let _ = admin.close().await;
        });
    }
}

/// The listener's connection cannot be opened quickly: the store's role is at its CONNECTION
/// LIMIT (its one pooled connection takes the only slot), so PostgreSQL refuses the listener
/// with SQLSTATE 53300, which sqlx retries until the pool's acquire timeout (5 s). A wait of
/// 200 ms still returns after about 200 ms, and so do waits that start meanwhile (none queues
/// behind the attempt); once the server accepts the listener, the attempt still running in the
/// background succeeds and waits are woken by notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_not_held_up_by_a_listener_that_cannot_connect() {
    let factory = factory!();
    let admin = factory.store(TimeSource::Server).await;
    let role = LimitedRole::create(factory.url(), admin.schema().as_str(), 1).await;
    let pool = PostgresStore::pool_options()
        .max_connections(1)
        .min_connections(1)
        .connect_with(role.options())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool)
        .schema(admin.schema().as_str())
        .migrate(false)
        .build()
        .await
        .unwrap();
    let key = id("limited", "k");
    let token = held(&admin, &key).await;

    let since = claim_busy(&store, &key).await;
    let started = Instant::now();
    let answer = store
        .wait_for_change(&key, since, Duration::from_millis(200))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a 200 ms wait took {took:?} while the listener could not connect"
    );
    assert_eq!(
        answer,
        Wait::TimedOut,
        "the timeout passed; the listener may still come"
    );
    // Waits that start while the listener is still being opened do not queue behind it.
    let started = Instant::now();
    let waits: Vec<_> = (0..4)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                store
                    .wait_for_change(&key, since, Duration::from_millis(200))
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
    assert!(listener_pids(factory.url(), &admin).await.is_empty());

    // The server accepts the listener now: nothing left of the slow attempt breaks the waits
    // that follow (they wait for a short while, or answer Unsupported until the next attempt).
    role.set_limit(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while listener_pids(factory.url(), &admin).await.len() != 1 {
        assert!(Instant::now() < deadline, "the listener never started");
        let _ = store
            .wait_for_change(&key, Instant::now(), Duration::from_millis(200))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiter = busy_then_wait(&store, &key, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "nothing changed: it waits");
    admin.complete(&key, token, &json!("done")).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("woken by the notification")
        .unwrap();
    assert_eq!(woken, Wait::Changed);
    drop(store);
}

/// The backends of `application_name` that wait for a lock.
async fn waiting_for_a_lock(url: &str, application_name: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND application_name = $1",
    )
    .bind(application_name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    n
}

/// The holder completed the record in its own transaction (`complete_in`), which stays open: it
/// holds the record's row lock, which the first wait's `watch` statement needs. A wait of 200 ms
/// still returns after about 200 ms, and its statement does not keep waiting on the server (nor
/// keep a pooled connection) until that transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_not_held_up_by_a_lock_on_the_record() {
    let factory = factory!();
    let holder = factory.store(TimeSource::Server).await;
    let app = common::unique_schema("locked");
    let store = PostgresStore::builder(common::named_pool(factory.url(), &app, 2).await)
        .schema(holder.schema().as_str())
        .build()
        .await
        .unwrap();
    start_listening(&store).await;
    let key = id("locked", "k");
    let token = held(&holder, &key).await;
    // The record is not watched yet: the wait must mark it, after the claim.
    let since = claim_busy(&store, &key).await;

    let mut tx = holder.pool().begin().await.unwrap();
    holder
        .complete_in(&mut tx, &key, token, &json!("done"))
        .await
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        store.wait_for_change(&key, since, Duration::from_millis(200)),
    )
    .await
    .expect("a 200 ms wait still waits for the holder's open transaction after 5 s")
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a 200 ms wait took {took:?} behind the holder's open transaction"
    );
    assert_eq!(answer, Wait::TimedOut);
    // Its statement gave up on the server too: the pool has its connection back.
    let deadline = Instant::now() + Duration::from_secs(1);
    while waiting_for_a_lock(factory.url(), &app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the watch statement still waits for the row lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.commit().await.unwrap();
    // Committed: the next claim gets the result.
    let outcome = store
        .claim(&key, &claim("waiter", 60_000, true))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ClaimOutcome::Completed { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_closes_with_the_last_handle_on_its_store() {
    let factory = factory!();
    let store = factory.store(TimeSource::Server).await;
    start_listening(&store).await;
    assert_eq!(listener_pids(factory.url(), &store).await.len(), 1);
    let handle = store.clone();
    drop(store);
    assert_eq!(
        listener_pids(factory.url(), &handle).await.len(),
        1,
        "a handle is left"
    );
    // Another store over the same schema, to name the schema once the last handle is gone (it
    // never waits, so it has no listener of its own).
    let admin = other_store(&factory, &handle).await;
    drop(handle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listener_pids(factory.url(), &admin).await.is_empty() {
        assert!(Instant::now() < deadline, "the listener outlived its store");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listener task runs on the runtime of the first wait. When that runtime stops, the task
/// ends with it, and waiters on other runtimes are woken: they may miss a change from then on.
#[test]
fn waiters_are_woken_when_the_listeners_runtime_stops() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let (first, second) = (runtime(), runtime());
    let key = id("runtime", "k");
    let (store, worker) = first.block_on(async {
        let store = factory.store(TimeSource::Server).await;
        let worker = other_store(&factory, &store).await;
        held(&worker, &key).await;
        start_listening(&store).await;
        (store, worker)
    });
    let waiter = second.spawn({
        let (store, key) = (store.clone(), key.clone());
        async move {
            let since = claim_busy(&store, &key).await;
            store
                .wait_for_change(&key, since, Duration::from_secs(30))
                .await
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "nothing changed");
    drop(first);
    let woken = second.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the listener's runtime stopped")
            .unwrap()
    });
    assert_eq!(woken, Wait::Changed);
    drop((store, worker));
}

/// A wait on `store`, which cannot listen, is answered `Unsupported` at once, not left hanging.
async fn answers_unsupported(store: &PostgresStore, key: &RecordId) {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        store.wait_for_change(key, Instant::now(), Duration::from_secs(30)),
    )
    .await
    .expect("answered, not hung")
    .unwrap();
    assert_eq!(answer, Wait::Unsupported);
}

async fn pool_for(factory: &PgFactory) -> sqlx::PgPool {
    pool(factory.url(), 2).await
}

/// Every transition that logs an execution event of a watched record notifies once, with the
/// record's digest; records nobody waited on, and calls that log nothing, never notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_logged_transition_of_a_watched_record_notifies() {
    let factory = factory!();
    let (store, clock) = common::manual_store(&factory).await;
    let mut listener = PgListener::connect(factory.url()).await.unwrap();
    let schema = store.schema().as_str().to_owned();
    listener
        .listen(&format!("sentinel_{schema}"))
        .await
        .unwrap();
    // The notifications expected are awaited for up to 5 s each (a loaded machine delivers them
    // late), then any more for 150 ms: an unexpected one sent late shows up at the next call.
    let mut heard = async |expected: usize, what: &str| {
        let mut payloads = Vec::new();
        loop {
            let patience = if payloads.len() < expected {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(150)
            };
            match tokio::time::timeout(patience, listener.recv()).await {
                Ok(Ok(n)) => payloads.push(n.payload().to_owned()),
                _ => break,
            }
        }
        assert_eq!(payloads.len(), expected, "{what}: {payloads:?}");
        payloads
    };
    let digest = async |ns: &str, key: &str| -> String {
        let (d,): (String,) = sqlx::query_as(
            "SELECT md5(convert_to($1, 'UTF8') || decode('00', 'hex') || convert_to($2, 'UTF8'))",
        )
        .bind(ns)
        .bind(key)
        .fetch_one(&mut sqlx::PgConnection::connect(factory.url()).await.unwrap())
        .await
        .unwrap();
        d
    };
    let version = async |key: &str| -> (i64, bool) {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT version, watched FROM \"{schema}\".executions WHERE key = $1"
        )))
        .bind(key)
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    // A busy claim, then a wait: the record is watched from then on. The wait gives the statement
    // that marks the record watched a whole second: it runs within the wait's timeout, and a
    // loaded machine (CI runs every suite at once) has kept it past 50 ms.
    let watch = async |key: &RecordId| {
        let since = Instant::now();
        assert!(matches!(
            store
                .claim(key, &claim("watcher", 1_000, false))
                .await
                .unwrap(),
            ClaimOutcome::Busy { .. }
        ));
        assert_eq!(
            store
                .wait_for_change(key, since, Duration::from_secs(1))
                .await
                .unwrap(),
            Wait::TimedOut
        );
    };
    let operator = OwnerId::new("operator").unwrap();
    let key = id("events", "k");
    let k = digest("events", "k").await;
    // The listener opens in the background, and a wait that ends before it is open never reaches
    // the statement that marks the record watched: open it first, so that the waits below do (on
    // a loaded machine the listener can take longer than they last).
    start_listening(&store).await;

    let t1 = granted(store.claim(&key, &claim("a", 1_000, false)).await.unwrap());
    heard(0, "a claim of a record nobody waits on").await;
    assert_eq!(version("k").await, (1, false));
    watch(&key).await;
    assert_eq!(version("k").await, (1, true), "watching is no transition");
    heard(0, "busy claim, wait").await;
    store.start(&key, t1).await.unwrap();
    assert_eq!(heard(1, "start").await, vec![k.clone()]);
    store
        .heartbeat(&[sentinel_core::Renewal {
            keyspace: sentinel_core::Keyspace::Execution,
            id: key.clone(),
            token: t1,
        }])
        .await
        .unwrap();
    heard(0, "heartbeat").await;
    assert_eq!(
        version("k").await,
        (2, true),
        "heartbeats are no transition"
    );
    store.abort(&key, t1, Disposition::Uncertain).await.unwrap();
    heard(1, "abort").await;
    let t2 = store.reconcile(&key, &operator).await.unwrap();
    heard(1, "reconcile").await;
    store.reset_to_claimed(&key, &operator).await.unwrap();
    heard(1, "reset").await;
    let t3 = granted(store.claim(&key, &claim("c", 1_000, true)).await.unwrap());
    assert!(t3 > t2);
    heard(1, "claim after reset").await;
    assert!(store.complete(&key, t1, &json!("stale")).await.is_err());
    heard(1, "completion_rejected").await;
    store.complete(&key, t3, &json!("r")).await.unwrap();
    heard(1, "complete").await;
    assert_eq!(version("k").await, (7, true));
    store.complete(&key, t3, &json!("r")).await.unwrap();
    heard(0, "the same completion again").await;
    assert!(matches!(
        store.claim(&key, &claim("d", 1_000, true)).await.unwrap(),
        ClaimOutcome::Completed { .. }
    ));
    heard(0, "cached claim").await;

    // Nobody waits on this one: nothing is sent.
    let other = id("events", "o");
    granted(store.claim(&other, &claim("a", 1_000, true)).await.unwrap());
    clock.advance(Duration::from_secs(2));
    store.reconcile(&other, &operator).await.unwrap();
    store
        .force_complete(&other, &operator, &json!("known"))
        .await
        .unwrap();
    heard(0, "claim, reconcile, force_complete of an unwatched record").await;
    assert_eq!(version("o").await, (3, false));

    clock.advance(Duration::from_secs(60));
    let ns = sentinel_core::Namespace::new("events").unwrap();
    assert_eq!(
        store.purge(&ns, Duration::from_secs(1), 10).await.unwrap(),
        2
    );
    assert_eq!(heard(1, "purge").await, vec![k.clone()]);
    assert_eq!(version("k").await, (8, true), "the tombstone stays watched");

    // Long and awkward names: the payload stays a 32-digit digest.
    let (ns, key) = ("n".repeat(1024), "é🦀".repeat(170));
    let long = id(&ns, &key);
    let t = granted(store.claim(&long, &claim("a", 60_000, true)).await.unwrap());
    watch(&long).await;
    store.complete(&long, t, &json!(1)).await.unwrap();
    let payload = heard(1, "long names").await;
    assert_eq!(payload[0].len(), 32);
    assert_eq!(payload[0], digest(&ns, &key).await);
}

/// `waiting_for_a_result` of the conformance kit, with its counts printed: 50 waiters on a key
/// whose work takes 600 ms, listening and polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_costs() {
    let factory = factory!();
    for listen in [true, false] {
        let base = PostgresStore::builder(pool(factory.url(), 8).await)
            .schema(factory.adopt(common::unique_schema("sentinel_notify")))
            .listen(listen)
            .build()
            .await
            .unwrap();
        let store = Counted::counting(base.clone());
        let client = |who: String| {
            Sentinel::builder(store.clone())
                .namespace("waiting")
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
        let (claims_before, waits_before) = (store.count("claim"), store.count("wait_for_change"));
        let options = OnceOptions::new().wait(Duration::from_secs(30));
        let waiters: Vec<_> = (0..50)
            .map(|n| {
                let (waiter, options) = (client(format!("waiter-{n}")), options.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let once = waiter
                        .once_with("report", &options, |_| async {
                            Ok::<_, Failure>("a second run".to_owned())
                        })
                        .await;
                    (once, t.elapsed())
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for waiter in waiters {
            let (once, took) = waiter.await.unwrap();
            match once {
                Ok(Once::Cached { value, .. }) => assert_eq!(value, "the one result"),
                other => panic!("a waiter got {other:?}"),
            }
            slowest = slowest.max(took);
        }
        let done = slow.await.unwrap().unwrap();
        assert!(done.is_executed());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let claims = store.count("claim") - claims_before;
        let waits = store.count("wait_for_change") - waits_before;
        eprintln!(
            "listen={listen}: 50 waiters: {claims} claims, {waits} waits ({:.2} and {:.2} per \
             waiter), the last answered after {slowest:?}",
            claims as f64 / 50.0,
            waits as f64 / 50.0
        );
        assert!(claims <= 50 * 8 && waits <= 50 * 4);
    }
}
