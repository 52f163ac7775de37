//! `once()` on Redis against a raw baseline, in one run on one server.
//!
//! ```sh
//! cargo bench -p sentinel-redis --bench once
//! SENTINEL_BENCH_OPS=20000 cargo bench -p sentinel-redis --bench once   # longer rounds
//! SENTINEL_BENCH_ROUNDS=9 cargo bench -p sentinel-redis --bench once      # more rounds (default 5)
//! ```
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it makes a short smoke run.
//! `SENTINEL_BENCH_STREAM_NODE_MAX_BYTES=512` sets that server option first (a deployment
//! tuning, see the README), for a second measurement next to the default one.
//!
//! The server is a private `redis-server` started for the run (no persistence), so nothing else
//! talks to it and the server's counters are ours alone. Five scenarios, at 1 and 8 concurrent
//! workers, run in interleaved rounds (all five, then all five again, 5 rounds by default) so
//! that load from elsewhere on the machine hits every scenario alike; a ratio is taken within
//! each round and the table shows the median:
//!
//! - `once fresh`: `Sentinel::once` on a key never seen (claim + start, run, complete);
//! - `once cached`: `Sentinel::once` on a completed key (the cached result);
//! - `store fresh`: the same two store calls (`claim` with start, `complete`) without the
//!   `Sentinel` client, to tell the client's own cost from the store's;
//! - `raw fresh`: the least a hand-rolled at-most-once could send: `SET key 1 NX PX 30000`, then
//!   `SET key <result>`;
//! - `raw cached`: one `GET key`.
//!
//! Both sides use the same connection setup: one reconnecting `ConnectionManager` (a multiplexed
//! connection) shared by all workers.
//!
//! Per operation it reports the server's time inside the commands clients sent (`INFO
//! commandstats`; a script's time includes the commands it runs), the server's whole CPU time
//! (`INFO cpu`: also reading requests and writing replies) and the bench process's CPU time (all
//! its threads, from `/proc/self/task/*/schedstat`): on a small machine the client and the server
//! share the cores, so both decide the throughput.
//!
//! Round trips are counted, not assumed, two ways. During the timed runs, `INFO commandstats`
//! deltas of `EVALSHA`, `SET` and `GET` (commands only a client can send: a script never calls
//! `EVALSHA`, and ours never call `SET` or `GET`). Then a short counting pass under `MONITOR`
//! (`redis-cli monitor`), which prints every command the server runs and marks those run by a
//! script as `[... lua]`: every other line is a command some client sent, so the pass shows the
//! client sends nothing else.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Failure, Once, OwnerId, RecordId, RequestId,
    Sentinel, Ttl,
};
use sentinel_redis::RedisStore;
use sentinel_testkit::servers::{self, RedisOptions};

const WORKERS: [usize; 2] = [1, 8];

struct Row {
    name: String,
    workers: usize,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commands: HashMap<String, u64>,
    /// CPU time the server used during the run (`INFO cpu`, all its threads), in µs.
    server_cpu: f64,
    /// CPU time this process used during the run (every thread), in µs.
    client_cpu: f64,
    /// Operations per second of each round, in order.
    rounds: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Row {
    /// The median over the rounds of operations per second.
    fn ops_per_sec(&self) -> f64 {
        median(&self.rounds)
    }

    /// Adds another round of the same scenario.
    fn merge(&mut self, other: Row) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        for (k, v) in other.commands {
            *self.commands.entry(k).or_default() += v;
        }
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.rounds.extend(other.rounds);
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i]
    }

    /// Server CPU per operation: the time Redis spent in the commands clients sent (a script's
    /// time includes the commands it ran).
    fn server_micros(&self) -> f64 {
        let usec: u64 = ["evalsha", "set", "get"]
            .iter()
            .map(|c| {
                self.commands
                    .get(&format!("{c}.usec"))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        usec as f64 / self.ops as f64
    }

    /// All of the server's CPU per operation: the commands' own time plus reading requests,
    /// writing replies and the event loop.
    fn server_cpu_per_op(&self) -> f64 {
        self.server_cpu / self.ops as f64
    }

    /// The client's CPU per operation (both tokio workers and every other thread of the bench).
    fn client_cpu_per_op(&self) -> f64 {
        self.client_cpu / self.ops as f64
    }

    fn round_trips(&self) -> f64 {
        let sent: u64 = ["evalsha", "set", "get"]
            .iter()
            .map(|c| self.commands.get(*c).copied().unwrap_or(0))
            .sum();
        sent as f64 / self.ops as f64
    }
}

async fn commandstats(conn: &mut ConnectionManager) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| -> Option<u64> {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(f))?
                    .parse()
                    .ok()
            };
            Some([
                (name.to_owned(), field("calls=")?),
                (format!("{name}.usec"), field("usec=")?),
            ])
        })
        .flatten()
        .collect()
}

