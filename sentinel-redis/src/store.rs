//! [`RedisStore`]: the [`CoordinationStore`] over Redis, standalone or Redis Cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, Script, ServerErrorKind, Value};
use serde_json::Value as Json;

use sentinel_core::execution::{self, ClaimOutcome, ClaimRequest, Disposition};
use sentinel_core::lease::{Acquisition, LeaseRequest};
use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    CoordinationStore, Error, Event, EventKind, ExecutionRecord, ExecutionState, FencingToken,
    Fingerprint, Grant, InvalidInput, Key, Keyspace, LeaseRecord, Namespace, OwnerId, RecordId,
    RejectReason, Rejection, RequestId, Result, TimeSource, Timestamp, Ttl,
};

use crate::connection::RedisConnection;
use crate::error::{self, BACKEND, ReplicationLag, corrupt};
use crate::keys::{self, Layout, RecordKeys};
use crate::notify::{Notifier, Source};
use crate::scripts::Scripts;

/// The most renewals one heartbeat script call carries; larger batches are split (and still sent
/// in one round trip on a standalone server).
const RENEWALS_PER_CALL: usize = 256;

/// How many records a listing reads per batch.
const FETCH_BATCH: usize = 256;

/// The Redis store: every transition is one Lua script call, one round trip, with its event
/// appended to the record's history stream by the same script.
///
/// `C` is the connection: [`ConnectionManager`] for a standalone server (see
/// [`RedisStore::connect`]) or [`ClusterConnection`] for Redis Cluster (see
/// [`RedisStore::connect_cluster`]). Clones are cheap and share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), sentinel_core::Error> {
/// use std::time::Duration;
/// use sentinel_core::{Failure, Once, Sentinel};
/// use sentinel_redis::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let sentinel = Sentinel::builder(store)
///     .namespace("payments")
///     .ttl(Duration::from_secs(10))
///     .build()?;
/// let charged: Once<String> = sentinel
///     .once("order-789", |ctx| async move { Ok::<_, Failure>(format!("ch_{}", ctx.token())) })
///     .await?;
/// println!("{charged:?}");
/// # Ok(())
/// # }
/// ```
pub struct RedisStore<C: RedisConnection = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

/// A store over a Redis Cluster.
pub type ClusterStore = RedisStore<ClusterConnection>;

struct Inner<C> {
    conn: C,
    layout: Layout,
    time: TimeSource,
    stream_max_len: u64,
    wait: Option<(u32, Duration)>,
    response_timeout: Duration,
    endpoint: String,
    /// Change notifications for `wait_for_change`: shared by every store over the same records.
    notifier: Arc<Notifier>,
}

impl<C: RedisConnection> Clone for RedisStore<C> {
    fn clone(&self) -> Self {
        RedisStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: RedisConnection> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.inner.endpoint)
            .field("cluster", &C::CLUSTER)
            .field("prefix", &self.inner.layout.prefix())
            .field("time", &self.inner.time)
            .field("stream_max_len", &self.inner.stream_max_len)
            .field("wait_for_replicas", &self.inner.wait)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`RedisStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), sentinel_core::Error> {
/// use std::time::Duration;
/// use sentinel_redis::RedisStore;
///
/// let store = RedisStore::builder()
///     .prefix("billing")                                  // every key starts with "billing:"
///     .stream_max_len(500)                                // keep the last 500 events per record
///     .wait_for_replicas(1, Duration::from_millis(100))   // WAIT 1 100 after every write
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    prefix: String,
    time: TimeSource,
    stream_max_len: u64,
    wait: Option<(u32, Duration)>,
    response_timeout: Duration,
    connection_timeout: Duration,
    subscription_probe: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        RedisStoreBuilder {
            prefix: RedisStoreBuilder::DEFAULT_PREFIX.to_owned(),
            time: TimeSource::Server,
            stream_max_len: RedisStoreBuilder::DEFAULT_STREAM_MAX_LEN,
            wait: None,
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            subscription_probe: RedisStoreBuilder::DEFAULT_SUBSCRIPTION_PROBE,
        }
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key unless told otherwise: `sentinel`.
    pub const DEFAULT_PREFIX: &'static str = "sentinel";
    /// How many events each record's history keeps unless told otherwise.
    pub const DEFAULT_STREAM_MAX_LEN: u64 = 1000;
    /// How often the subscription connection is probed unless told otherwise (see
    /// [`Self::subscription_probe`]).
    pub const DEFAULT_SUBSCRIPTION_PROBE: Duration = Duration::from_secs(30);

    /// The prefix of every Redis key the store writes (1 to 64 bytes of ASCII letters, digits and
    /// `_ . : / -`). Two stores with different prefixes never see each other's records.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Where the store takes the time from: the server's `TIME` (the default) or a manual clock
    /// for tests, passed to every script.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sentinel_core::Error> {
    /// use std::time::Duration;
    /// use sentinel_core::{ManualClock, TimeSource};
    ///
    /// let clock = ManualClock::new();
    /// let store = sentinel_redis::RedisStore::builder()
    ///     .prefix("test-run-42")
    ///     .time(TimeSource::Manual(clock.clone()))
    ///     .connect("redis://127.0.0.1:6379")
    ///     .await?;
    /// clock.advance(Duration::from_secs(31)); // leases expire now, without sleeping
    /// # Ok(())
    /// # }
    /// ```
    pub fn time(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// How many events each record's history stream keeps (`XADD MAXLEN`); older ones are
    /// trimmed. From 1 to `i64::MAX`.
    pub fn stream_max_len(mut self, events: u64) -> Self {
        self.stream_max_len = events;
        self
    }

    /// After every transition and heartbeat, waits (`WAIT replicas timeout`, pipelined in the same
    /// round trip) until that many replicas have acknowledged the connection's writes; fewer in
    /// time is reported as [`Error::Unavailable`] (the command may be applied on the primary
    /// only, and sending it again is safe). This narrows, but does not close, the window in which
    /// a failover to a lagging replica loses a transition: see the crate docs. Reads do not wait.
    ///
    /// The timeout must fit `WAIT` (at most `i64::MAX` ms), and with
    /// [`connect`](Self::connect) or [`connect_cluster`](Self::connect_cluster) be under the
    /// [response timeout](Self::response_timeout); otherwise connecting answers
    /// [`Error::InvalidInput`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sentinel_core::Error> {
    /// use std::time::Duration;
    /// let store = sentinel_redis::RedisStore::builder()
    ///     .wait_for_replicas(1, Duration::from_millis(50))
    ///     .connect("redis://127.0.0.1:6379")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// How long to wait for a reply before answering [`Error::Timeout`] (default 10 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How often the subscription connection of a standalone server is probed with `PING`
    /// (default [`Self::DEFAULT_SUBSCRIPTION_PROBE`]; at least 10 ms). A probe that fails (not
    /// answered within the response timeout, as over a flow a NAT or load balancer forgot
    /// without resetting it, or any error) wakes the connection's waiters (they claim again) and
    /// the next wait opens another connection. The probes also keep such a flow from going idle: set it
    /// below the device's idle timeout. On a cluster, redis-rs manages the connections to each
    /// node and they are not probed.
    pub fn subscription_probe(mut self, every: Duration) -> Self {
        self.subscription_probe = every.max(Duration::from_millis(10));
        self
    }

    fn check(&self) -> Result<()> {
        keys::check_prefix(&self.prefix).map_err(|detail| {
            Error::InvalidInput(InvalidInput::Malformed {
                what: "key prefix",
                detail,
            })
        })?;
        if self.stream_max_len == 0 || i64::try_from(self.stream_max_len).is_err() {
            return Err(Error::InvalidInput(InvalidInput::Malformed {
                what: "stream max len",
                detail: format!(
                    "a history stream keeps from 1 to {} events, not {}",
                    i64::MAX,
                    self.stream_max_len
                ),
            }));
        }
        if let Some((_, timeout)) = self.wait
            && i64::try_from(timeout.as_millis()).is_err()
        {
            return Err(wait_too_long(format!(
                "{timeout:?} is beyond what WAIT accepts ({} ms)",
                i64::MAX
            )));
        }
        Ok(())
    }

    /// [`check`](Self::check), and a wait for replicas that ends before the connection gives up
    /// on the reply: otherwise a lagging replica would be reported as a timeout, and every write
    /// would hold the shared connection for the whole response timeout.
    fn check_connecting(&self) -> Result<()> {
        self.check()?;
        match self.wait {
            Some((_, timeout)) if timeout >= self.response_timeout => Err(wait_too_long(format!(
                "{timeout:?} is not under the response timeout ({:?})",
                self.response_timeout
            ))),
            _ => Ok(()),
        }
    }

    /// Connects to a standalone server (`redis://host:port/db`) through a reconnecting
    /// [`ConnectionManager`].
    ///
    /// `rediss://` (TLS) needs a TLS feature of redis-rs, which this crate leaves to the
    /// application: with `redis = { version = "1.8", features = ["tokio-rustls-comp"] }` in your
    /// `Cargo.toml`, Cargo builds one redis-rs with it, and this store's connections use it.
    pub async fn connect(self, url: &str) -> Result<RedisStore<ConnectionManager>> {
        self.check_connecting()?;
        let client = redis::Client::open(url).map_err(|e| bad_url(url, e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connection_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let source = Source::standalone(
            &client,
            self.response_timeout,
            self.connection_timeout,
            self.subscription_probe,
        );
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| error::map(e, "connect", self.response_timeout))?;
        let endpoint = redact(url);
        Ok(self.finish(conn, endpoint, source))
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs.
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore<ClusterConnection>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.check_connecting()?;
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
            .response_timeout(self.response_timeout)
            .connection_timeout(self.connection_timeout)
            .build()
            .map_err(|e| bad_url(&urls.join(","), e))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| error::map(e, "connect", self.response_timeout))?;
        let endpoint = urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",");
        let source = Source::Cluster {
            urls,
            response_timeout: self.response_timeout,
            connection_timeout: self.connection_timeout,
        };
        Ok(self.finish(conn, endpoint, source))
    }

