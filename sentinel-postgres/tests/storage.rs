//! What the tables hold and how they are read: reads take no lock and write nothing, results
//! come back exactly as given, the reconciliation queue is served by an index.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PgFactory, claim, granted, id, manual_store};
use sentinel_core::store::HistoryQuery;
use sentinel_core::{
    ClaimOutcome, CoordinationStore, EventKind, Keyspace, ListFilter, ListQuery, Namespace,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection};

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

async fn row_version(store: &PostgresStore, key: &str) -> (String, String, String) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT xmin::text, xmax::text, ctid::text FROM \"{}\".executions WHERE key = $1",
        store.schema()
    )))
    .bind(key)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_that_change_nothing_neither_lock_nor_write() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let done = id("reads", "done");
    let busy = id("reads", "busy");
    let lost = id("reads", "lost");
    let t = granted(store.claim(&done, &claim("a", 1_000, true)).await.unwrap());
    store.complete(&done, t, &json!("r")).await.unwrap();
    granted(store.claim(&busy, &claim("a", 60_000, true)).await.unwrap());
    granted(store.claim(&lost, &claim("a", 1_000, true)).await.unwrap());
    clock.advance(Duration::from_secs(2));

    let before = [
        row_version(&store, "done").await,
        row_version(&store, "busy").await,
        row_version(&store, "lost").await,
    ];
    for _ in 0..10 {
        assert!(matches!(
            store.claim(&done, &claim("b", 1_000, true)).await.unwrap(),
            ClaimOutcome::Completed { .. }
        ));
        assert!(matches!(
            store.claim(&busy, &claim("b", 1_000, true)).await.unwrap(),
            ClaimOutcome::Busy { .. }
        ));
        assert!(matches!(
            store.claim(&lost, &claim("b", 1_000, true)).await.unwrap(),
            ClaimOutcome::Uncertain { .. }
        ));
    }
    let after = [
        row_version(&store, "done").await,
        row_version(&store, "busy").await,
        row_version(&store, "lost").await,
    ];
    // Same tuple version (ctid, xmin), and no new locker in xmax: a lock would have set it to
    // the reading transaction's id.
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_back_exactly_as_given() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let results = [
        json!(null),
        json!(1.0),
        json!(1),
        json!(-0.5e-7),
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!("nul \u{0} inside, quotes \" ' and emoji 🦀"),
        json!({"b": [1, {"c": null}], "a": "x", "": {}}),
        json!([[], {}, "", 0]),
    ];
    for (n, result) in results.iter().enumerate() {
        let key = id("json", &format!("k{n}"));
        let token = granted(store.claim(&key, &claim("a", 60_000, true)).await.unwrap());
        store.complete(&key, token, result).await.unwrap();
        // The same completion again is accepted (the same text).
        store.complete(&key, token, result).await.unwrap();
        let record = store.inspect(&key).await.unwrap().unwrap();
        assert_eq!(record.result.as_ref(), Some(result), "{result}");
        match store.claim(&key, &claim("b", 60_000, true)).await.unwrap() {
            ClaimOutcome::Completed { result: cached, .. } => assert_eq!(&cached, result),
            other => panic!("{other:?}"),
        }
    }
    // 1 and 1.0 are different values for the core, so they are different results here too.
    let key = id("json", "k1");
    let record = store.inspect(&key).await.unwrap().unwrap();
    let error = store
        .complete(&key, record.token, &json!(1))
        .await
        .expect_err("a different result is a refused completion");
    assert!(error.rejection().is_some(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_queue_and_purge_are_served_by_indexes() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    let schema = store.schema().as_str().to_owned();
    // Many completed records, a few uncertain ones.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".executions (namespace, key, token, state, owner, request_id,
             lease_expires_at, hard_expires_at, ttl_us, hard_ttl_us, result, created_at, updated_at)
         SELECT 'q', 'done-' || i, i, 'completed', 'w', NULL, now(), now(), 1000, 1000, '1', now(), now()
         FROM generate_series(1, 20000) AS i;
         ANALYZE \"{schema}\".executions;"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    for n in 0..5 {
        granted(
            store
                .claim(&id("q", &format!("lost-{n}")), &claim("a", 1_000, true))
                .await
                .unwrap(),
        );
    }
    clock.advance(Duration::from_secs(2));
    let page = store
        .list(&ListQuery {
            filter: ListFilter::uncertain(),
            limit: 2,
            ..ListQuery::new(Namespace::new("q").unwrap())
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.next.as_ref().map(|k| k.as_str()), Some("lost-1"));

    // The statements' generic plans (what a prepared statement runs) use the partial indexes:
    // the queue's, and purge's for the oldest completed records.
    let plan = generic_plan(
        &factory,
        &schema,
        include_str!("../sql/list_executing.sql"),
        "text, text, bigint, bool, bigint, bigint",
        "'q', '', NULL, true, NULL, 101",
    )
    .await;
    assert!(plan.contains("executions_executing"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let plan = generic_plan(
        &factory,
        &schema,
        include_str!("../sql/purge.sql"),
        "text, bigint, bigint, bigint",
        "'q', NULL, 0, 100",
    )
    .await;
    // (Only the choice of records: the generic plan guesses how many a purge takes.)
    assert!(
        plan.contains("Index Scan using executions_completed"),
        "{plan}"
    );
}

/// A history of 20,000 events read from either end: the newest event, a page before it, the
/// oldest page, each straight from the primary key, reading only the rows it returns (the
/// branch of the other direction is never run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_read_from_either_end_by_the_primary_key() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let schema = store.schema().as_str().to_owned();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".events (keyspace, namespace, key, kind, token, at)
         SELECT 'lease', 'h', 'nightly', CASE WHEN i % 2 = 1 THEN 'lease_acquired'
                                             ELSE 'lease_released' END, (i + 1) / 2, now()
         FROM generate_series(1, 20000) AS i;
         ANALYZE \"{schema}\".events;"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let read = async |query: HistoryQuery| {
        store
            .history(Keyspace::Lease, &id("h", "nightly"), &query)
            .await
            .unwrap()
    };
    let newest = read(HistoryQuery {
        limit: 1,
        newest_first: true,
        ..HistoryQuery::default()
    })
    .await;
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].kind, EventKind::LeaseReleased);
    assert_eq!(newest[0].token.get(), 10_000);
    let before = read(HistoryQuery {
        before: Some(newest[0].id),
        limit: 3,
        newest_first: true,
        ..HistoryQuery::default()
    })
    .await;
    let ids: Vec<i64> = before.iter().map(|e| e.id).collect();
    let top = newest[0].id;
    assert_eq!(ids, [top - 1, top - 2, top - 3]);
    let oldest = read(HistoryQuery {
        limit: 2,
        ..HistoryQuery::default()
    })
    .await;
    assert_eq!(oldest[0].token.get(), 1);
    assert_eq!(oldest[1].id, oldest[0].id + 1);

    // Each direction runs its own scan of the primary key, for the rows it returns; the other
    // direction's is never run.
    let (forwards, backwards) = (
        "Index Scan using events_pkey on events",
        "Index Scan Backward using events_pkey on events",
    );
    for (newest_first, limit, used, unused) in [
        (true, 1, backwards, forwards),
        (false, 1000, forwards, backwards),
    ] {
        let plan = explained(
            &factory,
            &schema,
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)",
            include_str!("../sql/history.sql"),
            "text, text, text, bigint, bigint, bigint, boolean",
            &format!(
                "'lease', 'h', 'nightly', {}, {}, {limit}, {newest_first}",
                i64::MIN,
                i64::MAX
            ),
        )
        .await;
        let line = |scan: &str| plan.lines().find(|l| l.contains(scan)).unwrap_or("");
        // `rows=1000` up to PostgreSQL 17, `rows=1000.00` from 18.
        let rows = line(used)
            .split_once("actual rows=")
            .and_then(|(_, rest)| rest.split([' ', ')']).next())
            .and_then(|rows| rows.parse::<f64>().ok());
        assert_eq!(rows, Some(f64::from(limit)), "{plan}");
        assert!(line(unused).contains("(never executed)"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}

/// The generic plan of `template` (a statement of `sql/`) in `schema`, prepared with parameters
/// of `types` and explained for `arguments`. Its notification expression (which only runs in a
/// RETURNING list, for rows already chosen) is left out.
async fn generic_plan(
    factory: &PgFactory,
    schema: &str,
    template: &str,
    types: &str,
    arguments: &str,
) -> String {
    explained(factory, schema, "EXPLAIN", template, types, arguments).await
}

/// [`generic_plan`], explained by `explain` (`EXPLAIN`, or `EXPLAIN (ANALYZE, …)` to run it).
async fn explained(
    factory: &PgFactory,
    schema: &str,
    explain: &str,
    template: &str,
    types: &str,
    arguments: &str,
) -> String {
    let sql = template
        .replace("{schema}", &format!("\"{schema}\""))
        .replace("{notify}", "NULL");
    let mut conn = sqlx::PgConnection::connect(factory.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE statement ({types}) AS {sql};"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let plan: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
        "{explain} EXECUTE statement ({arguments})"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    plan.into_iter()
        .map(|(l,)| l)
        .collect::<Vec<_>>()
        .join("\n")
}
