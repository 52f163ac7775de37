//! Where the time of a `once()` goes, against the baseline SQL of `benches/once.rs`: one worker,
//! the variants interleaved call by call (so a drifting machine slows all alike), p50 and mean.
//!
//! ```sh
//! cargo bench -p sentinel-postgres --bench breakdown
//! SENTINEL_BENCH_POSTGRES_URL=postgres://user@host/db SENTINEL_BENCH_ITERATIONS=4000 cargo bench -p sentinel-postgres --bench breakdown
//! ```
//!
//! - cached: the baseline `SELECT`; the claim statement sent by hand through sqlx (server time
//!   plus sqlx); `store.claim()` (plus the store's binding and decoding); `once()` (plus the
//!   client: options, telemetry, the result's JSON);
//! - fresh: the baseline `INSERT … ON CONFLICT` + `UPDATE`; `store.claim()` + `store.complete()`;
//!   `once()`.
//!
//! Run by `cargo test --all-targets` (without `--bench`), a few iterations on the test server, as
//! a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sentinel_core::{
    ClaimRequest, CoordinationStore, Failure, Once, OwnerId, RecordId, RequestId, Sentinel, Ttl,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool};

fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
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

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_key(prefix: &str) -> String {
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Samples {
    name: &'static str,
    took: Vec<Duration>,
}

impl Samples {
    fn new(name: &'static str) -> Self {
        Samples {
            name,
            took: Vec::new(),
        }
    }

    fn report(&mut self, reference: Option<Duration>) {
        self.took.sort_unstable();
        let p50 = self.took[self.took.len() / 2];
        let mean = self.took.iter().sum::<Duration>() / self.took.len() as u32;
        let over = reference.map_or(String::new(), |r| {
            format!("{:>+9.1} µs", (p50.as_secs_f64() - r.as_secs_f64()) * 1e6)
        });
        println!(
            "  {:<34} p50 {:>8.1} µs  mean {:>8.1} µs  {over}",
            self.name,
            p50.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
    }
}

async fn timed<F: Future<Output = ()>>(samples: &mut Samples, f: F) {
    let started = Instant::now();
    f.await;
    samples.took.push(started.elapsed());
}

fn request() -> ClaimRequest {
    ClaimRequest {
        owner: OwnerId::new("bench-worker").unwrap(),
        ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = if benchmarking() {
        std::env::var("SENTINEL_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var("SENTINEL_TEST_POSTGRES_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    } else {
        let Some(server) = sentinel_testkit::servers::require(
            "postgres (breakdown smoke test)",
            sentinel_testkit::servers::postgres(),
        ) else {
            return Ok(());
        };
        server.url().to_owned()
    };
    let iterations: usize = if benchmarking() {
        std::env::var("SENTINEL_BENCH_ITERATIONS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3_000)
    } else {
        20
    };
    let schema = format!("sentinel_breakdown_{}", std::process::id());
    let pool: PgPool = PostgresStore::pool_options()
        .max_connections(4)
        .connect_with(PgConnectOptions::from_str(&url)?)
        .await?;
    let store = PostgresStore::builder(pool.clone())
        .schema(schema.as_str())
        .build()
        .await?;
    let sentinel = Sentinel::builder(store.clone())
        .namespace("bench")
        .ttl(Duration::from_secs(30))
        .build()?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".baseline (
             namespace text COLLATE \"C\" NOT NULL, key text COLLATE \"C\" NOT NULL,
             state text NOT NULL, owner text NOT NULL, token bigint NOT NULL,
             lease_expires_at timestamptz NOT NULL, result json,
             PRIMARY KEY (namespace, key));"
    )))
    .execute(&pool)
    .await?;
    let insert = format!(
        "INSERT INTO \"{schema}\".baseline (namespace, key, state, owner, token, lease_expires_at) \
         VALUES ($1, $2, 'executing', $3, $4, clock_timestamp() + interval '30 seconds') \
         ON CONFLICT (namespace, key) DO NOTHING RETURNING token"
    );
    let update = format!(
        "UPDATE \"{schema}\".baseline SET state = 'completed', result = $3::json \
         WHERE namespace = $1 AND key = $2 AND token = $4"
    );
    let select = format!(
        "SELECT state, result::text FROM \"{schema}\".baseline WHERE namespace = $1 AND key = $2"
    );
    let claim = format!(
        "SELECT c.outcome, c.state, c.owner, c.token, c.lease_expires_us, c.hard_expires_us, \
         c.result, c.fingerprint, c.version, c.watched FROM \"{schema}\".claim($1, $2, $3, $4, \
         $5, $6, $7, $8, $9, 'sentinel_{schema}') AS c"
    );
    let baseline_fresh = async |key: &str| {
        let (token,): (i64,) = sqlx::query_as(AssertSqlSafe(insert.as_str()))
            .bind("bench")
            .bind(key)
            .bind("bench-worker")
            .bind(1_i64)
            .fetch_one(&pool)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(update.as_str()))
            .bind("bench")
            .bind(key)
            .bind(format!("\"ch_{token}\""))
            .bind(token)
            .execute(&pool)
            .await
            .unwrap();
    };
    let once = async |key: &str| {
        let outcome: Once<String> = sentinel
            .once(key, |ctx| async move {
                Ok::<_, Failure>(format!("ch_{}", ctx.token()))
            })
            .await
            .unwrap();
        assert!(outcome.is_executed() || outcome.is_cached());
    };
    let cached = 500;
    for n in 0..cached {
        let key = format!("done{n}");
        once(&key).await;
        baseline_fresh(&key).await;
    }
    let warm = iterations / 10 + 5;

    println!("cached key, 1 worker, {iterations} iterations interleaved (after {warm} warm-up):");
    let mut s = [
        Samples::new("baseline SELECT"),
        Samples::new("claim statement (sqlx)"),
        Samples::new("store.claim()"),
        Samples::new("once()"),
    ];
    for i in 0..warm + iterations {
        let key = format!("done{}", i % cached);
        let request = request();
        let id = RecordId::parse("bench", &key)?;
        let mut round = [
            Samples::new(""),
            Samples::new(""),
            Samples::new(""),
            Samples::new(""),
        ];
        timed(&mut round[0], async {
            let _: Option<(String, Option<String>)> =
                sqlx::query_as(AssertSqlSafe(select.as_str()))
                    .bind("bench")
                    .bind(key.as_str())
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
        })
        .await;
        timed(&mut round[1], async {
            sqlx::query(AssertSqlSafe(claim.as_str()))
                .bind("bench")
                .bind(key.as_str())
                .bind(None::<i64>)
                .bind("bench-worker")
                .bind(30_000_000_i64)
                .bind(30_000_000_i64)
                .bind(true)
                .bind(&request.request_id.as_u128().to_be_bytes()[..])
                .bind(None::<&str>)
                .fetch_one(&pool)
                .await
                .unwrap();
        })
        .await;
        timed(&mut round[2], async {
            store.claim(&id, &request).await.unwrap();
        })
        .await;
        timed(&mut round[3], once(&key)).await;
        if i >= warm {
            for (all, one) in s.iter_mut().zip(round) {
                all.took.extend(one.took);
            }
        }
    }
    s[0].report(None);
    let reference = s[0].took[s[0].took.len() / 2];
    for samples in &mut s[1..] {
        samples.report(Some(reference));
    }

    println!("fresh key, 1 worker, {iterations} iterations interleaved:");
    let mut f = [
        Samples::new("baseline INSERT + UPDATE"),
        Samples::new("store.claim() + store.complete()"),
        Samples::new("once()"),
    ];
    for i in 0..warm + iterations {
        let mut round = [Samples::new(""), Samples::new(""), Samples::new("")];
        timed(&mut round[0], baseline_fresh(&next_key("b"))).await;
        timed(&mut round[1], async {
            let id = RecordId::parse("bench", &next_key("s")).unwrap();
            let outcome = store.claim(&id, &request()).await.unwrap();
            let sentinel_core::ClaimOutcome::Acquired(grant) = outcome else {
                panic!("a fresh key is granted: {outcome:?}");
            };
            store
                .complete(&id, grant.token, &json!(format!("ch_{}", grant.token)))
                .await
                .unwrap();
        })
        .await;
        timed(&mut round[2], once(&next_key("o"))).await;
        if i >= warm {
            for (all, one) in f.iter_mut().zip(round) {
                all.took.extend(one.took);
            }
        }
    }
    f[0].report(None);
    let reference = f[0].took[f[0].took.len() / 2];
    for samples in &mut f[1..] {
        samples.report(Some(reference));
    }

    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await?;
    Ok(())
}
