//! The coordinator: servers, workload, faults, reconciliation, audit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;

use sentinel_core::{Event, ExecutionRecord, ExecutionState, FencingToken, ListFilter, Sentinel};
use sentinel_memory::MemoryStore;
use sentinel_redis::redis::{ConnectionAddr, IntoConnectionInfo};
use sentinel_testkit::servers::{
    self, AppendFsync, LocalPostgres, LocalRedis, RedisCluster, RedisOptions,
};

use crate::audit::{self, Action, Checkpoint, Decision, RestartCheck};
use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, chain};
use crate::config::{FaultKind, SWEEPER, Sabotage, StoreAccess, StoreKind, WorkerConfig, key_name};
use crate::fleet::{Fleet, ProcessFleet, TaskFleet};
use crate::journal::{self, Entry, Journal};
use crate::proxy::Proxy;
use crate::report::{Latency, Summary, load_table};
use crate::rng::Rng;
use crate::worker::{self, DieMode, WorkerCtx, WorkerFaults};
use crate::{Context, EXIT_HARNESS, EXIT_OK, EXIT_UNAVAILABLE, EXIT_VIOLATION, Result};

/// Everything `run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The store.
    pub store: StoreKind,
    /// Length of the delivery phase (faults run during it); then drain, reconcile, audit. The
    /// phase runs on, up to twice this long, until each fault loop has injected its fault once.
    pub duration: Duration,
    /// Worker processes (memory: task groups).
    pub workers: usize,
    /// Concurrent deliveries per worker.
    pub tasks: usize,
    /// Keys per round.
    pub keys: u32,
    /// Deliveries of each key.
    pub deliveries: u32,
    /// Rounds to deliver; `None` keeps adding rounds until the duration is up.
    pub rounds: Option<u32>,
    /// Lease ttl.
    pub ttl: Duration,
    /// Hard ttl.
    pub hard_ttl: Duration,
    /// Simulated gateway latency.
    pub work: Duration,
    /// Faults asked for.
    pub faults: BTreeSet<FaultKind>,
    /// Base period between scheduled faults (kills; other kinds are rarer).
    pub fault_every: Duration,
    /// Share of applied claims and completions whose reply is lost (with `lost`).
    pub lost_reply_rate: f64,
    /// Mean time between replies the proxy drops (with `proxy`).
    pub proxy_gap: Duration,
    /// Tries per store call in the client.
    pub retries: u32,
    /// PostgreSQL: ledger write and completion in one transaction.
    pub exactly_once: bool,
    /// An existing loopback PostgreSQL instead of a private one (no restarts).
    pub postgres_url: Option<String>,
    /// An existing loopback Redis instead of a private one (no restarts).
    pub redis_url: Option<String>,
    /// An existing loopback Redis Cluster.
    pub redis_cluster_urls: Vec<String>,
    /// Seed of every random choice.
    pub seed: u64,
    /// A deliberate bug.
    pub sabotage: Option<Sabotage>,
    /// Keep the run directory (journals, logs) even when nothing failed.
    pub keep_dir: bool,
    /// How long the queue may take to drain after the delivery phase.
    pub drain_timeout: Duration,
    /// Load mode: run once per concurrency level (workers × tasks), each on a fresh namespace.
    pub concurrency: Vec<usize>,
    /// Write the summary as JSON here.
    pub json: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The server(s) of a run.
enum Server {
    Memory,
    Postgres {
        local: Option<Arc<Mutex<LocalPostgres>>>,
        url: String,
        port: u16,
    },
    Redis {
        local: Option<Arc<Mutex<LocalRedis>>>,
        url: String,
        port: u16,
    },
    Cluster {
        _cluster: Option<RedisCluster>,
        urls: Vec<String>,
        local: bool,
    },
}

fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

fn redis_port(url: &str) -> Result<u16> {
    let info = url.into_connection_info()?;
    match info.addr() {
        ConnectionAddr::Tcp(host, port) if loopback(host) => Ok(*port),
        other => Err(format!("{other:?} is not a loopback TCP address: the harness only sends traffic to this machine").into()),
    }
}

enum StartError {
    Unavailable(String),
    Harness(String),
}

