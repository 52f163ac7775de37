//! What a run is made of: the store, the workload, the faults; and what a worker process is told.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which store the run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// The in-memory store: workers are task groups in the coordinator's process.
    Memory,
    /// PostgreSQL (a private durable instance unless `--postgres-url` is given).
    Postgres,
    /// Standalone Redis (a private instance with `appendonly yes`, `appendfsync always` unless
    /// `--redis-url` is given).
    Redis,
    /// A three-primary Redis Cluster from the test fixtures (or `--redis-cluster-urls`).
    RedisCluster,
}

impl StoreKind {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Postgres => "postgres",
            StoreKind::Redis => "redis",
            StoreKind::RedisCluster => "redis-cluster",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StoreKind::Memory),
            "postgres" | "pg" => Ok(StoreKind::Postgres),
            "redis" => Ok(StoreKind::Redis),
            "redis-cluster" | "cluster" => Ok(StoreKind::RedisCluster),
            other => Err(format!(
                "unknown store {other:?}: memory, postgres, redis or redis-cluster"
            )),
        }
    }
}

/// One kind of fault the harness can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A worker kills itself with `kill -9` right after its ledger write was accepted and before
    /// `once` records the completion (memory: the worker's tasks are aborted there).
    Kill,
    /// A worker is stopped (SIGSTOP) for longer than its ttl, then resumed (memory: a task stalls
    /// past the hard ttl before its ledger write).
    Pause,
    /// The workers' connections are killed server-side (`pg_terminate_backend`, `CLIENT KILL`).
    Conn,
    /// The server is restarted mid-run (cleanly and by SIGKILL / immediate shutdown, in turn).
    Restart,
    /// A loopback TCP proxy between the workers and the server drops connections right after the
    /// server's reply arrived, before the client gets it.
    Proxy,
    /// Replies of applied claims and completions are dropped deterministically by a store
    /// decorator in the workers: the client's retry must adopt its own claim, and a repeated
    /// completion must be accepted.
    Lost,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Conn,
        FaultKind::Restart,
        FaultKind::Proxy,
        FaultKind::Lost,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Conn => "conn",
            FaultKind::Restart => "restart",
            FaultKind::Proxy => "proxy",
            FaultKind::Lost => "lost",
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown fault {s:?}: kill, pause, conn, restart, proxy or lost")
            })
    }
}

/// Parses a comma-separated fault list (`all` and `none` allowed).
pub fn parse_faults(s: &str) -> Result<BTreeSet<FaultKind>, String> {
    match s.trim() {
        "all" => Ok(FaultKind::ALL.into_iter().collect()),
        "none" | "" => Ok(BTreeSet::new()),
        list => list.split(',').map(|f| f.trim().parse()).collect(),
    }
}

/// A deliberate bug, to prove the audit catches what it claims to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sabotage {
    /// When `once` replays a cached result, the worker applies the side effect again anyway,
    /// bypassing the fence (a client that ignores Sentinel's answer).
    DoubleApply,
    /// The ledger accepts every write, whatever its token (a downstream without a fence), and
    /// the reconciler resets uncertain keys without looking at the ledger.
    SkipFence,
}

impl FromStr for Sabotage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "double-apply" => Ok(Sabotage::DoubleApply),
            "skip-fence" => Ok(Sabotage::SkipFence),
            other => Err(format!(
                "unknown sabotage {other:?}: double-apply or skip-fence"
            )),
        }
    }
}

/// Where the workers find the store, its ledger and its queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreAccess {
    /// Which store.
    pub kind: StoreKind,
    /// PostgreSQL URL, or the standalone Redis URL.
    pub url: Option<String>,
    /// Redis Cluster node URLs.
    pub cluster_urls: Vec<String>,
    /// Workers connect to this loopback port instead of the URL's (the fault proxy).
    pub proxy_port: Option<u16>,
    /// PostgreSQL: the schema of Sentinel's tables.
    pub sentinel_schema: String,
    /// PostgreSQL: the schema of the harness's tables (queue, ledger, attempts).
    pub app_schema: String,
    /// Redis: the key prefix of Sentinel's records.
    pub sentinel_prefix: String,
    /// Redis: the key prefix of the harness's keys.
    pub app_prefix: String,
    /// The name connections announce (`application_name`, `CLIENT SETINFO LIB-NAME`), so the
    /// coordinator kills only the workers' connections.
    pub conn_name: String,
}

/// Everything a worker needs; written by the coordinator as JSON, read by `worker --config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The run's id.
    pub run_id: String,
    /// The store.
    pub access: StoreAccess,
    /// Sentinel's namespace for this run.
    pub namespace: String,
    /// The lease ttl.
    pub ttl: Duration,
    /// The hard ttl.
    pub hard_ttl: Duration,
    /// Concurrent deliveries per worker.
    pub tasks: usize,
    /// PostgreSQL: connections per worker pool.
    pub pool_size: u32,
    /// The simulated duration of the payment gateway call.
    pub work: Duration,
    /// How many times the client tries a store call that failed transiently.
    pub retries: u32,
    /// Probability that an applied claim's or completion's reply is dropped (0 disables).
    pub lost_reply_rate: f64,
    /// PostgreSQL: record the completion in the ledger's transaction (`complete_in`).
    pub exactly_once: bool,
    /// A deliberate bug, if any.
    pub sabotage: Option<Sabotage>,
    /// Where the journals go.
    pub dir: PathBuf,
    /// Seed of the workers' random choices (mixed with the worker's index).
    pub seed: u64,
}

impl WorkerConfig {
    /// The queue identity of task `task` of worker `index`: stable across the worker's
    /// incarnations, so a restarted worker finds what its predecessor held.
    pub fn taker(index: usize, task: usize) -> String {
        format!("w{index}.t{task}")
    }

    /// Every taker of `workers` workers with `tasks` tasks, plus the coordinator's sweeper.
    pub fn all_takers(workers: usize, tasks: usize) -> Vec<String> {
        let mut takers: Vec<String> = (0..workers)
            .flat_map(|w| (0..tasks).map(move |t| Self::taker(w, t)))
            .collect();
        takers.push(SWEEPER.to_owned());
        takers
    }
}

/// The queue identity of the coordinator's own sweeper.
pub const SWEEPER: &str = "sweeper";

/// The key of the `index`th payment of round `round`.
pub fn key_name(round: u32, index: u32) -> String {
    format!("r{round:03}-p{index:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_lists() {
        assert_eq!(parse_faults("all").map(|s| s.len()), Ok(6));
        assert_eq!(parse_faults("none").map(|s| s.len()), Ok(0));
        let two = parse_faults("kill, pause").unwrap();
        assert!(two.contains(&FaultKind::Kill) && two.contains(&FaultKind::Pause));
        assert!(parse_faults("kill,nope").is_err());
        assert_eq!("redis-cluster".parse(), Ok(StoreKind::RedisCluster));
    }

    #[test]
    fn takers_are_stable_and_distinct() {
        let all = WorkerConfig::all_takers(3, 2);
        assert_eq!(all.len(), 7);
        assert_eq!(all[0], "w0.t0");
        assert_eq!(all[6], SWEEPER);
        assert_eq!(key_name(2, 17), "r002-p00017");
    }
}
