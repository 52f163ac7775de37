//! Sentinel's metrics through a Prometheus exporter: a few `once` calls, a failure left uncertain
//! and a lease, then the scrape output.
//!
//! Run: `cargo run --example metrics`. Sentinel records through the `metrics` facade (enable the
//! `metrics` feature of `sentinel-core`); any exporter works, Prometheus is shown here.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use sentinel_core::{Failure, Once, Sentinel};
use sentinel_memory::MemoryStore;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // In a service you would serve this on /metrics (e.g. with the exporter's http-listener
    // feature); here the scrape output is printed.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let sentinel = Sentinel::builder(MemoryStore::new())
        .namespace("metrics-demo")
        .ttl(Duration::from_secs(2))
        .build()?;
    for n in 0..3 {
        let _: Once<u32> = sentinel
            .once(
                &format!("invoice-{n}"),
                |_| async move { Ok::<_, Failure>(n) },
            )
            .await?;
    }
    let _: Once<u32> = sentinel
        .once("invoice-0", |_| async { Ok::<_, Failure>(0) })
        .await?;
    let _: Once<u32> = sentinel
        .once("invoice-9", |_| async {
            Err(Failure::uncertain("gateway timed out"))
        })
        .await?;
    let guard = sentinel
        .lease("nightly-report")
        .await?
        .acquired()
        .ok_or("lease held")?;
    let scrape = sentinel_lines(&prometheus.render());
    print!("{scrape}");
    guard.release().await?;
    // The scrape must show what just happened (the test suite runs this example).
    for expected in [
        r#"sentinel_once_total{outcome="executed"} 3"#,
        r#"sentinel_once_total{outcome="cached"} 1"#,
        r#"sentinel_once_total{outcome="failed"} 1"#,
        "sentinel_uncertain_total 1",
        r#"sentinel_held{keyspace="lease"} 1"#,
        // Every execution finished: each registration added one and took it away again.
        r#"sentinel_held{keyspace="execution"} 0"#,
        r#"sentinel_store_call_seconds_count{operation="claim",result="ok"} 5"#,
    ] {
        if !scrape.lines().any(|line| line == expected) {
            return Err(format!("the scrape lacks {expected:?}").into());
        }
    }
    Ok(())
}

/// The exposition lines of Sentinel's metrics.
fn sentinel_lines(scrape: &str) -> String {
    scrape
        .lines()
        .filter(|line| line.contains("sentinel_"))
        .map(|line| format!("{line}\n"))
        .collect()
}
