//! Fencing downstream: a worker's own writes in the same database, tied to its authority with
//! `fence` and `complete_in`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PgFactory, claim, granted, id, lease, manual_store};
use sentinel_core::{
    Acquisition, CoordinationStore, Error, EventKind, ExecutionState, Failure, HistoryQuery,
    InvalidInput, Keyspace, Once, OwnerId, RejectReason, Renewal, Sentinel,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::AssertSqlSafe;

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

/// The downstream table of these tests: payments, in the store's schema (dropped with it).
async fn payments(store: &PostgresStore) -> String {
    let table = format!("\"{}\".payments", store.schema());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (order_id text PRIMARY KEY, amount bigint NOT NULL, fence bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    table
}

async fn count(store: &PostgresStore, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .unwrap();
    n
}

/// The kinds of the events of execution `id`, oldest first.
async fn kinds(store: &PostgresStore, id: &sentinel_core::RecordId) -> Vec<EventKind> {
    store
        .history(Keyspace::Execution, id, &HistoryQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn rejection(error: Error) -> sentinel_core::Rejection {
    match error {
        Error::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_workers_write_is_refused_after_a_reconcile() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let table = payments(&store).await;
    let order = id("pay", "order-1");
    let stale = granted(
        store
            .claim(&order, &claim("worker-a", 1_000, true))
            .await
            .unwrap(),
    );

    // Worker A pauses past its lease; an operator fences it out.
    clock.advance(Duration::from_secs(2));
    let fresh = store
        .reconcile(&order, &OwnerId::new("operator").unwrap())
        .await
        .unwrap();

    // A wakes up and tries its downstream write under its old token.
    let mut tx = store.pool().begin().await.unwrap();
    let refused = rejection(store.fence(&mut tx, &order, stale).await.unwrap_err());
    assert_eq!(refused.reason, RejectReason::Fenced);
    assert_eq!(refused.state, Some(ExecutionState::Reconciling));
    assert_eq!(refused.token, Some(fresh));
    tx.rollback().await.unwrap();
    assert_eq!(
        count(&store, &table).await,
        0,
        "the stale write must not land"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lease_holders_write_is_refused_after_a_takeover() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let table = payments(&store).await;
    let job = id("jobs", "nightly");
    let Acquisition::Acquired(first) = store.acquire_lease(&job, &lease("a", 1_000)).await.unwrap()
    else {
        panic!("a free lease is granted");
    };
    clock.advance(Duration::from_secs(2));
    let Acquisition::Acquired(second) =
        store.acquire_lease(&job, &lease("b", 1_000)).await.unwrap()
    else {
        panic!("an expired lease is granted to the next worker");
    };

    let mut tx = store.pool().begin().await.unwrap();
    let refused = rejection(
        store
            .fence_lease(&mut tx, &job, first.token)
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.reason, RejectReason::Fenced);
    assert_eq!(refused.token, Some(second.token));
    drop(tx);

    // The new holder's write goes through.
    let mut tx = store.pool().begin().await.unwrap();
    store
        .fence_lease(&mut tx, &job, second.token)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('nightly', 1, $1)"
    )))
    .bind(second.token.get())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&store, &table).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_fenced_transaction_to_commit() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let table = payments(&store).await;
    let order = id("pay", "order-2");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 1_000, true))
            .await
            .unwrap(),
    );

    // A fences and writes, but has not committed yet.
    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('order-2', 100, $1)"
    )))
    .bind(token.get())
    .execute(&mut *tx)
    .await
    .unwrap();

    // Its lease runs out in store time; an operator reconciles: that must wait for A's commit.
    clock.advance(Duration::from_secs(2));
    let operator = store.clone();
    let oid = order.clone();
    let reconcile = tokio::spawn(async move {
        operator
            .reconcile(&oid, &OwnerId::new("operator").unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !reconcile.is_finished(),
        "a takeover must wait for the fenced transaction"
    );

    tx.commit().await.unwrap();
    let reconciled = tokio::time::timeout(Duration::from_secs(10), reconcile)
        .await
        .expect("the reconcile proceeds once the fence is released")
        .unwrap()
        .unwrap();
    assert!(reconciled > token);
    assert_eq!(
        count(&store, &table).await,
        1,
        "A's write committed before the takeover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_completion_and_other_keys_are_not_blocked_by_a_fence() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let order = id("pay", "order-3");
    let other = id("pay", "order-4");
    // Records that share the fenced one's namespace or its key, claimed but not started; and
    // leases, one of the fenced record's name and two that share its namespace or its key.
    let neighbours = [id("pay", "order-6"), id("refunds", "order-3")];
    for neighbour in &neighbours {
        granted(
            store
                .claim(neighbour, &claim("c", 1_000, false))
                .await
                .unwrap(),
        );
    }
    let locks = [
        id("pay", "order-3"),
        id("pay", "lock-7"),
        id("jobs", "order-3"),
    ];
    for lock in &locks {
        let Acquisition::Acquired(_) = store.acquire_lease(lock, &lease("c", 1_000)).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
    }
    clock.advance(Duration::from_millis(500));
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 60_000, true))
            .await
            .unwrap(),
    );

    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    // A fence locks its own record and nothing else: the neighbours' claims expire and are
    // taken over while the fence is held, and so are the leases.
    clock.advance(Duration::from_millis(600));
    let take_lease = |lock: &sentinel_core::RecordId| {
        let (store, lock) = (store.clone(), lock.clone());
        async move {
            match tokio::time::timeout(
                Duration::from_secs(5),
                store.acquire_lease(&lock, &lease("d", 1_000)),
            )
            .await
            .expect("a lease takeover does not wait for a fence of another record")
            .unwrap()
            {
                Acquisition::Acquired(grant) => grant.token,
                other => panic!("an expired lease is granted, got {other:?}"),
            }
        }
    };
    for neighbour in &neighbours {
        let taken = tokio::time::timeout(
            Duration::from_secs(5),
            store.claim(neighbour, &claim("d", 1_000, true)),
        )
        .await
        .expect("a takeover of another record does not wait for the fence")
        .unwrap();
        granted(taken);
    }
    // A lease's fence, likewise, locks its lease alone.
    let taken = take_lease(&locks[0]).await;
    let mut lease_tx = store.pool().begin().await.unwrap();
    store
        .fence_lease(&mut lease_tx, &locks[0], taken)
        .await
        .unwrap();
    for lock in &locks[1..] {
        take_lease(lock).await;
    }
    lease_tx.commit().await.unwrap();
    let renewals = [sentinel_core::Renewal {
        keyspace: Keyspace::Execution,
        id: order.clone(),
        token,
    }];
    let renewed = tokio::time::timeout(Duration::from_secs(5), store.heartbeat(&renewals))
        .await
        .expect("a heartbeat does not wait for a fence")
        .unwrap();
    assert!(renewed[0].is_ok(), "{renewed:?}");
    tokio::time::timeout(
        Duration::from_secs(5),
        store.claim(&other, &claim("b", 1_000, true)),
    )
    .await
    .expect("other keys do not wait")
    .unwrap();
    // The fenced token's own completion hands the key to nobody: it does not wait either.
    tokio::time::timeout(
        Duration::from_secs(5),
        store.complete(&order, token, &json!("done")),
    )
    .await
    .expect("a completion by the fenced token does not wait for the fence")
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_refuses_what_has_no_authority() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let order = id("pay", "order-5");
    let mut tx = store.pool().begin().await.unwrap();
    let missing = rejection(
        store
            .fence(
                &mut tx,
                &order,
                sentinel_core::FencingToken::new(7).unwrap(),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(missing.reason, RejectReason::NotFound);
    drop(tx);

    // Claimed but not started: nothing may be applied yet.
    let token = granted(
        store
            .claim(&order, &claim("a", 1_000, false))
            .await
            .unwrap(),
    );
    let mut tx = store.pool().begin().await.unwrap();
    let claimed = rejection(store.fence(&mut tx, &order, token).await.unwrap_err());
    assert_eq!(claimed.reason, RejectReason::WrongState);
    drop(tx);

    // Alive one microsecond before the lease's expiry, expired at it.
    let expiry = store.start(&order, token).await.unwrap();
    let micro = Duration::from_micros(1);
    clock.set(expiry.saturating_sub(micro));
    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    drop(tx);
    clock.set(expiry);
    let mut tx = store.pool().begin().await.unwrap();
    let expired = rejection(store.fence(&mut tx, &order, token).await.unwrap_err());
    assert_eq!(expired.reason, RejectReason::Expired);
    assert_eq!(expired.state, Some(ExecutionState::Executing));
    assert_eq!(expired.token, Some(token));
    drop(tx);

    // The same for a lease.
    let job = id("pay", "lock-5");
    let Acquisition::Acquired(held) = store.acquire_lease(&job, &lease("a", 1_000)).await.unwrap()
    else {
        panic!("a free lease is granted");
    };
    clock.set(held.lease_expires_at.saturating_sub(micro));
    let mut tx = store.pool().begin().await.unwrap();
    store.fence_lease(&mut tx, &job, held.token).await.unwrap();
    drop(tx);
    clock.set(held.lease_expires_at);
    let mut tx = store.pool().begin().await.unwrap();
    let expired = rejection(
        store
            .fence_lease(&mut tx, &job, held.token)
            .await
            .unwrap_err(),
    );
    assert_eq!(expired.reason, RejectReason::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_in_commits_the_side_effect_and_the_completion_together() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let table = payments(&store).await;
    let order = id("pay", "order-6");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 1_000, true))
            .await
            .unwrap(),
    );
    let receipt = json!({"charge": "ch_6"});

    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('order-6', 600, $1)"
    )))
    .bind(token.get())
    .execute(&mut *tx)
    .await
    .unwrap();
    store
        .complete_in(&mut tx, &order, token, &receipt)
        .await
        .unwrap();
    // Not visible outside the transaction before it commits.
    assert_eq!(
        store.inspect(&order).await.unwrap().unwrap().state,
        ExecutionState::Executing
    );
    tx.commit().await.unwrap();

    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    assert_eq!(record.result, Some(receipt.clone()));
    assert_eq!(count(&store, &table).await, 1);
    // once() then records the same result with the same token: accepted, nothing logged.
    store.complete(&order, token, &receipt).await.unwrap();
    let kinds = kinds(&store, &order).await;
    assert_eq!(kinds, [EventKind::Claimed, EventKind::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_in_refuses_what_complete_refuses() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let order = id("pay", "order-9");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 1_000, true))
            .await
            .unwrap(),
    );
    store.complete(&order, token, &json!("ch_9")).await.unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    // The same result again (a lost reply): accepted.
    store
        .complete_in(&mut tx, &order, token, &json!("ch_9"))
        .await
        .unwrap();
    // The refusal of one completion inside `tx`.
    async fn refused(
        store: &PostgresStore,
        tx: &mut sqlx::PgTransaction<'_>,
        order: &sentinel_core::RecordId,
        token: sentinel_core::FencingToken,
        result: serde_json::Value,
    ) -> sentinel_core::Rejection {
        rejection(
            store
                .complete_in(tx, order, token, &result)
                .await
                .unwrap_err(),
        )
    }
    // Another result for a completed record: refused, with the record's state and token.
    let other = refused(&store, &mut tx, &order, token, json!("ch_other")).await;
    assert_eq!(other.reason, RejectReason::WrongState);
    assert_eq!(other.state, Some(ExecutionState::Completed));
    assert_eq!(other.token, Some(token));
    // A token that is not the record's: fenced.
    let stale = sentinel_core::FencingToken::new(token.get() - 1).unwrap();
    let fenced = refused(&store, &mut tx, &order, stale, json!("ch_9")).await;
    assert_eq!(fenced.reason, RejectReason::Fenced);
    assert_eq!(fenced.token, Some(token));
    // No record at all.
    let missing = refused(
        &store,
        &mut tx,
        &id("pay", "order-none"),
        token,
        json!("ch_9"),
    )
    .await;
    assert_eq!(missing.reason, RejectReason::NotFound);
    // The refusals are logged in the caller's transaction: committed here, they show.
    tx.commit().await.unwrap();
    let kinds = kinds(&store, &order).await;
    assert_eq!(
        kinds,
        [
            EventKind::Claimed,
            EventKind::Completed,
            EventKind::CompletionRejected,
            EventKind::CompletionRejected
        ]
    );
    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.result, Some(json!("ch_9")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_side_effect_and_commit_leaves_neither() {
    let factory = factory!();
    let store = factory.store(sentinel_core::TimeSource::Server).await;
    let table = payments(&store).await;
    let order = id("pay", "order-7");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 60_000, true))
            .await
            .unwrap(),
    );

    // The worker dies with its transaction open: the server sees the connection drop.
    let mut tx = store.pool().begin().await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('order-7', 700, $1)"
    )))
    .bind(token.get())
    .execute(&mut *tx)
    .await
    .unwrap();
    store
        .complete_in(&mut tx, &order, token, &json!("ch_7"))
        .await
        .unwrap();
    common::kill_pid(factory.url(), pid).await;
    assert!(
        tx.commit().await.is_err(),
        "the commit of a killed connection fails"
    );

    assert_eq!(count(&store, &table).await, 0, "no side effect");
    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Executing, "no completion");
    assert_eq!(record.token, token);

    // And a plain drop without commit (a panic, a cancelled task) rolls back the same way.
    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('order-7', 700, $1)"
    )))
    .bind(token.get())
    .execute(&mut *tx)
    .await
    .unwrap();
    store
        .complete_in(&mut tx, &order, token, &json!("ch_7"))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(count(&store, &table).await, 0);
    assert_eq!(
        store.inspect(&order).await.unwrap().unwrap().state,
        ExecutionState::Executing
    );
}

