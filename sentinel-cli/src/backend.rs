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
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            Some("redis" | "rediss") if split(url).len() > 1 => Ok(Backend::RedisCluster),
            Some("redis" | "rediss") => Ok(Backend::Redis),
            _ => Err(InvalidInput::Malformed {
                what: "url",
                detail: format!(
                    "{} is not a postgres://, postgresql://, redis:// or rediss:// URL",
                    redact(url)
                ),
            }
            .into()),
        }
    }
}

/// The URLs of a comma-separated list: it is split only before a `scheme://`, so that a `,` in a
/// password (legal in a URL's user info) does not cut a URL in two.
pub fn split(urls: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (comma, _) in urls.match_indices(',') {
        if comma >= start && starts_with_scheme(&urls[comma + 1..]) {
            parts.push(urls[start..comma].trim());
            start = comma + 1;
        }
    }
    parts.push(urls[start..].trim());
    parts
}

/// Whether `text` starts with `scheme://` (RFC 3986: a letter, then letters, digits, `+-.`).
fn starts_with_scheme(text: &str) -> bool {
    let text = text.trim_start();
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
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
                .connect(target.url.trim())
                .await?,
        ),
        Backend::RedisCluster => Arc::new(
            RedisStore::builder()
                .prefix(&target.prefix)
                .connect_cluster(split(&target.url))
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
    // A bad name is bad input, said before anything is tried on the network.
    sentinel_postgres::Schema::new(target.schema.as_str())?;
    let pool = PostgresStore::pool_options()
        .max_connections(2)
        .connect(&target.url)
        .await
        .map_err(|e| match e {
            // The URL or one of its options is malformed (`sslmode=verfy-full`, a bad port):
            // bad input, not an unreachable server. (sqlx's message names the option, never the
            // password.)
            sqlx::Error::Configuration(source) => InvalidInput::Malformed {
                what: "postgres url",
                detail: format!("{}: {source}", redact(&target.url)),
            }
            .into(),
            other => Error::Unavailable {
                store: "postgres",
                source: format!("cannot connect to {}: {other}", redact(&target.url)).into(),
            },
        })?;
    PostgresStore::builder(pool)
        .schema(&target.schema)
        .migrate(migrate)
        .build()
        .await
}

/// The URL as it may be printed: any password replaced by `***` (in the user info or in a
/// `password` query parameter), each URL of a comma-separated list. A URL that does not parse,
/// or whose text could hide a password where the parse does not see one, is shown as its scheme
/// alone (`postgres://…`), or not at all.
pub fn redact(url: &str) -> String {
    split(url)
        .into_iter()
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(text: &str) -> String {
    let scheme = scheme_of(text);
    let hidden = || match &scheme {
        Some(scheme) if text[scheme.len()..].starts_with("://") => format!("{scheme}://…"),
        Some(scheme) => format!("{scheme}:…"),
        None => "(a URL not shown)".to_owned(),
    };
    let Some(rest) = scheme
        .as_ref()
        .and_then(|s| text[s.len()..].strip_prefix("://"))
    else {
        // `postgres:alice:pw@db` and other text without `//`: no authority to find a password
        // in, so nothing of it is shown.
        return hidden();
    };
    // An `@` after the authority is a password holding `/`, `?` or `#` unencoded (the parser
    // then reads part of it as host, port or path): show none of it.
    let authority_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    if rest[authority_end..].contains('@') {
        return hidden();
    }
    let Ok(mut url) = url::Url::parse(text) else {
        return hidden();
    };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return hidden();
    }
    if let Some(query) = url.query() {
        let query = redact_query(query);
        url.set_query(Some(&query));
    }
    url.to_string()
}

/// The URL's scheme, if `text` starts with one (then a `:`).
fn scheme_of(text: &str) -> Option<String> {
    let (scheme, _) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// A query string with the value of every parameter whose name holds `password` (`password`,
/// `sslpassword`, percent-encoded or not) replaced by `***`; the rest as written.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .map(|(k, v)| format!("{k}{v}"))
                .collect();
            if decoded.to_ascii_lowercase().contains("password") {
                format!("{name}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
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
        // A `,` in a password does not make a cluster: lists split only before a `scheme://`.
        assert_eq!(
            Backend::of("redis://:s3,cr3t@h:6379").ok(),
            Some(Backend::Redis)
        );
        assert_eq!(
            split("redis://a:1, rediss://u:p,w@b:2"),
            ["redis://a:1", "rediss://u:p,w@b:2"]
        );
        assert!(Backend::of("postgres:alice:pw@db").is_err());
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
        // Passwords the URL syntax makes awkward: a `,` (legal in userinfo), unencoded `#` `?`
        // `/` (the URL no longer parses as the password's), a query parameter, no `//`.
        for (url, secret) in [
            ("postgres://a:s3,cr3t@h/d", "cr3t"),
            ("redis://:s3,cr3t@cache:6379", "cr3t"),
            ("postgres://a:p#w0rd@h/d", "w0rd"),
            ("postgres://a:p?w0rd@h/d", "w0rd"),
            ("postgres://a:p/w0rd@h/d", "w0rd"),
            ("postgres://a:1234/w0rd@h/d", "w0rd"),
            ("postgres://a@h/d?password=s3cr3t", "s3cr3t"),
            ("postgres://a@h/d?sslmode=require&password=s3cr3t", "s3cr3t"),
            ("postgres://a@h/d?pass%77ord=s3cr3t", "s3cr3t"),
            ("postgres:a:s3cr3t@h/d", "s3cr3t"),
            ("postgres:/a:s3cr3t@h/d", "s3cr3t"),
            ("a:s3cr3t@h/d", "s3cr3t"),
            ("redis://u:p@a:1,redis://u:s3,cr3t@b:2", "cr3t"),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shows as {shown}");
            let error = Backend::of(url).map_or_else(|e| e.to_string(), |_| String::new());
            assert!(!error.contains(secret), "{url}: {error}");
        }
        assert_eq!(
            redact("postgres://a@h/d?sslmode=require&password=s3cr3t&application_name=x"),
            "postgres://a@h/d?sslmode=require&password=***&application_name=x"
        );
        assert_eq!(redact("postgres://a:s3,cr3t@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact("postgres://a:p#w0rd@h/d"), "postgres://…");
        assert_eq!(redact("postgres:a:s3cr3t@h/d"), "postgres:…");
        // What needs no hiding is shown as written.
        for url in [
            "postgres:///payments?host=/var/run/postgresql",
            "postgres://a@h/d?sslrootcert=/etc/ca.pem&sslmode=verify-full",
            "postgres://db.internal/payments",
            "redis://cache:6379/0",
        ] {
            assert_eq!(redact(url), url);
        }
        assert_eq!(
            redact("postgres://u:p@[::1]:5432/db"),
            "postgres://u:***@[::1]:5432/db"
        );
        assert_eq!(
            redact("rediss://default:pw@cache.internal:6380/#insecure"),
            "rediss://default:***@cache.internal:6380/#insecure"
        );
        assert_eq!(redact(""), "(a URL not shown)");
        assert_eq!(
            redact("rediss://h:6379/#insecure"),
            "rediss://h:6379/#insecure"
        );
    }
}
