//! [`PostgresStore`]: the [`CoordinationStore`] port over PostgreSQL.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, Error, Event,
    EventKind, ExecutionRecord, ExecutionState, FencingToken, Grant, Key, Keyspace, LeaseRecord,
    LeaseRequest, Namespace, OwnerId, RecordId, RejectReason, Rejection, Result, TimeSource,
    Timestamp,
};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnection, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres};
use tracing::Instrument;

use crate::batch::{self, Coalescer};
use crate::error::{self, BACKEND, corrupt};
use crate::migrate;
use crate::notify::{self, Notifier, Seen, Watched};
use crate::rows::{self, get, required};
use crate::schema::Schema;
use crate::sql::Statements;

/// How many times a claim, lease acquire or completion is sent when it keeps answering `retry`.
/// A claim or acquire answers it when another caller inserted the key between the statement's
/// snapshot and its insert; a completion, when the record changed after the update's snapshot.
/// The next attempt sees that change, so one retry is the rule.
const RACE_ATTEMPTS: usize = 8;

/// SQLSTATE `lock_not_available`: a statement gave up waiting for a lock (its `lock_timeout`).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How long a pooled connection may sit idle before [`PostgresStore::pool_options`] pings it.
const IDLE_BEFORE_PING: Duration = Duration::from_millis(100);

/// The latest instant a timestamp may hold, in µs: durations are clamped to it before they are
/// sent, so the server's arithmetic never overflows.
const MAX_MICROS: i64 = Timestamp::MAX.as_micros();

/// A Sentinel store in PostgreSQL: every transition one statement and one round trip, its event
/// written by the same statement, decided on the server's clock (or a manual test clock).
///
/// Cheap to clone: clones share the pool and the prepared statements. Build it from a URL with
/// [`PostgresStore::connect`], or from your own pool with [`PostgresStore::builder`].
///
/// ```no_run
/// # async fn example() -> sentinel_core::Result<()> {
/// use sentinel_core::{Failure, Once, Sentinel};
/// use sentinel_postgres::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://app@db/app").await?; // migrates `sentinel`
/// let sentinel = Sentinel::builder(store).namespace("payments").build()?;
/// let charged: Once<String> = sentinel
///     .once("order-789", |ctx| async move { Ok::<_, Failure>(format!("ch_{}", ctx.token())) })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: Schema,
    time: TimeSource,
    sql: Statements,
    notifier: Notifier,
    /// Whether `wait_for_change` listens (else it answers `Unsupported`).
    listen: bool,
    /// Claims and completions waiting to be sent together (`None`: each sent alone at once).
    claims: Option<Coalescer<ClaimCall>>,
    completions: Option<Coalescer<CompleteCall>>,
}

/// A claim, as a batch carries it.
struct ClaimCall {
    id: RecordId,
    request: ClaimRequest,
}

impl batch::Call for ClaimCall {
    fn id(&self) -> &RecordId {
        &self.id
    }
}

/// A completion, as a batch carries it (the result as JSON text).
struct CompleteCall {
    id: RecordId,
    token: FencingToken,
    result: String,
}

impl batch::Call for CompleteCall {
    fn id(&self) -> &RecordId {
        &self.id
    }
}

/// Where a completion is sent: by the store (on its pool, in a batch under load), or in the
/// caller's own transaction ([`PostgresStore::complete_in`]).
pub(crate) enum Via<'c> {
    Pool,
    Transaction(&'c mut PgConnection),
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("time", &self.inner.time)
            .field("pool", &self.inner.pool)
            .finish()
    }
}

/// Configures a [`PostgresStore`] over a pool: schema, clock, and whether to migrate.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> sentinel_core::Result<()> {
/// use sentinel_postgres::PostgresStore;
///
/// let store = PostgresStore::builder(pool)
///     .schema("billing_sentinel") // checked; created and migrated by build()
///     .build()
///     .await?;
/// assert_eq!(store.schema().as_str(), "billing_sentinel");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "call build() to get the store"]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    schema: String,
    time: TimeSource,
    migrate: bool,
    listen: bool,
    listener_probe: Duration,
    in_flight: usize,
}

/// How long the listener may hear nothing before it checks its connection, by default (see
/// [`PostgresStoreBuilder::listener_probe`]).
pub const DEFAULT_LISTENER_PROBE: Duration = Duration::from_secs(30);
/// The shortest [`PostgresStoreBuilder::listener_probe`].
const MIN_LISTENER_PROBE: Duration = Duration::from_millis(10);