    /// A store over a connection you built yourself (for example with your own credentials or
    /// connection settings).
    ///
    /// Such a store has no URL to open its subscription connection with, so
    /// [`wait_for_change`](CoordinationStore::wait_for_change) answers [`Wait::Unsupported`] and
    /// waiting callers poll.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use sentinel_redis::{RedisStore, redis};
    ///
    /// let client = redis::Client::open("redis://:secret@127.0.0.1:6379/2")?;
    /// let conn = client.get_connection_manager().await?;
    /// let store = RedisStore::builder().prefix("billing").build(conn)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build<C: RedisConnection>(self, conn: C) -> Result<RedisStore<C>> {
        self.check()?;
        Ok(self.finish(conn, "(supplied connection)".to_owned(), Source::None))
    }

    fn finish<C: RedisConnection>(
        self,
        conn: C,
        endpoint: String,
        source: Source,
    ) -> RedisStore<C> {
        RedisStore {
            inner: Arc::new(Inner {
                conn,
                layout: Layout::new(self.prefix),
                time: self.time,
                stream_max_len: self.stream_max_len,
                wait: self.wait,
                response_timeout: self.response_timeout,
                endpoint,
                notifier: Arc::new(Notifier::new(source)),
            }),
        }
    }
}

/// The refusal of a `wait_for_replicas` timeout.
fn wait_too_long(detail: String) -> Error {
    Error::InvalidInput(InvalidInput::Malformed {
        what: "wait for replicas timeout",
        detail,
    })
}

fn bad_url(url: &str, e: RedisError) -> Error {
    Error::InvalidInput(InvalidInput::Malformed {
        what: "redis url",
        detail: format!("{}: {e}", redact(url)),
    })
}

/// The URL without its password, for Debug output and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl RedisStore<ConnectionManager> {
    /// Connects to a standalone Redis with the defaults (prefix `sentinel`, server time).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sentinel_core::Error> {
    /// let store = sentinel_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        RedisStoreBuilder::default().connect(url).await
    }
}

impl RedisStore<ClusterConnection> {
    /// Connects to a Redis Cluster with the defaults, through any of its nodes.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sentinel_core::Error> {
    /// let store = sentinel_redis::RedisStore::connect_cluster([
    ///     "redis://10.0.0.1:7000",
    ///     "redis://10.0.0.2:7000",
    /// ])
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedisStoreBuilder::default().connect_cluster(urls).await
    }
}

impl RedisStore {
    /// Starts configuring a store.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }
}

