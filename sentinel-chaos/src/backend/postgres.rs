//! The PostgreSQL queue (`FOR UPDATE SKIP LOCKED`) and ledger (a table written in a transaction
//! fenced by [`PostgresStore::fence`], optionally completing with [`PostgresStore::complete_in`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};

use sentinel_core::{Error, FencingToken, RecordId};
use sentinel_postgres::PostgresStore;

use super::{Backend, Delivery, Ledger, LedgerKey, Queue, WriteOutcome, chain};
use crate::Result;
use crate::config::StoreAccess;

/// How the harness talks to PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgBackend {
    store: PostgresStore,
    pool: PgPool,
    app: String,
    exactly_once: bool,
    skip_fence: bool,
}

/// Connect options for `access`: its URL, the proxy's port if any, and the connection name.
pub fn connect_options(
    access: &StoreAccess,
    name: &str,
    via_proxy: bool,
) -> Result<PgConnectOptions> {
    let url = access.url.as_deref().ok_or("postgres: no URL")?;
    let mut options = PgConnectOptions::from_str(url)?.application_name(name);
    if let (true, Some(port)) = (via_proxy, access.proxy_port) {
        options = options.host("127.0.0.1").port(port);
    }
    Ok(options)
}

impl PgBackend {
    /// Connects with a pool of at most `pool_size` connections named `name`; migrates Sentinel's
    /// schema when `migrate` (the coordinator), and creates the harness's tables when `setup`.
    pub async fn connect(
        access: &StoreAccess,
        name: &str,
        via_proxy: bool,
        pool_size: u32,
        migrate: bool,
        exactly_once: bool,
        skip_fence: bool,
    ) -> Result<Self> {
        let options = connect_options(access, name, via_proxy)?;
        let pool = PostgresStore::pool_options()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = PostgresStore::builder(pool.clone())
            .schema(access.sentinel_schema.clone())
            .migrate(migrate)
            .build()
            .await?;
        let backend = PgBackend {
            store,
            pool,
            app: access.app_schema.clone(),
            exactly_once,
            skip_fence,
        };
        if migrate {
            backend.setup().await?;
        }
        Ok(backend)
    }

    /// The store, queue and ledger over this connection pool.
    pub fn backend(self) -> Backend {
        let this = Arc::new(self);
        Backend {
            store: Arc::new(this.store.clone()),
            queue: this.clone(),
            ledger: this,
        }
    }