/// The server's CPU time so far (user + system, all threads), in µs.
async fn server_cpu(conn: &mut ConnectionManager) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap();
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (field("used_cpu_user") + field("used_cpu_sys")) * 1e6
}

/// This process's CPU time so far (all threads), in µs; 0 where it cannot be read.
fn client_cpu() -> f64 {
    sentinel_testkit::cpu::this_process_micros().unwrap_or(0.0)
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `op(worker, i)` `per_worker` times on each of `workers` tasks; returns the row.
async fn run<F, Fut>(
    name: &str,
    workers: usize,
    per_worker: usize,
    admin: &mut ConnectionManager,
    op: F,
) -> Row
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let before = commandstats(admin).await;
    let cpu_before = (server_cpu(admin).await, client_cpu());
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for i in 0..per_worker {
                    let t = Instant::now();
                    op(w, i).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (server_after, client_after) = (server_cpu(admin).await, client_cpu());
    let mut commands = delta(&before, &commandstats(admin).await);
    commands.remove("info");
    Row {
        name: name.to_owned(),
        workers,
        ops: workers * per_worker,
        elapsed,
        latencies,
        commands,
        server_cpu: server_after - cpu_before.0,
        client_cpu: client_after - cpu_before.1,
        rounds: vec![(workers * per_worker) as f64 / elapsed.as_secs_f64()],
    }
}

fn key(scenario: &str, round: usize, workers: usize, w: usize, i: usize) -> String {
    format!("{scenario}-{round}-{workers}-{w}-{i}")
}

async fn scenarios(
    sentinel: &Sentinel,
    store: &RedisStore,
    raw: &ConnectionManager,
    admin: &mut ConnectionManager,
    workers: usize,
    per_worker: usize,
    round: usize,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let s = sentinel.clone();
    rows.push(
        run("once fresh", workers, per_worker, admin, move |w, i| {
            let s = s.clone();
            async move {
                let k = key("once", round, workers, w, i);
                let out: Once<u64> = s
                    .once(&k, |_| async move { Ok::<_, Failure>(i as u64) })
                    .await
                    .unwrap();
                assert!(out.is_executed(), "{out:?}");
            }
        })
        .await,
    );
    let s = sentinel.clone();
    rows.push(
        run("once cached", workers, per_worker, admin, move |w, i| {
            let s = s.clone();
            async move {
                let k = key("once", round, workers, w, i);
                let out: Once<u64> = s
                    .once(&k, |_| async move { Ok::<_, Failure>(0) })
                    .await
                    .unwrap();
                assert!(out.is_cached(), "{out:?}");
            }
        })
        .await,
    );
    let st = store.clone();
    rows.push(
        run("store fresh", workers, per_worker, admin, move |w, i| {
            let st = st.clone();
            async move {
                let id =
                    RecordId::parse("bench-store", &key("store", round, workers, w, i)).unwrap();
                let request = ClaimRequest {
                    owner: OwnerId::new("bench").unwrap(),
                    ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
                    start: true,
                    request_id: RequestId::random(),
                    fingerprint: None,
                };
                let ClaimOutcome::Acquired(g) = st.claim(&id, &request).await.unwrap() else {
                    panic!("not acquired")
                };
                st.complete(&id, g.token, &serde_json::json!(i))
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    let c = raw.clone();
    rows.push(
        run("raw fresh", workers, per_worker, admin, move |w, i| {
            let mut c = c.clone();
            async move {
                let k = key("raw", round, workers, w, i);
                let claimed: Option<String> = redis::cmd("SET")
                    .arg(&k)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert!(claimed.is_some());
                let _: () = redis::cmd("SET")
                    .arg(&k)
                    .arg(i.to_string())
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    let c = raw.clone();
    rows.push(
        run("raw cached", workers, per_worker, admin, move |w, i| {
            let mut c = c.clone();
            async move {
                let k = key("raw", round, workers, w, i);
                let v: Option<String> =
                    redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
                assert!(v.is_some());
            }
        })
        .await,
    );
    rows
}

/// The counting pass: runs `ops` fresh and then cached `once` calls under `redis-cli monitor` and
/// returns the commands clients sent (lines not run by a script), per command name. `ECHO`
/// markers, sent on the admin connection, tell when the monitor is attached and when it has
/// printed everything.
/// Server time per call of each command on its own (`INFO commandstats` usec per call, a
/// script's time including the commands it runs): the claim script on fresh keys, the completion
/// script, the claim script on completed keys, next to `SET NX PX`, `SET` and `GET`. Returns
/// `(what, workers, µs per call)`.
async fn per_call(
    store: &RedisStore,
    raw: &ConnectionManager,
    admin: &mut ConnectionManager,
    workers: usize,
    per_worker: usize,
) -> Vec<(&'static str, usize, f64)> {
    use std::sync::Mutex;
    let id = move |w: usize, i: usize| {
        RecordId::parse("bench-calls", &format!("calls-{workers}-{w}-{i}")).unwrap()
    };
    let usec = |row: &Row, command: &str| {
        let calls = row.commands.get(command).copied().unwrap_or(0).max(1);
        row.commands
            .get(&format!("{command}.usec"))
            .copied()
            .unwrap_or(0) as f64
            / calls as f64
    };
    let grants: Arc<Mutex<HashMap<(usize, usize), sentinel_core::FencingToken>>> = Arc::default();
    let request = || ClaimRequest {
        owner: OwnerId::new("bench").unwrap(),
        ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    };
    let mut out = Vec::new();
    let (st, g) = (store.clone(), Arc::clone(&grants));
    let row = run("claim", workers, per_worker, admin, move |w, i| {
        let (st, g) = (st.clone(), Arc::clone(&g));
        async move {
            let ClaimOutcome::Acquired(grant) = st.claim(&id(w, i), &request()).await.unwrap()
            else {
                panic!("not acquired")
            };
            g.lock().unwrap().insert((w, i), grant.token);
        }
    })
    .await;
    out.push((
        "claim script, fresh key (grant + start)",
        workers,
        usec(&row, "evalsha"),
    ));
    let (st, g) = (store.clone(), Arc::clone(&grants));
    let row = run("complete", workers, per_worker, admin, move |w, i| {
        let (st, g) = (st.clone(), Arc::clone(&g));
        async move {
            let token = g.lock().unwrap()[&(w, i)];
            st.complete(&id(w, i), token, &serde_json::json!(i))
                .await
                .unwrap();
        }
    })
    .await;
    out.push(("complete script", workers, usec(&row, "evalsha")));
    let st = store.clone();
    let row = run("cached", workers, per_worker, admin, move |w, i| {
        let st = st.clone();
        async move {
            let outcome = st.claim(&id(w, i), &request()).await.unwrap();
            assert!(matches!(outcome, ClaimOutcome::Completed { .. }));
        }
    })
    .await;
    out.push((
        "claim script, completed key (cached)",
        workers,
        usec(&row, "evalsha"),
    ));
    let c = raw.clone();
    let row = run("set nx", workers, per_worker, admin, move |w, i| {
        let mut c = c.clone();
        async move {
            let _: Option<String> = redis::cmd("SET")
                .arg(format!("calls-raw-{workers}-{w}-{i}"))
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    out.push(("SET NX PX", workers, usec(&row, "set")));
    let c = raw.clone();
    let row = run("set", workers, per_worker, admin, move |w, i| {
        let mut c = c.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(format!("calls-raw-{workers}-{w}-{i}"))
                .arg(i)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    out.push(("SET", workers, usec(&row, "set")));
    let c = raw.clone();
    let row = run("get", workers, per_worker, admin, move |w, i| {
        let mut c = c.clone();
        async move {
            let _: Option<String> = redis::cmd("GET")
                .arg(format!("calls-raw-{workers}-{w}-{i}"))
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    out.push(("GET", workers, usec(&row, "get")));
    out
}

async fn monitor_pass(
    sentinel: &Sentinel,
    admin: &mut ConnectionManager,
    port: u16,
    ops: usize,
) -> HashMap<String, u64> {
    const READY: &str = "sentinel-monitor-ready";
    const DONE: &str = "sentinel-monitor-done";
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli on PATH for the counting pass");
    let stdout = child.stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<&'static str>();
    let reader = std::thread::spawn(move || {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut counting = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some((addr, rest)) = line.split_once("] ") else {
                continue;
            };
            if rest.contains(READY) {
                if !counting {
                    counting = true;
                    let _ = seen_tx.send(READY);
                }
                continue;
            }
            if rest.contains(DONE) {
                let _ = seen_tx.send(DONE);
                break;
            }
            if !counting || addr.ends_with("lua") || rest.starts_with("\"INFO\"") {
                continue;
            }
            let name = rest.split('"').nth(1).unwrap_or("?").to_ascii_lowercase();
            *counts.entry(name).or_default() += 1;
        }
        counts
    });
    let mut echo_until = async |marker: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _: String = redis::cmd("ECHO")
                .arg(marker)
                .query_async(admin)
                .await
                .unwrap();
            if seen_rx.recv_timeout(Duration::from_millis(50)) == Ok(marker) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-cli monitor never printed {marker}"
            );
        }
    };
    echo_until(READY).await;
    for i in 0..ops {
        let k = format!("monitor-{i}");
        let _: Once<u64> = sentinel
            .once(&k, |_| async move { Ok::<_, Failure>(1) })
            .await
            .unwrap();
    }
    for i in 0..ops {
        let k = format!("monitor-{i}");
        let _: Once<u64> = sentinel
            .once(&k, |_| async move { Ok::<_, Failure>(1) })
            .await
            .unwrap();
    }
    echo_until(DONE).await;
    child.kill().ok();
    child.wait().ok();
    reader.join().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, and
    // then a short smoke run checks that the benchmark still works.
    let measuring = std::env::args().any(|a| a == "--bench");
    let ops: usize = std::env::var("SENTINEL_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 4000 } else { 80 });
    let rounds: usize = std::env::var("SENTINEL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 5 } else { 1 });
    let server = servers::spawn_redis(RedisOptions::default())
        .expect("the benchmark starts a private redis-server (redis-server on PATH)");
    let url = server.url().to_owned();
    let config = || {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let raw = ConnectionManager::new_with_config(client.clone(), config())
        .await
        .unwrap();
    let mut admin = ConnectionManager::new_with_config(client, config())
        .await
        .unwrap();
    let store = RedisStore::builder()
        .prefix("bench")
        .connect(&url)
        .await
        .unwrap();
    let sentinel = Sentinel::builder(store.clone())
        .namespace("bench")
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    // Load the scripts and open every connection before measuring.
    let _: Once<u64> = sentinel
        .once("warm-up", |_| async { Ok::<_, Failure>(0) })
        .await
        .unwrap();

    // Optional, for a second measurement only (the headline numbers use the server's defaults):
    // a smaller `stream-node-max-bytes` makes Redis 7.0 preallocate less for each new history
    // stream (it preallocates min(4096, stream-node-max-bytes) bytes).
    let node_bytes = std::env::var("SENTINEL_BENCH_STREAM_NODE_MAX_BYTES").ok();
    if let Some(bytes) = &node_bytes {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("stream-node-max-bytes")
            .arg(bytes)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    println!(
        "redis-server {url}, {ops} operations per scenario, worker count and round, {rounds} \
         rounds, stream-node-max-bytes {}\n",
        node_bytes.as_deref().unwrap_or("default (4096)")
    );
    // Every scenario runs `rounds` times, interleaved (all five scenarios, then all five again),
    // so a burst of load from elsewhere on the machine hits Sentinel and the baseline alike; a
    // ratio is taken within each round, and the table shows the medians.
    let mut rows: Vec<Row> = Vec::new();
    for workers in WORKERS {
        for round in 0..rounds {
            for row in scenarios(
                &sentinel,
                &store,
                &raw,
                &mut admin,
                workers,
                ops / workers,
                round,
            )
            .await
            {
                match rows
                    .iter_mut()
                    .find(|r| r.name == row.name && r.workers == row.workers)
                {
                    Some(r) => r.merge(row),
                    None => rows.push(row),
                }
            }
        }
    }
    println!(
        "{:<12} {:>7} {:>7} {:>10} {:>9} {:>9} {:>8} {:>12} {:>10} {:>11} {:>11}  ratio per round",
        "scenario",
        "workers",
        "ops",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "ratio",
        "round trips",
        "server µs",
        "server cpu",
        "client cpu"
    );
    for row in &rows {
        let baseline = match row.name.as_str() {
            "once fresh" | "store fresh" => Some("raw fresh"),
            "once cached" => Some("raw cached"),
            _ => None,
        }
        .and_then(|b| {
            rows.iter()
                .find(|r| r.name == b && r.workers == row.workers)
        });
        let per_round: Vec<f64> = baseline.map_or(Vec::new(), |b| {
            row.rounds
                .iter()
                .zip(&b.rounds)
                .map(|(s, r)| s / r)
                .collect()
        });
        let ratio = baseline.map_or("-".to_owned(), |_| format!("{:.2}", median(&per_round)));
        let rounds_text: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<12} {:>7} {:>7} {:>10.0} {:>9} {:>9} {:>8} {:>12.2} {:>10.1} {:>11.1} {:>11.1}  {}",
            row.name,
            row.workers,
            row.ops,
            row.ops_per_sec(),
            row.percentile(0.50).as_micros(),
            row.percentile(0.99).as_micros(),
            ratio,
            row.round_trips(),
            row.server_micros(),
            row.server_cpu_per_op(),
            row.client_cpu_per_op(),
            rounds_text.join(" ")
        );
    }
    println!(
        "\nops/s: median over the rounds; ratio: median of the per-round ratios to the raw \
         baseline; p50/p99 over every operation; server µs: time inside the commands clients sent \
         (INFO commandstats, a script's time includes the commands it runs); server/client cpu: \
         all CPU time of the server (INFO cpu) and of this process, per operation (µs)."
    );
    for row in &rows {
        let mut sent: Vec<String> = ["evalsha", "set", "get"]
            .iter()
            .filter_map(|c| row.commands.get(*c).map(|n| format!("{c}={n}")))
            .collect();
        sent.sort();
        println!(
            "  {} at {} workers sent: {}",
            row.name,
            row.workers,
            sent.join(" ")
        );
    }

    println!("\nServer time per call (INFO commandstats usec per call), each command on its own:");
    let mut calls = Vec::new();
    for workers in WORKERS {
        calls.extend(per_call(&store, &raw, &mut admin, workers, ops / workers).await);
    }
    for (what, workers, usec) in &calls {
        println!("  {what:<42} {workers} workers {usec:>7.1} µs");
    }

    let counted_ops = if measuring { 200 } else { 20 };
    let monitored = monitor_pass(&sentinel, &mut admin, server.port(), counted_ops).await;
    let mut list: Vec<_> = monitored.iter().collect();
    list.sort();
    println!(
        "\nMONITOR pass: {counted_ops} fresh then {counted_ops} cached once() calls; commands \
         clients sent (script-internal ones excluded): {list:?}"
    );
    let total: u64 = monitored.values().sum();
    assert_eq!(
        monitored.get("evalsha").copied().unwrap_or(0),
        total,
        "clients sent only EVALSHA"
    );
    assert_eq!(
        total,
        3 * counted_ops as u64,
        "2 round trips per fresh once, 1 per cached"
    );
    println!(
        "  = {:.2} round trips per fresh+cached pair (goal: 2 + 1 = 3)",
        total as f64 / counted_ops as f64
    );
}