impl<C: RedisConnection> RedisStore<C> {
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.inner.layout.prefix()
    }

    /// A second store over the same connection and records, on another time source: for tests
    /// that move a manual clock or switch to the server's.
    pub fn with_time(&self, time: TimeSource) -> Self {
        let inner = &self.inner;
        RedisStore {
            inner: Arc::new(Inner {
                conn: inner.conn.clone(),
                layout: inner.layout.clone(),
                time,
                stream_max_len: inner.stream_max_len,
                wait: inner.wait,
                response_timeout: inner.response_timeout,
                endpoint: inner.endpoint.clone(),
                notifier: Arc::clone(&inner.notifier),
            }),
        }
    }

    /// The Redis key names of a record's hash and history stream, for operators who want to look
    /// at them with `redis-cli` (`HGETALL`, `XRANGE`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sentinel_core::Error> {
    /// use sentinel_core::{Keyspace, RecordId};
    ///
    /// let store = sentinel_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let (hash, stream) = store.key_names(Keyspace::Execution, &RecordId::parse("payments", "a:b")?);
    /// assert!(String::from_utf8_lossy(&hash).ends_with(":er:8:payments:a:b"));
    /// # let _ = stream;
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_names(&self, keyspace: Keyspace, id: &RecordId) -> (Vec<u8>, Vec<u8>) {
        let keys = self.inner.layout.keys(keyspace, id);
        (keys.record, keys.history)
    }

    fn map(&self, e: RedisError, operation: &'static str) -> Error {
        error::map(e, operation, self.inner.response_timeout)
    }

    /// ARGV[1] and ARGV[2] of every script: the time ('' for the server's) and the history length.
    fn base_args(&self) -> [String; 2] {
        let now = self
            .inner
            .time
            .manual_now()
            .map_or_else(String::new, |t| t.as_micros().to_string());
        [now, self.inner.stream_max_len.to_string()]
    }

    /// Runs one transition script on one record: one round trip (`EVALSHA`, or `EVALSHA` + `WAIT`
    /// pipelined when replica acknowledgement is asked for).
    async fn transition(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &RecordKeys,
        args: &[&str],
    ) -> Result<Vec<String>> {
        let reply = self.transition_value(operation, script, keys, args).await?;
        strings(reply, operation)
    }

    /// [`Self::transition`], the reply as sent (a claim may answer with one bulk string).
    async fn transition_value(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &RecordKeys,
        args: &[&str],
    ) -> Result<Value> {
        let base = self.base_args();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(2)
            .arg(keys.record.as_slice())
            .arg(keys.history.as_slice());
        for a in base.iter().map(String::as_str).chain(args.iter().copied()) {
            cmd.arg(a);
        }
        if self.inner.wait.is_none() {
            // The command built once, sent as it is (no copies of the arguments): a NOSCRIPT
            // reply means it did not run, so the script is loaded and the same command sent again.
            let mut conn = self.inner.conn.clone();
            return match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if is_noscript(&e) => {
                    script
                        .load_async(&mut conn)
                        .await
                        .map_err(|e| self.map(e, operation))?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
            .map_err(|e| self.map(e, operation));
        }
        let mut replies = self.run_scripts(operation, script, vec![cmd]).await?;
        replies
            .pop()
            .ok_or_else(|| corrupt(format!("{operation}: no reply")))?
            .map_err(|e| self.map(e, operation))
    }

    /// Runs independent script calls, each on one slot, in one round trip on a standalone server
    /// (one pipeline) and one per node on a cluster (concurrent calls, one per slot), appending
    /// `WAIT` when asked. A call answered `NOSCRIPT` did not run: the script is loaded and the
    /// call sent again. Returns each call's reply in order.
    async fn run_scripts(
        &self,
        operation: &'static str,
        script: &Script,
        calls: Vec<Cmd>,
    ) -> Result<Vec<redis::RedisResult<Value>>> {
        let mut results: Vec<Option<redis::RedisResult<Value>>> = vec![None; calls.len()];
        let mut pending: Vec<usize> = (0..calls.len()).collect();
        // A write that too few replicas acknowledged: reported once every call has run.
        let mut lagging: Option<Error> = None;
        for attempt in 0..2 {
            let mut pipelines: Vec<Pipeline> = pending
                .iter()
                .map(|&i| {
                    let mut p = redis::pipe();
                    p.add_command(calls[i].clone());
                    if C::CLUSTER {
                        self.add_wait(&mut p);
                    }
                    p
                })
                .collect();
            let trailing_wait = !C::CLUSTER && self.inner.wait.is_some();
            if trailing_wait {
                let mut p = redis::pipe();
                self.add_wait(&mut p);
                pipelines.push(p);
            }
            let mut replies = self
                .inner
                .conn
                .run_each(pipelines)
                .await
                .map_err(|e| self.map(e, operation))?;
            let waited = if trailing_wait {
                Some(
                    replies
                        .pop()
                        .ok_or_else(|| corrupt(format!("{operation}: no WAIT reply")))?
                        .map_err(|e| self.map(e, operation))?,
                )
            } else {
                None
            };
            let mut missing = Vec::new();
            let mut ran = false;
            for (&i, reply) in pending.iter().zip(replies) {
                match reply {
                    // NOSCRIPT: the call did not run; load the script and send it again.
                    Err(e) if is_noscript(&e) && attempt == 0 => missing.push(i),
                    Err(e) => results[i] = Some(Err(e)),
                    Ok(mut values) => {
                        ran = true;
                        if C::CLUSTER && lagging.is_none() {
                            lagging = self.check_wait(values.get(1)).err();
                        }
                        if values.is_empty() {
                            return Err(corrupt(format!("{operation}: empty reply")));
                        }
                        results[i] = Some(Ok(values.swap_remove(0)));
                    }
                }
            }
            if let Some(waited) = waited.filter(|_| ran && lagging.is_none()) {
                lagging = self.check_wait(waited.first()).err();
            }
            if missing.is_empty() {
                break;
            }
            let mut conn = self.inner.conn.clone();
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| self.map(e, operation))?;
            pending = missing;
        }
        if let Some(lag) = lagging {
            return Err(lag);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| corrupt(format!("{operation}: a call got no reply"))))
            .collect()
    }

    fn add_wait(&self, p: &mut Pipeline) {
        if let Some((replicas, timeout)) = self.inner.wait {
            let millis = u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            p.cmd("WAIT").arg(replicas).arg(millis);
        }
    }

    fn check_wait(&self, reply: Option<&Value>) -> Result<()> {
        let Some((wanted, timeout)) = self.inner.wait else {
            return Ok(());
        };
        let acked: i64 = match reply {
            Some(v) => redis::from_redis_value_ref(v)
                .map_err(|e| corrupt(format!("WAIT answered {v:?}: {e}")))?,
            None => return Err(corrupt("WAIT gave no reply")),
        };
        if acked < i64::from(wanted) {
            return Err(Error::Unavailable {
                store: BACKEND,
                source: Box::new(ReplicationLag {
                    acked,
                    wanted,
                    timeout,
                }),
            });
        }
        Ok(())
    }

    /// The store's time for reads: the manual clock, or the server's `TIME`.
    async fn store_now(&self) -> Result<Timestamp> {
        if let Some(t) = self.inner.time.manual_now() {
            return Ok(t);
        }
        let mut conn = self.inner.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.map(e, "now"))?;
        Ok(Timestamp::from_micros(
            secs.saturating_mul(1_000_000).saturating_add(micros),
        ))
    }

    async fn hgetall(
        &self,
        operation: &'static str,
        key: &[u8],
    ) -> Result<HashMap<String, String>> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.map(e, operation))
    }

    /// The hashes of many records, in order: one pipeline on a standalone server, one command per
    /// record sent concurrently on a cluster.
    async fn hgetall_many(
        &self,
        operation: &'static str,
        names: &[Vec<u8>],
    ) -> Result<Vec<HashMap<String, String>>> {
        let pipelines = names
            .iter()
            .map(|name| {
                let mut p = redis::pipe();
                p.cmd("HGETALL").arg(name.as_slice());
                p
            })
            .collect();
        let replies = self
            .inner
            .conn
            .run_each(pipelines)
            .await
            .map_err(|e| self.map(e, operation))?;
        replies
            .into_iter()
            .map(|reply| {
                let mut values = reply.map_err(|e| self.map(e, operation))?;
                let value = values
                    .pop()
                    .ok_or_else(|| corrupt(format!("{operation}: empty reply")))?;
                redis::from_redis_value(value).map_err(|e| corrupt(format!("{operation}: {e}")))
            })
            .collect()
    }

    /// The ids of every record of `namespace` in `keyspace`, sorted by key, deduplicated.
    async fn scan_ids(
        &self,
        operation: &'static str,
        keyspace: Keyspace,
        namespace: &Namespace,
    ) -> Result<Vec<(RecordId, Vec<u8>)>> {
        let pattern = self.inner.layout.scan_pattern(keyspace, namespace);
        let names = self
            .inner
            .conn
            .scan(pattern)
            .await
            .map_err(|e| self.map(e, operation))?;
        let mut ids: Vec<(RecordId, Vec<u8>)> = names
            .into_iter()
            .filter_map(|name| {
                let id = self.inner.layout.parse(keyspace, &name)?;
                (&id.namespace == namespace).then_some((id, name))
            })
            .collect();
        ids.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        ids.dedup_by(|a, b| a.0 == b.0);
        Ok(ids)
    }

    /// Reads records of one namespace in key order after `after`, keeping those `select` decodes
    /// and accepts, until one more than `limit` are found (to know whether there is a next page).
    async fn page<T>(
        &self,
        operation: &'static str,
        keyspace: Keyspace,
        namespace: &Namespace,
        after: Option<&Key>,
        limit: u32,
        select: impl Fn(&RecordId, HashMap<String, String>) -> Result<Option<T>>,
    ) -> Result<Page<T>> {
        let ids = self.scan_ids(operation, keyspace, namespace).await?;
        let limit = limit as usize;
        let mut found: Vec<(Key, T)> = Vec::new();
        let candidates: Vec<&(RecordId, Vec<u8>)> = ids
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| &id.key > a))
            .collect();
        for chunk in candidates.chunks(FETCH_BATCH.max(limit + 1)) {
            let names: Vec<Vec<u8>> = chunk.iter().map(|(_, name)| name.clone()).collect();
            let hashes = self.hgetall_many(operation, &names).await?;
            for ((id, _), fields) in chunk.iter().zip(hashes) {
                if let Some(item) = select(id, fields)? {
                    found.push((id.key.clone(), item));
                }
            }
            if found.len() > limit {
                break;
            }
        }
        let next = (found.len() > limit).then(|| found[limit - 1].0.clone());
        found.truncate(limit);
        Ok(Page {
            items: found.into_iter().map(|(_, item)| item).collect(),
            next,
        })
    }

    async fn renew(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        // Group renewals that may share one script call: anything on a standalone server, one
        // hash slot on a cluster; at most RENEWALS_PER_CALL per call.
        let names: Vec<Vec<u8>> = renewals
            .iter()
            .map(|r| self.inner.layout.keys(r.keyspace, &r.id).record)
            .collect();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut open: HashMap<Option<redis::cluster_routing::Slot>, usize> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let slot = C::group_of(name);
            match open.get(&slot) {
                Some(&g) if groups[g].len() < RENEWALS_PER_CALL => groups[g].push(i),
                _ => {
                    open.insert(slot, groups.len());
                    groups.push(vec![i]);
                }
            }
        }
        let [now, _] = self.base_args();
        let script = &Scripts::get().heartbeat;
        let calls: Vec<Cmd> = groups
            .iter()
            .map(|members| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash()).arg(members.len());
                for &i in members {
                    cmd.arg(names[i].as_slice());
                }
                cmd.arg(&now).arg("");
                for &i in members {
                    let kind = match renewals[i].keyspace {
                        Keyspace::Execution => "e",
                        Keyspace::Lease => "l",
                    };
                    cmd.arg(kind).arg(renewals[i].token.get());
                }
                cmd
            })
            .collect();
        let replies = self.run_scripts("heartbeat", script, calls).await?;
        let mut results: Vec<Option<RenewalResult>> = vec![None; renewals.len()];
        for (members, reply) in groups.iter().zip(replies) {
            let reply = reply.map_err(|e| self.map(e, "heartbeat"))?;
            let items: Vec<Vec<String>> =
                redis::from_redis_value(reply).map_err(|e| corrupt(format!("heartbeat: {e}")))?;
            if items.len() != members.len() {
                return Err(corrupt("heartbeat: wrong number of replies"));
            }
            for (&i, item) in members.iter().zip(items) {
                let result = match item.first().map(String::as_str) {
                    Some("renewed") => Ok(timestamp(field(&item, 1)?)?),
                    Some("rejected") => Err(rejection(&item)?),
                    _ => return Err(unexpected("heartbeat", &item)),
                };
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| corrupt("heartbeat: a renewal got no reply")))
            .collect()
    }

    fn keys(&self, keyspace: Keyspace, id: &RecordId) -> RecordKeys {
        self.inner.layout.keys(keyspace, id)
    }

    /// Runs an execution transition whose only success reply is `{ok}`.
    async fn simple(
        &self,
        operation: &'static str,
        script: &Script,
        id: &RecordId,
        args: &[&str],
        ok: &str,
    ) -> Result<Vec<String>> {
        let reply = self
            .transition(operation, script, &self.keys(Keyspace::Execution, id), args)
            .await?;
        match reply.first().map(String::as_str) {
            Some(word) if word == ok => Ok(reply),
            Some("rejected") => Err(Error::Rejected(rejection(&reply)?)),
            _ => Err(unexpected(operation, &reply)),
        }
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn strings(reply: Value, operation: &'static str) -> Result<Vec<String>> {
    redis::from_redis_value(reply).map_err(|e| corrupt(format!("{operation}: {e}")))
}

fn unexpected(operation: &str, reply: &[String]) -> Error {
    corrupt(format!("{operation}: unexpected reply {reply:?}"))
}

fn field(reply: &[String], i: usize) -> Result<&str> {
    reply
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| corrupt(format!("reply {reply:?} has no field {i}")))
}