impl Server {
    async fn start(opts: &RunOptions) -> std::result::Result<Server, StartError> {
        let harness = |e: crate::AnyError| StartError::Harness(e.to_string());
        let blocking = |e: tokio::task::JoinError| StartError::Harness(e.to_string());
        match opts.store {
            StoreKind::Memory => Ok(Server::Memory),
            StoreKind::Postgres => {
                if let Some(url) = &opts.postgres_url {
                    let o = PgConnectOptions::from_str(url).map_err(|e| harness(e.into()))?;
                    if !loopback(o.get_host()) {
                        return Err(StartError::Harness(format!(
                            "{} is not a loopback host: the harness only sends traffic to this machine",
                            o.get_host()
                        )));
                    }
                    return Ok(Server::Postgres {
                        local: None,
                        url: url.clone(),
                        port: o.get_port(),
                    });
                }
                let pg = tokio::task::spawn_blocking(servers::spawn_postgres)
                    .await
                    .map_err(blocking)?
                    .map_err(|e| StartError::Unavailable(e.to_string()))?;
                Ok(Server::Postgres {
                    url: pg.url().to_owned(),
                    port: pg.port(),
                    local: Some(Arc::new(Mutex::new(pg))),
                })
            }
            StoreKind::Redis => {
                if let Some(url) = &opts.redis_url {
                    let port = redis_port(url).map_err(harness)?;
                    return Ok(Server::Redis {
                        local: None,
                        url: url.clone(),
                        port,
                    });
                }
                let options = RedisOptions {
                    appendonly: true,
                    appendfsync: AppendFsync::Always,
                };
                let redis = tokio::task::spawn_blocking(move || servers::spawn_redis(options))
                    .await
                    .map_err(blocking)?
                    .map_err(|e| StartError::Unavailable(e.to_string()))?;
                Ok(Server::Redis {
                    url: redis.url().to_owned(),
                    port: redis.port(),
                    local: Some(Arc::new(Mutex::new(redis))),
                })
            }
            StoreKind::RedisCluster => {
                if !opts.redis_cluster_urls.is_empty() {
                    for url in &opts.redis_cluster_urls {
                        redis_port(url).map_err(harness)?;
                    }
                    return Ok(Server::Cluster {
                        _cluster: None,
                        urls: opts.redis_cluster_urls.clone(),
                        local: false,
                    });
                }
                let cluster = tokio::task::spawn_blocking(|| {
                    servers::Resolver::from_process().redis_cluster()
                })
                .await
                .map_err(blocking)?
                .map_err(|e| StartError::Unavailable(e.to_string()))?;
                for url in cluster.urls() {
                    redis_port(url).map_err(harness)?;
                }
                let local = matches!(cluster.origin(), servers::Origin::Local { .. });
                Ok(Server::Cluster {
                    urls: cluster.urls().to_vec(),
                    local,
                    _cluster: Some(cluster),
                })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::Memory => "in-process".to_owned(),
            Server::Postgres {
                local: Some(_),
                port,
                ..
            } => {
                format!("private PostgreSQL, fsync on, 127.0.0.1:{port}")
            }
            Server::Postgres { port, .. } => format!("given PostgreSQL on port {port}"),
            Server::Redis {
                local: Some(_),
                port,
                ..
            } => {
                format!("private Redis, appendfsync always, 127.0.0.1:{port}")
            }
            Server::Redis { port, .. } => format!("given Redis on port {port}"),
            Server::Cluster { urls, local, .. } => format!(
                "{} Redis Cluster, {} primaries",
                if *local { "fixture" } else { "given" },
                urls.len()
            ),
        }
    }

    fn fault_available(&self, fault: FaultKind) -> std::result::Result<(), String> {
        match (fault, self) {
            (FaultKind::Kill | FaultKind::Pause | FaultKind::Lost, _) => Ok(()),
            (FaultKind::Conn | FaultKind::Proxy, Server::Memory) => {
                Err("the memory store has no connections".into())
            }
            (FaultKind::Restart, Server::Memory) => Err(
                "a memory store keeps nothing across a real restart; there is nothing to check".into(),
            ),
            (FaultKind::Conn, Server::Cluster { local: false, .. } | Server::Redis { local: None, .. }) => Err(
                "Redis 7.0 cannot name a reconnecting client's connections, so the workers' cannot be \
                 told apart from others on a server the harness did not start"
                    .into(),
            ),
            (FaultKind::Proxy, Server::Cluster { .. }) => Err(
                "cluster clients follow the nodes' announced addresses, past any proxy".into(),
            ),
            (FaultKind::Restart, Server::Cluster { .. }) => {
                Err("the cluster fixture cannot restart its nodes".into())
            }
            (FaultKind::Restart, Server::Postgres { local: None, .. } | Server::Redis { local: None, .. }) => {
                Err("the server was given, not started by the harness".into())
            }
            _ => Ok(()),
        }
    }

    async fn restart(&self, crash: bool) -> Result<()> {
        match self {
            Server::Postgres {
                local: Some(pg), ..
            } => {
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || {
                    let mut pg = lock(&pg);
                    if crash {
                        pg.kill()?;
                        pg.start()
                    } else {
                        pg.restart()
                    }
                })
                .await??;
            }
            Server::Redis { local: Some(r), .. } => {
                let r = r.clone();
                tokio::task::spawn_blocking(move || {
                    let mut r = lock(&r);
                    if crash {
                        r.kill()?;
                        r.start()
                    } else {
                        r.restart()
                    }
                })
                .await??;
            }
            _ => return Err("this server cannot be restarted".into()),
        }
        Ok(())
    }

