//! Real PostgreSQL and Redis servers for backend test suites.
//!
//! Backend suites ask for a server and get one of:
//!
//! - **shared** servers ([`postgres()`], [`redis()`], [`redis_cluster()`]), resolved once per test
//!   binary and never stopped by the tests. Each is found in this order:
//!   1. an URL in the environment ([`POSTGRES_URL_VAR`], [`REDIS_URL_VAR`],
//!      [`REDIS_CLUSTER_URLS_VAR`], the latter a comma-separated list of node URLs);
//!   2. else local binaries (`initdb`/`pg_ctl`/`postgres` on `PATH` or in
//!      `/usr/lib/postgresql/*/bin`; `redis-server`, and `redis-cli` for the cluster) started in a
//!      fresh scratch directory on a free loopback port;
//!   3. else Docker, through testcontainers (the `docker` feature, off by default);
//!   4. else a [`ServerError`] naming every attempt and why it failed.
//! - **private** servers ([`spawn_postgres`], [`spawn_redis`]) that a test owns and may stop,
//!   start, restart and kill; always from local binaries.
//!
//! Servers started here never outlive the test process: each runs beside a small `sh`
//! watchdog that reads a pipe only this process writes to, and when the process ends — normally,
//! by panic or by SIGKILL — the pipe closes and the watchdog stops the server and removes its
//! directory. Server output goes to log files in that directory (never to this process's pipes),
//! and errors quote the log's last lines.
//!
//! A suite wraps the lookup in [`require`]:
//!
//! ```no_run
//! use sentinel_testkit::servers;
//!
//! let Some(pg) = servers::require("postgres", servers::postgres()) else {
//!     return; // printed `SKIPPED: postgres suite: ...` on stderr
//! };
//! println!("CREATE DATABASE on {}", pg.url());
//! ```
//!
//! The resolution itself is a [`Resolver`] over an injected environment, so it can be tested
//! without touching the process's variables.

mod error;
mod postgres;
mod process;
mod redis;

#[cfg(feature = "docker")]
mod docker;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

pub use error::{Attempt, AttemptSource, ServerError};
pub use postgres::{LocalPostgres, PostgresBinaries};
pub use redis::{AppendFsync, LocalRedis, RedisBinaries, RedisOptions};

use postgres::Profile;
use redis::LocalRedisCluster;

/// The admin URL of a PostgreSQL server to use instead of starting one.
pub const POSTGRES_URL_VAR: &str = "SENTINEL_TEST_POSTGRES_URL";
/// The URL of a Redis server to use instead of starting one.
pub const REDIS_URL_VAR: &str = "SENTINEL_TEST_REDIS_URL";
/// Comma-separated node URLs of a Redis cluster to use instead of starting one.
pub const REDIS_CLUSTER_URLS_VAR: &str = "SENTINEL_TEST_REDIS_CLUSTER_URLS";
/// Set to `1` to make a missing backend fail its suite instead of skipping it (CI sets it).
pub const REQUIRE_BACKENDS_VAR: &str = "SENTINEL_REQUIRE_BACKENDS";
/// Names the test run (`scripts/test.sh` sets it; a short name of `[A-Za-z0-9_.-]`, as it goes
/// into key prefixes of at most 64 bytes): [`redis_test_prefix`] puts every key the run writes
/// to a shared Redis under `sentinel-test/<run>/`, which the script removes afterwards.
pub const TEST_RUN_VAR: &str = "SENTINEL_TEST_RUN";
/// Where PostgreSQL binaries are looked for after `PATH`: `<root>/<version>/bin`.
pub const POSTGRES_INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The reason given for the Docker attempt when the `docker` feature is off.
pub const DOCKER_NOT_COMPILED: &str =
    "support not compiled in (enable the `docker` feature of sentinel-testkit)";

/// Where a server came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Given by this environment variable.
    Environment {
        /// The variable's name.
        variable: &'static str,
    },
    /// Started here from local binaries, in this scratch directory.
    Local {
        /// The scratch directory (removed when the server stops for good).
        dir: PathBuf,
    },
    /// Started here in Docker from this image.
    Docker {
        /// The image, with its tag.
        image: String,
    },
}