fn integer(s: &str) -> Result<i64> {
    s.parse()
        .map_err(|_| corrupt(format!("{s:?} is not an integer")))
}

fn timestamp(s: &str) -> Result<Timestamp> {
    integer(s).map(Timestamp::from_micros)
}

fn token(s: &str) -> Result<FencingToken> {
    FencingToken::new(integer(s)?).map_err(|e| corrupt(e.to_string()))
}

fn owner(s: &str) -> Result<OwnerId> {
    OwnerId::new(s).map_err(|e| corrupt(e.to_string()))
}

fn state(s: &str) -> Result<ExecutionState> {
    s.parse().map_err(|e: InvalidInput| corrupt(e.to_string()))
}

fn json(s: &str) -> Result<Json> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("stored JSON does not parse: {e}")))
}

fn grant(reply: &[String]) -> Result<Grant> {
    Ok(Grant {
        token: token(field(reply, 1)?)?,
        lease_expires_at: timestamp(field(reply, 2)?)?,
        hard_expires_at: timestamp(field(reply, 3)?)?,
    })
}

/// `{'rejected', reason, state or '', token or '', '1'|'0', fingerprint}`.
fn rejection(reply: &[String]) -> Result<Rejection> {
    let reason = match field(reply, 1)? {
        "not_found" => RejectReason::NotFound,
        "fenced" => RejectReason::Fenced,
        "expired" => RejectReason::Expired,
        "still_alive" => RejectReason::StillAlive,
        "wrong_state" => RejectReason::WrongState,
        "fingerprint_mismatch" => RejectReason::FingerprintMismatch {
            stored: match field(reply, 4)? {
                "1" => {
                    Some(Fingerprint::new(field(reply, 5)?).map_err(|e| corrupt(e.to_string()))?)
                }
                _ => None,
            },
        },
        other => return Err(corrupt(format!("unknown rejection {other:?}"))),
    };
    let st = match field(reply, 2)? {
        "" => None,
        s => Some(state(s)?),
    };
    let tok = match field(reply, 3)? {
        "" => None,
        s => Some(token(s)?),
    };
    Ok(Rejection {
        reason,
        state: st,
        token: tok,
    })
}

