//! Shared by the integration tests: store factories over the test servers of
//! `sentinel_testkit::servers`, and unique key prefixes.

#![allow(dead_code, clippy::unwrap_used)]

use async_trait::async_trait;
use sentinel_core::{Result, TimeSource};
use sentinel_redis::{ClusterStore, RedisStore};
use sentinel_testkit::StoreFactory;
use sentinel_testkit::servers;

/// A prefix no other store uses, under this test run's (see `servers::redis_test_prefix`).
pub fn unique_prefix() -> String {
    servers::redis_test_prefix("redis")
}

/// The shared standalone server's URL. Panics when there is none: these suites fail rather than
/// pass without a server (the fixture starts a local `redis-server` when no URL is configured).
pub fn redis_url() -> String {
    match servers::redis() {
        Ok(server) => server.url().to_owned(),
        Err(e) => panic!("redis suite: no Redis server: {e}"),
    }
}

/// The shared cluster's node URLs; panics when there is none.
pub fn cluster_urls() -> Vec<String> {
    match servers::redis_cluster() {
        Ok(cluster) => cluster.urls().to_vec(),
        Err(e) => panic!("redis cluster suite: no Redis cluster: {e}"),
    }
}

/// A fresh standalone store on `time`.
pub async fn standalone(time: TimeSource) -> RedisStore {
    RedisStore::builder()
        .prefix(unique_prefix())
        .time(time)
        .connect(&redis_url())
        .await
        .unwrap()
}

/// A fresh cluster store on `time`.
pub async fn cluster(time: TimeSource) -> ClusterStore {
    RedisStore::builder()
        .prefix(unique_prefix())
        .time(time)
        .connect_cluster(cluster_urls())
        .await
        .unwrap()
}

/// Stores over the shared standalone server: each `create` a fresh prefix, each `reopen` new
/// connections over the same prefix.
pub struct Standalone;

#[async_trait]
impl StoreFactory for Standalone {
    type Store = RedisStore;

    async fn create(&self, time: TimeSource) -> Result<RedisStore> {
        RedisStore::builder()
            .prefix(unique_prefix())
            .time(time)
            .connect(&redis_url())
            .await
    }

    async fn reopen(&self, store: &RedisStore, time: TimeSource) -> Result<RedisStore> {
        RedisStore::builder()
            .prefix(store.prefix())
            .time(time)
            .connect(&redis_url())
            .await
    }
}

/// Stores over the shared three-primary cluster.
pub struct Cluster;

#[async_trait]
impl StoreFactory for Cluster {
    type Store = ClusterStore;

    async fn create(&self, time: TimeSource) -> Result<ClusterStore> {
        RedisStore::builder()
            .prefix(unique_prefix())
            .time(time)
            .connect_cluster(cluster_urls())
            .await
    }

    async fn reopen(&self, store: &ClusterStore, time: TimeSource) -> Result<ClusterStore> {
        RedisStore::builder()
            .prefix(store.prefix())
            .time(time)
            .connect_cluster(cluster_urls())
            .await
    }
}

/// A private Redis server this test owns (stop, start, kill), from local binaries.
pub fn private_redis(options: servers::RedisOptions) -> servers::LocalRedis {
    match servers::spawn_redis(options) {
        Ok(server) => server,
        Err(e) => panic!("redis suite: cannot start a private redis-server: {e}"),
    }
}

/// A plain connection for poking at the server behind the store's back.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `INFO commandstats` as (command, calls), e.g. `("evalsha", 3)`.
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Calls of `command` since `before`.
pub fn calls_since(before: &[(String, u64)], after: &[(String, u64)], command: &str) -> u64 {
    let get = |list: &[(String, u64)]| {
        list.iter()
            .find(|(n, _)| n == command)
            .map_or(0, |(_, c)| *c)
    };
    get(after) - get(before)
}