/// What keeps a started server alive: dropping it stops the server.
#[derive(Debug)]
#[allow(dead_code)] // The handles are held only for their `Drop`.
enum Keep {
    Nothing,
    Postgres(Box<LocalPostgres>),
    Redis(Box<LocalRedis>),
    Cluster(Box<LocalRedisCluster>),
    #[cfg(feature = "docker")]
    Docker(docker::Containers),
}

/// A PostgreSQL server for a suite to create its databases or schemas in.
#[derive(Debug)]
pub struct PostgresServer {
    url: String,
    origin: Origin,
    _keep: Keep,
}

impl PostgresServer {
    /// An admin URL (a superuser on the `postgres` database). Callers `CREATE DATABASE` or
    /// `CREATE SCHEMA` themselves, with unique names, since suites share the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the server came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// A Redis server. Suites share it: isolate by key prefix (or `SELECT` a database).
#[derive(Debug)]
pub struct RedisServer {
    url: String,
    origin: Origin,
    _keep: Keep,
}

impl RedisServer {
    /// `redis://host:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the server came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// A Redis cluster of three primaries and no replicas, all slots assigned.
#[derive(Debug)]
pub struct RedisCluster {
    urls: Vec<String>,
    origin: Origin,
    _keep: Keep,
}

impl RedisCluster {
    /// The URLs of its nodes (`redis://host:port`), any of which a cluster client can start from.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Where the cluster came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// Finds or starts servers, reading variables from an environment it was given: the process's
/// own ([`Resolver::from_process`]) or a fixed map ([`Resolver::from_vars`]), so that tests of the
/// resolution need not change the process environment.
///
/// Variables it reads: the three URL variables, `PATH` (for every binary), `TMPDIR` (where
/// scratch directories go; `/tmp` when unset) and [`REQUIRE_BACKENDS_VAR`]. An empty value counts
/// as unset.
#[derive(Debug, Clone)]
pub struct Resolver {
    vars: Option<HashMap<String, String>>,
    postgres_roots: Vec<PathBuf>,
    docker: bool,
}

impl Resolver {
    /// Reads this process's environment, at each lookup.
    pub fn from_process() -> Self {
        Self {
            vars: None,
            postgres_roots: vec![PathBuf::from(POSTGRES_INSTALL_ROOT)],
            docker: true,
        }
    }

    /// Reads only these variables (pass `PATH` for local binaries to be found).
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            ..Self::from_process()
        }
    }

    /// Where PostgreSQL binaries are looked for after `PATH` (`<root>/<version>/bin`, highest
    /// version first); [`POSTGRES_INSTALL_ROOT`] by default.
    pub fn postgres_roots(mut self, roots: impl IntoIterator<Item = PathBuf>) -> Self {
        self.postgres_roots = roots.into_iter().collect();
        self
    }

    /// Whether the Docker step may run (it does by default when the feature is compiled in).
    pub fn docker(mut self, enabled: bool) -> Self {
        self.docker = enabled;
        self
    }