/// The pattern of the README, end to end, through the `Sentinel` client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pattern_charges_exactly_once() {
    let factory = factory!();
    let store = factory.store(sentinel_core::TimeSource::Server).await;
    let table = payments(&store).await;
    let sentinel = Sentinel::builder(store.clone())
        .namespace("payments")
        .build()
        .unwrap();

    let charge = |amount: i64| {
        let store = store.clone();
        let table = table.clone();
        move |ctx: sentinel_core::ExecutionContext| async move {
            let id = sentinel_core::RecordId::new(ctx.namespace().clone(), ctx.key().clone());
            let mut tx = store.pool().begin().await.map_err(Failure::not_applied)?;
            store
                .fence(&mut tx, &id, ctx.token())
                .await
                .map_err(Failure::not_applied)?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (order_id, amount, fence) VALUES ($1, $2, $3)"
            )))
            .bind(ctx.key().as_str())
            .bind(amount)
            .bind(ctx.token().get())
            .execute(&mut *tx)
            .await
            .map_err(Failure::not_applied)?;
            let receipt = format!("ch_{}", ctx.token());
            store
                .complete_in(&mut tx, &id, ctx.token(), &json!(receipt))
                .await?;
            tx.commit().await?;
            Ok::<_, Failure>(receipt)
        }
    };

    let first: Once<String> = sentinel.once("order-8", charge(800)).await.unwrap();
    assert!(first.is_executed(), "{}", first.kind());
    let again: Once<String> = sentinel.once("order-8", charge(800)).await.unwrap();
    assert!(again.is_cached(), "{}", again.kind());
    assert_eq!(again.value(), first.value());
    assert_eq!(count(&store, &table).await, 1);
    assert_eq!(
        kinds(&store, &id("payments", "order-8")).await,
        [EventKind::Claimed, EventKind::Completed]
    );
}

