//! The Redis queue (a ready list and one in-flight list per taker, moved with `LMOVE`) and ledger
//! (a hash per key that a Lua script writes only for a token at least as high as any it has
//! seen: the generic downstream fence), on a standalone server or a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;

use sentinel_core::{FencingToken, RecordId};
use sentinel_redis::RedisStore;
use sentinel_redis::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use sentinel_redis::redis::cluster_async::ClusterConnection;
use sentinel_redis::redis::{self, ConnectionAddr, IntoConnectionInfo, RedisError, Script, Value};

use super::{Backend, Delivery, Ledger, LedgerKey, Queue, WriteOutcome};
use crate::Result;
use crate::config::StoreAccess;

/// KEYS: ledger hash, attempts list. ARGV: token, worker, '1' to skip the fence.
const WRITE: &str = r"
local tok = tonumber(ARGV[1])
local seen = redis.call('HGET', KEYS[1], 'max')
local max = tonumber(seen or '-1')
if ARGV[3] == '1' or tok >= max then
  if tok > max then redis.call('HSET', KEYS[1], 'max', ARGV[1]) end
  redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], ARGV[2])
  local verdict = 'accepted'
  if ARGV[3] == '1' then verdict = 'unfenced' end
  redis.call('RPUSH', KEYS[2], verdict .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
  return 1
end
redis.call('RPUSH', KEYS[2], 'rejected ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' below ' .. seen)
return 0
";

/// KEYS: ledger hash, attempts list. ARGV: the reconciliation's token, '1' to skip the fence.
/// Raises the fence to the token and returns the tokens whose write was applied.
const FENCE: &str = r"
local tok = tonumber(ARGV[1])
local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '-1')
if ARGV[2] ~= '1' and tok > max then redis.call('HSET', KEYS[1], 'max', ARGV[1]) end
redis.call('RPUSH', KEYS[2], 'fence ' .. ARGV[1])
local out = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then table.insert(out, string.sub(field, 3)) end
end
return out
";

/// KEYS: ready list, in-flight list. ARGV: the item. Moves it back to the end of the queue.
const NACK: &str = r"
if redis.call('LREM', KEYS[2], 1, ARGV[1]) > 0 then redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 1
";

/// The harness's side of Redis, over a standalone or a cluster connection.
#[derive(Clone)]
pub struct RedisBackend<C> {
    conn: C,
    prefix: String,
    skip_fence: bool,
    seq: Arc<AtomicU64>,
    write: Arc<Script>,
    fence: Arc<Script>,
    nack: Arc<Script>,
}

impl<C> std::fmt::Debug for RedisBackend<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Connects a reconnecting standalone connection announcing `name` (`CLIENT SETINFO LIB-NAME`),
/// through the proxy when asked.
pub async fn connect_standalone(
    access: &StoreAccess,
    name: &str,
    via_proxy: bool,
) -> Result<ConnectionManager> {
    let url = access.url.as_deref().ok_or("redis: no URL")?;
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_lib_name(name, "0");
    let mut info = info.set_redis_settings(settings);
    if let (true, Some(port)) = (via_proxy, access.proxy_port) {
        info = info.set_addr(ConnectionAddr::Tcp("127.0.0.1".to_owned(), port));
    }
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// Connects to a cluster.
pub async fn connect_cluster(access: &StoreAccess) -> Result<ClusterConnection> {
    let client =
        redis::cluster::ClusterClient::builder(access.cluster_urls.iter().map(String::as_str))
            .response_timeout(Duration::from_secs(5))
            .connection_timeout(Duration::from_secs(2))
            .build()?;
    Ok(client.get_async_connection().await?)
}

/// The whole backend over a standalone server.
pub async fn standalone(
    access: &StoreAccess,
    name: &str,
    via_proxy: bool,
    skip_fence: bool,
) -> Result<Backend> {
    let conn = connect_standalone(access, name, via_proxy).await?;
    let store = RedisStore::builder()
        .prefix(access.sentinel_prefix.clone())
        .build(conn.clone())?;
    Ok(RedisBackend::new(conn, &access.app_prefix, skip_fence).backend(Arc::new(store)))
}

/// The whole backend over a cluster.
pub async fn cluster(access: &StoreAccess, skip_fence: bool) -> Result<Backend> {
    let conn = connect_cluster(access).await?;
    let store = RedisStore::builder()
        .prefix(access.sentinel_prefix.clone())
        .build(conn.clone())?;
    Ok(RedisBackend::new(conn, &access.app_prefix, skip_fence).backend(Arc::new(store)))
}

impl<C> RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The queue and ledger under `prefix`.
    pub fn new(conn: C, prefix: &str, skip_fence: bool) -> Self {
        RedisBackend {
            conn,
            prefix: prefix.to_owned(),
            skip_fence,
            seq: Arc::new(AtomicU64::new(crate::unix_micros())),
            write: Arc::new(Script::new(WRITE)),
            fence: Arc::new(Script::new(FENCE)),
            nack: Arc::new(Script::new(NACK)),
        }
    }

    fn backend(self, store: Arc<dyn sentinel_core::CoordinationStore>) -> Backend {
        let this = Arc::new(self);
        Backend {
            store,
            queue: this.clone(),
            ledger: this,
        }
    }

    fn ready(&self) -> String {
        format!("{}:{{q}}:ready", self.prefix)
    }

    fn inflight(&self, taker: &str) -> String {
        format!("{}:{{q}}:inflight:{taker}", self.prefix)
    }

    /// The ledger hash and the attempts list of `key`, in the key's own slot.
    fn ledger_keys(&self, key: &str) -> (String, String) {
        (
            format!("{}:{{{key}}}:ledger", self.prefix),
            format!("{}:{{{key}}}:attempts", self.prefix),
        )
    }
}

#[async_trait]
impl<C> Queue for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn push(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let items: Vec<String> = keys
            .iter()
            .map(|k| format!("{}|{k}", self.seq.fetch_add(1, Ordering::Relaxed)))
            .collect();
        let mut conn = self.conn.clone();
        for chunk in items.chunks(1000) {
            let _: i64 = redis::cmd("RPUSH")
                .arg(self.ready())
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    async fn take(&self, taker: &str) -> Result<Option<Delivery>> {
        let mut conn = self.conn.clone();
        let item: Option<String> = redis::cmd("LMOVE")
            .arg(self.ready())
            .arg(self.inflight(taker))
            .arg("LEFT")
            .arg("RIGHT")
            .query_async(&mut conn)
            .await?;
        Ok(item.map(|item| {
            let key = item
                .split_once('|')
                .map_or(item.as_str(), |(_, k)| k)
                .to_owned();
            Delivery { id: item, key }
        }))
    }

    async fn ack(&self, taker: &str, delivery: &Delivery) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("LREM")
            .arg(self.inflight(taker))
            .arg(1)
            .arg(&delivery.id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn nack(&self, taker: &str, delivery: &Delivery) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .nack
            .key(self.ready())
            .key(self.inflight(taker))
            .arg(&delivery.id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn recover(&self, takers: &[String]) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut moved = 0;
        for taker in takers {
            loop {
                let item: Option<String> = redis::cmd("LMOVE")
                    .arg(self.inflight(taker))
                    .arg(self.ready())
                    .arg("RIGHT")
                    .arg("LEFT")
                    .query_async(&mut conn)
                    .await?;
                if item.is_none() {
                    break;
                }
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn pending(&self, takers: &[String]) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut total: i64 = redis::cmd("LLEN")
            .arg(self.ready())
            .query_async(&mut conn)
            .await?;
        for taker in takers {
            let n: i64 = redis::cmd("LLEN")
                .arg(self.inflight(taker))
                .query_async(&mut conn)
                .await?;
            total += n;
        }
        Ok(u64::try_from(total)?)
    }
}

#[async_trait]
impl<C> Ledger for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn write(
        &self,
        id: &RecordId,
        token: FencingToken,
        worker: &str,
        _result: &Json,
    ) -> WriteOutcome {
        let (ledger, attempts) = self.ledger_keys(id.key.as_str());
        let mut conn = self.conn.clone();
        let answer: std::result::Result<i64, RedisError> = self
            .write
            .key(ledger)
            .key(attempts)
            .arg(token.get())
            .arg(worker)
            .arg(if self.skip_fence { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok(1) => WriteOutcome::Accepted,
            Ok(_) => {
                WriteOutcome::Rejected(format!("the ledger has seen a higher token than {token}"))
            }
            // The script may have run and its reply been lost.
            Err(e) => WriteOutcome::Unknown(e.to_string()),
        }
    }

    async fn write_unfenced(&self, key: &str, token: i64, worker: &str) -> Result<()> {
        let (ledger, attempts) = self.ledger_keys(key);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .write
            .key(ledger)
            .key(attempts)
            .arg(token)
            .arg(worker)
            .arg("1")
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn fence_and_read(&self, key: &str, token: FencingToken) -> Result<Vec<i64>> {
        let (ledger, attempts) = self.ledger_keys(key);
        let mut conn = self.conn.clone();
        let tokens: Vec<String> = self
            .fence
            .key(ledger)
            .key(attempts)
            .arg(token.get())
            .arg(if self.skip_fence { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        let mut tokens = tokens
            .iter()
            .map(|t| t.parse::<i64>())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        tokens.sort_unstable();
        Ok(tokens)
    }

    async fn audit(&self, keys: &[String]) -> Result<BTreeMap<String, LedgerKey>> {
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(64) {
            let mut tasks = tokio::task::JoinSet::new();
            for key in chunk {
                let (ledger, attempts) = self.ledger_keys(key);
                let mut conn = self.conn.clone();
                let key = key.clone();
                tasks.spawn(async move {
                    let hash: BTreeMap<String, Value> = redis::cmd("HGETALL")
                        .arg(ledger)
                        .query_async(&mut conn)
                        .await?;
                    let lines: Vec<String> = redis::cmd("LRANGE")
                        .arg(attempts)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await?;
                    Ok::<_, RedisError>((key, hash, lines))
                });
            }
            while let Some(joined) = tasks.join_next().await {
                let (key, hash, lines) = joined??;
                if hash.is_empty() && lines.is_empty() {
                    continue;
                }
                let mut entry = LedgerKey::default();
                for (field, value) in &hash {
                    if let Some(token) = field.strip_prefix("w:") {
                        let worker = match value {
                            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                            other => format!("{other:?}"),
                        };
                        entry.accepted.insert(token.parse()?, worker);
                    }
                }
                for line in &lines {
                    let verdict = line.split(' ').next().unwrap_or_default();
                    match verdict {
                        "accepted" | "unfenced" => {
                            entry.attempts += 1;
                            entry.applied += 1;
                        }
                        "rejected" => {
                            entry.attempts += 1;
                            entry.rejected += 1;
                        }
                        _ => {}
                    }
                }
                out.insert(key, entry);
            }
        }
        Ok(out)
    }
}

/// Creates (or resets) the ACL user `user` with every permission on each node, so that the
/// workers' connections can be told apart from the coordinator's (`CLIENT KILL USER`).
pub async fn create_user(urls: &[String], user: &str, password: &str) -> Result<()> {
    for url in urls {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg(&["~*", "&*", "+@all"][..])
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// `redis://user:password@host:port` for `url`.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
        None => url.to_owned(),
    }
}

/// Kills the workers' connections on each node: those of ACL user `user` when given, else the
/// clients announcing `name` (Redis 7.2 and later show it in `CLIENT LIST`), or, when
/// `everyone` (a server the harness started itself), every normal client but the one asking:
/// the coordinator's own connections reconnect and its calls are retried like the workers'.
/// Returns how many were killed.
pub async fn kill_connections(
    urls: &[String],
    user: Option<&str>,
    name: &str,
    everyone: bool,
) -> Result<u64> {
    let mut killed = 0;
    for url in urls {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        if let Some(user) = user {
            let n: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "USER", user][..])
                .query_async(&mut conn)
                .await?;
            killed += u64::try_from(n)?;
            continue;
        }
        if everyone {
            let n: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                .query_async(&mut conn)
                .await?;
            killed += u64::try_from(n)?;
            continue;
        }
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await?;
        for line in list.lines() {
            let field = |f: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(f).and_then(|v| v.strip_prefix('=')))
            };
            if field("lib-name") == Some(name)
                && let Some(id) = field("id")
            {
                let n: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "ID", id][..])
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
                killed += u64::try_from(n)?;
            }
        }
    }
    Ok(killed)
}

/// Deletes every key of a run (`<prefix>:…` and `<prefix>-s:…`) from a standalone server.
pub async fn delete_prefix(url: &str, prefix: &str) -> Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut deleted = 0;
    for pattern in [format!("{prefix}:*"), format!("{prefix}-s:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: i64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += u64::try_from(n)?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}