/// How many claim statements, and how many complete statements, a store sends at once by
/// default (see [`PostgresStoreBuilder::in_flight`]).
pub const DEFAULT_IN_FLIGHT: usize = 2;

impl PostgresStoreBuilder {
    /// The schema holding Sentinel's tables (default `sentinel`); checked by [`Self::build`].
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = name.into();
        self
    }

    /// Where the store takes the time from: the server's `clock_timestamp()` (the default), or a
    /// [`sentinel_core::ManualClock`] passed into every statement, for tests.
    pub fn time(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// Whether [`Self::build`] creates or upgrades the schema (default `true`). Turn it off when
    /// migrations run elsewhere (see [`crate::migrator`]).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Whether clients waiting for a busy key are woken by LISTEN/NOTIFY (default `true`): the
    /// first wait opens one listening connection per store, outside the pool. Turn it off where
    /// LISTEN does not work (behind a connection pooler in transaction mode, such as PgBouncer's
    /// `pool_mode = transaction`): waits then answer [`Wait::Unsupported`] and clients poll.
    /// Transitions notify either way.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// How long the listener may hear nothing before it checks its connection (default
    /// [`DEFAULT_LISTENER_PROBE`]; at least 10 ms). It then sends its `LISTEN` again over that
    /// connection (a no-op for the server); if no answer comes within the pool's acquire
    /// timeout, it takes the connection for dead, wakes its waiters (they claim again) and opens
    /// another. A connection cut off without a reset (a NAT or load balancer that forgets idle
    /// flows) would otherwise leave the store believing it listens while no notification
    /// arrives. The probe also keeps such a flow from going idle: set it below the device's idle
    /// timeout.
    pub fn listener_probe(mut self, after: Duration) -> Self {
        self.listener_probe = after.max(MIN_LISTENER_PROBE);
        self
    }

    /// How many claim statements, and separately how many complete statements, the store has in
    /// flight at once (default [`DEFAULT_IN_FLIGHT`]); `0` for no limit. A claim (or completion)
    /// that finds them all in flight waits for one to finish, and is then sent in one statement
    /// with every other call waiting by then (up to 32): under load, one statement, one commit
    /// and one round trip serve several calls, which is most of their cost on the server. A call
    /// that finds a free slot is sent alone at once, so a lone caller never waits.
    ///
    /// Each call keeps its own answer and its own rule: a batch runs the same function per
    /// call, one after the other, in key order, in one transaction. If the batch fails as a
    /// whole, each call is sent again alone (a claim or completion is safe to send twice), so one
    /// call's error never becomes another's. What calls of one batch do share is time: a call
    /// that waits for a row lock (a takeover of a record someone holds a [`Self::fence`] on, say)
    /// holds up the others in its batch for as long.
    ///
    /// Raise it with the server's cores and the number of workers per process (a batch runs on
    /// one server backend); `0` sends every call alone at once, as many at a time as the pool
    /// allows.
    ///
    /// [`Self::fence`]: PostgresStore::fence
    pub fn in_flight(mut self, statements: usize) -> Self {
        self.in_flight = statements;
        self
    }

    /// Checks the schema name and the pool's transaction isolation, runs the migrations (unless
    /// turned off) and returns the store.
    ///
    /// The store's statements need READ COMMITTED, PostgreSQL's default: the claim function, for
    /// one, reads the clock and then the record in statements of their own, and only READ
    /// COMMITTED gives the second a snapshot taken after the clock reading. Under REPEATABLE READ
    /// or SERIALIZABLE it could judge a record older than the time it reads, and take a live
    /// execution for an uncertain one. So `build` asks one pooled connection for its isolation
    /// level (one query, here only) and refuses a pool whose connections default to another level
    /// ([`InvalidInput::Malformed`], `what: "transaction isolation"`), before anything is created.
    /// If your database or role sets `default_transaction_isolation`, set it back for Sentinel's
    /// connections: `ALTER ROLE sentinel_app SET default_transaction_isolation = 'read committed'`
    /// for a role of its own, or per connection with
    /// `PgConnectOptions::options([("default_transaction_isolation", "read committed")])` (in a
    /// URL: `?options=-c%20default_transaction_isolation%3Dread%5C%20committed`). Your own
    /// transactions may use any level, except around [`PostgresStore::fence`] and
    /// [`PostgresStore::complete_in`], which check their transaction themselves.
    ///
    /// [`InvalidInput::Malformed`]: sentinel_core::InvalidInput::Malformed
    pub async fn build(self) -> Result<PostgresStore> {
        let schema = Schema::new(self.schema)?;
        check_read_committed(&self.pool).await?;
        if self.migrate {
            migrate::migrate(&self.pool, &schema).await?;
        }
        Ok(PostgresStore::assemble(
            self.pool,
            schema,
            self.time,
            self.listen,
            self.listener_probe,
            self.in_flight,
        ))
    }
}

