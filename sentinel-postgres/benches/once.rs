//! `once()` on PostgreSQL against the minimal SQL for the same work, on the same server and the
//! same pool, in one run.
//!
//! ```sh
//! cargo bench -p sentinel-postgres --bench once
//! SENTINEL_BENCH_POSTGRES_URL=postgres://user@host/db SENTINEL_BENCH_SECONDS=5 cargo bench -p sentinel-postgres --bench once
//! ```
//!
//! Scenarios, each at 1 and 8 concurrent workers for `SENTINEL_BENCH_SECONDS` (default 2) per
//! side, the baseline and `once()` taking turns in four slices (ABBA) so that a machine whose
//! speed drifts slows both alike:
//!
//! - **fresh**: `once()` on a key never seen (claim-and-start, then complete) vs the baseline
//!   `INSERT … ON CONFLICT DO NOTHING RETURNING` + `UPDATE`;
//! - **cached**: `once()` on a completed key vs the baseline `SELECT`.
//!
//! Per operation it also reports CPU time: the bench process's, all threads ("client cpu"), and,
//! when the server runs on this machine (a loopback or socket address), that of every process
//! named `postgres` ("server cpu": the backends, and the WAL writer and checkpointer that their
//! writes keep busy). The client and the server share the machine's cores, so on a small machine
//! the throughput follows the two together.
//!
//! The store runs with its default `in_flight` (concurrent claims and completions beyond it share
//! statements); `SENTINEL_BENCH_IN_FLIGHT=0` sends every call alone, to compare.
//!
//! Round trips are counted, not assumed: a second pool goes through a proxy that reads the
//! PostgreSQL frontend protocol and classifies every exchange the client waits on (see
//! `tests/common/proxy.rs`). The server is `SENTINEL_BENCH_POSTGRES_URL`, else
//! `SENTINEL_TEST_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`; it must be
//! reachable (the run fails otherwise). Everything happens in a fresh schema, dropped at the end.
//!
//! Run by `cargo test --all-targets` (without `--bench`), it is a smoke test instead: a tenth of a
//! second per scenario on the test server of `sentinel_testkit::servers`, failing when a
//! round-trip goal is missed (throughput is not judged there).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sentinel_core::{Failure, Once, Sentinel};
use sentinel_postgres::PostgresStore;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool};

use proxy::{CountingProxy, Counts};

const WORKERS: [usize; 2] = [1, 8];
const COUNTED_OPS: u64 = 300;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn cached_keys() -> u64 {
    if benchmarking() { 2_000 } else { 100 }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("benchmark failed: {error}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    Fresh,
    Cached,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Baseline,
    Sentinel,
}

/// Everything a scenario needs: the once() client and the baseline's SQL, over one pool.
struct Bench {
    pool: PgPool,
    /// The server runs on this machine: its processes' CPU time can be read.
    server_is_local: bool,
    sentinel: Sentinel,
    schema: String,
}

/// Keys are unique across every scenario, worker and pool.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

impl Bench {
    fn fresh_key(&self) -> String {
        format!("k{}", NEXT_KEY.fetch_add(1, Ordering::Relaxed))
    }

    async fn once(&self, key: &str) {
        let outcome: Once<String> = self
            .sentinel
            .once(key, |ctx| async move {
                Ok::<_, Failure>(format!("ch_{}", ctx.token()))
            })
            .await
            .expect("once() answers");
        assert!(
            outcome.is_executed() || outcome.is_cached(),
            "{}",
            outcome.kind()
        );
    }

    async fn baseline_fresh(&self, key: &str) {
        let schema = &self.schema;
        let claimed: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".baseline (namespace, key, state, owner, token, lease_expires_at) \
             VALUES ($1, $2, 'executing', $3, $4, clock_timestamp() + interval '30 seconds') \
             ON CONFLICT (namespace, key) DO NOTHING RETURNING token"
        )))
        .bind("bench")
        .bind(key)
        .bind("bench-worker")
        .bind(1_i64)
        .fetch_optional(&self.pool)
        .await
        .expect("baseline insert");
        let (token,) = claimed.expect("a fresh key is inserted");
        let receipt = format!("\"ch_{token}\"");
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{schema}\".baseline SET state = 'completed', result = $3::json \
             WHERE namespace = $1 AND key = $2 AND token = $4"
        )))
        .bind("bench")
        .bind(key)
        .bind(receipt.as_str())
        .bind(token)
        .execute(&self.pool)
        .await
        .expect("baseline update");
    }

    async fn baseline_cached(&self, key: &str) {
        let schema = &self.schema;
        let row: Option<(String, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT state, result::text FROM \"{schema}\".baseline WHERE namespace = $1 AND key = $2"
        )))
        .bind("bench")
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .expect("baseline select");
        assert!(row.is_some_and(|(state, _)| state == "completed"));
    }

    async fn op(&self, who: Who, work: Work, n: u64) {
        match (who, work) {
            (Who::Sentinel, Work::Fresh) => self.once(&self.fresh_key()).await,
            (Who::Sentinel, Work::Cached) => self.once(&format!("done{}", n % cached_keys())).await,
            (Who::Baseline, Work::Fresh) => self.baseline_fresh(&self.fresh_key()).await,
            (Who::Baseline, Work::Cached) => {
                self.baseline_cached(&format!("done{}", n % cached_keys()))
                    .await
            }
        }
    }
}