    /// A variable's value; `None` when unset or empty.
    pub fn var(&self, name: &str) -> Option<String> {
        let value = match &self.vars {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// Whether [`REQUIRE_BACKENDS_VAR`] asks for backends to be required (`1`, `true` or `yes`).
    pub fn backends_required(&self) -> bool {
        self.var(REQUIRE_BACKENDS_VAR).is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    }

    /// Where scratch directories are made.
    pub fn scratch_base(&self) -> PathBuf {
        PathBuf::from(self.var("TMPDIR").unwrap_or_else(|| "/tmp".to_owned()))
    }

    /// The PostgreSQL binaries this resolver would start.
    pub fn postgres_binaries(&self) -> Result<PostgresBinaries, String> {
        PostgresBinaries::find(self.var("PATH").as_deref(), &self.postgres_roots)
    }

    /// The Redis binaries this resolver would start.
    pub fn redis_binaries(&self) -> Result<RedisBinaries, String> {
        RedisBinaries::find(self.var("PATH").as_deref())
    }

    /// Resolves a PostgreSQL server: environment, local binaries (tuned for speed: no fsync),
    /// Docker. A server started here stops when the result is dropped or the process ends.
    pub fn postgres(&self) -> Result<PostgresServer, ServerError> {
        let mut attempts = Vec::new();
        match self.var(POSTGRES_URL_VAR) {
            Some(url) => {
                return Ok(PostgresServer {
                    url: url.trim().to_owned(),
                    origin: Origin::Environment {
                        variable: POSTGRES_URL_VAR,
                    },
                    _keep: Keep::Nothing,
                });
            }
            None => attempts.push(not_set(POSTGRES_URL_VAR)),
        }
        match self.local_postgres(Profile::Fast) {
            Ok(local) => {
                return Ok(PostgresServer {
                    url: local.url().to_owned(),
                    origin: local.origin(),
                    _keep: Keep::Postgres(Box::new(local)),
                });
            }
            Err(reason) => attempts.push(Attempt::new(AttemptSource::LocalBinaries, reason)),
        }
        match self.docker_step(|| self.docker_postgres()) {
            Ok(server) => return Ok(server),
            Err(reason) => attempts.push(Attempt::new(AttemptSource::Docker, reason)),
        }
        Err(ServerError::Unavailable {
            server: "postgres",
            attempts,
        })
    }

    /// Resolves a Redis server: environment, local `redis-server` (no persistence), Docker.
    pub fn redis(&self) -> Result<RedisServer, ServerError> {
        let mut attempts = Vec::new();
        match self.var(REDIS_URL_VAR) {
            Some(url) => {
                return Ok(RedisServer {
                    url: url.trim().to_owned(),
                    origin: Origin::Environment {
                        variable: REDIS_URL_VAR,
                    },
                    _keep: Keep::Nothing,
                });
            }
            None => attempts.push(not_set(REDIS_URL_VAR)),
        }
        let local = self.redis_binaries().and_then(|bins| {
            LocalRedis::create(&bins, &self.scratch_base(), RedisOptions::default())
        });
        match local {
            Ok(local) => {
                return Ok(RedisServer {
                    url: local.url().to_owned(),
                    origin: Origin::Local {
                        dir: local.dir().to_path_buf(),
                    },
                    _keep: Keep::Redis(Box::new(local)),
                });
            }
            Err(reason) => attempts.push(Attempt::new(AttemptSource::LocalBinaries, reason)),
        }
        match self.docker_step(|| self.docker_redis()) {
            Ok(server) => return Ok(server),
            Err(reason) => attempts.push(Attempt::new(AttemptSource::Docker, reason)),
        }
        Err(ServerError::Unavailable {
            server: "redis",
            attempts,
        })
    }

    /// Resolves a three-primary Redis cluster: environment (comma-separated node URLs), local
    /// `redis-server --cluster-enabled yes` ×3 joined by `redis-cli --cluster create`, Docker.
    pub fn redis_cluster(&self) -> Result<RedisCluster, ServerError> {
        let mut attempts = Vec::new();
        let urls: Vec<String> = self
            .var(REDIS_CLUSTER_URLS_VAR)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            attempts.push(not_set(REDIS_CLUSTER_URLS_VAR));
        } else {
            return Ok(RedisCluster {
                urls,
                origin: Origin::Environment {
                    variable: REDIS_CLUSTER_URLS_VAR,
                },
                _keep: Keep::Nothing,
            });
        }
        let local = self
            .redis_binaries()
            .and_then(|bins| LocalRedisCluster::create(&bins, &self.scratch_base()));
        match local {
            Ok(local) => {
                return Ok(RedisCluster {
                    urls: local.urls(),
                    origin: Origin::Local {
                        dir: local.dir().to_path_buf(),
                    },
                    _keep: Keep::Cluster(Box::new(local)),
                });
            }
            Err(reason) => attempts.push(Attempt::new(AttemptSource::LocalBinaries, reason)),
        }
        match self.docker_step(|| self.docker_redis_cluster()) {
            Ok(cluster) => return Ok(cluster),
            Err(reason) => attempts.push(Attempt::new(AttemptSource::Docker, reason)),
        }
        Err(ServerError::Unavailable {
            server: "redis cluster",
            attempts,
        })
    }

    /// Starts a private PostgreSQL from local binaries, with durable settings (`fsync = on`).
    pub fn spawn_postgres(&self) -> Result<LocalPostgres, ServerError> {
        self.local_postgres(Profile::Durable)
            .map_err(|reason| local_only("postgres", reason))
    }

    /// Starts a private Redis from local binaries.
    pub fn spawn_redis(&self, options: RedisOptions) -> Result<LocalRedis, ServerError> {
        self.redis_binaries()
            .and_then(|bins| LocalRedis::create(&bins, &self.scratch_base(), options))
            .map_err(|reason| local_only("redis", reason))
    }

    fn local_postgres(&self, profile: Profile) -> Result<LocalPostgres, String> {
        let bins = self.postgres_binaries()?;
        LocalPostgres::create(
            &bins,
            self.var("PATH").as_deref(),
            &self.scratch_base(),
            profile,
        )
    }

    fn docker_step<T>(&self, start: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        if !self.docker {
            return Err("skipped: disabled for this resolver".to_owned());
        }
        #[cfg(feature = "docker")]
        {
            start()
        }
        #[cfg(not(feature = "docker"))]
        {
            drop(start);
            Err(DOCKER_NOT_COMPILED.to_owned())
        }
    }

    #[cfg(feature = "docker")]
    fn docker_postgres(&self) -> Result<PostgresServer, String> {
        let (url, image, containers) = docker::postgres(self)?;
        Ok(PostgresServer {
            url,
            origin: Origin::Docker { image },
            _keep: Keep::Docker(containers),
        })
    }

    #[cfg(feature = "docker")]
    fn docker_redis(&self) -> Result<RedisServer, String> {
        let (url, image, containers) = docker::redis(self)?;
        Ok(RedisServer {
            url,
            origin: Origin::Docker { image },
            _keep: Keep::Docker(containers),
        })
    }

    #[cfg(feature = "docker")]
    fn docker_redis_cluster(&self) -> Result<RedisCluster, String> {
        let (urls, image, containers) = docker::redis_cluster(self)?;
        Ok(RedisCluster {
            urls,
            origin: Origin::Docker { image },
            _keep: Keep::Docker(containers),
        })
    }

    #[cfg(not(feature = "docker"))]
    fn docker_postgres(&self) -> Result<PostgresServer, String> {
        Err(DOCKER_NOT_COMPILED.to_owned())
    }

    #[cfg(not(feature = "docker"))]
    fn docker_redis(&self) -> Result<RedisServer, String> {
        Err(DOCKER_NOT_COMPILED.to_owned())
    }

    #[cfg(not(feature = "docker"))]
    fn docker_redis_cluster(&self) -> Result<RedisCluster, String> {
        Err(DOCKER_NOT_COMPILED.to_owned())
    }
}

fn not_set(variable: &'static str) -> Attempt {
    Attempt::new(AttemptSource::Environment(variable), "not set")
}

fn local_only(server: &'static str, reason: String) -> ServerError {
    ServerError::Unavailable {
        server,
        attempts: vec![Attempt::new(AttemptSource::LocalBinaries, reason)],
    }
}

/// The shared PostgreSQL server of this test binary, resolved on first use (see the module
/// docs for the order). A failure is remembered too: every caller gets the same error.
pub fn postgres() -> Result<&'static PostgresServer, ServerError> {
    static SERVER: OnceLock<Result<PostgresServer, ServerError>> = OnceLock::new();
    SERVER
        .get_or_init(|| Resolver::from_process().postgres())
        .as_ref()
        .map_err(Clone::clone)
}

/// The shared Redis server of this test binary, resolved on first use.
pub fn redis() -> Result<&'static RedisServer, ServerError> {
    static SERVER: OnceLock<Result<RedisServer, ServerError>> = OnceLock::new();
    SERVER
        .get_or_init(|| Resolver::from_process().redis())
        .as_ref()
        .map_err(Clone::clone)
}