impl PostgresStore {
    /// Connects to `url` with [`PostgresStore::pool_options`], creates or upgrades the
    /// `sentinel` schema, and returns a store on the server's clock.
    ///
    /// Fails with [`Error::Unavailable`] when the server cannot be reached, and with
    /// [`Error::InvalidInput`] when the URL does not parse or the connections do not default to
    /// READ COMMITTED (see [`PostgresStoreBuilder::build`]).
    ///
    /// TLS (`sslmode=verify-full` in the URL) needs one of sqlx's TLS features, which this crate
    /// leaves to the application: with `sqlx = { version = "0.9", features = ["tls-rustls"] }` in
    /// your `Cargo.toml`, Cargo builds one sqlx with it, and this store's connections use it.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = Self::pool_options()
            .connect(url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(source) => {
                    Error::InvalidInput(sentinel_core::InvalidInput::Malformed {
                        what: "postgres url",
                        detail: source.to_string(),
                    })
                }
                other => error::from_sqlx(other, "connect", Duration::ZERO),
            })?;
        Self::builder(pool).build().await
    }

    /// The pool settings this crate recommends, which [`PostgresStore::connect`] uses: at most
    /// 16 connections, a 5 s acquire timeout (an exhausted pool answers [`Error::Timeout`]
    /// instead of hanging), and a liveness ping only for a connection that sat idle for more
    /// than 100 ms. sqlx's default pings before every use, which costs every call a second
    /// round trip; here a busy connection costs none, while any connection that lived through a
    /// server restart (which takes longer than that) is checked, and replaced, before use.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), sqlx::Error> {
    /// let pool = sentinel_postgres::PostgresStore::pool_options()
    ///     .max_connections(32)
    ///     .connect("postgres://app@db/app")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
    }

    /// A store over `pool` in the `sentinel` schema, on the server's clock, without running
    /// migrations: the tables must exist (see [`crate::migrate`]). Does no I/O, so it does not
    /// check the pool's transaction isolation either: the pool's connections must default to
    /// READ COMMITTED (see [`PostgresStoreBuilder::build`], which checks it; so does
    /// `PostgresStore::builder(pool).migrate(false).build()`).
    pub fn new(pool: PgPool) -> Self {
        Self::assemble(
            pool,
            Schema::default(),
            TimeSource::Server,
            true,
            DEFAULT_LISTENER_PROBE,
            DEFAULT_IN_FLIGHT,
        )
    }

    /// A builder over `pool`, to choose the schema and the clock.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            schema: Schema::DEFAULT.to_owned(),
            time: TimeSource::Server,
            migrate: true,
            listen: true,
            listener_probe: DEFAULT_LISTENER_PROBE,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }

    fn assemble(
        pool: PgPool,
        schema: Schema,
        time: TimeSource,
        listen: bool,
        listener_probe: Duration,
        in_flight: usize,
    ) -> Self {
        let sql = Statements::new(&schema);
        let notifier = Notifier::new(&schema, listener_probe);
        let coalesce = in_flight > 0;
        PostgresStore {
            inner: Arc::new(Inner {
                pool,
                schema,
                time,
                sql,
                notifier,
                listen,
                claims: coalesce.then(|| Coalescer::new(in_flight)),
                completions: coalesce.then(|| Coalescer::new(in_flight)),
            }),
        }
    }

    /// The pool the store runs on: use it for your own transactions with [`Self::fence`].
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// Where the store takes the time from.
    pub fn time_source(&self) -> &TimeSource {
        &self.inner.time
    }

    /// Creates or upgrades this store's schema (see [`crate::migrate`]).
    pub async fn migrate(&self) -> Result<()> {
        migrate::migrate(&self.inner.pool, &self.inner.schema).await
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.inner.sql
    }

    /// The manual clock's time in µs, or `None` for the server's clock.
    pub(crate) fn manual_now(&self) -> Option<i64> {
        self.inner.time.manual_now().map(Timestamp::as_micros)
    }

    pub(crate) fn error(&self, error: sqlx::Error, operation: &'static str) -> Error {
        let acquire_timeout = self.inner.pool.options().get_acquire_timeout();
        error::from_sqlx(error, operation, acquire_timeout)
    }

    async fn fetch_optional(
        &self,
        query: Query<'_, Postgres, PgArguments>,
        operation: &'static str,
    ) -> Result<Option<PgRow>> {
        query
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, operation))
    }

    async fn fetch_one(
        &self,
        query: Query<'_, Postgres, PgArguments>,
        operation: &'static str,
    ) -> Result<PgRow> {
        self.fetch_optional(query, operation)
            .await?
            .ok_or_else(|| corrupt(format!("{operation} returned no row")))
    }

    async fn fetch_all(
        &self,
        query: Query<'_, Postgres, PgArguments>,
        operation: &'static str,
    ) -> Result<Vec<PgRow>> {
        query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, operation))
    }

    /// Sends the complete statement through `via` (the store's pool, in a batch under load, or
    /// the caller's transaction for [`PostgresStore::complete_in`], where `sql/complete_in.sql`
    /// refuses a transaction that is not READ COMMITTED), again while the verdict is `retry`: the
    /// record changed after the update's snapshot, and the next statement sees it.
    pub(crate) async fn send_complete(
        &self,
        mut via: Via<'_>,
        id: &RecordId,
        token: FencingToken,
        result: &Value,
        operation: &'static str,
    ) -> Result<()> {
        let result = json_text(result)?;
        for _ in 0..RACE_ATTEMPTS {
            let sql = match via {
                Via::Pool => &self.statements().complete,
                Via::Transaction(_) => &self.statements().complete_in,
            };
            let statement = || {
                query(sql)
                    .bind(id.namespace.as_str())
                    .bind(id.key.as_str())
                    .bind(self.manual_now())
                    .bind(token.get())
                    .bind(result.as_str())
            };
            let row = match &mut via {
                Via::Transaction(conn) => statement()
                    .fetch_optional(&mut **conn)
                    .await
                    .map_err(|e| self.error(e, operation))?,
                Via::Pool => {
                    batch::send(
                        self.inner.completions.as_ref(),
                        || CompleteCall {
                            id: id.clone(),
                            token,
                            result: result.clone(),
                        },
                        |calls| self.complete_batch(calls),
                        || self.fetch_optional(statement(), operation),
                    )
                    .await?
                }
            };
            crate::fence::check_isolation(row.as_ref(), operation)?;
            if let Some(row) = &row
                && required::<String>(row, "verdict")? == "retry"
            {
                tracing::debug!("the record changed under the completion; asking again");
                continue;
            }
            return rows::verdict(row, rows::COMPLETED, true).map(drop);
        }
        Err(error::backend(Contention(operation)))
    }

    /// Sends several claims in one statement (see [`crate::batch`]): one row per claim, in order.
    async fn claim_batch(&self, calls: Vec<ClaimCall>) -> Result<Vec<PgRow>> {
        let request_ids = column(&calls, |c| rows::request_id_bytes(c.request.request_id));
        let statement = query(&self.statements().claim_batch)
            .bind(column(&calls, |c| c.id.namespace.as_str()))
            .bind(column(&calls, |c| c.id.key.as_str()))
            .bind(column(&calls, |c| c.request.owner.as_str()))
            .bind(column(&calls, |c| c.request.ttl.ttl_micros()))
            .bind(column(&calls, |c| c.request.ttl.hard_micros()))
            .bind(column(&calls, |c| c.request.start))
            .bind(column(&request_ids, |r| &r[..]))
            .bind(column(&calls, |c| {
                c.request.fingerprint.as_ref().map(|f| f.as_str())
            }))
            .bind(self.manual_now());
        self.fetch_all(statement, "claim").await
    }

    /// Sends several completions in one statement (see [`crate::batch`]): one row per
    /// completion, in order.
    async fn complete_batch(&self, calls: Vec<CompleteCall>) -> Result<Vec<PgRow>> {
        let statement = query(&self.statements().complete_batch)
            .bind(column(&calls, |c| c.id.namespace.as_str()))
            .bind(column(&calls, |c| c.id.key.as_str()))
            .bind(column(&calls, |c| c.token.get()))
            .bind(column(&calls, |c| c.result.as_str()))
            .bind(self.manual_now());
        self.fetch_all(statement, "complete").await
    }

    /// Runs one of the "locked row, verdict" statements (start, abort, reconcile,
    /// force_complete, reset): `Ok(row)` for the verdicts in `accepted`, the core's rejection
    /// otherwise, `NotFound` when there is no row.
    async fn decide(
        &self,
        query: Query<'_, Postgres, PgArguments>,
        operation: &'static str,
        accepted: &[&str],
    ) -> Result<PgRow> {
        rows::verdict(self.fetch_optional(query, operation).await?, accepted, true)
    }
}

