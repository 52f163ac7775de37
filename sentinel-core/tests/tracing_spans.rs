//! The client's tracing: spans for once, lease and every reconcile call carry the namespace, key,
//! token and outcome; lost authority and uncertain outcomes are warnings.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use sentinel_core::{Failure, Once, Sentinel};
use sentinel_memory::MemoryStore;

/// A span's name and its fields.
type SpanFields = (String, BTreeMap<String, String>);

/// Records every span with its fields, and every warning's message.
#[derive(Clone, Default)]
struct Capture {
    next: Arc<AtomicU64>,
    spans: Arc<Mutex<BTreeMap<u64, SpanFields>>>,
    warnings: Arc<Mutex<Vec<String>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (span.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.warnings
                .lock()
                .unwrap()
                .push(fields.remove("message").unwrap_or_default());
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    fn spans(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.spans
            .lock()
            .unwrap()
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn spans_name_the_key_token_and_outcome() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let (store, clock) = MemoryStore::with_manual_clock();
    let sentinel = Sentinel::builder(store)
        .namespace("shop")
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();

    let done = sentinel
        .once("order-1", |_| async { Ok::<_, Failure>(1) })
        .await
        .unwrap();
    let _: Once<u8> = sentinel
        .once("order-2", |_| async { Err(Failure::uncertain("timeout")) })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let _: Once<u8> = sentinel.once("order-2", |_| async { Ok(2) }).await.unwrap();
    let token = sentinel.reconcile("order-2").await.unwrap();
    sentinel.reset_to_claimed("order-2").await.unwrap();
    assert!(sentinel.reset_to_claimed("order-2").await.is_err());
    let guard = sentinel.lease("lock").await.unwrap().acquired().unwrap();

    let once = capture.spans("once");
    let first = &once[0];
    assert_eq!(
        (first["namespace"].as_str(), first["key"].as_str()),
        ("shop", "order-1")
    );
    assert_eq!(first["token"], done.token().get().to_string());
    assert_eq!(first["outcome"], "executed");
    assert_eq!(once[1]["outcome"], "failed");
    assert_eq!(once[2]["outcome"], "uncertain");

    let reconcile = capture.spans("reconcile");
    let ops: Vec<(&str, &str)> = reconcile
        .iter()
        .map(|f| (f["operation"].as_str(), f["outcome"].as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("reconcile", "ok"),
            ("reset_to_claimed", "ok"),
            ("reset_to_claimed", "wrong_state")
        ]
    );
    assert!(reconcile.iter().all(|f| f["key"] == "order-2"));

    let lease = capture.spans("lease");
    assert_eq!(lease[0]["outcome"], "acquired");
    assert_eq!(lease[0]["token"], guard.token().get().to_string());

    let warnings = capture.warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.contains("uncertain")),
        "{warnings:?}"
    );
    let _ = token;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn lost_authority_is_a_warning() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let sentinel = Sentinel::builder(MemoryStore::new())
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let outcome = sentinel
        .once("long", |ctx| async move {
            // The hard ttl equals the ttl: nothing renews it. The work goes on a little after.
            let reason = ctx.authority_lost().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Failure>(reason)
        })
        .await
        .unwrap();
    assert!(outcome.is_executed());
    let warnings = capture.warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.contains("authority lost")),
        "{warnings:?}"
    );
}
