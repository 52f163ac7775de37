//! The embedded, versioned schema migrations.
//!
//! The migrations live in `migrations/` and are compiled into the crate. They run through sqlx's
//! [`Migrator`], adapted in three ways:
//!
//! - every object, and the migration history itself, lives in the configured [`Schema`]: the
//!   history table is `"<schema>"._sentinel_migrations`, never the application's own
//!   `_sqlx_migrations`, so an application using sqlx migrations in the same database is never
//!   confused by Sentinel's (nor Sentinel by its);
//! - each migration runs in a transaction that starts with `SET LOCAL search_path TO
//!   "<schema>"`, so the files themselves name no schema;
//! - several processes starting at once are safe: sqlx takes a PostgreSQL advisory lock for the
//!   whole run, the schema is created under that lock, applied versions are skipped, and the
//!   connection that held the lock is closed afterwards, so a run interrupted half-way never
//!   leaves the lock held on a pooled connection.

use std::borrow::Cow;

use sentinel_core::Result;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr};

use crate::error;
use crate::schema::Schema;

/// The name of the table, inside the Sentinel schema, that records which migrations ran.
pub const HISTORY_TABLE: &str = "_sentinel_migrations";

/// One embedded migration, as written in `migrations/`: its SQL names no schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedMigration {
    /// The version, increasing from 1.
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// The SQL, to run with `search_path` set to the Sentinel schema.
    pub sql: &'static str,
}

/// Every migration of this version of the crate, oldest first.
pub const MIGRATIONS: &[EmbeddedMigration] = &[
    EmbeddedMigration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    EmbeddedMigration {
        version: 2,
        description: "notifications",
        sql: include_str!("../migrations/0002_notifications.sql"),
    },
    EmbeddedMigration {
        version: 3,
        description: "claim function",
        sql: include_str!("../migrations/0003_claim_function.sql"),
    },
    EmbeddedMigration {
        version: 4,
        description: "lean writes",
        sql: include_str!("../migrations/0004_lean_writes.sql"),
    },
    EmbeddedMigration {
        version: 5,
        description: "lean functions",
        sql: include_str!("../migrations/0005_lean_functions.sql"),
    },
    EmbeddedMigration {
        version: 6,
        description: "claim reads the clock first",
        sql: include_str!("../migrations/0006_claim_reads_the_clock_first.sql"),
    },
];

/// A sqlx [`Migrator`] that creates or upgrades Sentinel's tables in `schema`, for applications
/// that run their migrations themselves (a deploy step, a CLI).
///
/// Its history table is `"<schema>"._sentinel_migrations` and it creates the schema if needed.
/// Run it on a pool or a connection; [`migrate`] does the same and also guarantees that the
/// advisory lock is released if the run is interrupted.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let schema = sentinel_postgres::Schema::new("sentinel")?;
/// sentinel_postgres::migrator(&schema).run(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub fn migrator(schema: &Schema) -> Migrator {
    let quoted = schema.quoted();
    let migrations = MIGRATIONS
        .iter()
        .map(|m| {
            let sql = format!("SET LOCAL search_path TO {quoted};\n{}", m.sql);
            Migration::new(
                m.version,
                Cow::Borrowed(m.description),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(format!("{quoted}.{HISTORY_TABLE}"));
    migrator.create_schema(quoted);
    migrator
}

/// Creates or upgrades Sentinel's tables in `schema`: idempotent, and safe when several
/// processes run it at once.
///
/// [`crate::PostgresStoreBuilder::build`] calls it unless told not to.
///
/// ```no_run
/// # async fn example() -> sentinel_core::Result<()> {
/// let pool = sqlx::PgPool::connect_lazy("postgres://localhost/app").expect("valid url");
/// sentinel_postgres::migrate(&pool, &sentinel_postgres::Schema::default()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn migrate(pool: &PgPool, schema: &Schema) -> Result<()> {
    let acquire_timeout = pool.options().get_acquire_timeout();
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| error::from_sqlx(e, "migrate", acquire_timeout))?;
    // The migrator holds a session-level advisory lock on this connection while it runs. Close
    // the connection afterwards, whatever happens (an error, a dropped future), so the lock can
    // never stay held on a connection that goes back to the pool.
    conn.close_on_drop();
    // `run_direct` on the connection itself: `Migrator::run` over `&mut PgConnection` trips the
    // compiler's "implementation of `Acquire` is not general enough" inside `Send` futures
    // (sqlx's own comment on `run_direct` says so).
    let outcome = migrator(schema).run_direct(None, &mut *conn, false).await;
    outcome.map_err(|e| error::from_migrate(e, acquire_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_name_no_schema() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        for m in MIGRATIONS {
            assert!(!m.sql.contains("{schema}"));
            assert!(
                !m.sql.contains("sentinel."),
                "migration {} names a schema",
                m.version
            );
        }
        // Each function that logs an execution event notifies like the statements, in each
        // version that defines it.
        let functions: Vec<(i64, &str)> = MIGRATIONS
            .iter()
            .flat_map(|m| {
                m.sql
                    .split("FUNCTION %1$I.")
                    .skip(1)
                    .map(move |f| (m.version, f))
            })
            .filter(|(_, f)| f.contains("INSERT INTO %1$I.events"))
            .collect();
        let names: Vec<(i64, &str)> = functions
            .iter()
            .map(|(v, f)| (*v, &f[..f.find('(').unwrap_or(0)]))
            .collect();
        assert_eq!(
            names,
            [
                (3, "claim"),
                (4, "claim"),
                (5, "claim"),
                (5, "complete"),
                (6, "claim")
            ],
            "the functions that log events"
        );
        // The claim in force (the last version's) reads the clock before the record, so an
        // answer of its plain read is never judged at a time later than the read
        // (migrations/0006_claim_reads_the_clock_first.sql).
        let claim = functions
            .iter()
            .rev()
            .find(|(_, f)| f.starts_with("claim("))
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let clock = claim.find("now_us := coalesce(p_now,");
        let read = claim.find("FROM %1$I.executions AS e\n     WHERE");
        assert!(
            matches!((clock, read), (Some(c), Some(r)) if c < r),
            "the claim in force reads the record before the clock"
        );
        for (version, function) in functions {
            assert!(
                function.contains("IF watched THEN")
                    && (function.contains("PERFORM pg_notify(p_channel")
                        || function.contains("PERFORM %1$I.wake(p_channel")),
                "a function of migration {version} logs events without notifying"
            );
        }
        let migrator = migrator(&Schema::default());
        assert_eq!(migrator.table_name, "\"sentinel\"._sentinel_migrations");
        assert!(migrator.iter().all(|m| {
            m.sql
                .as_str()
                .starts_with("SET LOCAL search_path TO \"sentinel\";")
        }));
    }
}