    fn upstream_port(&self) -> Option<u16> {
        match self {
            Server::Postgres { port, .. } | Server::Redis { port, .. } => Some(*port),
            _ => None,
        }
    }
}

/// What every task of a run shares.
struct Run {
    opts: RunOptions,
    config: WorkerConfig,
    server: Arc<Server>,
    backend: Backend,
    reconciler: Sentinel,
    takers: Vec<String>,
    keys: Mutex<Vec<String>>,
    rounds: AtomicU32,
    decisions: Mutex<Vec<Decision>>,
    restarts: Mutex<Vec<RestartCheck>>,
    injected: Mutex<BTreeMap<String, u64>>,
    notes: Mutex<Vec<String>>,
    stop_faults: AtomicBool,
    /// Fault loops that have not injected their fault yet.
    unfired: AtomicUsize,
    stop_reconciler: AtomicBool,
    admin_pg: Option<PgPool>,
    rng: Mutex<Rng>,
    restarts_done: AtomicU64,
}

impl Run {
    fn count(&self, what: &str, n: u64) {
        *lock(&self.injected).entry(what.to_owned()).or_default() += n;
    }

    /// Whether the delivery phase that began at `start` is over: `--duration` has passed and
    /// every fault loop has injected its fault at least once, or twice `--duration` has passed. A
    /// fault may have to wait for its moment (a pause needs a worker mid-execution, and a worker
    /// may be restarting after a kill), and on a busy machine a short run can end before it
    /// comes: a run that names a fault should have injected it.
    fn delivery_over(&self, start: Instant) -> bool {
        let elapsed = start.elapsed();
        elapsed >= self.opts.duration * 2
            || (elapsed >= self.opts.duration && self.unfired.load(Ordering::SeqCst) == 0)
    }

    fn note(&self, what: String) {
        eprintln!("chaos: {what}");
        lock(&self.notes).push(what);
    }

    async fn pending(&self) -> Result<u64> {
        self.backend.queue.pending(&self.takers).await
    }

    /// Pushes round `round`: every key `deliveries` times, shuffled.
    async fn push_round(&self, round: u32) -> Result<()> {
        let keys: Vec<String> = (0..self.opts.keys).map(|i| key_name(round, i)).collect();
        let mut deliveries: Vec<String> = keys
            .iter()
            .flat_map(|k| std::iter::repeat_n(k.clone(), self.opts.deliveries as usize))
            .collect();
        lock(&self.rng).shuffle(&mut deliveries);
        lock(&self.keys).extend(keys);
        self.rounds.store(round + 1, Ordering::SeqCst);
        retry(Duration::from_secs(60), || {
            self.backend.queue.push(&deliveries)
        })
        .await
    }
}

/// Tries `f` until it succeeds or `patience` has passed.
async fn retry<T, F, Fut>(patience: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + patience;
    let mut failures = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    eprintln!("chaos: a coordinator call failed {failures}x, trying again: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Sleeps `d`, returning early (false) when `flag` is set.
async fn sleep_unless(flag: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if flag.load(Ordering::SeqCst) {
            return false;
        }
        tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(50))).await;
    }
    !flag.load(Ordering::SeqCst)
}

async fn list_all(s: &Sentinel, filter: ListFilter) -> sentinel_core::Result<Vec<ExecutionRecord>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list(filter.clone(), after.as_deref(), 1000).await?;
        out.extend(page.items);
        match page.next {
            Some(k) => after = Some(k.as_str().to_owned()),
            None => return Ok(out),
        }
    }
}

async fn completed_snapshot(run: &Run) -> Result<BTreeMap<String, (i64, Value)>> {
    retry(Duration::from_secs(90), || async {
        let filter = ListFilter {
            state: Some(ExecutionState::Completed),
            ..ListFilter::default()
        };
        let records = list_all(&run.reconciler, filter).await?;
        Ok(records
            .into_iter()
            .map(|r| {
                (
                    r.key.as_str().to_owned(),
                    (r.token.get(), r.result.unwrap_or(Value::Null)),
                )
            })
            .collect())
    })
    .await
}

/// Reads every completed result, restarts the server, reads them again; false when the server
/// was not restarted.
async fn restart_check(run: &Run, crash: bool) -> bool {
    let before = match completed_snapshot(run).await {
        Ok(s) => s,
        Err(e) => {
            run.note(format!(
                "restart skipped: cannot read the completed records: {e}"
            ));
            return false;
        }
    };
    if let Err(e) = run.server.restart(crash).await {
        run.note(format!("restart failed: {e}"));
        run.count("restart_failed", 1);
        return false;
    }
    run.restarts_done.fetch_add(1, Ordering::SeqCst);
    run.count("restart", 1);
    let after = match completed_snapshot(run).await {
        Ok(s) => s,
        Err(e) => {
            run.note(format!(
                "cannot read the completed records after a restart: {e}"
            ));
            return true;
        }
    };
    let lost = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    lock(&run.restarts).push(RestartCheck {
        kind: if crash { "crash" } else { "clean" }.to_owned(),
        checked: before.len() as u64,
        lost,
    });
    true
}

