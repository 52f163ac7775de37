//! The client's metrics (the `metrics` feature), read back through a recorder of the test's own:
//! once outcomes, uncertain outcomes, store call latencies, held records, failed heartbeats and
//! lost authority, each counted where it happens and nowhere else. Compiled with the feature on:
//! `cargo test --workspace` turns it on (the demo crate enables it), or `cargo test -p
//! sentinel-core --features metrics`.

#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use sentinel_core::{Failure, Once, Sentinel};
use sentinel_memory::MemoryStore;
use support::{Renewals, TokioClock};

/// Values by `name{label=value,…}`: counters and gauges as their value, histograms as how many
/// values were recorded.
#[derive(Clone, Default)]
struct Values(Arc<Mutex<BTreeMap<String, f64>>>);

impl Values {
    fn get(&self, name: &str) -> f64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0.0)
    }

    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        Arc::new(Cell(name, self.clone()))
    }

    fn change(&self, name: &str, change: impl FnOnce(&mut f64)) {
        change(self.0.lock().unwrap().entry(name.to_owned()).or_default());
    }
}

struct Cell(String, Values);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.1.change(&self.0, |v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.1.change(&self.0, |v| *v = value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.1.change(&self.0, |v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.1.change(&self.0, |v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.1.change(&self.0, |v| *v = value);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.1.change(&self.0, |v| *v += 1.0);
    }
}

impl Recorder for Values {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

// The recorder is the thread's: each test runs on one thread (tokio's current-thread runtime),
// heartbeat task included.

#[tokio::test(start_paused = true)]
async fn outcomes_calls_and_held_records_are_counted() {
    let values = Values::default();
    let _recorder = metrics::set_default_local_recorder(&values);
    let sentinel = Sentinel::builder(MemoryStore::with_clock(TokioClock::new()))
        .build()
        .unwrap();
    let seen = values.clone();
    let _: Once<u8> = sentinel
        .once("a", |_| async move {
            assert_eq!(seen.get("sentinel_held{keyspace=execution}"), 1.0);
            Ok::<_, Failure>(1)
        })
        .await
        .unwrap();
    let _: Once<u8> = sentinel
        .once("a", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    let _: Once<u8> = sentinel
        .once("b", |_| async { Err(Failure::uncertain("timed out")) })
        .await
        .unwrap();
    assert_eq!(values.get("sentinel_once_total{outcome=executed}"), 1.0);
    assert_eq!(values.get("sentinel_once_total{outcome=cached}"), 1.0);
    assert_eq!(values.get("sentinel_once_total{outcome=failed}"), 1.0);
    assert_eq!(values.get("sentinel_uncertain_total"), 1.0);
    assert_eq!(
        values.get("sentinel_store_call_seconds{operation=claim,result=ok}"),
        3.0
    );
    assert_eq!(values.get("sentinel_held{keyspace=execution}"), 0.0);
    assert_eq!(values.get("sentinel_heartbeat_failures_total"), 0.0);
    assert_eq!(
        values.get("sentinel_authority_lost_total{keyspace=execution}"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn failed_heartbeats_and_lost_authority_are_counted() {
    let values = Values::default();
    let _recorder = metrics::set_default_local_recorder(&values);
    let (store, sentinel) = support::renewing_client();
    store.set(Renewals::Unreachable);
    let _: Once<()> = sentinel
        .once("unreachable", |ctx| async move {
            ctx.authority_lost().await;
            Ok::<_, Failure>(())
        })
        .await
        .unwrap();
    let failed = values.get("sentinel_heartbeat_failures_total");
    assert!(failed >= 2.0, "{failed}");
    assert_eq!(
        values.get("sentinel_authority_lost_total{keyspace=execution}"),
        1.0
    );

    store.set(Renewals::Refused);
    let _: Once<()> = sentinel
        .once("refused", |ctx| async move {
            ctx.authority_lost().await;
            Ok::<_, Failure>(())
        })
        .await
        .unwrap();
    assert_eq!(values.get("sentinel_heartbeat_failures_total"), failed);
    assert_eq!(
        values.get("sentinel_authority_lost_total{keyspace=execution}"),
        2.0
    );
    assert_eq!(
        values.get("sentinel_held{keyspace=execution}"),
        0.0,
        "a record that lost its authority is no longer held"
    );
}