/// One array argument of a statement for many records: `value` of each item.
fn column<'c, C, V>(items: &'c [C], value: impl Fn(&'c C) -> V) -> Vec<V> {
    items.iter().map(value).collect()
}

/// A statement of [`crate::sql`], prepared once per connection by sqlx.
pub(crate) fn query(sql: &Arc<str>) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(Arc::clone(sql)))
}

fn span(operation: &'static str, id: &RecordId) -> tracing::Span {
    tracing::debug_span!(
        "postgres",
        operation,
        namespace = %id.namespace,
        key = %id.key,
        token = tracing::field::Empty,
    )
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

fn json_text(value: &Value) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::InvalidInput(sentinel_core::InvalidInput::ResultNotJson(e.to_string())))
}

fn page<T>(
    rows: Vec<PgRow>,
    limit: u32,
    decode: impl Fn(&PgRow) -> Result<T>,
    key_of: impl Fn(&T) -> &Key,
) -> Result<Page<T>> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(decode)
        .collect::<Result<Vec<T>>>()?;
    let next = if more {
        items.last().map(|item| key_of(item).clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

fn grant(row: &PgRow) -> Result<Grant> {
    Ok(Grant {
        token: rows::token(required(row, "token")?)?,
        lease_expires_at: rows::timestamp(required(row, "lease_expires_us")?),
        hard_expires_at: rows::timestamp(required(row, "hard_expires_us")?),
    })
}

fn claim_outcome(outcome: &str, row: &PgRow) -> Result<ClaimOutcome> {
    let owner = || -> Result<OwnerId> { rows::owner(required(row, "owner")?) };
    let token = || -> Result<FencingToken> { rows::token(required(row, "token")?) };
    let lease = || -> Result<Timestamp> { Ok(rows::timestamp(required(row, "lease_expires_us")?)) };
    Ok(match outcome {
        "acquired" => ClaimOutcome::Acquired(grant(row)?),
        "busy" => ClaimOutcome::Busy {
            state: rows::state(&required::<String>(row, "state")?)?,
            owner: owner()?,
            token: token()?,
            lease_expires_at: lease()?,
        },
        "uncertain" => ClaimOutcome::Uncertain {
            owner: owner()?,
            token: token()?,
            expired_at: lease()?,
        },
        "completed" => ClaimOutcome::Completed {
            token: token()?,
            // Never replayed as `null`: a caller would take it for the recorded result.
            result: rows::json(
                &get::<Option<String>>(row, "result")?
                    .ok_or_else(|| corrupt("a completed record has no result"))?,
            )?,
        },
        "reconciling" => ClaimOutcome::Reconciling {
            owner: owner()?,
            token: token()?,
        },
        "fingerprint_mismatch" => {
            return Err(Rejection {
                reason: RejectReason::FingerprintMismatch {
                    stored: get::<Option<String>>(row, "fingerprint")?
                        .map(rows::fingerprint)
                        .transpose()?,
                },
                state: Some(rows::state(&required::<String>(row, "state")?)?),
                token: Some(token()?),
            }
            .into());
        }
        other => return Err(corrupt(format!("claim: unexpected outcome {other:?}"))),
    })
}

fn event(row: &PgRow) -> Result<Event> {
    let kind: String = required(row, "kind")?;
    Ok(Event {
        id: required(row, "id")?,
        kind: EventKind::from_str(&kind).map_err(|e| corrupt(e.to_string()))?,
        token: rows::token(required(row, "token")?)?,
        owner: get::<Option<String>>(row, "owner")?
            .map(rows::owner)
            .transpose()?,
        state: get::<Option<String>>(row, "state")?
            .map(|s| rows::state(&s))
            .transpose()?,
        at: rows::timestamp(required(row, "at_us")?),
        detail: get::<Option<String>>(row, "detail")?
            .map(|t| rows::json(&t))
            .transpose()?,
    })
}

#[async_trait]
impl CoordinationStore for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn now(&self) -> Result<Timestamp> {
        if let Some(now) = self.inner.time.manual_now() {
            return Ok(now);
        }
        let row = self.fetch_one(query(&self.statements().now), "now").await?;
        Ok(rows::timestamp(required(&row, "now_us")?))
    }

    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        let span = span("claim", id);
        async {
            let request_id = rows::request_id_bytes(request.request_id);
            let sent = tokio::time::Instant::now();
            for _ in 0..RACE_ATTEMPTS {
                let alone = || {
                    let statement = query(&self.statements().claim)
                        .bind(id.namespace.as_str())
                        .bind(id.key.as_str())
                        .bind(self.manual_now())
                        .bind(request.owner.as_str())
                        .bind(request.ttl.ttl_micros())
                        .bind(request.ttl.hard_micros())
                        .bind(request.start)
                        .bind(&request_id[..])
                        .bind(request.fingerprint.as_ref().map(|f| f.as_str()));
                    self.fetch_optional(statement, "claim")
                };
                let row = batch::send(
                    self.inner.claims.as_ref(),
                    || ClaimCall {
                        id: id.clone(),
                        request: request.clone(),
                    },
                    |calls| self.claim_batch(calls),
                    alone,
                )
                .await?
                .ok_or_else(|| corrupt("claim returned no row"))?;
                let outcome: String = required(&row, "outcome")?;
                if outcome != "retry" {
                    let outcome = claim_outcome(&outcome, &row)?;
                    match &outcome {
                        ClaimOutcome::Acquired(grant) => {
                            tracing::Span::current().record("token", grant.token.get());
                        }
                        // What a waiter's first wait compares with (see src/notify.rs).
                        ClaimOutcome::Busy { .. } if self.inner.listen => {
                            let digest = notify::digest(id.namespace.as_str(), id.key.as_str());
                            let seen = Seen {
                                version: required(&row, "version")?,
                                watched: required(&row, "watched")?,
                            };
                            self.inner.notifier.observe(digest, sent, seen);
                        }
                        _ => {}
                    }
                    return Ok(outcome);
                }
                tracing::debug!("a concurrent first claim won the insert; asking again");
            }
            // A race settles on the next attempt. A record the claim cannot judge (a corrupt row,
            // say a state no version of Sentinel writes) asks for a retry every time: reading it
            // tells the two apart, and reports the corrupt row as such.
            self.inspect(id).await?;
            Err(error::backend(Contention("claim")))
        }
        .instrument(span)
        .await
    }

    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        let statement = query(&self.statements().start)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(token.get());
        let row = self
            .decide(statement, "start", &["started", "unchanged"])
            .instrument(span("start", id))
            .await?;
        Ok(rows::timestamp(required(&row, "lease_expires_us")?))
    }

    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        let statement = query(&self.statements().heartbeat)
            .bind(column(renewals, |r| r.keyspace.as_str()))
            .bind(column(renewals, |r| r.id.namespace.as_str()))
            .bind(column(renewals, |r| r.id.key.as_str()))
            .bind(column(renewals, |r| r.token.get()))
            .bind(self.manual_now());
        let rows = self
            .fetch_all(statement, "heartbeat")
            .instrument(tracing::debug_span!(
                "postgres",
                operation = "heartbeat",
                held = renewals.len()
            ))
            .await?;
        if rows.len() != renewals.len() {
            return Err(corrupt(format!(
                "heartbeat answered {} renewals of {}",
                rows.len(),
                renewals.len()
            )));
        }
        renewals
            .iter()
            .zip(&rows)
            .map(|(renewal, row)| {
                let verdict: String = required(row, "verdict")?;
                if verdict == "renewed" {
                    Ok(Ok(rows::timestamp(required(row, "lease_expires_us")?)))
                } else {
                    let with_state = renewal.keyspace == Keyspace::Execution;
                    Ok(Err(rows::rejection(&verdict, row, with_state)?))
                }
            })
            .collect()
    }

    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        async {
            self.send_complete(Via::Pool, id, token, result, "complete")
                .await
        }
        .instrument(span("complete", id))
        .await
    }

    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        let statement = query(&self.statements().abort)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(token.get())
            .bind(disposition.as_str());
        self.decide(statement, "abort", &["aborted", "unchanged"])
            .instrument(span("abort", id))
            .await
            .map(drop)
    }

    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        let statement = query(&self.statements().reconcile)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(owner.as_str());
        let row = self
            .decide(statement, "reconcile", &["reconciling"])
            .instrument(span("reconcile", id))
            .await?;
        rows::token(required(&row, "token")?)
    }

    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        let result = json_text(result)?;
        let statement = query(&self.statements().force_complete)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(owner.as_str())
            .bind(result.as_str());
        self.decide(
            statement,
            "force_complete",
            &["force_completed", "unchanged"],
        )
        .instrument(span("force_complete", id))
        .await
        .map(drop)
    }

    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        let statement = query(&self.statements().reset)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(owner.as_str());
        self.decide(statement, "reset_to_claimed", &["reset"])
            .instrument(span("reset_to_claimed", id))
            .await
            .map(drop)
    }

    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        let statement = query(&self.statements().purge)
            .bind(namespace.as_str())
            .bind(self.manual_now())
            .bind(micros(older_than))
            .bind(i64::from(limit));
        let row = self
            .fetch_one(statement, "purge")
            .instrument(tracing::debug_span!("postgres", operation = "purge", %namespace))
            .await?;
        let purged: i64 = required(&row, "purged")?;
        u64::try_from(purged).map_err(|e| corrupt(format!("purge count {purged}: {e}")))
    }

    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        let statement = query(&self.statements().inspect)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str());
        self.fetch_optional(statement, "inspect")
            .await?
            .map(|row| rows::execution_record(&row))
            .transpose()
    }

    async fn list(&self, query_: &ListQuery) -> Result<Page<ExecutionRecord>> {
        query_.validate()?;
        let filter = &query_.filter;
        let state = match (filter.state, filter.uncertain) {
            // Uncertain means executing: no record is both.
            (Some(state), true) if state != ExecutionState::Executing => {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            (Some(state), _) => Some(state),
            (None, true) => Some(ExecutionState::Executing),
            (None, false) => None,
        };
        let expired = filter.expired || filter.uncertain;
        let (sql, state_filter) = match state {
            // Executing records (the reconciliation queue) have an index of their own.
            Some(ExecutionState::Executing) => (&self.statements().list_executing, None),
            other => (
                &self.statements().list,
                Some(other.map(ExecutionState::as_str)),
            ),
        };
        let mut statement = query(sql)
            .bind(query_.namespace.as_str())
            .bind(query_.after.as_ref().map_or("", |k| k.as_str()))
            .bind(self.manual_now())
            .bind(expired)
            .bind(filter.older_than.map(micros))
            .bind(i64::from(query_.limit) + 1);
        if let Some(state) = state_filter {
            statement = statement.bind(state);
        }
        let rows = self.fetch_all(statement, "list").await?;
        page(rows, query_.limit, rows::execution_record, |r| &r.key)
    }

    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query_: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        query_.validate()?;
        let statement = query(&self.statements().history)
            .bind(keyspace.as_str())
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(query_.after.unwrap_or(i64::MIN))
            .bind(query_.before.unwrap_or(i64::MAX))
            .bind(i64::from(query_.limit))
            .bind(query_.newest_first);
        let rows = self.fetch_all(statement, "history").await?;
        rows.iter().map(event).collect()
    }

    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        let span = span("acquire_lease", id);
        async {
            let request_id = rows::request_id_bytes(request.request_id);
            for _ in 0..RACE_ATTEMPTS {
                let statement = query(&self.statements().acquire_lease)
                    .bind(id.namespace.as_str())
                    .bind(id.key.as_str())
                    .bind(self.manual_now())
                    .bind(request.owner.as_str())
                    .bind(request.ttl.ttl_micros())
                    .bind(request.ttl.hard_micros())
                    .bind(&request_id[..]);
                let row = self.fetch_one(statement, "acquire_lease").await?;
                let outcome: String = required(&row, "outcome")?;
                match outcome.as_str() {
                    "acquired" => {
                        let grant = grant(&row)?;
                        tracing::Span::current().record("token", grant.token.get());
                        return Ok(Acquisition::Acquired(grant));
                    }
                    "held" => {
                        return Ok(Acquisition::Held {
                            owner: rows::owner(required(&row, "owner")?)?,
                            token: rows::token(required(&row, "token")?)?,
                            lease_expires_at: rows::timestamp(required(&row, "lease_expires_us")?),
                        });
                    }
                    "retry" => {
                        tracing::debug!("a concurrent first acquire won the insert; asking again");
                    }
                    other => {
                        return Err(corrupt(format!(
                            "acquire_lease: unexpected outcome {other:?}"
                        )));
                    }
                }
            }
            Err(error::backend(Contention("acquire_lease")))
        }
        .instrument(span)
        .await
    }

    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        let statement = query(&self.statements().release_lease)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(token.get());
        let row = self
            .fetch_optional(statement, "release_lease")
            .instrument(span("release_lease", id))
            .await?;
        rows::verdict(row, &["released"], false).map(drop)
    }

    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        let statement = query(&self.statements().inspect_lease)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str());
        self.fetch_optional(statement, "inspect_lease")
            .await?
            .map(|row| rows::lease_record(&row))
            .transpose()
    }

    async fn list_leases(&self, query_: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        query_.validate()?;
        let statement = query(&self.statements().list_leases)
            .bind(query_.namespace.as_str())
            .bind(query_.after.as_ref().map_or("", |k| k.as_str()))
            .bind(i64::from(query_.limit) + 1);
        let rows = self.fetch_all(statement, "list_leases").await?;
        page(rows, query_.limit, rows::lease_record, |r| &r.key)
    }

    /// LISTEN/NOTIFY: woken by the notification of the record's next event (see
    /// `src/notify.rs`); [`Wait::Unsupported`] when no listener can be opened.
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        if !self.inner.listen {
            return Ok(Wait::Unsupported);
        }
        let digest = notify::digest(id.namespace.as_str(), id.key.as_str());
        let watch = async |left: Option<Duration>| {
            // The record's row lock may be held by a transition in a transaction still open (a
            // caller's `complete_in`): give up waiting for it before the wait ends, on the server.
            let lock_timeout = left.map(|left| {
                let ms = notify::lock_timeout(left).as_millis();
                i32::try_from(ms).unwrap_or(i32::MAX).to_string()
            });
            let statement = query(&self.statements().watch)
                .bind(id.namespace.as_str())
                .bind(id.key.as_str())
                .bind(lock_timeout);
            match statement.fetch_optional(&self.inner.pool).await {
                Ok(Some(row)) => {
                    required::<i64>(&row, "version").map_or(Watched::Failed, Watched::Version)
                }
                Ok(None) => Watched::NoRecord,
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
                {
                    Watched::LockTimedOut
                }
                Err(error) => {
                    let error = self.error(error, "wait_for_change");
                    tracing::debug!(%error, "cannot watch the record; answering Changed");
                    Watched::Failed
                }
            }
        };
        Ok(self
            .inner
            .notifier
            .wait(&self.inner.pool, digest, since, timeout, watch)
            .instrument(span("wait_for_change", id))
            .await)
    }
}