/// Opens a transaction on `store`'s pool at isolation `level` (`SET TRANSACTION`, as its first
/// statement).
async fn begin_at(store: &PostgresStore, level: &str) -> sqlx::PgTransaction<'static> {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET TRANSACTION ISOLATION LEVEL {level}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Asserts that `error` is the refusal of a transaction at `level` (lower case, as PostgreSQL
/// names it) by `operation`.
fn assert_not_read_committed(error: Error, operation: &str, level: &str) {
    match &error {
        Error::InvalidInput(InvalidInput::Malformed { what, detail }) => {
            assert_eq!(*what, "transaction isolation");
            assert!(
                detail.contains(operation) && detail.contains(level),
                "the refusal names the helper and the level: {detail}"
            );
        }
        other => panic!("expected the refusal of a {level} transaction, got {other:?}"),
    }
}

/// Whether the row of `id` in `table` can be locked FOR UPDATE right now by another transaction
/// (a takeover would not wait).
async fn lockable(store: &PostgresStore, table: &str, id: &sentinel_core::RecordId) -> bool {
    let statement = format!(
        "SELECT 1 FROM \"{}\".{table} WHERE namespace = $1 AND key = $2 FOR UPDATE NOWAIT",
        store.schema()
    );
    sqlx::query(AssertSqlSafe(statement))
        .bind(id.namespace.as_str())
        .bind(id.key.as_str())
        .execute(store.pool())
        .await
        .is_ok()
}