    async fn setup(&self) -> Result<()> {
        let s = &self.app;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.deliveries (id bigserial PRIMARY KEY, key text NOT NULL, taken_by text)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS deliveries_ready ON {s}.deliveries (id) WHERE taken_by IS NULL"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.ledger (key text NOT NULL, token bigint NOT NULL, worker text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (key, token))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.attempts (id bigserial PRIMARY KEY, key text NOT NULL, token bigint NOT NULL, \
                 worker text NOT NULL, verdict text NOT NULL DEFAULT 'pending', at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ),
        ];
        for sql in statements {
            sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn set_verdict(&self, attempt: i64, verdict: &str) {
        let sql = format!(
            "UPDATE {}.attempts SET verdict = $2 WHERE id = $1",
            self.app
        );
        // Best effort: an attempt left `pending` is resolved from the ledger by the audit.
        let _ = sqlx::query(AssertSqlSafe(sql))
            .bind(attempt)
            .bind(verdict)
            .execute(&self.pool)
            .await;
    }
}

#[async_trait]
impl Queue for PgBackend {
    async fn push(&self, keys: &[String]) -> Result<()> {
        let sql = format!(
            "INSERT INTO {}.deliveries (key) SELECT unnest($1::text[])",
            self.app
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(keys)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take(&self, taker: &str) -> Result<Option<Delivery>> {
        let s = &self.app;
        let sql = format!(
            "UPDATE {s}.deliveries SET taken_by = $1 WHERE id = (SELECT id FROM {s}.deliveries \
             WHERE taken_by IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, key"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(taker)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(Delivery {
                id: row.try_get::<i64, _>("id")?.to_string(),
                key: row.try_get("key")?,
            }),
            None => None,
        })
    }

    async fn ack(&self, _taker: &str, delivery: &Delivery) -> Result<()> {
        let sql = format!("DELETE FROM {}.deliveries WHERE id = $1", self.app);
        sqlx::query(AssertSqlSafe(sql))
            .bind(delivery.id.parse::<i64>()?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn nack(&self, _taker: &str, delivery: &Delivery) -> Result<()> {
        let s = &self.app;
        let sql = format!(
            "WITH gone AS (DELETE FROM {s}.deliveries WHERE id = $1 RETURNING key) \
             INSERT INTO {s}.deliveries (key) SELECT key FROM gone"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(delivery.id.parse::<i64>()?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn recover(&self, takers: &[String]) -> Result<u64> {
        let sql = format!(
            "UPDATE {}.deliveries SET taken_by = NULL WHERE taken_by = ANY($1)",
            self.app
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(takers)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn pending(&self, _takers: &[String]) -> Result<u64> {
        let sql = format!("SELECT count(*) AS n FROM {}.deliveries", self.app);
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?)?)
    }
}

#[async_trait]
impl Ledger for PgBackend {
    async fn write(
        &self,
        id: &RecordId,
        token: FencingToken,
        worker: &str,
        result: &Value,
    ) -> WriteOutcome {
        let s = &self.app;
        let key = id.key.as_str();
        let sql = format!(
            "INSERT INTO {s}.attempts (key, token, worker) VALUES ($1, $2, $3) RETURNING id"
        );
        let attempt: i64 = match sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key)
            .bind(token.get())
            .bind(worker)
            .fetch_one(&self.pool)
            .await
        {
            Ok(id) => id,
            Err(e) => return WriteOutcome::NotApplied(format!("recording the attempt: {e}")),
        };
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return WriteOutcome::NotApplied(format!("begin: {e}")),
        };
        if !self.skip_fence {
            match self.store.fence(&mut tx, id, token).await {
                Ok(()) => {}
                Err(Error::Rejected(rejection)) => {
                    drop(tx);
                    let verdict = format!("rejected: {}", rejection.reason.as_str());
                    self.set_verdict(attempt, &verdict).await;
                    return WriteOutcome::Rejected(rejection.to_string());
                }
                Err(e) => return WriteOutcome::NotApplied(format!("fence: {}", chain(&e))),
            }
        }
        let sql = format!(
            "INSERT INTO {s}.ledger (key, token, worker) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        );
        if let Err(e) = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .bind(token.get())
            .bind(worker)
            .execute(&mut *tx)
            .await
        {
            return WriteOutcome::NotApplied(format!("insert: {e}"));
        }
        if self.exactly_once {
            match self.store.complete_in(&mut tx, id, token, result).await {
                Ok(()) => {}
                Err(Error::Rejected(rejection)) => {
                    drop(tx);
                    let verdict = format!("rejected: {}", rejection.reason.as_str());
                    self.set_verdict(attempt, &verdict).await;
                    return WriteOutcome::Rejected(rejection.to_string());
                }
                Err(e) => return WriteOutcome::NotApplied(format!("complete_in: {}", chain(&e))),
            }
        }
        if let Err(e) = tx.commit().await {
            return WriteOutcome::Unknown(format!("commit: {e}"));
        }
        self.set_verdict(attempt, "accepted").await;
        WriteOutcome::Accepted
    }

    async fn write_unfenced(&self, key: &str, token: i64, worker: &str) -> Result<()> {
        let s = &self.app;
        let sql = format!(
            "WITH a AS (INSERT INTO {s}.attempts (key, token, worker, verdict) VALUES ($1, $2, $3, 'unfenced')) \
             INSERT INTO {s}.ledger (key, token, worker) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .bind(token)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn fence_and_read(&self, key: &str, _token: FencingToken) -> Result<Vec<i64>> {
        // The reconciliation's new token already fences: `fence` checks Sentinel's record, and
        // `reconcile` waited for every fenced transaction in flight.
        let sql = format!(
            "SELECT token FROM {}.ledger WHERE key = $1 ORDER BY token",
            self.app
        );
        let tokens: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        Ok(tokens)
    }

    async fn audit(&self, keys: &[String]) -> Result<BTreeMap<String, LedgerKey>> {
        let s = &self.app;
        let mut out: BTreeMap<String, LedgerKey> = BTreeMap::new();
        let sql = format!("SELECT key, token, worker FROM {s}.ledger WHERE key = ANY($1)");
        for row in sqlx::query(AssertSqlSafe(sql))
            .bind(keys)
            .fetch_all(&self.pool)
            .await?
        {
            let key: String = row.try_get("key")?;
            out.entry(key)
                .or_default()
                .accepted
                .insert(row.try_get("token")?, row.try_get("worker")?);
        }
        let sql = format!(
            "SELECT a.key, count(*) AS attempts, \
               count(*) FILTER (WHERE a.verdict LIKE 'rejected%') AS rejected, \
               count(*) FILTER (WHERE a.verdict IN ('accepted', 'unfenced') \
                                   OR (a.verdict = 'pending' AND l.token IS NOT NULL)) AS applied \
             FROM {s}.attempts a LEFT JOIN {s}.ledger l ON l.key = a.key AND l.token = a.token \
             WHERE a.key = ANY($1) GROUP BY a.key"
        );
        for row in sqlx::query(AssertSqlSafe(sql))
            .bind(keys)
            .fetch_all(&self.pool)
            .await?
        {
            let key: String = row.try_get("key")?;
            let entry = out.entry(key).or_default();
            entry.attempts = u64::try_from(row.try_get::<i64, _>("attempts")?)?;
            entry.rejected = u64::try_from(row.try_get::<i64, _>("rejected")?)?;
            entry.applied = u64::try_from(row.try_get::<i64, _>("applied")?)?;
        }
        Ok(out)
    }
}

/// Kills the server-side sessions named `name` (`pg_terminate_backend`); returns how many.
pub async fn kill_connections(admin: &PgPool, name: &str) -> Result<u64> {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()) AS t",
    )
    .bind(name)
    .fetch_one(admin)
    .await?;
    Ok(u64::try_from(killed)?)
}