struct Measured {
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU time per operation, µs: this process, and the server's processes if they are local.
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn of(mut latencies: Vec<Duration>, elapsed: Duration, cpu: CpuTime) -> Measured {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        let ops = latencies.len() as u64;
        Measured {
            ops,
            elapsed,
            p50: at(0.50),
            p99: at(0.99),
            client_cpu: cpu.client.map(|t| t / ops as f64),
            server_cpu: cpu.server.map(|t| t / ops as f64),
        }
    }
}

/// CPU time (µs) spent so far, or during a run: `None` where it cannot be read.
#[derive(Clone, Copy)]
struct CpuTime {
    client: Option<f64>,
    server: Option<f64>,
}

impl CpuTime {
    const ZERO: CpuTime = CpuTime {
        client: Some(0.0),
        server: Some(0.0),
    };

    fn now(server_is_local: bool) -> CpuTime {
        CpuTime {
            client: sentinel_testkit::cpu::this_process_micros(),
            server: server_is_local
                .then(|| sentinel_testkit::cpu::processes_named_micros("postgres"))
                .flatten(),
        }
    }

    /// Adds the time spent from `before` to `after` (unknown from the first reading missing on).
    fn add_span(&mut self, before: CpuTime, after: CpuTime) {
        let span = |total: Option<f64>, b: Option<f64>, a: Option<f64>| Some(total? + (a? - b?));
        self.client = span(self.client, before.client, after.client);
        self.server = span(self.server, before.server, after.server);
    }
}

/// Slices per scenario: the baseline and once() take turns, so that a machine whose speed drifts
/// (shared cores, a shared disk) slows both alike.
const SLICES: u32 = 4;

/// The baseline and once(), `for_` each, in alternating slices.
async fn measure_pair(
    bench: &Arc<Bench>,
    work: Work,
    workers: usize,
    for_: Duration,
) -> (Measured, Measured) {
    // Warm every connection's statement cache first.
    for who in [Who::Baseline, Who::Sentinel] {
        drive(bench, who, work, workers, Duration::from_millis(200)).await;
    }
    let slice = for_ / SLICES;
    let mut sides = [
        (Vec::new(), Duration::ZERO, CpuTime::ZERO),
        (Vec::new(), Duration::ZERO, CpuTime::ZERO),
    ];
    for n in 0..SLICES {
        // ABBA order: neither side always goes first.
        let order = if n % 2 == 0 {
            [Who::Baseline, Who::Sentinel]
        } else {
            [Who::Sentinel, Who::Baseline]
        };
        for who in order {
            let side = &mut sides[usize::from(who == Who::Sentinel)];
            let (started, cpu) = (Instant::now(), CpuTime::now(bench.server_is_local));
            side.0.extend(drive(bench, who, work, workers, slice).await);
            side.1 += started.elapsed();
            side.2.add_span(cpu, CpuTime::now(bench.server_is_local));
        }
    }
    let [(base, base_time, base_cpu), (once, once_time, once_cpu)] = sides;
    (
        Measured::of(base, base_time, base_cpu),
        Measured::of(once, once_time, once_cpu),
    )
}

async fn drive(
    bench: &Arc<Bench>,
    who: Who,
    work: Work,
    workers: usize,
    for_: Duration,
) -> Vec<Duration> {
    let deadline = Instant::now() + for_;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let bench = Arc::clone(bench);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = w as u64 * 7919;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    bench.op(who, work, n).await;
                    latencies.push(t.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a worker"));
    }
    all
}

/// Round trips per operation, counted on the wire through the proxy, after a warm-up that
/// prepares every statement on the (single) connection.
async fn count(bench: &Arc<Bench>, proxy: &CountingProxy, who: Who, work: Work) -> (f64, f64) {
    for n in 0..20 {
        bench.op(who, work, n).await;
    }
    settle().await;
    let before = proxy.counts();
    for n in 0..COUNTED_OPS {
        bench.op(who, work, n).await;
    }
    settle().await;
    let spent: Counts = proxy.counts().since(before);
    (
        spent.waited() as f64 / COUNTED_OPS as f64,
        spent.pings as f64 / COUNTED_OPS as f64,
    )
}

