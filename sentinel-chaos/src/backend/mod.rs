//! The two things a payment workload needs besides Sentinel, on each store: a shared delivery
//! queue (at least once, like Kafka or SQS) and a ledger that applies the side effect behind a
//! fence and keeps every attempt for the audit.

pub mod memory;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::{CoordinationStore, FencingToken, RecordId};

use crate::Result;

/// One delivery of a key, as taken from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's handle on it (a row id, or the list item).
    pub id: String,
    /// The key to run `once` for.
    pub key: String,
}

/// A shared, at-least-once delivery queue. Each taker (a worker task) holds at most one delivery
/// at a time; what a taker held when it died is given back by [`Queue::recover`].
#[async_trait]
pub trait Queue: Send + Sync + fmt::Debug {
    /// Appends one delivery per key.
    async fn push(&self, keys: &[String]) -> Result<()>;
    /// Takes the next delivery for `taker`, or `None` when the queue is empty.
    async fn take(&self, taker: &str) -> Result<Option<Delivery>>;
    /// Removes a handled delivery. Safe to repeat.
    async fn ack(&self, taker: &str, delivery: &Delivery) -> Result<()>;
    /// Puts a delivery back at the end of the queue. Safe to repeat.
    async fn nack(&self, taker: &str, delivery: &Delivery) -> Result<()>;
    /// Puts back everything these takers hold; returns how many deliveries moved.
    async fn recover(&self, takers: &[String]) -> Result<u64>;
    /// How many deliveries are waiting or held.
    async fn pending(&self, takers: &[String]) -> Result<u64>;
}

/// What became of one ledger write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied.
    Accepted,
    /// Refused by the fence: nothing was applied.
    Rejected(String),
    /// Failed before anything could be applied.
    NotApplied(String),
    /// Failed in a way that leaves it unknown whether it was applied (a lost commit reply).
    Unknown(String),
}

/// What the ledger holds about one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerKey {
    /// The tokens whose write was applied, with the worker that wrote it.
    pub accepted: BTreeMap<i64, String>,
    /// Every write attempt recorded (accepted, rejected, or lost with its process).
    pub attempts: u64,
    /// Attempts the fence refused.
    pub rejected: u64,
    /// Attempts that were applied.
    pub applied: u64,
}

/// The payment ledger: the side effect, behind a fence.
#[async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// Applies the payment of `id` under `token`, if the fence lets it: PostgreSQL checks the
    /// token against Sentinel's record in the write's own transaction (and, in exactly-once mode,
    /// records `result` as the completion in it); Redis and memory accept a token only if it is at
    /// least the highest the ledger has seen for the key (a generic downstream fence).
    async fn write(
        &self,
        id: &RecordId,
        token: FencingToken,
        worker: &str,
        result: &Value,
    ) -> WriteOutcome;

    /// Applies a payment with no fence at all (sabotage only).
    async fn write_unfenced(&self, key: &str, token: i64, worker: &str) -> Result<()>;

    /// For the reconciler, holding reconciliation `token`: fences the ledger so no lower token
    /// writes from now on (Redis, memory; PostgreSQL's fence is Sentinel's record itself), then
    /// returns the tokens whose write was applied.
    async fn fence_and_read(&self, key: &str, token: FencingToken) -> Result<Vec<i64>>;

    /// What the ledger holds about each of `keys` (keys it knows nothing about are left out).
    async fn audit(&self, keys: &[String]) -> Result<BTreeMap<String, LedgerKey>>;
}

/// A store with its queue and ledger.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Sentinel's store.
    pub store: Arc<dyn CoordinationStore>,
    /// The delivery queue.
    pub queue: Arc<dyn Queue>,
    /// The payment ledger.
    pub ledger: Arc<dyn Ledger>,
}

/// Renders an error with its sources, on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