async fn kill_connections(run: &Run) -> Result<u64> {
    let name = &run.config.access.conn_name;
    match &*run.server {
        Server::Postgres { .. } => {
            let admin = run.admin_pg.as_ref().ok_or("no admin pool")?;
            crate::backend::postgres::kill_connections(admin, name).await
        }
        Server::Redis { url, .. } => {
            crate::backend::redis::kill_connections(std::slice::from_ref(url), None, name, true)
                .await
        }
        Server::Cluster { urls, .. } => {
            let user = worker_user(&run.config.run_id);
            crate::backend::redis::kill_connections(urls, Some(&user), name, false).await
        }
        Server::Memory => Ok(0),
    }
}

/// The ACL user the workers of run `run_id` log in as on a cluster the harness started, so that
/// killing their connections spares the coordinator's.
fn worker_user(run_id: &str) -> String {
    format!("chaos-{run_id}")
}

async fn fault_loop(
    run: Arc<Run>,
    fleet: Arc<dyn Fleet>,
    kind: FaultKind,
    period: Duration,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut fired = 0u64;
    loop {
        let wait = period.mul_f64(0.7 + 0.6 * rng.unit());
        if !sleep_unless(&run.stop_faults, wait).await {
            return;
        }
        let worker = rng.below(fleet.size() as u64) as usize;
        let injected = match kind {
            FaultKind::Kill => {
                let armed = fleet.arm_kill(worker).await;
                if armed {
                    run.count("kill_armed", 1);
                }
                armed
            }
            FaultKind::Pause => {
                // Past the ttl: the lease lapses, the reconciler fences the worker out, and its
                // late write and completion must be refused when it resumes.
                let pause = run.opts.ttl * 2 + Duration::from_millis(500);
                // A worker that is restarting, or starts no execution in time, cannot be paused:
                // the next one is tried at once, so that a period is not lost to a busy moment
                // (a short run has room for one or two pauses only).
                let mut paused = false;
                for next in 0..fleet.size() {
                    if run.stop_faults.load(Ordering::SeqCst) {
                        break;
                    }
                    let index = (worker + next) % fleet.size();
                    paused = fleet.pause(index, pause).await;
                    if paused {
                        break;
                    }
                    run.note(format!(
                        "worker {index} could not be paused; trying the next"
                    ));
                }
                paused
            }
            FaultKind::Conn => match kill_connections(&run).await {
                Ok(n) => {
                    run.count("conn_kills", 1);
                    run.count("connections_killed", n);
                    true
                }
                Err(e) => {
                    run.note(format!("killing connections failed: {e}"));
                    false
                }
            },
            FaultKind::Restart => restart_check(&run, fired % 2 == 1).await,
            FaultKind::Proxy | FaultKind::Lost => return,
        };
        if injected {
            if fired == 0 {
                run.unfired.fetch_sub(1, Ordering::SeqCst);
            }
            fired += 1;
        }
    }
}

/// Whether the record left `reconciling` under `token` (the command was applied, its reply
/// possibly lost).
async fn moved_on(run: &Run, key: &str, token: FencingToken) -> bool {
    matches!(
        run.reconciler.inspect(key).await,
        Ok(Some(r)) if r.state != ExecutionState::Reconciling || r.token != token
    )
}

/// Resolves one uncertain execution like an operator: fence it out, look at the ledger, then
/// force-complete it with the write found, or reset it and deliver it again.
async fn resolve(run: &Run, key: &str, held: Option<FencingToken>, online: bool) -> bool {
    let s = &run.reconciler;
    let token = match held {
        Some(t) => t,
        None => match s.reconcile(key).await {
            Ok(t) => t,
            Err(_) => return false, // alive again, resolved meanwhile, or unreachable: next pass
        },
    };
    let ledger = &run.backend.ledger;
    let seen = match retry(Duration::from_secs(30), || {
        ledger.fence_and_read(key, token)
    })
    .await
    {
        Ok(seen) => seen,
        Err(_) => return false, // left reconciling: the next pass finishes it
    };
    let blind = run.opts.sabotage == Some(Sabotage::SkipFence);
    let action = match seen.iter().max() {
        Some(&applied) if !blind => {
            let result =
                json!({ "token": applied, "by": "reconciler", "reconciliation": token.get() });
            if s.force_complete(key, &result).await.is_err() && !moved_on(run, key, token).await {
                return false;
            }
            Action::ForceComplete
        }
        _ => {
            if s.reset_to_claimed(key).await.is_err() && !moved_on(run, key, token).await {
                return false;
            }
            let keys = [key.to_owned()];
            if let Err(e) = retry(Duration::from_secs(60), || run.backend.queue.push(&keys)).await {
                run.note(format!(
                    "{key}: reset, but its redelivery could not be queued: {e}"
                ));
            }
            Action::Reset
        }
    };
    lock(&run.decisions).push(Decision {
        key: key.to_owned(),
        token: token.get(),
        seen,
        action,
        online,
    });
    true
}

