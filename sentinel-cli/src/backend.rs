//! Which store a URL names, how to connect to it, and how to print the URL without its password.

use std::sync::Arc;

use sentinel_core::{CoordinationStore, Error, InvalidInput};
use sentinel_postgres::PostgresStore;
use sentinel_redis::RedisStore;

/// Where the records live, as chosen by the URL's scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `redis://` or `rediss://`; several comma-separated URLs name a Redis Cluster.
    Redis,
    /// `redis://a,redis://b,...`: the nodes of a cluster.
    RedisCluster,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Result<Backend, Error> {
        let scheme = url
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "redis" | "rediss" if url.contains(',') => Ok(Backend::RedisCluster),
            "redis" | "rediss" => Ok(Backend::Redis),
            _ => Err(InvalidInput::Malformed {
                what: "url",
                detail: format!(
                    "{:?} is not a postgres://, postgresql://, redis:// or rediss:// URL",
                    redact(url)
                ),
            }
            .into()),
        }
    }
}

/// How to reach the store.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL (may hold a password: print it only through [`redact`]).
    pub url: String,
    /// The PostgreSQL schema of the tables.
    pub schema: String,
    /// The Redis key prefix.
    pub prefix: String,
}

/// Connects to the store. Never runs migrations: see [`migrate`].
pub async fn connect(target: &Target) -> Result<Arc<dyn CoordinationStore>, Error> {
    Ok(match Backend::of(&target.url)? {
        Backend::Postgres => Arc::new(postgres(target, false).await?),
        Backend::Redis => Arc::new(
            RedisStore::builder()
                .prefix(&target.prefix)
                .connect(&target.url)
                .await?,
        ),
        Backend::RedisCluster => Arc::new(
            RedisStore::builder()
                .prefix(&target.prefix)
                .connect_cluster(target.url.split(',').map(str::trim))
                .await?,
        ),
    })
}

/// Creates or upgrades the PostgreSQL schema.
pub async fn migrate(target: &Target) -> Result<(), Error> {
    match Backend::of(&target.url)? {
        Backend::Postgres => postgres(target, true).await.map(drop),
        Backend::Redis | Backend::RedisCluster => Err(InvalidInput::Malformed {
            what: "migrate",
            detail: "Redis needs no schema; migrate is for PostgreSQL".to_owned(),
        }
        .into()),
    }
}

async fn postgres(target: &Target, migrate: bool) -> Result<PostgresStore, Error> {
    let pool = PostgresStore::pool_options()
        .max_connections(2)
        .connect(&target.url)
        .await
        .map_err(|e| Error::Unavailable {
            store: "postgres",
            source: format!("cannot connect to {}: {e}", redact(&target.url)).into(),
        })?;
    PostgresStore::builder(pool)
        .schema(&target.schema)
        .migrate(migrate)
        .build()
        .await
}

/// The URL with any password replaced by `***` (each of a comma-separated list).
pub fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_backend() {
        assert_eq!(
            Backend::of("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of("postgresql://h").ok(), Some(Backend::Postgres));
        assert_eq!(Backend::of("redis://h:6379").ok(), Some(Backend::Redis));
        assert_eq!(Backend::of("rediss://h").ok(), Some(Backend::Redis));
        assert_eq!(
            Backend::of("redis://a:1,redis://b:2").ok(),
            Some(Backend::RedisCluster)
        );
        assert!(Backend::of("mysql://h").is_err());
        assert!(Backend::of("").is_err());
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            redact("postgres://alice:s3cr3t@db:5432/pay?sslmode=require"),
            "postgres://alice:***@db:5432/pay?sslmode=require"
        );
        assert_eq!(
            redact("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact("postgres://alice@db/pay"), "postgres://alice@db/pay");
        assert_eq!(
            redact("redis://u:p@a:1,redis://u:q@b:2"),
            "redis://u:***@a:1,redis://u:***@b:2"
        );
        assert_eq!(redact("postgres://u:p%40ss@h/d"), "postgres://u:***@h/d");
        let error = Backend::of("mysql://root:pw@h").unwrap_err().to_string();
        assert!(!error.contains("pw@"), "{error}");
    }
}
