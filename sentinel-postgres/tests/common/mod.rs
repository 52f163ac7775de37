//! What the PostgreSQL test suites share: the server, fresh isolated schemas, and a factory for
//! the conformance kit.
//!
//! The server comes from `sentinel_testkit::servers::postgres()`: `SENTINEL_TEST_POSTGRES_URL`
//! when set, else a private server started from the local binaries. When there is none, a suite
//! prints `SKIPPED` loudly, or fails when `SENTINEL_REQUIRE_BACKENDS=1` (CI).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sentinel_core::{RequestId, Result, TimeSource};
use sentinel_postgres::PostgresStore;
use sentinel_testkit::{StoreFactory, servers};
use sqlx::Connection;

/// The admin URL of the test server, or `None` (after a loud `SKIPPED`) when there is none and
/// backends are not required.
pub fn server_url() -> Option<String> {
    servers::require("postgres", servers::postgres()).map(|s| s.url().to_owned())
}

/// A schema name no other test, run or process uses.
pub fn unique_schema(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run = RequestId::random().as_u128() as u32;
    format!("{prefix}_{}_{run:08x}_{n}", std::process::id())
}

/// A small pool on `url`: suites share the server, so they stay lean on connections.
pub async fn pool(url: &str, max: u32) -> sqlx::PgPool {
    PostgresStore::pool_options()
        .max_connections(max)
        .connect(url)
        .await
        .expect("the test server accepts connections")
}

/// Creates stores in fresh schemas of the test server and drops those schemas when dropped.
pub struct PgFactory {
    url: String,
    schemas: Mutex<Vec<String>>,
    /// The stores' `in_flight` (see `PostgresStoreBuilder::in_flight`).
    in_flight: usize,
}

impl PgFactory {
    /// A factory on the test server, or `None` when there is none (see [`server_url`]).
    pub fn new() -> Option<Self> {
        server_url().map(|url| PgFactory {
            url,
            schemas: Mutex::new(Vec::new()),
            in_flight: sentinel_postgres::DEFAULT_IN_FLIGHT,
        })
    }

    /// Registers `schema`, made by the test itself, to be dropped with the factory's.
    pub fn adopt(&self, schema: String) -> String {
        self.schemas.lock().unwrap().push(schema.clone());
        schema
    }

    /// The same factory, its stores sending `statements` claims (and completions) at once.
    pub fn in_flight(mut self, statements: usize) -> Self {
        self.in_flight = statements;
        self
    }

    /// The server's admin URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A fresh store in a new schema, migrated, on `time`.
    pub async fn store(&self, time: TimeSource) -> PostgresStore {
        self.create(time).await.expect("a fresh store")
    }
}

#[async_trait]
impl StoreFactory for PgFactory {
    type Store = PostgresStore;

    async fn create(&self, time: TimeSource) -> Result<PostgresStore> {
        let schema = unique_schema("sentinel_test");
        self.schemas.lock().unwrap().push(schema.clone());
        PostgresStore::builder(pool(&self.url, 8).await)
            .schema(schema)
            .time(time)
            .in_flight(self.in_flight)
            .build()
            .await
    }

    async fn reopen(&self, store: &PostgresStore, time: TimeSource) -> Result<PostgresStore> {
        // A new process: new connections, the same schema (migrating again changes nothing).
        PostgresStore::builder(pool(&self.url, 8).await)
            .schema(store.schema().as_str())
            .time(time)
            .in_flight(self.in_flight)
            .build()
            .await
    }
}

impl Drop for PgFactory {
    fn drop(&mut self) {
        let schemas = std::mem::take(&mut *self.schemas.lock().unwrap());
        if schemas.is_empty() {
            return;
        }
        let url = self.url.clone();
        clean_up(async move {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                for schema in schemas {
                    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
                let _ = conn.close().await;
            }
        });
    }
}

/// Runs `cleanup` to its end from a `Drop`, which may run inside a test's runtime (where
/// blocking on it would panic): on a thread and a runtime of its own, joined before returning.
pub fn clean_up(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cleanup);
    });
    let _ = thread.join();
}

/// A store in a fresh schema on a manual clock, with its factory (which drops the schema when
/// dropped) and the clock.
pub async fn manual_store(factory: &PgFactory) -> (PostgresStore, sentinel_core::ManualClock) {
    let clock = sentinel_core::ManualClock::new();
    let store = factory.store(TimeSource::Manual(clock.clone())).await;
    (store, clock)
}

/// A pool whose connections carry `application_name`, so a test can find and kill them.
pub async fn named_pool(url: &str, application_name: &str, max: u32) -> sqlx::PgPool {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a valid url");
    PostgresStore::pool_options()
        .max_connections(max)
        .connect_with(options.application_name(application_name))
        .await
        .expect("the test server accepts connections")
}

/// Terminates every server backend of `application_name`; returns how many.
pub async fn kill_backends(url: &str, application_name: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .expect("admin connection");
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name)
    .fetch_one(&mut admin)
    .await
    .expect("terminate backends");
    let _ = admin.close().await;
    killed
}

/// A record id in namespace `ns`.
pub fn id(ns: &str, key: &str) -> sentinel_core::RecordId {
    sentinel_core::RecordId::parse(ns, key).expect("a valid record id")
}

/// A claim request for `owner` with a ttl of `ttl_ms` (hard: 10x).
pub fn claim(owner: &str, ttl_ms: u64, start: bool) -> sentinel_core::ClaimRequest {
    let ttl = std::time::Duration::from_millis(ttl_ms);
    sentinel_core::ClaimRequest {
        owner: sentinel_core::OwnerId::new(owner).unwrap(),
        ttl: sentinel_core::Ttl::with_hard(ttl, ttl * 10).unwrap(),
        start,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

/// A lease request for `owner` with a ttl of `ttl_ms` (hard: 10x).
pub fn lease(owner: &str, ttl_ms: u64) -> sentinel_core::LeaseRequest {
    let ttl = std::time::Duration::from_millis(ttl_ms);
    sentinel_core::LeaseRequest {
        owner: sentinel_core::OwnerId::new(owner).unwrap(),
        ttl: sentinel_core::Ttl::with_hard(ttl, ttl * 10).unwrap(),
        request_id: RequestId::random(),
    }
}

/// The token of a granted claim, or a panic naming what came instead.
pub fn granted(outcome: sentinel_core::ClaimOutcome) -> sentinel_core::FencingToken {
    match outcome {
        sentinel_core::ClaimOutcome::Acquired(grant) => grant.token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Terminates the server backend `pid`.
pub async fn kill_pid(url: &str, pid: i32) {
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .expect("admin connection");
    let (done,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("terminate backend");
    assert!(done, "backend {pid} was not terminated");
    let _ = admin.close().await;
}

/// Writes `set` (the SQL of an assignment) to the row of `id` in `table` of the store's schema,
/// behind the store's back, through `executor` (the pool, or an open transaction).
pub async fn set_row<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    store: &PostgresStore,
    table: &str,
    id: &sentinel_core::RecordId,
    set: &str,
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".{table} SET {set} WHERE namespace = $1 AND key = $2",
        store.schema()
    )))
    .bind(id.namespace.as_str())
    .bind(id.key.as_str())
    .execute(executor)
    .await
    .unwrap();
}