/// One pass over the reconciliation queue (and anything this reconciler left half done).
async fn reconcile_pass(run: &Run, online: bool) -> u64 {
    let s = &run.reconciler;
    let mut resolved = 0;
    if let Ok(records) = list_all(s, ListFilter::uncertain()).await {
        for r in records {
            if resolve(run, r.key.as_str(), None, online).await {
                resolved += 1;
            }
        }
    }
    let reconciling = ListFilter {
        state: Some(ExecutionState::Reconciling),
        ..ListFilter::default()
    };
    if let Ok(records) = list_all(s, reconciling).await {
        for r in records.into_iter().filter(|r| &r.owner == s.owner()) {
            if resolve(run, r.key.as_str(), Some(r.token), online).await {
                resolved += 1;
            }
        }
    }
    resolved
}

async fn reconciler_loop(run: Arc<Run>) {
    let every = (run.opts.ttl / 2).max(Duration::from_millis(200));
    while sleep_unless(&run.stop_reconciler, every).await {
        reconcile_pass(&run, true).await;
    }
}

async fn refill_loop(run: Arc<Run>, start: Instant) {
    let low = u64::from(run.opts.keys) * u64::from(run.opts.deliveries) / 2;
    loop {
        let next = run.rounds.load(Ordering::SeqCst);
        if run.opts.rounds.is_some_and(|max| next >= max) || run.delivery_over(start) {
            return;
        }
        match run.pending().await {
            Ok(n) if n <= low => {
                if let Err(e) = run.push_round(next).await {
                    run.note(format!("cannot queue round {next}: {e}"));
                    return;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the queue is empty (true) or `patience` passes (false).
async fn drain(run: &Run, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if matches!(run.pending().await, Ok(0)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The coordinator's own worker, with no faults: delivers what is left after the workers stopped.
async fn sweep(run: &Run) -> Result<()> {
    let takers = run.takers.clone();
    retry(Duration::from_secs(30), || {
        run.backend.queue.recover(&takers)
    })
    .await?;
    let journal = Arc::new(Journal::create(
        &run.config.dir.join(format!("{SWEEPER}.jsonl")),
    )?);
    let ctx = Arc::new(WorkerCtx {
        name: SWEEPER.to_owned(),
        index: usize::MAX,
        sentinel: worker::client(run.backend.store.clone(), &run.config, "chaos-sweeper")?,
        backend: run.backend.clone(),
        journal,
        work: run.config.work,
        sabotage: None,
        faults: Arc::new(WorkerFaults::new(DieMode::Never)),
        stop: Arc::new(AtomicBool::new(false)),
        handled: AtomicU64::new(0),
    });
    worker::run_task(ctx, SWEEPER.to_owned(), true).await;
    Ok(())
}

/// Waits until no execution is alive (every worker stopped; their leases must lapse).
async fn wait_for_leases(run: &Run) {
    let deadline = Instant::now() + run.opts.hard_ttl + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (Ok(now), Ok(records)) = (
            run.backend.store.now().await,
            list_all(&run.reconciler, ListFilter::default()).await,
        ) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !records.iter().any(|r| {
            matches!(r.state, ExecutionState::Claimed | ExecutionState::Executing)
                && r.is_alive(now)
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn checkpoint(run: &Run, keys: &[String]) -> Result<Checkpoint> {
    let s = &run.reconciler;
    let now = run.backend.store.now().await?;
    let records: BTreeMap<String, ExecutionRecord> = list_all(s, ListFilter::default())
        .await?
        .into_iter()
        .map(|r| (r.key.as_str().to_owned(), r))
        .collect();
    let listed: BTreeSet<String> = list_all(s, ListFilter::uncertain())
        .await?
        .into_iter()
        .map(|r| r.key.as_str().to_owned())
        .collect();
    let mut cp = Checkpoint::default();
    for key in keys {
        match records.get(key) {
            None => cp.lost.push(key.clone()),
            Some(r) if r.state == ExecutionState::Completed => cp.completed += 1,
            Some(r) if r.is_uncertain(now) => {
                cp.uncertain += 1;
                if listed.contains(key) {
                    cp.listed += 1;
                } else {
                    cp.unlisted.push(key.clone());
                }
            }
            Some(r) if r.is_alive(now) => cp.stuck_alive.push(key.clone()),
            Some(r) if r.state == ExecutionState::Reconciling => {
                cp.stuck_reconciling.push(key.clone())
            }
            Some(_) => cp.lost.push(key.clone()),
        }
    }
    Ok(cp)
}

async fn histories(run: &Run, keys: &[String]) -> Result<BTreeMap<String, Vec<Event>>> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(32) {
        let mut tasks = JoinSet::new();
        for key in chunk {
            let s = run.reconciler.clone();
            let key = key.clone();
            tasks.spawn(async move {
                let events = s.history(&key).await;
                (key, events)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (key, events) = joined?;
            out.insert(key, events?);
        }
    }
    Ok(out)
}

/// Runs the harness; returns the exit code.
pub async fn run(opts: RunOptions) -> u8 {
    let server = match Server::start(&opts).await {
        Ok(s) => Arc::new(s),
        Err(StartError::Unavailable(e)) => {
            eprintln!(
                "sentinel-chaos: the {} backend is unavailable: {e}",
                opts.store
            );
            return EXIT_UNAVAILABLE;
        }
        Err(StartError::Harness(e)) => {
            eprintln!("sentinel-chaos: {e}");
            return EXIT_HARNESS;
        }
    };
    let levels: Vec<(usize, usize)> = if opts.concurrency.is_empty() {
        vec![(opts.workers, opts.tasks)]
    } else {
        opts.concurrency
            .iter()
            .map(|&c| {
                let procs = c.clamp(1, opts.workers.max(1));
                (procs, c.div_ceil(procs))
            })
            .collect()
    };
    let mut summaries = Vec::new();
    for (level, &(workers, tasks)) in levels.iter().enumerate() {
        match run_level(&opts, server.clone(), workers, tasks, level).await {
            Ok(summary) => {
                println!("{}", summary.render());
                summaries.push(summary);
            }
            Err(e) => {
                eprintln!("sentinel-chaos: the run failed: {}", chain(e.as_ref()));
                return EXIT_HARNESS;
            }
        }
    }
    if summaries.len() > 1 {
        println!("{}", load_table(&summaries));
    }
    if let Some(path) = &opts.json {
        let doc = if summaries.len() == 1 {
            serde_json::to_value(&summaries[0])
        } else {
            serde_json::to_value(json!({ "levels": summaries }))
        };
        let written = doc
            .map_err(crate::AnyError::from)
            .and_then(|d| Ok(serde_json::to_vec_pretty(&d)?))
            .and_then(|bytes| Ok(std::fs::write(path, bytes)?));
        if let Err(e) = written {
            eprintln!("sentinel-chaos: cannot write {}: {e}", path.display());
            return EXIT_HARNESS;
        }
    }
    if summaries.iter().any(|s| s.violations > 0) {
        EXIT_VIOLATION
    } else {
        EXIT_OK
    }
}

async fn run_level(
    opts: &RunOptions,
    server: Arc<Server>,
    workers: usize,
    tasks: usize,
    level: usize,
) -> Result<Summary> {
    let run_id = format!(
        "{:08x}",
        (crate::unix_micros() ^ (u64::from(std::process::id()) << 24)).wrapping_add(level as u64)
            as u32
    );
    let seed = opts.seed.wrapping_add(level as u64);
    let dir = std::env::temp_dir().join(format!("sentinel-chaos-{run_id}"));
    std::fs::create_dir_all(&dir)?;

    let mut enabled = BTreeSet::new();
    let mut skipped = BTreeMap::new();
    for &fault in &opts.faults {
        match server.fault_available(fault) {
            Ok(()) => {
                enabled.insert(fault);
            }
            Err(why) => {
                skipped.insert(fault.as_str().to_owned(), why);
            }
        }
    }
    let (url, cluster_urls) = match &*server {
        Server::Postgres { url, .. } | Server::Redis { url, .. } => (Some(url.clone()), vec![]),
        Server::Cluster { urls, .. } => (None, urls.clone()),
        Server::Memory => (None, vec![]),
    };
    let mut config = WorkerConfig {
        run_id: run_id.clone(),
        access: StoreAccess {
            kind: opts.store,
            url,
            cluster_urls,
            proxy_port: None,
            sentinel_schema: format!("chaos_{run_id}"),
            app_schema: format!("chaos_{run_id}_app"),
            sentinel_prefix: format!("chaos-{run_id}-s"),
            app_prefix: format!("chaos-{run_id}"),
            conn_name: format!("sentinel-chaos-{run_id}"),
        },
        namespace: format!("chaos-{run_id}"),
        ttl: opts.ttl,
        hard_ttl: opts.hard_ttl,
        tasks,
        pool_size: u32::try_from((tasks + 2).min((80 / workers.max(1)).max(2))).unwrap_or(20),
        work: opts.work,
        retries: opts.retries,
        lost_reply_rate: if enabled.contains(&FaultKind::Lost) {
            opts.lost_reply_rate
        } else {
            0.0
        },
        exactly_once: opts.exactly_once,
        sabotage: opts.sabotage,
        dir: dir.clone(),
        seed,
    };
    let conn = config.access.conn_name.clone();
    let coordinator_urls = config.access.cluster_urls.clone();
    if let (
        Server::Cluster {
            urls, local: true, ..
        },
        true,
    ) = (&*server, enabled.contains(&FaultKind::Conn))
    {
        // The cluster client cannot name its connections: the workers log in as a user of their
        // own, and the conn fault kills that user's connections only.
        let user = worker_user(&run_id);
        let password = format!("{:016x}", Rng::new(seed ^ 0xac1).next_u64());
        crate::backend::redis::create_user(urls, &user, &password)
            .await
            .context("creating the workers' ACL user")?;
        config.access.cluster_urls = urls
            .iter()
            .map(|u| crate::backend::redis::with_user(u, &user, &password))
            .collect();
    }
    let mut coordinator_config = config.clone();
    coordinator_config.access.cluster_urls = coordinator_urls;
    let backend = match opts.store {
        StoreKind::Memory => MemoryBackend::backend(
            MemoryStore::new(),
            opts.sabotage == Some(Sabotage::SkipFence),
        ),
        _ => worker::connect(
            &coordinator_config,
            &format!("{conn}-coord"),
            false,
            6,
            true,
            Duration::from_secs(30),
        )
        .await
        .context("connecting the coordinator")?,
    };
    let admin_pg = match &*server {
        Server::Postgres { .. } => Some(
            PgPoolOptions::new()
                .max_connections(1)
                .connect_with(crate::backend::postgres::connect_options(
                    &config.access,
                    &format!("{conn}-admin"),
                    false,
                )?)
                .await?,
        ),
        _ => None,
    };
    let proxy = match (enabled.contains(&FaultKind::Proxy), server.upstream_port()) {
        (true, Some(port)) => Some(Proxy::start(port, opts.proxy_gap, seed ^ 0x5eed).await?),
        _ => None,
    };
    config.access.proxy_port = proxy.as_ref().map(Proxy::port);
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let reconciler = worker::client(backend.store.clone(), &config, "chaos-reconciler")?;
    let run = Arc::new(Run {
        takers: WorkerConfig::all_takers(workers, tasks),
        opts: opts.clone(),
        config: config.clone(),
        server: server.clone(),
        backend: backend.clone(),
        reconciler,
        keys: Mutex::new(Vec::new()),
        rounds: AtomicU32::new(0),
        decisions: Mutex::new(Vec::new()),
        restarts: Mutex::new(Vec::new()),
        injected: Mutex::new(BTreeMap::new()),
        notes: Mutex::new(Vec::new()),
        stop_faults: AtomicBool::new(false),
        unfired: AtomicUsize::new(0),
        stop_reconciler: AtomicBool::new(false),
        admin_pg,
        rng: Mutex::new(Rng::new(seed)),
        restarts_done: AtomicU64::new(0),
    });
    eprintln!(
        "chaos: run {run_id} on {} ({}): {workers} workers x {tasks} tasks, faults [{}], dir {}",
        opts.store,
        server.describe(),
        enabled
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(","),
        dir.display()
    );

    // The delivery phase.
    run.push_round(0)
        .await
        .context("queueing the first round")?;
    let fleet: Arc<dyn Fleet> = match opts.store {
        StoreKind::Memory => Arc::new(TaskFleet::start(workers, config.clone(), backend.clone())?),
        _ => Arc::new(ProcessFleet::start(workers, config_path, dir.clone())?),
    };
    let start = Instant::now();
    let refill = tokio::spawn(refill_loop(run.clone(), start));
    let reconciler = tokio::spawn(reconciler_loop(run.clone()));
    let mut faults = JoinSet::new();
    let periods = [
        (FaultKind::Kill, opts.fault_every),
        (FaultKind::Conn, opts.fault_every.mul_f64(1.5)),
        (FaultKind::Pause, opts.fault_every + opts.ttl * 2),
        (FaultKind::Restart, opts.fault_every * 4),
    ];
    for (i, (kind, period)) in periods.into_iter().enumerate() {
        if enabled.contains(&kind) {
            run.unfired.fetch_add(1, Ordering::SeqCst);
            faults.spawn(fault_loop(
                run.clone(),
                fleet.clone(),
                kind,
                period,
                seed ^ (i as u64 + 1) << 40,
            ));
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if run.delivery_over(start) {
            break;
        }
        if refill.is_finished() && matches!(run.pending().await, Ok(0)) {
            break;
        }
    }
    run.stop_faults.store(true, Ordering::SeqCst);
    if let Some(p) = &proxy {
        p.set_dropping(false);
    }
    while faults.join_next().await.is_some() {}
    refill.abort();
    let drained = drain(&run, opts.drain_timeout).await;
    run.stop_reconciler.store(true, Ordering::SeqCst);
    let _ = reconciler.await;
    let drained = drained && drain(&run, opts.drain_timeout).await;
    if !drained {
        run.note(
            "the queue did not drain in time; the rest is swept after the workers stop".into(),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    fleet.stop(Duration::from_secs(60)).await;

    // Leftovers, then the end state.
    sweep(&run).await.context("sweeping the queue")?;
    wait_for_leases(&run).await;
    let keys = lock(&run.keys).clone();
    let cp = checkpoint(&run, &keys)
        .await
        .context("reading the end states")?;
    for _ in 0..10 {
        let resolved = reconcile_pass(&run, false).await;
        let pending = run.pending().await.context("counting deliveries")?;
        if pending > 0 {
            sweep(&run).await.context("sweeping the queue")?;
            wait_for_leases(&run).await;
        }
        let uncertain = list_all(&run.reconciler, ListFilter::uncertain())
            .await
            .context("listing uncertain keys")?;
        if resolved == 0 && pending == 0 && uncertain.is_empty() {
            break;
        }
    }
    if enabled.contains(&FaultKind::Restart) {
        restart_check(&run, true).await;
    }
    let records: BTreeMap<String, ExecutionRecord> = retry(Duration::from_secs(60), || async {
        Ok(list_all(&run.reconciler, ListFilter::default()).await?)
    })
    .await
    .context("listing the records")?
    .into_iter()
    .map(|r| (r.key.as_str().to_owned(), r))
    .collect();
    let histories = histories(&run, &keys).await.context("reading histories")?;
    let ledger = run
        .backend
        .ledger
        .audit(&keys)
        .await
        .context("reading the ledger")?;
    let (journals, torn) = journal::read_all(&dir)?;
    if torn > 0 {
        run.note(format!(
            "{torn} torn journal lines (processes killed mid-write) skipped"
        ));
    }

    // Load figures: every once() call of the workers (the sweeper runs after the measurement).
    let mut micros = Vec::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for (name, entries) in &journals {
        if name == SWEEPER {
            continue;
        }
        for e in entries {
            if let Entry::Done { kind, us, .. } = e {
                micros.push(*us);
                *outcomes.entry(kind.clone()).or_default() += 1;
            }
        }
    }
    let all: Vec<Entry> = journals.into_iter().flat_map(|(_, e)| e).collect();
    let decisions = lock(&run.decisions).clone();
    let restarts = lock(&run.restarts).clone();
    let mut report = audit::audit(&audit::Input {
        keys: &keys,
        records: &records,
        histories: &histories,
        ledger: &ledger,
        journal: &all,
        decisions: &decisions,
        checkpoint: &cp,
        restarts: &restarts,
    });
    report.notes.splice(0..0, lock(&run.notes).iter().cloned());

    let mut injected = lock(&run.injected).clone();
    let stats = fleet.stats();
    injected.insert("kill".into(), stats.kills.load(Ordering::Relaxed));
    injected.insert("pause".into(), stats.pauses.load(Ordering::Relaxed));
    if let Some(p) = &proxy {
        injected.insert(
            "proxy_drops".into(),
            p.stats().drops.load(Ordering::Relaxed),
        );
    }
    injected.insert("lost_claim".into(), report.lost_replies.claims_dropped);
    injected.insert(
        "lost_complete".into(),
        report.lost_replies.completions_dropped,
    );
    injected.retain(|k, v| *v > 0 || enabled.iter().any(|f| k.starts_with(f.as_str())));
    let mut unexpected = stats.unexpected_exits();
    let forced = stats.forced_stops.load(Ordering::Relaxed);
    if forced > 0 {
        unexpected.push(format!(
            "{forced} workers did not stop in time and were killed"
        ));
    }

    let ops = micros.len() as u64;
    let summary = Summary {
        store: opts.store.as_str().to_owned(),
        server: server.describe(),
        run_id: run_id.clone(),
        seed,
        workers,
        tasks,
        concurrency: workers * tasks,
        ttl_ms: u64::try_from(opts.ttl.as_millis()).unwrap_or(u64::MAX),
        keys_per_round: opts.keys,
        deliveries_per_key: opts.deliveries,
        rounds: run.rounds.load(Ordering::SeqCst),
        seconds,
        ops,
        ops_per_s: if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        },
        latency: Latency::of(&mut micros),
        outcomes,
        faults_enabled: enabled.iter().map(|f| f.as_str().to_owned()).collect(),
        faults_skipped: skipped,
        faults: injected,
        unexpected_exits: unexpected,
        violations: report.violations.len() as u64,
        audit: report,
    };

    drop(proxy);
    if summary.violations == 0 && !opts.keep_dir {
        let _ = std::fs::remove_dir_all(&dir);
        cleanup(&run).await;
    } else {
        eprintln!("chaos: journals and worker logs kept in {}", dir.display());
    }
    Ok(summary)
}

/// Removes the run's data from a server the harness did not start (private ones go away whole).
async fn cleanup(run: &Run) {
    let a = &run.config.access;
    match &*run.server {
        Server::Postgres { local: None, .. } => {
            if let Some(admin) = &run.admin_pg {
                for schema in [&a.sentinel_schema, &a.app_schema] {
                    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(admin).await;
                }
            }
        }
        Server::Redis {
            local: None, url, ..
        } => {
            let _ = crate::backend::redis::delete_prefix(url, &a.app_prefix).await;
        }
        _ => {}
    }
}