fn required<'a>(fields: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| corrupt(format!("field {name} is missing")))
}

fn ttl(fields: &HashMap<String, String>) -> Result<Ttl> {
    Ttl::from_micros(
        integer(required(fields, "ttl")?)?,
        integer(required(fields, "hard_ttl")?)?,
    )
    .map_err(|e| corrupt(e.to_string()))
}

fn request_id(s: &str) -> Result<RequestId> {
    s.parse().map_err(|e: InvalidInput| corrupt(e.to_string()))
}

/// The execution record in a record hash, or `None` for no record (or a tombstone).
fn execution_record(
    id: &RecordId,
    fields: HashMap<String, String>,
) -> Result<Option<ExecutionRecord>> {
    if !fields.contains_key("token") {
        return Ok(None);
    }
    let f = &fields;
    Ok(Some(ExecutionRecord {
        namespace: id.namespace.clone(),
        key: id.key.clone(),
        state: state(required(f, "state")?)?,
        owner: owner(required(f, "owner")?)?,
        token: token(required(f, "token")?)?,
        request_id: f.get("rid").map(|s| request_id(s)).transpose()?,
        lease_expires_at: timestamp(required(f, "lease")?)?,
        hard_expires_at: timestamp(required(f, "hard")?)?,
        ttl: ttl(f)?,
        result: match f.get("result") {
            Some(s) => Some(json(s)?),
            None => f
                .get("c")
                .map(|c| compact_result(c.as_bytes()))
                .transpose()?
                .flatten()
                .map(json)
                .transpose()?,
        },
        fingerprint: f
            .get("fp")
            .map(|s| Fingerprint::new(s.as_str()).map_err(|e| corrupt(e.to_string())))
            .transpose()?,
        created_at: timestamp(required(f, "created")?)?,
        updated_at: timestamp(required(f, "updated")?)?,
    }))
}

/// The parts of a compact field `c` (see `lua/lib.lua`): the fingerprint, the kind byte and the
/// rest.
fn compact_parts(c: &[u8]) -> Result<(&[u8], u8, &[u8])> {
    let z = c
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt("field c has no fingerprint separator"))?;
    match c.get(z + 1) {
        Some(&kind) => Ok((&c[..z], kind, &c[z + 2..])),
        None => Err(corrupt("field c has no kind")),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| corrupt("field c is not UTF-8"))
}

/// `<token> NUL <text>` of a completed (`C`) or reconciling (`R`) compact field.
fn token_and_text(rest: &[u8]) -> Result<(FencingToken, &str)> {
    let z = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt("field c has no token separator"))?;
    Ok((token(utf8(&rest[..z])?)?, utf8(&rest[z + 1..])?))
}

