//! Concurrent claims and completions sent together (src/batch.rs), against the real server.
//!
//! Each test builds a batch it knows: the store sends one claim (or complete) statement at a
//! time (`in_flight(1)`), a first call is held on the server by a transaction of the test (an
//! uncommitted insert of its key, or a lock on its row), the calls of the batch queue behind it,
//! and ending the transaction lets them go, all in one statement. The statements are counted on
//! the wire (tests/common/proxy.rs), so each test also checks that the batch happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::future::Future;
use std::time::Duration;

use common::{PgFactory, claim, granted, id};
use proxy::{CountingProxy, Counts};
use sentinel_core::{
    ClaimOutcome, CoordinationStore, Error, Event, ExecutionState, FencingToken, Keyspace, OwnerId,
    RecordId, RejectReason, Result, TimeSource,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;

/// How long the tests give queued calls to reach the queue.
const SETTLE: Duration = Duration::from_millis(200);

/// A store whose connections go through a counting proxy, sending `in_flight` statements of a
/// kind at once, in a schema `factory` drops at the end.
async fn proxied(factory: &PgFactory, in_flight: usize) -> (PostgresStore, CountingProxy) {
    let (pool, proxy) = proxied_pool(factory).await;
    let store = PostgresStore::builder(pool)
        .schema(factory.adopt(common::unique_schema("sentinel_batch")))
        .time(TimeSource::Server)
        .in_flight(in_flight)
        .build()
        .await
        .unwrap();
    (store, proxy)
}

/// A pool whose connections go through a counting proxy. A deadlock would hold its statements
/// for 10 s before the server broke it (instead of 1 s), so that a test sees it.
async fn proxied_pool(factory: &PgFactory) -> (PgPool, CountingProxy) {
    let options: PgConnectOptions = factory.url().parse().unwrap();
    CountingProxy::pool(&options.options([("deadlock_timeout", "10s")]), 8)
        .await
        .unwrap()
}

/// A connection of the test's own, straight to the server.
async fn direct(factory: &PgFactory) -> PgConnection {
    PgConnection::connect(factory.url()).await.unwrap()
}

/// Runs `sql` (with `{schema}` filled in, `$1`/`$2` the namespace and key of `id`) on `conn`.
async fn run(conn: &mut PgConnection, store: &PostgresStore, sql: &str, id: &RecordId) {
    let sql = sql.replace("{schema}", &format!("\"{}\"", store.schema()));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.namespace.as_str())
        .bind(id.key.as_str())
        .execute(conn)
        .await
        .unwrap();
}

