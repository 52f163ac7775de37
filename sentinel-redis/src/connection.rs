//! The two kinds of connection a [`RedisStore`](crate::RedisStore) runs over: a standalone server
//! through redis-rs's reconnecting [`ConnectionManager`], and a Redis Cluster through its async
//! [`ClusterConnection`].
//!
//! Both send single-slot commands the same way; they differ where a command must reach several
//! places at once: a batch of independent scripts (one pipeline to the one server, or one command
//! per slot sent concurrently to the nodes that own them) and a key scan (the one server, or every
//! primary in turn).

use std::future::Future;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Pipeline, RedisResult, Value};

mod sealed {
    pub trait Sealed {}
    impl Sealed for redis::aio::ConnectionManager {}
    impl Sealed for redis::cluster_async::ClusterConnection {}
}

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 1000;

/// A connection a [`RedisStore`](crate::RedisStore) can run over: [`ConnectionManager`]
/// (standalone) or [`ClusterConnection`] (Redis Cluster). Sealed: the store relies on how each
/// one routes commands.
pub trait RedisConnection: ConnectionLike + Clone + Send + Sync + 'static + sealed::Sealed {
    /// True for a Redis Cluster connection.
    const CLUSTER: bool;

    /// Where a batch command goes: the slot of its first key on a cluster, anything on a
    /// standalone server (batches there are one pipeline whatever their keys).
    fn group_of(key: &[u8]) -> Option<Slot>;

    /// Runs independent pipelines (each touching one slot) and returns each one's replies, in
    /// order. Standalone: all of them in one pipeline, one round trip. Cluster: each one to the
    /// node owning its slot, concurrently, so one tick costs one round trip per node.
    fn run_each(
        &self,
        pipelines: Vec<Pipeline>,
    ) -> impl Future<Output = RedisResult<Vec<RedisResult<Vec<Value>>>>> + Send;

    /// Every key matching `pattern` on every primary (duplicates possible, order arbitrary).
    fn scan(&self, pattern: Vec<u8>) -> impl Future<Output = RedisResult<Vec<Vec<u8>>>> + Send;
}

async fn scan_loop<F, Fut>(pattern: &[u8], mut send: F) -> RedisResult<Vec<Vec<u8>>>
where
    F: FnMut(Cmd) -> Fut,
    Fut: Future<Output = RedisResult<Value>>,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::from_redis_value(send(cmd).await?)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

impl RedisConnection for ConnectionManager {
    const CLUSTER: bool = false;

    fn group_of(_key: &[u8]) -> Option<Slot> {
        None
    }

    async fn run_each(
        &self,
        pipelines: Vec<Pipeline>,
    ) -> RedisResult<Vec<RedisResult<Vec<Value>>>> {
        let mut all = redis::pipe();
        let mut sizes = Vec::with_capacity(pipelines.len());
        for p in &pipelines {
            sizes.push(p.len());
            for cmd in p.cmd_iter() {
                all.add_command(cmd.clone());
            }
        }
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.clone();
        let replies: Vec<Value> = all.ignore_errors().query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        Ok(sizes
            .into_iter()
            .map(|n| {
                let part: Vec<Value> = replies.by_ref().take(n).collect();
                match part.iter().find_map(|v| match v {
                    Value::ServerError(e) => Some(e.clone()),
                    _ => None,
                }) {
                    Some(error) => Err(error.into()),
                    None => Ok(part),
                }
            })
            .collect())
    }

    async fn scan(&self, pattern: Vec<u8>) -> RedisResult<Vec<Vec<u8>>> {
        let conn = self.clone();
        scan_loop(&pattern, |cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<Value>(&mut conn).await }
        })
        .await
    }
}

impl RedisConnection for ClusterConnection {
    const CLUSTER: bool = true;

    fn group_of(key: &[u8]) -> Option<Slot> {
        Some(Slot::for_key(key))
    }

    async fn run_each(
        &self,
        pipelines: Vec<Pipeline>,
    ) -> RedisResult<Vec<RedisResult<Vec<Value>>>> {
        let calls = pipelines.into_iter().map(|p| {
            let mut conn = self.clone();
            async move { p.query_async::<Vec<Value>>(&mut conn).await }
        });
        Ok(join_all(calls).await)
    }

    async fn scan(&self, pattern: Vec<u8>) -> RedisResult<Vec<Vec<u8>>> {
        let mut conn = self.clone();
        let slots = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        let ranges: Vec<Value> = redis::from_redis_value(slots)?;
        for range in ranges {
            // [start, end, [host, port, id, ...], replicas...]
            let Value::Array(fields) = range else {
                continue;
            };
            let Some(Value::Array(primary)) = fields.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
                continue;
            };
            let host: String = redis::from_redis_value(host.clone())?;
            let port: u16 = redis::from_redis_value(port.clone())?;
            if !primaries.contains(&(host.clone(), port)) {
                primaries.push((host, port));
            }
        }
        let mut keys = Vec::new();
        for (host, port) in primaries {
            let node = conn.clone();
            let found = scan_loop(&pattern, |cmd| {
                let mut node = node.clone();
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                });
                async move { node.route_command(cmd, routing).await }
            })
            .await?;
            keys.extend(found);
        }
        Ok(keys)
    }
}