/// The shared three-primary Redis cluster of this test binary, resolved on first use.
pub fn redis_cluster() -> Result<&'static RedisCluster, ServerError> {
    static CLUSTER: OnceLock<Result<RedisCluster, ServerError>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| Resolver::from_process().redis_cluster())
        .as_ref()
        .map_err(Clone::clone)
}

/// A private PostgreSQL the caller owns (for restart tests), from local binaries, with durable
/// settings. Dropping it stops it and removes its directory.
pub fn spawn_postgres() -> Result<LocalPostgres, ServerError> {
    Resolver::from_process().spawn_postgres()
}

/// A private Redis the caller owns (for restart tests), from local binaries. Its data directory
/// is kept across restarts; dropping it stops it and removes the directory.
pub fn spawn_redis(options: RedisOptions) -> Result<LocalRedis, ServerError> {
    Resolver::from_process().spawn_redis(options)
}

/// A Redis key prefix no other store uses, for a store a test creates on a shared server:
/// `sentinel-test/<run>/<label>-<16 hex digits>`, where `<run>` is [`TEST_RUN_VAR`] (`local` when
/// unset). A shared server outlives the run, so the run's keys stay behind unless something
/// removes them: `scripts/test.sh` deletes `sentinel-test/<run>/*` when it ends.
pub fn redis_test_prefix(label: &str) -> String {
    let run = run_name(std::env::var(TEST_RUN_VAR).ok());
    format!(
        "sentinel-test/{run}/{label}-{:016x}",
        sentinel_core::RequestId::random().as_u128() as u64
    )
}