/// `Err` unless the connections of `pool` default to READ COMMITTED (see
/// [`PostgresStoreBuilder::build`]): one query, on one pooled connection.
async fn check_read_committed(pool: &PgPool) -> Result<()> {
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(pool)
        .await
        .map_err(|e| error::from_sqlx(e, "build", pool.options().get_acquire_timeout()))?;
    // PostgreSQL runs READ UNCOMMITTED as READ COMMITTED.
    if level == "read committed" || level == "read uncommitted" {
        return Ok(());
    }
    Err(sentinel_core::InvalidInput::Malformed {
        what: "transaction isolation",
        detail: format!(
            "the pool's connections default to {level}, and Sentinel's statements need read \
             committed (the claim function reads the clock, then the record: under snapshot \
             isolation it could judge a record older than that time, and take a live execution \
             for an uncertain one); set default_transaction_isolation to 'read committed' for \
             Sentinel's connections (ALTER ROLE <role> SET default_transaction_isolation = 'read \
             committed', or the connect option -c default_transaction_isolation=read\\ committed); \
             nothing was created or changed"
        ),
    }
    .into())
}

/// A claim, acquire or completion answered `retry` on every attempt.
#[derive(Debug)]
struct Contention(&'static str);

impl fmt::Display for Contention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lost a race with a concurrent transition of the same key {RACE_ATTEMPTS} times \
             in a row; nothing was written, it is safe to send again",
            self.0
        )
    }
}

impl std::error::Error for Contention {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_names_the_operation_and_says_what_happened() {
        let text = Contention("claim").to_string();
        assert!(text.starts_with("claim lost a race"), "{text}");
        assert!(text.contains("nothing was written"), "{text}");
    }
}
