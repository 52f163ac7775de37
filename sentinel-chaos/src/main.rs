//! `sentinel-chaos`: run a payment workload on a Sentinel store under faults, then prove from the
//! stores' own data that nothing was executed twice and nothing was lost.
//!
//! Exit codes: 0 no violation; 1 at least one violation; 2 harness failure or bad usage; 3 the
//! backend could not be found or started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use sentinel_chaos::config::{FaultKind, Sabotage, StoreKind, parse_faults};
use sentinel_chaos::coordinator::{RunOptions, run};
use sentinel_chaos::{EXIT_HARNESS, unix_micros, worker};

const EXAMPLES: &str = "\
Examples:
  sentinel-chaos run --store postgres --duration 20                    # the CI run
  sentinel-chaos run --store redis --duration 600 --workers 8 --keys 500  # a soak
  sentinel-chaos run --store redis-cluster --faults kill,pause,conn
  sentinel-chaos run --store postgres --no-faults --duration 10 --concurrency 8,32,128  # load table";

/// Fault-injection and load harness for Sentinel.
#[derive(Parser, Debug)]
#[command(name = "sentinel-chaos", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the workload under faults and audit the guarantees.
    Run(Box<RunArgs>),
    /// One worker process (spawned by `run`).
    #[command(hide = true)]
    Worker {
        /// The run's worker configuration (JSON).
        #[arg(long)]
        config: PathBuf,
        /// This worker's index.
        #[arg(long)]
        index: usize,
        /// How many times this worker was started before.
        #[arg(long, default_value_t = 0)]
        incarnation: u32,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// memory, postgres, redis or redis-cluster.
    #[arg(long, default_value = "memory")]
    store: StoreKind,
    /// Seconds of delivery under faults (longer, up to twice as long, until each fault has been
    /// injected once); then drain, reconcile and audit.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Worker processes (memory: task groups in this process).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Concurrent deliveries per worker.
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    /// Keys per round (rounds keep coming until the duration is up, or --rounds).
    #[arg(long, default_value_t = 50)]
    keys: u32,
    /// Deliveries of each key (at least once, like Kafka or SQS).
    #[arg(long, default_value_t = 3)]
    deliveries: u32,
    /// Stop after this many rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Lease ttl in milliseconds.
    #[arg(long, default_value_t = 1500)]
    ttl_ms: u64,
    /// Hard ttl in milliseconds (default: 4 x ttl).
    #[arg(long)]
    hard_ttl_ms: Option<u64>,
    /// Simulated payment gateway latency, in milliseconds.
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    /// Faults to inject: kill,pause,conn,restart,proxy,lost, or all, or none.
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    faults: std::collections::BTreeSet<FaultKind>,
    /// No faults at all (a load run).
    #[arg(long, conflicts_with = "faults")]
    no_faults: bool,
    /// Mean milliseconds between kill faults (conn x1.5, pause x1 + 2 ttl, restart x4).
    #[arg(long, default_value_t = 1500)]
    fault_every_ms: u64,
    /// Share of applied claims and completions whose reply is dropped (with `lost`).
    #[arg(long, default_value_t = 0.03)]
    lost_reply_rate: f64,
    /// Mean milliseconds between replies the proxy drops (with `proxy`).
    #[arg(long, default_value_t = 400)]
    proxy_drop_every_ms: u64,
    /// Tries per store call in the workers' clients (a restart takes seconds; default 3 tries
    /// would give up during one).
    #[arg(long, default_value_t = 8)]
    retries: u32,
    /// PostgreSQL: commit the ledger write and the completion together (`complete_in`).
    #[arg(long)]
    exactly_once: bool,
    /// Use this loopback PostgreSQL instead of starting a private one (restarts disabled).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Use this loopback Redis instead of starting a private one (restarts disabled).
    #[arg(long)]
    redis_url: Option<String>,
    /// Use this loopback Redis Cluster (comma-separated node URLs).
    #[arg(long, value_delimiter = ',')]
    redis_cluster_urls: Vec<String>,
    /// Load mode: one run per level of concurrent workers (workers x tasks), e.g. 8,32,128.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seed of every random choice (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the queue may take to drain after the delivery phase, in seconds.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the run directory (journals, worker logs) even when nothing failed.
    #[arg(long)]
    keep_dir: bool,
    /// Break the system on purpose (double-apply, skip-fence) to see the audit fail.
    #[arg(long, hide = true)]
    sabotage: Option<Sabotage>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sentinel-chaos: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_HARNESS);
        }
    };
    match cli.command {
        Command::Worker {
            config,
            index,
            incarnation,
        } => match runtime.block_on(worker::process_main(&config, index, incarnation)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker {index}.{incarnation}: {e}");
                ExitCode::from(EXIT_HARNESS)
            }
        },
        Command::Run(args) => {
            if args.workers == 0 || args.tasks == 0 || args.keys == 0 || args.deliveries == 0 {
                eprintln!(
                    "sentinel-chaos: --workers, --tasks, --keys and --deliveries must be at least 1"
                );
                return ExitCode::from(EXIT_HARNESS);
            }
            let ttl = Duration::from_millis(args.ttl_ms.max(100));
            let opts = RunOptions {
                store: args.store,
                duration: Duration::from_secs_f64(args.duration.max(0.5)),
                workers: args.workers,
                tasks: args.tasks,
                keys: args.keys,
                deliveries: args.deliveries,
                rounds: args.rounds,
                ttl,
                hard_ttl: args
                    .hard_ttl_ms
                    .map_or(ttl * 4, Duration::from_millis)
                    .max(ttl),
                work: Duration::from_millis(args.work_ms),
                faults: if args.no_faults {
                    Default::default()
                } else {
                    args.faults
                },
                fault_every: Duration::from_millis(args.fault_every_ms.max(100)),
                lost_reply_rate: args.lost_reply_rate.clamp(0.0, 0.5),
                proxy_gap: Duration::from_millis(args.proxy_drop_every_ms.max(10)),
                retries: args.retries.max(1),
                exactly_once: args.exactly_once,
                postgres_url: args.postgres_url,
                redis_url: args.redis_url,
                redis_cluster_urls: args.redis_cluster_urls,
                seed: args.seed.unwrap_or_else(unix_micros),
                sabotage: args.sabotage,
                keep_dir: args.keep_dir,
                drain_timeout: Duration::from_secs(args.drain_timeout),
                concurrency: args.concurrency,
                json: args.json,
            };
            ExitCode::from(runtime.block_on(run(opts)))
        }
    }
}