/// Under REPEATABLE READ or SERIALIZABLE a statement judges the transaction's snapshot, which the
/// heartbeats keep replacing: the fence would see a stale lease and complete_in would fail to
/// serialize after any heartbeat. The three helpers refuse such a transaction in their own
/// statement, before they lock or write anything; the transaction itself stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_and_complete_in_refuse_a_transaction_that_is_not_read_committed() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let table = payments(&store).await;
    let order = id("pay", "order-10");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 60_000, true))
            .await
            .unwrap(),
    );
    let job = id("jobs", "hourly");
    let Acquisition::Acquired(held) = store
        .acquire_lease(&job, &lease("a", 60_000))
        .await
        .unwrap()
    else {
        panic!("a free lease is granted");
    };
    let record = store.inspect(&order).await.unwrap().unwrap();
    let held_lease = store.inspect_lease(&job).await.unwrap().unwrap();

    for (level, named) in [
        ("REPEATABLE READ", "repeatable read"),
        ("SERIALIZABLE", "serializable"),
    ] {
        let mut tx = begin_at(&store, level).await;
        let error = store.fence(&mut tx, &order, token).await.unwrap_err();
        assert_not_read_committed(error, "fence", named);
        assert!(
            lockable(&store, "executions", &order).await,
            "{level}: a refused fence locks nothing"
        );
        let error = store
            .fence_lease(&mut tx, &job, held.token)
            .await
            .unwrap_err();
        assert_not_read_committed(error, "fence_lease", named);
        assert!(
            lockable(&store, "leases", &job).await,
            "{level}: a refused lease fence locks nothing"
        );
        let error = store
            .complete_in(&mut tx, &order, token, &json!("r"))
            .await
            .unwrap_err();
        assert_not_read_committed(error, "complete_in", named);
        assert!(
            lockable(&store, "executions", &order).await,
            "{level}: a refused complete_in locks nothing"
        );
        // The refusals did not abort the transaction: it runs on and commits, with nothing of
        // Sentinel's in it.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES ($1, 1, $2)"
        )))
        .bind(named)
        .bind(token.get())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.inspect(&order).await.unwrap().unwrap(), record);
        assert_eq!(
            store.inspect_lease(&job).await.unwrap().unwrap(),
            held_lease
        );
        assert_eq!(kinds(&store, &order).await, [EventKind::Claimed]);
    }
    assert_eq!(count(&store, &table).await, 2);

    // READ UNCOMMITTED is READ COMMITTED in PostgreSQL: accepted.
    let mut tx = begin_at(&store, "READ UNCOMMITTED").await;
    store.fence(&mut tx, &order, token).await.unwrap();
    store.fence_lease(&mut tx, &job, held.token).await.unwrap();
    tx.rollback().await.unwrap();
    // And READ COMMITTED, said explicitly, works as before.
    let mut tx = begin_at(&store, "READ COMMITTED").await;
    store.fence(&mut tx, &order, token).await.unwrap();
    store.fence_lease(&mut tx, &job, held.token).await.unwrap();
    assert!(
        !lockable(&store, "executions", &order).await,
        "the fence holds the record"
    );
    store
        .complete_in(&mut tx, &order, token, &json!("r"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    assert_eq!(record.result, Some(json!("r")));
    assert_eq!(
        kinds(&store, &order).await,
        [EventKind::Claimed, EventKind::Completed]
    );
}

/// The review's scenario on the server clock: a heartbeat renews the record between the fence
/// and complete_in. Under READ COMMITTED that is harmless (the completion judges the latest
/// version); a SERIALIZABLE transaction, which would fail to serialize there, is refused at the
/// fence, before the side effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_between_fence_and_complete_in_is_harmless_under_read_committed() {
    let factory = factory!();
    let store = factory.store(sentinel_core::TimeSource::Server).await;
    let order = id("pay", "order-11");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 60_000, true))
            .await
            .unwrap(),
    );
    let renewals = [Renewal {
        keyspace: Keyspace::Execution,
        id: order.clone(),
        token,
    }];

    let mut tx = begin_at(&store, "SERIALIZABLE").await;
    let error = store.fence(&mut tx, &order, token).await.unwrap_err();
    assert_not_read_committed(error, "fence", "serializable");
    tx.rollback().await.unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    store.fence(&mut tx, &order, token).await.unwrap();
    let before = store
        .inspect(&order)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at;
    let renewed = tokio::time::timeout(Duration::from_secs(5), store.heartbeat(&renewals))
        .await
        .expect("a heartbeat does not wait for a fence")
        .unwrap();
    assert!(
        matches!(renewed[0], Ok(expiry) if expiry > before),
        "{renewed:?}"
    );
    store
        .complete_in(&mut tx, &order, token, &json!("r"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    assert_eq!(record.result, Some(json!("r")));
}

/// The README pattern in a SERIALIZABLE transaction, with a heartbeat renewing the record between
/// the fence and complete_in. Unchecked, complete_in failed to serialize there and the key was
/// left uncertain although nothing was charged. Now the fence refuses the transaction before the
/// side effect, the work fails saying nothing was applied, and the key is claimable again; the
/// same work in a READ COMMITTED transaction then charges once, through the same heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pattern_in_a_serializable_transaction_fails_cleanly() {
    let factory = factory!();
    let store = factory.store(sentinel_core::TimeSource::Server).await;
    let table = payments(&store).await;
    let sentinel = Sentinel::builder(store.clone())
        .namespace("payments")
        .hard_ttl(Duration::from_secs(60))
        .build()
        .unwrap();

    let charge = |level: &'static str| {
        let store = store.clone();
        let table = table.clone();
        move |ctx: sentinel_core::ExecutionContext| async move {
            let id = sentinel_core::RecordId::new(ctx.namespace().clone(), ctx.key().clone());
            let mut tx = store.pool().begin().await.map_err(Failure::not_applied)?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "SET TRANSACTION ISOLATION LEVEL {level}"
            )))
            .execute(&mut *tx)
            .await
            .map_err(Failure::not_applied)?;
            store
                .fence(&mut tx, &id, ctx.token())
                .await
                .map_err(Failure::not_applied)?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (order_id, amount, fence) VALUES ($1, 1200, $2)"
            )))
            .bind(ctx.key().as_str())
            .bind(ctx.token().get())
            .execute(&mut *tx)
            .await
            .map_err(Failure::not_applied)?;
            // A heartbeat tick lands here and renews the record.
            let renewals = [Renewal {
                keyspace: Keyspace::Execution,
                id: id.clone(),
                token: ctx.token(),
            }];
            let renewed = store
                .heartbeat(&renewals)
                .await
                .map_err(Failure::not_applied)?;
            assert!(renewed[0].is_ok(), "{renewed:?}");
            let receipt = format!("ch_{}", ctx.token());
            store
                .complete_in(&mut tx, &id, ctx.token(), &json!(receipt))
                .await?;
            tx.commit().await?;
            Ok::<_, Failure>(receipt)
        }
    };

    let refused: Once<String> = sentinel
        .once("order-12", charge("SERIALIZABLE"))
        .await
        .unwrap();
    match &refused {
        Once::Failed { failure, .. } => {
            assert!(failure.is_not_applied(), "{failure}");
            assert!(failure.to_string().contains("READ COMMITTED"), "{failure}");
        }
        other => panic!("expected a clean failure, got {}", other.kind()),
    }
    assert_eq!(count(&store, &table).await, 0);
    let order = id("payments", "order-12");
    assert_ne!(
        store.inspect(&order).await.unwrap().unwrap().state,
        ExecutionState::Executing,
        "the key is not left uncertain"
    );

    let charged: Once<String> = sentinel
        .once("order-12", charge("READ COMMITTED"))
        .await
        .unwrap();
    assert!(charged.is_executed(), "{}", charged.kind());
    assert_eq!(count(&store, &table).await, 1);
}