/// The claim outcome a completed or reconciling record answers with: its compact field.
fn compact_outcome(c: &[u8]) -> Result<ClaimOutcome> {
    match compact_parts(c)? {
        (_, b'C', rest) => {
            let (token, result) = token_and_text(rest)?;
            Ok(ClaimOutcome::Completed {
                token,
                result: json(result)?,
            })
        }
        (_, b'R', rest) => {
            let (token, who) = token_and_text(rest)?;
            Ok(ClaimOutcome::Reconciling {
                owner: owner(who)?,
                token,
            })
        }
        (_, kind, _) => Err(corrupt(format!(
            "claim answered with a compact field of kind {:?}",
            char::from(kind)
        ))),
    }
}

/// The result held in a compact field, if it is a completed one.
fn compact_result(c: &[u8]) -> Result<Option<&str>> {
    match compact_parts(c)? {
        (_, b'C', rest) => Ok(Some(token_and_text(rest)?.1)),
        _ => Ok(None),
    }
}

/// The lease record in a record hash, or `None` when the lease is free.
fn lease_record(id: &RecordId, fields: HashMap<String, String>) -> Result<Option<LeaseRecord>> {
    if !fields.contains_key("token") {
        return Ok(None);
    }
    let f = &fields;
    Ok(Some(LeaseRecord {
        namespace: id.namespace.clone(),
        key: id.key.clone(),
        owner: owner(required(f, "owner")?)?,
        token: token(required(f, "token")?)?,
        request_id: request_id(required(f, "rid")?)?,
        lease_expires_at: timestamp(required(f, "lease")?)?,
        hard_expires_at: timestamp(required(f, "hard")?)?,
        ttl: ttl(f)?,
        acquired_at: timestamp(required(f, "acquired")?)?,
    }))
}

/// A result as the text every script compares and stores: canonical JSON (object keys sorted,
/// `-0.0` written as `0.0`), so two results are equal texts exactly when they are equal
/// `serde_json::Value`s, whatever order the caller built their objects in.
pub(crate) fn canonical_json(value: &Json) -> Result<String> {
    fn canonical(value: &Json) -> Json {
        match value {
            Json::Object(map) => {
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), canonical(v)))
                        .collect(),
                )
            }
            Json::Array(items) => Json::Array(items.iter().map(canonical).collect()),
            Json::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => {
                serde_json::Number::from_f64(0.0).map_or(Json::Null, Json::Number)
            }
            other => other.clone(),
        }
    }
    serde_json::to_string(&canonical(value))
        .map_err(|e| Error::InvalidInput(InvalidInput::ResultNotJson(e.to_string())))
}

fn event(stream_id: &str, fields: HashMap<String, String>) -> Result<Event> {
    let id = stream_id
        .split_once('-')
        .map_or(stream_id, |(ms, _)| ms)
        .parse::<i64>()
        .map_err(|_| corrupt(format!("event id {stream_id:?}")))?;
    let f = &fields;
    Ok(Event {
        id,
        kind: required(f, "kind")?
            .parse::<EventKind>()
            .map_err(|e| corrupt(e.to_string()))?,
        token: token(required(f, "token")?)?,
        owner: f.get("owner").map(|s| owner(s)).transpose()?,
        state: f.get("state").map(|s| state(s)).transpose()?,
        at: timestamp(required(f, "at")?)?,
        detail: f.get("detail").map(|s| json(s)).transpose()?,
    })
}