/// Creates the objects of `statements` (SQL with `{schema}` for the store's schema) on `conn`.
async fn install(conn: &mut PgConnection, store: &PostgresStore, statements: &[&str]) {
    for sql in statements {
        let sql = sql.replace("{schema}", &format!("\"{}\"", store.schema()));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// Opens a transaction on `conn` that claims `id` without committing: the store's own claim of
/// `id` waits on the server until the transaction ends.
async fn hold_insert(conn: &mut PgConnection, store: &PostgresStore, id: &RecordId) {
    run(conn, store, "BEGIN", id).await;
    run(
        conn,
        store,
        "SELECT * FROM {schema}.claim($1, $2, NULL, 'holder', 60000000, 600000000, true, \
         '\\x00000000000000000000000000000000'::bytea, NULL, 'none')",
        id,
    )
    .await;
}

/// The answer of a spawned call, which must come within 30 s: a call left waiting is a bug.
async fn answer<T>(call: JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call was answered in time")
        .expect("the call did not panic")
}

/// Spawns `call` on a clone of `store`.
fn spawn<T, F, Fut>(store: &PostgresStore, call: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(PostgresStore) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    tokio::spawn(call(store.clone()))
}

/// Spawns a claim-and-start of `key` by `owner`.
fn claiming(store: &PostgresStore, key: &str, owner: &str) -> JoinHandle<Result<ClaimOutcome>> {
    let (key, request) = (id("batch", key), claim(owner, 60_000, true));
    spawn(
        store,
        |store| async move { store.claim(&key, &request).await },
    )
}

/// Spawns a completion of `key` with `token` and `result`.
fn completing(
    store: &PostgresStore,
    key: &str,
    token: FencingToken,
    result: &str,
) -> JoinHandle<Result<()>> {
    let (key, result) = (id("batch", key), json!(result));
    spawn(store, |store| async move {
        store.complete(&key, token, &result).await
    })
}

/// Opens a transaction on `conn` that locks the rows of `ids`: the store's completions of them
/// wait on the server until the transaction ends.
async fn hold_rows(conn: &mut PgConnection, store: &PostgresStore, ids: &[RecordId]) {
    run(conn, store, "BEGIN", &ids[0]).await;
    for id in ids {
        run(
            conn,
            store,
            "SELECT 1 FROM {schema}.executions WHERE namespace = $1 AND key = $2 FOR UPDATE",
            id,
        )
        .await;
    }
}

/// Lets the spawned calls queue, checks none of them was answered yet, and returns the
/// statements counted so far.
async fn queued<T>(proxy: &CountingProxy, calls: &[&JoinHandle<T>]) -> Counts {
    tokio::time::sleep(SETTLE).await;
    assert!(
        calls.iter().all(|call| !call.is_finished()),
        "the calls must wait behind the held one"
    );
    proxy.counts()
}

/// The statements sent since `before`, once the pool's background checks have settled.
async fn statements_since(proxy: &CountingProxy, before: Counts) -> u64 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.counts().since(before).statements
}

/// The store's one claim slot, taken by a claim of "first" that waits on the server for an
/// uncommitted insert of the same key by the test.
struct FirstHeld {
    holder: PgConnection,
    first: JoinHandle<Result<ClaimOutcome>>,
}

impl FirstHeld {
    async fn take(factory: &PgFactory, store: &PostgresStore) -> Self {
        let mut holder = direct(factory).await;
        hold_insert(&mut holder, store, &id("batch", "first")).await;
        let first = claiming(store, "first", "w-first");
        tokio::time::sleep(SETTLE).await;
        FirstHeld { holder, first }
    }

    /// Ends the test's insert: the first claim is granted, and frees the slot.
    async fn let_go(mut self, store: &PostgresStore) {
        run(&mut self.holder, store, "ROLLBACK", &id("batch", "first")).await;
        granted(answer(self.first).await.unwrap());
    }
}

async fn history_of(store: &PostgresStore, key: &str) -> Vec<Event> {
    store
        .history(Keyspace::Execution, &id("batch", key), &Default::default())
        .await
        .unwrap()
}

async fn owner_of(store: &PostgresStore, key: &str) -> OwnerId {
    store
        .inspect(&id("batch", key))
        .await
        .unwrap()
        .expect("a record")
        .owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_claims_go_in_one_statement_and_each_gets_its_own_answer() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 1).await;
    let held = FirstHeld::take(&factory, &store).await;

    // Four claims of one key, and two of other keys, queued behind it.
    let dup: Vec<_> = (0..4)
        .map(|n| claiming(&store, "dup", &format!("d{n}")))
        .collect();
    let a = claiming(&store, "a", "w-a");
    let b = claiming(&store, "b", "w-b");
    let mut all: Vec<_> = dup.iter().collect();
    all.extend([&a, &b, &held.first]);
    let before = queued(&proxy, &all).await;

    held.let_go(&store).await;
    let mut winners = Vec::new();
    let mut busy = Vec::new();
    for (n, call) in dup.into_iter().enumerate() {
        match answer(call).await.unwrap() {
            ClaimOutcome::Acquired(grant) => winners.push((n, grant.token)),
            ClaimOutcome::Busy {
                state: ExecutionState::Executing,
                owner,
                token,
                ..
            } => busy.push((owner, token)),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    granted(answer(a).await.unwrap());
    granted(answer(b).await.unwrap());
    assert_eq!(
        statements_since(&proxy, before).await,
        1,
        "the six queued claims went in one statement"
    );
    assert_eq!(winners.len(), 1, "one of four claims of a key wins");
    let (winner, token) = winners[0];
    let owner = owner_of(&store, "dup").await;
    assert_eq!(
        owner.as_str(),
        format!("d{winner}"),
        "the grant is the winner's"
    );
    assert_eq!(
        busy,
        vec![(owner, token); 3],
        "busy answers name the winner"
    );
    assert_eq!(owner_of(&store, "a").await.as_str(), "w-a");
    assert_eq!(owner_of(&store, "b").await.as_str(), "w-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_completions_go_in_one_statement_and_each_gets_its_own_answer() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 1).await;
    let mut tokens = Vec::new();
    for key in ["held", "c1", "c2", "c3"] {
        let outcome = store
            .claim(&id("batch", key), &claim("w", 60_000, true))
            .await;
        tokens.push(granted(outcome.unwrap()));
    }
    let mut holder = direct(&factory).await;
    hold_rows(&mut holder, &store, &[id("batch", "held")]).await;
    let completing =
        |key: &str, token: FencingToken, result: &str| completing(&store, key, token, result);
    let held = completing("held", tokens[0], "rh");
    tokio::time::sleep(SETTLE).await;
    let c1 = completing("c1", tokens[1], "r1");
    let c1_again = completing("c1", tokens[1], "r1");
    let stale = FencingToken::new(tokens[2].get() + 1).unwrap();
    let c2_fenced = completing("c2", stale, "x");
    let c3 = completing("c3", tokens[3], "r3");
    let before = queued(&proxy, &[&held, &c1, &c1_again, &c2_fenced, &c3]).await;

    run(&mut holder, &store, "ROLLBACK", &id("batch", "held")).await;
    answer(held).await.unwrap();
    answer(c1).await.unwrap();
    answer(c1_again).await.unwrap();
    match answer(c2_fenced).await {
        Err(Error::Rejected(rejection)) => assert_eq!(rejection.reason, RejectReason::Fenced),
        other => panic!("a stale token must be fenced, got {other:?}"),
    }
    answer(c3).await.unwrap();
    assert_eq!(
        statements_since(&proxy, before).await,
        1,
        "the four queued completions went in one statement"
    );

    let record = |key: &str| {
        let key = id("batch", key);
        let store = store.clone();
        async move { store.inspect(&key).await.unwrap().expect("a record") }
    };
    let (r1, r2, r3) = (record("c1").await, record("c2").await, record("c3").await);
    assert_eq!(
        (r1.state, r1.result),
        (ExecutionState::Completed, Some(json!("r1")))
    );
    assert_eq!((r2.state, r2.result), (ExecutionState::Executing, None));
    assert_eq!(
        (r3.state, r3.result),
        (ExecutionState::Completed, Some(json!("r3")))
    );
    let kinds: Vec<_> = history_of(&store, "c1")
        .await
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["claimed", "completed"],
        "the repeat completed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_fails_alone_and_its_batch_is_sent_again_call_by_call() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 1).await;
    // A server error for one key only, and a count of the inserts tried for another that no
    // rollback undoes (sequences are not transactional).
    let mut admin = direct(&factory).await;
    install(
        &mut admin,
        &store,
        &[
            "CREATE SEQUENCE {schema}.tries_of_a",
            "CREATE FUNCTION {schema}.poison() RETURNS trigger LANGUAGE plpgsql AS $f$ \
         BEGIN \
             IF NEW.key = 'a' THEN PERFORM nextval(TG_TABLE_SCHEMA || '.tries_of_a'); END IF; \
             IF NEW.key = 'poison' THEN RAISE EXCEPTION 'poisoned key'; END IF; \
             RETURN NEW; \
         END $f$",
            "CREATE TRIGGER poison BEFORE INSERT ON {schema}.executions \
         FOR EACH ROW EXECUTE FUNCTION {schema}.poison()",
        ],
    )
    .await;

    let held = FirstHeld::take(&factory, &store).await;
    let a = claiming(&store, "a", "w-a");
    let b = claiming(&store, "b", "w-b");
    let poison = claiming(&store, "poison", "w-p");
    let before = queued(&proxy, &[&held.first, &a, &b, &poison]).await;

    held.let_go(&store).await;
    granted(answer(a).await.unwrap());
    granted(answer(b).await.unwrap());
    match answer(poison).await {
        Err(Error::Backend { source, .. }) => {
            assert!(source.to_string().contains("poisoned key"), "{source}");
        }
        other => panic!("the poisoned claim fails on its own, got {other:?}"),
    }
    assert_eq!(
        statements_since(&proxy, before).await,
        4,
        "the batch, then each of its three calls alone"
    );
    let (tries,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT last_value FROM \"{}\".tries_of_a",
        store.schema()
    )))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(tries, 2, "a was tried in the failed batch, then alone");
    assert!(
        store
            .inspect(&id("batch", "poison"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_whose_caller_gave_up_is_never_sent() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 1).await;
    let held = FirstHeld::take(&factory, &store).await;
    let dropped = claiming(&store, "dropped", "w-d");
    let kept = claiming(&store, "kept", "w-k");
    let before = queued(&proxy, &[&held.first, &dropped, &kept]).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());

    held.let_go(&store).await;
    granted(answer(kept).await.unwrap());
    assert_eq!(statements_since(&proxy, before).await, 1);
    assert!(
        store
            .inspect(&id("batch", "dropped"))
            .await
            .unwrap()
            .is_none(),
        "a call nobody waits for is not sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_limit_every_call_is_sent_alone() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 0).await;
    // Prepare the statement on every connection first: only statements are compared.
    let warm: Vec<_> = (0..8)
        .map(|n| claiming(&store, &format!("warm{n}"), "w"))
        .collect();
    for call in warm {
        granted(answer(call).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = proxy.counts();
    let calls: Vec<_> = (0..16)
        .map(|n| claiming(&store, &format!("k{n}"), "w"))
        .collect();
    for call in calls {
        granted(answer(call).await.unwrap());
    }
    assert_eq!(statements_since(&proxy, before).await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_over_the_same_records_never_deadlock() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    // Two processes on one schema, each sending one complete statement at a time.
    let (one, _proxy) = proxied(&factory, 1).await;
    let (pool, _proxy_two) = proxied_pool(&factory).await;
    let two = PostgresStore::builder(pool)
        .schema(one.schema().as_str())
        .in_flight(1)
        .build()
        .await
        .unwrap();
    // Each completion of k1..k3 takes 100 ms with its row locked, so that the two batches
    // overlap.
    let mut admin = direct(&factory).await;
    install(
        &mut admin,
        &one,
        &[
            "CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS $f$ \
         BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $f$",
            "CREATE TRIGGER slow BEFORE UPDATE ON {schema}.executions \
         FOR EACH ROW WHEN (NEW.key LIKE 'k%') EXECUTE FUNCTION {schema}.slow()",
        ],
    )
    .await;
    let mut tokens = Vec::new();
    for key in ["held-1", "held-2", "k1", "k2", "k3"] {
        let outcome = one
            .claim(&id("batch", key), &claim("w", 60_000, true))
            .await;
        tokens.push(granted(outcome.unwrap()));
    }
    // Each store's slot is taken by a completion waiting on a row the test holds locked.
    let mut holder = direct(&factory).await;
    hold_rows(
        &mut holder,
        &one,
        &[id("batch", "held-1"), id("batch", "held-2")],
    )
    .await;
    let held = [
        completing(&one, "held-1", tokens[0], "r"),
        completing(&two, "held-2", tokens[1], "r"),
    ];
    tokio::time::sleep(SETTLE).await;
    // The same three completions queue on both, in opposite orders: taken in the order they
    // came, the two batches would lock k1 and k3 each first and wait for each other.
    let mut calls = Vec::new();
    for (n, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        calls.push(completing(&one, key, tokens[2 + n], "r"));
    }
    for (n, key) in ["k3", "k2", "k1"].into_iter().enumerate() {
        calls.push(completing(&two, key, tokens[4 - n], "r"));
    }
    tokio::time::sleep(SETTLE).await;
    let released = std::time::Instant::now();
    run(&mut holder, &one, "ROLLBACK", &id("batch", "held-1")).await;
    for call in held.into_iter().chain(calls) {
        answer(call).await.unwrap();
    }
    let took = released.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the batches took {took:?}: a deadlock held them until the server broke it"
    );
    for key in ["k1", "k2", "k3"] {
        let record = one.inspect(&id("batch", key)).await.unwrap().unwrap();
        assert_eq!(record.state, ExecutionState::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_connection_breaks_is_sent_again_call_by_call() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let name = format!("sentinel_batch_kill_{}", std::process::id());
    let store = PostgresStore::builder(common::named_pool(factory.url(), &name, 8).await)
        .schema(factory.adopt(common::unique_schema("sentinel_batch")))
        .in_flight(1)
        .build()
        .await
        .unwrap();
    let held = FirstHeld::take(&factory, &store).await;
    let mut second_holder = direct(&factory).await;
    hold_insert(&mut second_holder, &store, &id("batch", "second")).await;
    let a = claiming(&store, "a", "w-a");
    let b = claiming(&store, "b", "w-b");
    let second = claiming(&store, "second", "w-second");
    tokio::time::sleep(SETTLE).await;

    // The batch goes, writes a and b, and waits on the server for the second holder.
    held.let_go(&store).await;
    tokio::time::sleep(SETTLE).await;
    let (pid,): (i32,) = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%claim_batch%'",
    )
    .bind(&name)
    .fetch_one(&mut second_holder)
    .await
    .expect("the batch is running");
    common::kill_pid(factory.url(), pid).await;
    // Its calls are sent again alone: a and b at once, the second once its holder lets go.
    granted(answer(a).await.unwrap());
    granted(answer(b).await.unwrap());
    run(
        &mut second_holder,
        &store,
        "ROLLBACK",
        &id("batch", "second"),
    )
    .await;
    granted(answer(second).await.unwrap());
    for (key, owner) in [("a", "w-a"), ("b", "w-b"), ("second", "w-second")] {
        assert_eq!(owner_of(&store, key).await.as_str(), owner);
        let history = history_of(&store, key).await;
        assert_eq!(history.len(), 1, "{key}: one claim, once: {history:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waited_alone_holds_the_slot_while_it_is_sent() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, proxy) = proxied(&factory, 1).await;
    let held = FirstHeld::take(&factory, &store).await;
    // The second call waits for the slot alone, then is sent alone, and waits on the server.
    let mut second_holder = direct(&factory).await;
    hold_insert(&mut second_holder, &store, &id("batch", "second")).await;
    let second = claiming(&store, "second", "w-second");
    tokio::time::sleep(SETTLE).await;
    held.let_go(&store).await;
    tokio::time::sleep(SETTLE).await;
    // A third call finds the one slot taken by the second, and queues.
    let third = claiming(&store, "third", "w-third");
    let before = queued(&proxy, &[&second, &third]).await;
    run(
        &mut second_holder,
        &store,
        "ROLLBACK",
        &id("batch", "second"),
    )
    .await;
    granted(answer(second).await.unwrap());
    granted(answer(third).await.unwrap());
    assert_eq!(
        statements_since(&proxy, before).await,
        1,
        "the third, alone"
    );
}
