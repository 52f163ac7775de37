//! The embedded migrations: idempotent, safe when several processes start at once, apart from
//! the application's own sqlx migrations, in a checked schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::PgFactory;
use sentinel_core::{CoordinationStore, Error};
use sentinel_postgres::{MIGRATIONS, PostgresStore, Schema};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A fresh schema (named from `prefix`) migrated up to `version` only, and a pool on its server.
async fn schema_at_version(
    factory: &PgFactory,
    prefix: &str,
    version: usize,
) -> (String, Schema, sqlx::PgPool) {
    let name = common::unique_schema(prefix);
    let schema = Schema::new(name.clone()).unwrap();
    let pool = common::pool(factory.url(), 2).await;
    let mut old = sentinel_postgres::migrator(&schema);
    old.migrations = old.migrations[..version].to_vec().into();
    old.run(&pool).await.unwrap();
    (name, schema, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_migrating_at_once_all_succeed() {
    let factory = factory!();
    let schema = Schema::new(common::unique_schema("sentinel_mig")).unwrap();
    let starts = (0..6).map(|_| {
        let url = factory.url().to_owned();
        let schema = schema.clone();
        tokio::spawn(async move {
            let pool = common::pool(&url, 2).await;
            sentinel_postgres::migrate(&pool, &schema).await
        })
    });
    for start in starts {
        start.await.unwrap().unwrap();
    }
    // And again, later: nothing to do.
    let pool = common::pool(factory.url(), 2).await;
    sentinel_postgres::migrate(&pool, &schema).await.unwrap();
    let (applied,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\"._sentinel_migrations WHERE success"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, MIGRATIONS.len() as i64);
    drop_schema(factory.url(), schema.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_application_migrations_never_meet() {
    let factory = factory!();
    // A database of its own, so the application's `_sqlx_migrations` lands in a clean `public`.
    let database = common::unique_schema("sentinel_app_db");
    let mut admin = sqlx::PgConnection::connect(factory.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{database}", factory.url().rsplit_once('/').unwrap().0);
    {
        let pool = common::pool(&url, 2).await;
        let app = Migrator::with_migrations(vec![Migration::new(
            1,
            "app tables".into(),
            MigrationType::Simple,
            "CREATE TABLE orders (id bigint PRIMARY KEY)".into_sql_str(),
            false,
        )]);
        for _ in 0..2 {
            app.run(&pool).await.unwrap();
            PostgresStore::builder(pool.clone()).build().await.unwrap();
        }
        let (app_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM public._sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        let (ours,): (String,) = sqlx::query_as(
            "SELECT description FROM sentinel._sentinel_migrations WHERE version = 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            app_rows, 1,
            "Sentinel wrote nothing into the application's history"
        );
        assert_eq!(ours, "initial");
        // Users who run migrations themselves get the same migrator.
        sentinel_postgres::migrator(&Schema::new("tenant_b").unwrap())
            .run(&pool)
            .await
            .unwrap();
        let store = PostgresStore::builder(pool.clone())
            .schema("tenant_b")
            .migrate(false)
            .build()
            .await
            .unwrap();
        assert!(store.now().await.unwrap() > sentinel_core::Timestamp::EPOCH);
        pool.close().await;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_are_checked_before_anything_is_sent() {
    let factory = factory!();
    let pool = common::pool(factory.url(), 1).await;
    for bad in [
        "",
        "Robert'); DROP TABLE students;--",
        "with space",
        "pg_catalog",
        "x\"y",
    ] {
        let error = PostgresStore::builder(pool.clone())
            .schema(bad)
            .build()
            .await
            .expect_err("a bad schema name is refused");
        assert!(matches!(error, Error::InvalidInput(_)), "{bad:?}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeps_what_it_was_built_with() {
    let factory = factory!();
    let pool = common::pool(factory.url(), 1).await;
    let clock = sentinel_core::ManualClock::new();
    let name = common::unique_schema("built_with");
    let store = PostgresStore::builder(pool)
        .schema(name.as_str())
        .time(sentinel_core::TimeSource::Manual(clock.clone()))
        .migrate(false)
        .build()
        .await
        .unwrap();
    assert_eq!(store.schema().as_str(), name);
    assert_eq!(store.backend(), "postgres");
    let sentinel_core::TimeSource::Manual(kept) = store.time_source() else {
        panic!("{:?}", store.time_source());
    };
    let later = clock.advance(std::time::Duration::from_secs(5));
    assert_eq!(kept.now(), later, "the same clock");
    let shown = format!("{store:?}");
    assert!(
        shown.starts_with("PostgresStore") && shown.contains(&name) && shown.contains("Manual"),
        "{shown}"
    );
    let plain = PostgresStore::new(common::pool(factory.url(), 1).await);
    assert!(matches!(
        plain.time_source(),
        sentinel_core::TimeSource::Server
    ));
    assert_eq!(plain.schema().as_str(), "sentinel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_an_unmigrated_schema_says_so() {
    let factory = factory!();
    let pool = common::pool(factory.url(), 1).await;
    let store = PostgresStore::builder(pool)
        .schema(common::unique_schema("never_migrated"))
        .migrate(false)
        .build()
        .await
        .unwrap();
    let error = store
        .inspect(&common::id("ns", "k"))
        .await
        .expect_err("no tables");
    assert!(matches!(error, Error::Backend { .. }), "{error}");
    assert!(error.to_string().contains("not migrated"), "{error}");
    assert_eq!(
        server_code(&error).as_deref(),
        Some("42P01"),
        "the server's own error stays reachable as the source: {error:?}"
    );
}

/// The SQLSTATE of the server error in `error`'s chain of sources, if there is one.
fn server_code(error: &Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return db.code().map(|c| c.into_owned());
        }
        next = e.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_server_errors_do_not_blame_the_schema() {
    let factory = factory!();
    let store = factory.store(sentinel_core::TimeSource::Server).await;
    let id = common::id("ns", "k");
    let token = common::granted(
        store
            .claim(&id, &common::claim("w1", 60_000, true))
            .await
            .unwrap(),
    );
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 / 0")
        .execute(&mut *tx)
        .await
        .expect_err("division by zero");
    // The transaction is aborted: the fence's statement gets "current transaction is aborted".
    let error = store
        .fence(&mut tx, &id, token)
        .await
        .expect_err("an aborted transaction runs nothing");
    assert!(matches!(error, Error::Backend { .. }), "{error}");
    assert!(!error.to_string().contains("not migrated"), "{error}");
    assert_eq!(server_code(&error).as_deref(), Some("25P02"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_an_older_schema_carry_on_after_an_upgrade() {
    let factory = factory!();
    // The schema as version 3 left it, with records mid-flight written by its claim function.
    let (name, _, pool) = schema_at_version(&factory, "sentinel_upgrade", 3).await;
    let store = PostgresStore::builder(pool.clone())
        .schema(name.as_str())
        .migrate(false)
        .build()
        .await
        .unwrap();
    let (running, done) = (common::id("ns", "running"), common::id("ns", "done"));
    let running_token = common::granted(
        store
            .claim(&running, &common::claim("w1", 60_000, true))
            .await
            .unwrap(),
    );
    let done_token = common::granted(
        store
            .claim(&done, &common::claim("w1", 60_000, true))
            .await
            .unwrap(),
    );
    // Completed as the statement of that version did (this version's complete calls the
    // function of migration 5, which a version-3 schema lacks: a store must migrate first).
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{name}\".executions SET state = 'completed', result = $2::json, \
         updated_at = clock_timestamp(), version = version + 1 WHERE key = $1 AND token = $3"
    )))
    .bind(done.key.as_str())
    .bind(r#"{"paid":1}"#)
    .bind(done_token.get())
    .execute(&pool)
    .await
    .unwrap();
    let before = store
        .complete(&done, done_token, &serde_json::json!({"paid": 1}))
        .await
        .expect_err("not migrated yet");
    assert!(before.to_string().contains("not migrated"), "{before}");

    store.migrate().await.unwrap();
    let (version,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT max(version) FROM \"{name}\"._sentinel_migrations"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    // Version 4 dropped every CHECK constraint of version 1 (by name: none is left behind).
    let (checks,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND connamespace = $1::regnamespace",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(checks, 0);

    // The execution started before the upgrade completes with its token; the completed one is
    // still cached; a new key is claimed by the new function; histories run on.
    store
        .complete(&running, running_token, &serde_json::json!({"paid": 2}))
        .await
        .unwrap();
    match store
        .claim(&done, &common::claim("w2", 60_000, true))
        .await
        .unwrap()
    {
        sentinel_core::ClaimOutcome::Completed { result, token, .. } => {
            assert_eq!(result, serde_json::json!({"paid": 1}));
            assert_eq!(token, done_token);
        }
        other => panic!("expected the cached result, got {other:?}"),
    }
    let fresh = common::id("ns", "fresh");
    let fresh_token = common::granted(
        store
            .claim(&fresh, &common::claim("w2", 60_000, true))
            .await
            .unwrap(),
    );
    assert!(fresh_token > running_token);
    let kinds: Vec<String> = store
        .history(
            sentinel_core::Keyspace::Execution,
            &running,
            &sentinel_core::HistoryQuery::default(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(kinds, ["claimed", "completed"]);
    drop(store);
    pool.close().await;
    drop_schema(factory.url(), &name).await;
}

/// A store of an earlier version keeps a connection with the claim statement prepared while the
/// schema is migrated under it (a rolling upgrade): version 5 drops and recreates the claim
/// function with a new result type, and the prepared statement, past PostgreSQL's switch to a
/// generic plan, must go on working with the same columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_prepared_before_version_5_keeps_working_after_it() {
    let factory = factory!();
    let (name, schema, pool) = schema_at_version(&factory, "sentinel_rolling", 4).await;

    // The claim statement as version 4 stores sent it (sql/claim.sql has not changed since).
    let sql = format!(
        "SELECT c.outcome, c.state, c.owner, c.token, c.lease_expires_us, c.hard_expires_us, \
                c.result, c.fingerprint, c.version, c.watched \
         FROM \"{name}\".claim($1, $2, NULL::bigint, 'w', 30000000, 60000000, true, $3, \
                               NULL::text, 'sentinel_rolling') AS c"
    );
    let mut conn = sqlx::PgConnection::connect(factory.url()).await.unwrap();
    let claim = async |conn: &mut sqlx::PgConnection, key: &str, request: u8| {
        let row = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind("ns")
            .bind(key)
            .bind(&[request; 16][..])
            .fetch_one(conn)
            .await
            .unwrap();
        (
            row.get::<String, _>("outcome"),
            row.get::<Option<i64>, _>("token"),
        )
    };
    let mut first = (String::new(), None);
    for n in 0..8 {
        let outcome = claim(&mut conn, &format!("before-{n}"), n).await;
        assert_eq!(outcome.0, "acquired");
        if n == 0 {
            first = outcome;
        }
    }

    sentinel_postgres::migrator(&schema)
        .run(&pool)
        .await
        .unwrap();
    assert_eq!(claim(&mut conn, "after", 9).await.0, "acquired");
    assert_eq!(
        claim(&mut conn, "before-0", 0).await,
        first,
        "a retried request gets its own live claim back"
    );
    let (outcome, _) = claim(&mut conn, "before-1", 9).await;
    assert_eq!(outcome, "busy", "another request sees the live claim");
    conn.close().await.unwrap();
    pool.close().await;
    drop_schema(factory.url(), &name).await;
}