#[async_trait]
impl<C: RedisConnection> CoordinationStore for RedisStore<C> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn now(&self) -> Result<Timestamp> {
        self.store_now().await
    }

    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        let ttl = request.ttl.ttl_micros().to_string();
        let hard = request.ttl.hard_micros().to_string();
        let rid = request.request_id.to_string();
        let args = [
            request.owner.as_str(),
            &ttl,
            &hard,
            if request.start { "1" } else { "0" },
            &rid,
            request.fingerprint.as_ref().map_or("", Fingerprint::as_str),
        ];
        let scripts = Scripts::get();
        let keys = self.keys(Keyspace::Execution, id);
        let sent = tokio::time::Instant::now();
        let reply = self
            .transition_value("claim", &scripts.claim, &keys, &args)
            .await?;
        if let Value::BulkString(c) = &reply {
            // A completed or reconciling record answers with its compact field as it is.
            return compact_outcome(c);
        }
        let r = strings(reply, "claim")?;
        Ok(match r.first().map(String::as_str) {
            Some("acquired") => ClaimOutcome::Acquired(grant(&r)?),
            Some("busy") => {
                // What a following wait_for_change compares with (see crate::notify).
                if let (true, Ok(seq)) = (
                    self.inner.notifier.enabled(),
                    field(&r, 5).and_then(|s| s.parse().map_err(|_| corrupt("seq"))),
                ) {
                    self.inner.notifier.observe(&keys.record, sent, seq);
                }
                ClaimOutcome::Busy {
                    state: state(field(&r, 1)?)?,
                    owner: owner(field(&r, 2)?)?,
                    token: token(field(&r, 3)?)?,
                    lease_expires_at: timestamp(field(&r, 4)?)?,
                }
            }
            Some("uncertain") => ClaimOutcome::Uncertain {
                owner: owner(field(&r, 1)?)?,
                token: token(field(&r, 2)?)?,
                expired_at: timestamp(field(&r, 3)?)?,
            },
            Some("completed") => ClaimOutcome::Completed {
                token: token(field(&r, 1)?)?,
                // Never replayed as `null`: a caller would take it for the recorded result.
                result: json(
                    r.get(2)
                        .ok_or_else(|| corrupt("a completed record has no result"))?,
                )?,
            },
            Some("reconciling") => ClaimOutcome::Reconciling {
                owner: owner(field(&r, 1)?)?,
                token: token(field(&r, 2)?)?,
            },
            Some("rejected") => return Err(Error::Rejected(rejection(&r)?)),
            _ => return Err(unexpected("claim", &r)),
        })
    }

    async fn start(&self, id: &RecordId, token_: FencingToken) -> Result<Timestamp> {
        let t = token_.get().to_string();
        let r = self
            .simple("start", &Scripts::get().start, id, &[&t], "started")
            .await?;
        timestamp(field(&r, 1)?)
    }

    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        self.renew(renewals).await
    }

    async fn complete(&self, id: &RecordId, token_: FencingToken, result: &Json) -> Result<()> {
        let t = token_.get().to_string();
        let text = canonical_json(result)?;
        self.simple(
            "complete",
            &Scripts::get().complete,
            id,
            &[&t, &text],
            "completed",
        )
        .await
        .map(drop)
    }

    async fn abort(
        &self,
        id: &RecordId,
        token_: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        let t = token_.get().to_string();
        self.simple(
            "abort",
            &Scripts::get().abort,
            id,
            &[&t, disposition.as_str()],
            "aborted",
        )
        .await
        .map(drop)
    }

    async fn reconcile(&self, id: &RecordId, owner_: &OwnerId) -> Result<FencingToken> {
        let r = self
            .simple(
                "reconcile",
                &Scripts::get().reconcile,
                id,
                &[owner_.as_str()],
                "reconciling",
            )
            .await?;
        token(field(&r, 1)?)
    }

    async fn force_complete(&self, id: &RecordId, owner_: &OwnerId, result: &Json) -> Result<()> {
        let text = canonical_json(result)?;
        self.simple(
            "force_complete",
            &Scripts::get().force_complete,
            id,
            &[owner_.as_str(), &text],
            "force_completed",
        )
        .await
        .map(drop)
    }

    async fn reset_to_claimed(&self, id: &RecordId, owner_: &OwnerId) -> Result<()> {
        self.simple(
            "reset_to_claimed",
            &Scripts::get().reset,
            id,
            &[owner_.as_str()],
            "reset",
        )
        .await
        .map(drop)
    }

    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        let completed_before = self.store_now().await?.saturating_sub(older_than);
        let ids = self
            .scan_ids("purge", Keyspace::Execution, namespace)
            .await?;
        let mut candidates: Vec<(Timestamp, RecordId)> = Vec::new();
        for chunk in ids.chunks(FETCH_BATCH) {
            let names: Vec<Vec<u8>> = chunk.iter().map(|(_, name)| name.clone()).collect();
            let hashes = self.hgetall_many("purge", &names).await?;
            for ((id, _), fields) in chunk.iter().zip(hashes) {
                if let Some(record) = execution_record(id, fields)?
                    .filter(|r| execution::purgeable(r, completed_before))
                {
                    candidates.push((record.updated_at, id.clone()));
                }
            }
        }
        candidates.sort();
        candidates.truncate(limit as usize);
        if candidates.is_empty() {
            return Ok(0);
        }
        // Each purge is checked again by its script: the record may have changed since it was read.
        let script = &Scripts::get().purge;
        let base = self.base_args();
        let cutoff = completed_before.as_micros().to_string();
        let calls = candidates
            .iter()
            .map(|(_, id)| {
                let keys = self.keys(Keyspace::Execution, id);
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash())
                    .arg(2)
                    .arg(keys.record)
                    .arg(keys.history)
                    .arg(&base[0])
                    .arg(&base[1])
                    .arg(&cutoff);
                cmd
            })
            .collect();
        let replies = self.run_scripts("purge", script, calls).await?;
        let mut purged = 0;
        for reply in replies {
            let reply = strings(reply.map_err(|e| self.map(e, "purge"))?, "purge")?;
            match reply.first().map(String::as_str) {
                Some("purged") => purged += 1,
                Some("rejected") => {}
                _ => return Err(unexpected("purge", &reply)),
            }
        }
        Ok(purged)
    }

    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        let fields = self
            .hgetall("inspect", &self.keys(Keyspace::Execution, id).record)
            .await?;
        execution_record(id, fields)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        query.validate()?;
        let now = self.store_now().await?;
        self.page(
            "list",
            Keyspace::Execution,
            &query.namespace,
            query.after.as_ref(),
            query.limit,
            |id, fields| Ok(execution_record(id, fields)?.filter(|r| query.filter.matches(r, now))),
        )
        .await
    }

    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        query.validate()?;
        // Event ids are stream ids `<id>-0`, every one at least 1. A bare `<id>` at the end of
        // a range stands for `<id>` with the largest sequence number, so `before - 1` includes
        // `before - 1` itself and nothing above it.
        let first = match query.after {
            None => "-".to_owned(),
            Some(after) if after < 0 => "-".to_owned(),
            Some(i64::MAX) => return Ok(Vec::new()),
            Some(after) => format!("{}-0", after + 1),
        };
        let last = match query.before {
            None => "+".to_owned(),
            Some(before) if before <= 1 => return Ok(Vec::new()),
            Some(before) => (before - 1).to_string(),
        };
        let (command, from, to) = if query.newest_first {
            ("XREVRANGE", last, first)
        } else {
            ("XRANGE", first, last)
        };
        let mut conn = self.inner.conn.clone();
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd(command)
            .arg(self.keys(keyspace, id).history)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(query.limit)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.map(e, "history"))?;
        entries
            .into_iter()
            .map(|(stream_id, fields)| event(&stream_id, fields))
            .collect()
    }

    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        let ttl = request.ttl.ttl_micros().to_string();
        let hard = request.ttl.hard_micros().to_string();
        let rid = request.request_id.to_string();
        let r = self
            .transition(
                "acquire_lease",
                &Scripts::get().lease_acquire,
                &self.keys(Keyspace::Lease, id),
                &[request.owner.as_str(), &ttl, &hard, &rid],
            )
            .await?;
        Ok(match r.first().map(String::as_str) {
            Some("acquired") => Acquisition::Acquired(grant(&r)?),
            Some("held") => Acquisition::Held {
                owner: owner(field(&r, 1)?)?,
                token: token(field(&r, 2)?)?,
                lease_expires_at: timestamp(field(&r, 3)?)?,
            },
            _ => return Err(unexpected("acquire_lease", &r)),
        })
    }

    async fn release_lease(&self, id: &RecordId, token_: FencingToken) -> Result<()> {
        let t = token_.get().to_string();
        let r = self
            .transition(
                "release_lease",
                &Scripts::get().lease_release,
                &self.keys(Keyspace::Lease, id),
                &[&t],
            )
            .await?;
        match r.first().map(String::as_str) {
            Some("released") => Ok(()),
            Some("rejected") => Err(Error::Rejected(rejection(&r)?)),
            _ => Err(unexpected("release_lease", &r)),
        }
    }

    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        let fields = self
            .hgetall("inspect_lease", &self.keys(Keyspace::Lease, id).record)
            .await?;
        lease_record(id, fields)
    }

    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        query.validate()?;
        self.page(
            "list_leases",
            Keyspace::Lease,
            &query.namespace,
            query.after.as_ref(),
            query.limit,
            lease_record,
        )
        .await
    }

    /// Waits for a message on the record's channel (every logged transition publishes one): see
    /// the crate docs. `Unsupported` when the subscription connection cannot be opened (or the
    /// store runs over a supplied connection); the client then polls.
    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        if !self.inner.notifier.enabled() {
            return Ok(Wait::Unsupported);
        }
        let record = self.keys(Keyspace::Execution, id).record;
        let read_seq = || async {
            let mut conn = self.inner.conn.clone();
            let seq: Option<String> = redis::cmd("HGET")
                .arg(record.as_slice())
                .arg("seq")
                .query_async(&mut conn)
                .await
                .ok()?;
            Some(seq.and_then(|s| s.parse().ok()))
        };
        Ok(self
            .inner
            .notifier
            .wait(&record, since, timeout, read_seq)
            .await)
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::{hash_map, vec};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn urls_are_shown_without_their_credentials() {
        for (url, shown) in [
            ("redis://:hunter2@db:6379/0", "redis://***@db:6379/0"),
            ("rediss://app:p@ss@db", "rediss://***@db"),
            ("redis://db:6379", "redis://db:6379"),
            (
                "redis+unix:///run/redis.sock",
                "redis+unix:///run/redis.sock",
            ),
            // An `@` before the scheme's `://` is no password: nothing to hide.
            ("a@b://c", "a@b://c"),
            ("no scheme@all", "no scheme@all"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let err = bad_url(
            "redis://:hunter2@db:6379/x",
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad")),
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("redis://***@db:6379/x"), "{err}");
    }

    /// Every field name a record hash or a history entry can hold, and a few it cannot.
    const FIELDS: &[&str] = &[
        "state", "owner", "token", "rid", "lease", "hard", "ttl", "hard_ttl", "result", "c", "fp",
        "created", "updated", "acquired", "kind", "at", "detail", "seq", "last", "other",
    ];

    /// Values near the valid ones (numbers, states, JSON, compact fields) and arbitrary text.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            Just("executing".to_owned()),
            Just("completed".to_owned()),
            Just("claimed".to_owned()),
            Just("00112233445566778899aabbccddeeff".to_owned()),
            Just("\"ch_1\"".to_owned()),
            Just("\0C17\0\"r\"".to_owned()),
            ".{0,24}",
        ]
    }

    /// A whole execution record hash, as the scripts write it, and a whole lease record hash.
    fn whole(keyspace: Keyspace) -> HashMap<String, String> {
        let common = [
            ("owner", "w1"),
            ("token", "17"),
            ("rid", "00112233445566778899aabbccddeeff"),
            ("lease", "2000"),
            ("hard", "3000"),
            ("ttl", "1000"),
            ("hard_ttl", "2000"),
        ];
        let own: &[(&str, &str)] = match keyspace {
            Keyspace::Execution => &[
                ("state", "completed"),
                ("created", "1000"),
                ("updated", "1500"),
                ("c", "\0C17\0\"r\""),
            ],
            Keyspace::Lease => &[("acquired", "1000")],
        };
        common
            .iter()
            .chain(own)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A whole record hash of either keyspace with a few fields changed or removed, or any
    /// fields at all.
    fn fields() -> impl Strategy<Value = HashMap<String, String>> {
        let name = || prop::sample::select(FIELDS).prop_map(str::to_owned);
        let edited = (
            prop_oneof![Just(Keyspace::Execution), Just(Keyspace::Lease)],
            vec((name(), prop::option::of(value())), 0..4),
        )
            .prop_map(|(keyspace, edits)| {
                let mut fields = whole(keyspace);
                for (name, value) in edits {
                    match value {
                        Some(value) => fields.insert(name, value),
                        None => fields.remove(&name),
                    };
                }
                fields
            });
        prop_oneof![edited, hash_map(name(), value(), 0..16)]
    }

    fn id() -> RecordId {
        RecordId::parse("ns", "key").expect("a valid id")
    }

    fn is_corrupt<T>(decoded: &Result<T>) -> bool {
        matches!(decoded, Err(Error::CorruptRecord { .. }))
    }

    #[test]
    fn whole_hashes_decode_to_their_records() {
        let execution = execution_record(&id(), whole(Keyspace::Execution))
            .expect("decodes")
            .expect("a record");
        assert_eq!(execution.state, ExecutionState::Completed);
        assert_eq!(execution.result, Some(json!("r")));
        let lease = lease_record(&id(), whole(Keyspace::Lease))
            .expect("decodes")
            .expect("a record");
        assert_eq!(lease.token.get(), 17);
    }

    proptest! {
        /// Whatever a record hash or a history entry holds (another program's data, a damaged
        /// key), decoding it gives a record, no record, or `CorruptRecord`: never a panic, never
        /// another error.
        #[test]
        fn any_hash_decodes_or_is_reported_corrupt(fields in fields(), stream_id in ".{0,24}") {
            let execution = execution_record(&id(), fields.clone());
            prop_assert!(execution.is_ok() || is_corrupt(&execution));
            let lease = lease_record(&id(), fields.clone());
            prop_assert!(lease.is_ok() || is_corrupt(&lease));
            let entry = event(&stream_id, fields);
            prop_assert!(entry.is_ok() || is_corrupt(&entry));
        }

        /// The same for the compact field `c`, from arbitrary bytes.
        #[test]
        fn any_compact_field_decodes_or_is_reported_corrupt(c in vec(any::<u8>(), 0..40)) {
            let outcome = compact_outcome(&c);
            prop_assert!(outcome.is_ok() || is_corrupt(&outcome));
            let result = compact_result(&c);
            prop_assert!(result.is_ok() || is_corrupt(&result));
        }

        /// A completed compact field, as the scripts write it (fingerprint, NUL, `C`, token, NUL,
        /// result), answers a claim with that token and result.
        #[test]
        fn a_completed_compact_field_answers_with_its_token_and_result(
            fingerprint in "[a-z0-9]{0,12}",
            token in 1..i64::MAX,
            result in prop_oneof![
                Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".{0,16}".prop_map(|s| json!(s)),
            ],
        ) {
            let text = serde_json::to_string(&result).expect("JSON");
            let c = format!("{fingerprint}\0C{token}\0{text}");
            let expected_token = FencingToken::new(token).expect("a valid token");
            match compact_outcome(c.as_bytes()) {
                Ok(ClaimOutcome::Completed { token: got, result: stored }) => {
                    prop_assert_eq!(got, expected_token);
                    prop_assert_eq!(stored, result);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            prop_assert_eq!(compact_result(c.as_bytes()).ok().flatten(), Some(text.as_str()));
        }
    }
}