/// Whether this process's environment sets [`REQUIRE_BACKENDS_VAR`].
pub fn backends_required() -> bool {
    Resolver::from_process().backends_required()
}

/// What a backend suite calls with the result of a lookup: the server when there is one. When
/// there is none, it panics with the error if [`REQUIRE_BACKENDS_VAR`] is set (CI), and
/// otherwise prints `SKIPPED: <name> suite: <why>` to stderr — past the test harness's capture,
/// so it shows — and returns `None`.
pub fn require<T>(name: &str, found: Result<T, ServerError>) -> Option<T> {
    require_with(backends_required(), name, found)
}

/// [`require`] with the "required" flag given instead of read from the environment.
pub fn require_with<T>(required: bool, name: &str, found: Result<T, ServerError>) -> Option<T> {
    match found {
        Ok(server) => Some(server),
        Err(error) if required => {
            panic!("{name} suite: {REQUIRE_BACKENDS_VAR}=1 requires its server, but {error}")
        }
        Err(error) => {
            let line = skipped_message(name, &error);
            // Straight to the stderr handle: `eprintln!` would be captured by libtest and only
            // shown for failing tests.
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            None
        }
    }
}

/// The run's name in test key prefixes: the value of [`TEST_RUN_VAR`], `local` when unset or empty.
fn run_name(var: Option<String>) -> String {
    var.filter(|run| !run.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

/// The line [`require`] prints when it skips: `SKIPPED: <name> suite: <error>`.
pub fn skipped_message(name: &str, error: &ServerError) -> String {
    format!(
        "SKIPPED: {name} suite: {error}\n  (set {REQUIRE_BACKENDS_VAR}=1 to make this a failure)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_is_named_by_its_variable_else_local() {
        assert_eq!(run_name(Some("ci-42".to_owned())), "ci-42");
        assert_eq!(run_name(Some(String::new())), "local");
        assert_eq!(run_name(None), "local");
    }

    #[test]
    fn redis_test_prefixes_are_distinct_short_and_under_the_run() {
        let a = redis_test_prefix("redis");
        let b = redis_test_prefix("redis");
        assert_ne!(a, b);
        for prefix in [&a, &b] {
            assert!(prefix.starts_with("sentinel-test/"), "{prefix}");
            assert!(prefix.contains("/redis-"), "{prefix}");
            // What a Redis store accepts as a prefix: at most 64 bytes of [A-Za-z0-9_.:/-].
            assert!(prefix.len() <= 64, "{prefix}");
            assert!(
                prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b)),
                "{prefix}"
            );
        }
    }
}