/// Lets the pool's background release checks reach the proxy.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn bench_on(
    pool: PgPool,
    schema: &str,
    server_is_local: bool,
) -> Result<Arc<Bench>, Box<dyn std::error::Error>> {
    let in_flight = match std::env::var("SENTINEL_BENCH_IN_FLIGHT") {
        Ok(v) => v.parse()?,
        Err(_) => sentinel_postgres::DEFAULT_IN_FLIGHT,
    };
    let store = PostgresStore::builder(pool.clone())
        .schema(schema)
        .in_flight(in_flight)
        .build()
        .await?;
    let sentinel = Sentinel::builder(store)
        .namespace("bench")
        .ttl(Duration::from_secs(30))
        .build()?;
    Ok(Arc::new(Bench {
        pool,
        server_is_local,
        sentinel,
        schema: schema.to_owned(),
    }))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (url, seconds) = if benchmarking() {
        let url = std::env::var("SENTINEL_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var("SENTINEL_TEST_POSTGRES_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let seconds: f64 = std::env::var("SENTINEL_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        (url, seconds)
    } else {
        let Some(server) = sentinel_testkit::servers::require(
            "postgres (benchmark smoke test)",
            sentinel_testkit::servers::postgres(),
        ) else {
            return Ok(());
        };
        (server.url().to_owned(), 0.1)
    };
    let for_ = Duration::from_secs_f64(seconds);
    let options = PgConnectOptions::from_str(&url)?;
    let schema = format!("sentinel_bench_{}", std::process::id());

    let pool = PostgresStore::pool_options()
        .max_connections(8)
        .connect_with(options.clone())
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e}"))?;
    let version: (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name",
    )
    .fetch_all(&pool)
    .await?;
    let host = options.get_host();
    let server_is_local =
        host.starts_with('/') || matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]");
    let bench = bench_on(pool.clone(), &schema, server_is_local).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".baseline (
             namespace text COLLATE \"C\" NOT NULL, key text COLLATE \"C\" NOT NULL,
             state text NOT NULL, owner text NOT NULL, token bigint NOT NULL,
             lease_expires_at timestamptz NOT NULL, result json,
             PRIMARY KEY (namespace, key));"
    )))
    .execute(&pool)
    .await?;
    // The completed keys the cached scenarios read, for both.
    for n in 0..cached_keys() {
        let key = format!("done{n}");
        bench.once(&key).await;
        bench.baseline_fresh(&key).await;
    }

    println!(
        "PostgreSQL {} ({}) at {}; {} s per scenario",
        version.0,
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        redact(&url),
        seconds
    );
    println!();
    println!(
        "{:<8} {:>7} {:<9} {:>10} {:>10} {:>10} {:>9} {:>13} {:>9} {:>11} {:>11}",
        "work",
        "workers",
        "what",
        "ops/s",
        "p50",
        "p99",
        "ratio",
        "round trips",
        "pings",
        "server cpu",
        "client cpu"
    );

    // Round trips: a one-connection pool through the counting proxy.
    let (counted_pool, proxy) = CountingProxy::pool(&options, 1).await?;
    let counted = bench_on(counted_pool, &schema, false).await?;

    let mut failures = Vec::new();
    for work in [Work::Fresh, Work::Cached] {
        let name = match work {
            Work::Fresh => "fresh",
            Work::Cached => "cached",
        };
        let trips = [
            count(&counted, &proxy, Who::Baseline, work).await,
            count(&counted, &proxy, Who::Sentinel, work).await,
        ];
        for workers in WORKERS {
            let (baseline, sentinel) = measure_pair(&bench, work, workers, for_).await;
            let ratio = sentinel.per_second() / baseline.per_second();
            for (what, m, (waited, pings)) in [
                ("baseline", &baseline, trips[0]),
                ("once()", &sentinel, trips[1]),
            ] {
                let cpu = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.0} µs"));
                println!(
                    "{:<8} {:>7} {:<9} {:>10.0} {:>10} {:>10} {:>9} {:>13.2} {:>9.2} {:>11} {:>11}",
                    name,
                    workers,
                    what,
                    m.per_second(),
                    format!("{:.3} ms", m.p50.as_secs_f64() * 1e3),
                    format!("{:.3} ms", m.p99.as_secs_f64() * 1e3),
                    if what == "once()" {
                        format!("{ratio:.2}")
                    } else {
                        "1.00".to_owned()
                    },
                    waited,
                    pings,
                    cpu(m.server_cpu),
                    cpu(m.client_cpu),
                );
            }
            let goal = match work {
                Work::Fresh => 2.0,
                Work::Cached => 1.0,
            };
            if (trips[1].0 - goal).abs() > 0.01 {
                failures.push(format!(
                    "{name}: {:.2} round trips per once(), goal {goal}",
                    trips[1].0
                ));
            }
            if ratio < 0.8 && benchmarking() {
                failures.push(format!(
                    "{name} x{workers}: throughput ratio {ratio:.2} < 0.8"
                ));
            }
        }
    }
    println!();
    println!(
        "round trips: exchanges the caller waited on per operation (statements + first-use \
         prepares), counted on the wire; pings: bare Syncs sqlx's pool sends when a connection \
         is returned (off the caller's path, the same for both); server cpu: every local \
         `postgres` process, per operation (- when the server is not on this machine); client \
         cpu: this process, all threads, per operation"
    );

    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await?;
    if failures.is_empty() {
        println!(
            "goals met: 2 round trips per fresh once(), 1 per cached, throughput >= 0.8 of the baseline"
        );
    } else {
        println!("goals missed: {}", failures.join("; "));
    }
    Ok(())
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}
