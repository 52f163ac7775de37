//! Failures: a connection killed mid-call, an exhausted pool, a server restart. Each gives a typed
//! error and never a state; the next calls recover once the server is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{PgFactory, claim, granted, id};
use sentinel_core::{
    CoordinationStore, Error, EventKind, ExecutionState, HistoryQuery, Keyspace, OwnerId,
    TimeSource,
};
use sentinel_postgres::PostgresStore;
use sentinel_testkit::servers;
use serde_json::json;

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_while_idle_is_replaced() {
    let factory = factory!();
    let app = common::unique_schema("kill_idle");
    let pool = common::named_pool(factory.url(), &app, 1).await;
    let store = PostgresStore::builder(pool)
        .schema(common::unique_schema("sentinel_test"))
        .build()
        .await
        .unwrap();
    let key = id("kill", "idle");
    let token = granted(store.claim(&key, &claim("a", 60_000, true)).await.unwrap());

    assert_eq!(common::kill_backends(factory.url(), &app).await, 1);
    // Used within 100 ms of its last call, the dead connection is not pinged first: the call
    // fails, typed and transient, and the connection is dropped. Idle for longer, it is pinged
    // and replaced before use, and the call goes through.
    match store.complete(&key, token, &json!(1)).await {
        Ok(()) => {}
        Err(error) => {
            assert!(matches!(error, Error::Unavailable { .. }), "{error}");
            // Sent again, the same command goes through on a new connection.
            store.complete(&key, token, &json!(1)).await.unwrap();
        }
    }
    let record = store.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);

    // Idle past the ping threshold, a killed connection never fails a call.
    assert_eq!(common::kill_backends(factory.url(), &app).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.inspect(&key).await.unwrap().is_some());
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_call_is_a_typed_error_and_invents_nothing() {
    let factory = factory!();
    let (holder, clock) = common::manual_store(&factory).await;
    let key = id("kill", "mid-call");
    let token = granted(holder.claim(&key, &claim("a", 1_000, true)).await.unwrap());

    // A second store (its own named pool) on the same schema and clock.
    let app = common::unique_schema("kill_mid");
    let operator = PostgresStore::builder(common::named_pool(factory.url(), &app, 1).await)
        .schema(holder.schema().as_str())
        .time(TimeSource::Manual(clock.clone()))
        .build()
        .await
        .unwrap();

    // A fence holds the row, so the operator's reconcile is on the server, waiting, when its
    // connection is killed.
    let mut tx = holder.pool().begin().await.unwrap();
    holder.fence(&mut tx, &key, token).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let op = operator.clone();
    let k = key.clone();
    let call =
        tokio::spawn(async move { op.reconcile(&k, &OwnerId::new("operator").unwrap()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished());
    assert_eq!(common::kill_backends(factory.url(), &app).await, 1);
    let error = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a killed call returns")
        .unwrap()
        .expect_err("the call's connection was killed");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    tx.rollback().await.unwrap();

    // Nothing was applied, and nothing is claimed to have been.
    let record = holder.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Executing);
    assert_eq!(record.token, token);
    let history = holder
        .history(Keyspace::Execution, &key, &HistoryQuery::default())
        .await
        .unwrap();
    let kinds: Vec<EventKind> = history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Claimed], "no reconciliation was logged");
    // Sent again, the reconcile goes through.
    let reconciled = operator
        .reconcile(&key, &OwnerId::new("operator").unwrap())
        .await
        .unwrap();
    assert!(reconciled > token);
}

#[test]
fn the_recommended_pool_options_are_the_documented_ones() {
    let options = PostgresStore::pool_options();
    assert_eq!(options.get_max_connections(), 16);
    assert_eq!(options.get_acquire_timeout(), Duration::from_secs(5));
    // Not sqlx's ping on every acquire (a round trip per call): the store's own hook pings only
    // connections idle for a while.
    assert!(!options.get_test_before_acquire());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_a_timeout_not_a_hang() {
    let factory = factory!();
    let pool = PostgresStore::pool_options()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(factory.url())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool)
        .schema(common::unique_schema("sentinel_test"))
        .build()
        .await
        .unwrap();
    let key = id("pool", "dry");

    let held = store.pool().acquire().await.unwrap();
    let started = Instant::now();
    let error = store
        .inspect(&key)
        .await
        .expect_err("no connection to be had");
    assert!(
        matches!(
            error,
            Error::Timeout {
                operation: "inspect",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    assert_eq!(store.inspect(&key).await.unwrap(), None);
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_gives_errors_while_down_and_recovers_after() {
    let Some(mut server) = servers::require("postgres (private)", servers::spawn_postgres()) else {
        return;
    };
    let pool = PostgresStore::pool_options()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool).build().await.unwrap();
    let key = id("restart", "order");
    let before = granted(store.claim(&key, &claim("a", 60_000, true)).await.unwrap());

    tokio::task::block_in_place(|| server.stop()).unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.inspect(&key).await.expect_err("the server is down");
        assert!(error.is_transient(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let error = store
        .complete(&key, before, &json!("r"))
        .await
        .expect_err("the server is down");
    assert!(error.is_transient(), "{error}");

    tokio::task::block_in_place(|| server.start()).unwrap();
    // Idle connections are checked before use, so the first call after the restart works.
    let record = store.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Executing);
    assert_eq!(record.token, before);
    store.complete(&key, before, &json!("r")).await.unwrap();

    // Tokens keep increasing across the restart.
    let next = id("restart", "next");
    let after = granted(store.claim(&next, &claim("b", 60_000, true)).await.unwrap());
    assert!(after > before);

    // A crash (immediate stop) is the same story, with several pooled connections.
    let (a, b, c) = tokio::join!(
        store.inspect(&key),
        store.inspect(&next),
        store.inspect(&key)
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    tokio::task::block_in_place(|| server.kill()).unwrap();
    assert!(store.inspect(&key).await.unwrap_err().is_transient());
    tokio::task::block_in_place(|| server.start()).unwrap();
    let record = store.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
}
