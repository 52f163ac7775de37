//! The in-process queue and ledger for `--store memory`: same semantics as the Redis ones (the
//! ledger accepts a token only if it is at least the highest it has seen for the key).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::{FencingToken, RecordId};
use sentinel_memory::MemoryStore;

use super::{Backend, Delivery, Ledger, LedgerKey, Queue, WriteOutcome};
use crate::Result;

#[derive(Debug, Default)]
struct QueueState {
    next: u64,
    ready: VecDeque<Delivery>,
    inflight: HashMap<String, Vec<Delivery>>,
}

#[derive(Debug, Default)]
struct LedgerEntry {
    max: Option<i64>,
    key: LedgerKey,
}

/// The memory queue and ledger.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    queue: Mutex<QueueState>,
    ledger: Mutex<HashMap<String, LedgerEntry>>,
    skip_fence: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl MemoryBackend {
    /// A backend over `store`, with an empty queue and ledger.
    pub fn backend(store: MemoryStore, skip_fence: bool) -> Backend {
        let this = Arc::new(MemoryBackend {
            skip_fence,
            ..MemoryBackend::default()
        });
        Backend {
            store: Arc::new(store),
            queue: this.clone(),
            ledger: this,
        }
    }
}

#[async_trait]
impl Queue for MemoryBackend {
    async fn push(&self, keys: &[String]) -> Result<()> {
        let mut q = lock(&self.queue);
        for key in keys {
            q.next += 1;
            let id = q.next.to_string();
            q.ready.push_back(Delivery {
                id,
                key: key.clone(),
            });
        }
        Ok(())
    }

    async fn take(&self, taker: &str) -> Result<Option<Delivery>> {
        let mut q = lock(&self.queue);
        let Some(d) = q.ready.pop_front() else {
            return Ok(None);
        };
        q.inflight
            .entry(taker.to_owned())
            .or_default()
            .push(d.clone());
        Ok(Some(d))
    }

    async fn ack(&self, taker: &str, delivery: &Delivery) -> Result<()> {
        let mut q = lock(&self.queue);
        if let Some(held) = q.inflight.get_mut(taker) {
            held.retain(|d| d.id != delivery.id);
        }
        Ok(())
    }

    async fn nack(&self, taker: &str, delivery: &Delivery) -> Result<()> {
        let mut q = lock(&self.queue);
        let held = q.inflight.entry(taker.to_owned()).or_default();
        let before = held.len();
        held.retain(|d| d.id != delivery.id);
        if held.len() < before {
            q.ready.push_back(delivery.clone());
        }
        Ok(())
    }

    async fn recover(&self, takers: &[String]) -> Result<u64> {
        let mut q = lock(&self.queue);
        let mut moved = 0;
        for taker in takers {
            let held = q.inflight.remove(taker).unwrap_or_default();
            moved += held.len() as u64;
            for d in held.into_iter().rev() {
                q.ready.push_front(d);
            }
        }
        Ok(moved)
    }

    async fn pending(&self, _takers: &[String]) -> Result<u64> {
        let q = lock(&self.queue);
        Ok((q.ready.len() + q.inflight.values().map(Vec::len).sum::<usize>()) as u64)
    }
}

#[async_trait]
impl Ledger for MemoryBackend {
    async fn write(
        &self,
        id: &RecordId,
        token: FencingToken,
        worker: &str,
        _result: &Value,
    ) -> WriteOutcome {
        let mut ledger = lock(&self.ledger);
        let entry = ledger.entry(id.key.as_str().to_owned()).or_default();
        let t = token.get();
        entry.key.attempts += 1;
        if self.skip_fence || entry.max.is_none_or(|max| t >= max) {
            entry.max = entry.max.max(Some(t));
            entry.key.accepted.insert(t, worker.to_owned());
            entry.key.applied += 1;
            WriteOutcome::Accepted
        } else {
            entry.key.rejected += 1;
            WriteOutcome::Rejected(format!("the ledger has seen a higher token than {token}"))
        }
    }

    async fn write_unfenced(&self, key: &str, token: i64, worker: &str) -> Result<()> {
        let mut ledger = lock(&self.ledger);
        let entry = ledger.entry(key.to_owned()).or_default();
        entry.key.attempts += 1;
        entry.key.applied += 1;
        entry.key.accepted.insert(token, worker.to_owned());
        Ok(())
    }

    async fn fence_and_read(&self, key: &str, token: FencingToken) -> Result<Vec<i64>> {
        let mut ledger = lock(&self.ledger);
        let entry = ledger.entry(key.to_owned()).or_default();
        if !self.skip_fence {
            entry.max = entry.max.max(Some(token.get()));
        }
        Ok(entry.key.accepted.keys().copied().collect())
    }

    async fn audit(&self, keys: &[String]) -> Result<BTreeMap<String, LedgerKey>> {
        let ledger = lock(&self.ledger);
        Ok(keys
            .iter()
            .filter_map(|k| ledger.get(k).map(|e| (k.clone(), e.key.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ledger_fences_and_the_queue_redelivers() {
        let backend = MemoryBackend::backend(MemoryStore::new(), false);
        let id = RecordId::parse("ns", "k").unwrap();
        let t = |v| FencingToken::new(v).unwrap();
        let v = Value::Null;
        assert_eq!(
            backend.ledger.write(&id, t(10), "a", &v).await,
            WriteOutcome::Accepted
        );
        assert_eq!(
            backend.ledger.fence_and_read("k", t(20)).await.unwrap(),
            vec![10]
        );
        assert!(matches!(
            backend.ledger.write(&id, t(15), "b", &v).await,
            WriteOutcome::Rejected(_)
        ));
        assert_eq!(
            backend.ledger.write(&id, t(30), "c", &v).await,
            WriteOutcome::Accepted
        );
        let audit = backend.ledger.audit(&["k".to_owned()]).await.unwrap();
        assert_eq!(
            audit["k"].accepted.keys().copied().collect::<Vec<_>>(),
            vec![10, 30]
        );
        assert_eq!((audit["k"].attempts, audit["k"].rejected), (3, 1));

        let q = &backend.queue;
        q.push(&["a".to_owned(), "b".to_owned()]).await.unwrap();
        let first = q.take("t0").await.unwrap().unwrap();
        assert_eq!(first.key, "a");
        assert_eq!(q.recover(&["t0".to_owned()]).await.unwrap(), 1);
        let again = q.take("t1").await.unwrap().unwrap();
        assert_eq!(again, first);
        q.nack("t1", &again).await.unwrap();
        assert_eq!(q.take("t1").await.unwrap().unwrap().key, "b");
        assert_eq!(q.pending(&[]).await.unwrap(), 2);
    }
}
