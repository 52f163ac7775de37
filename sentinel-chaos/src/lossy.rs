//! A store decorator that loses replies: it sends an applied claim's or completion's answer
//! nowhere and reports the connection as broken, exactly what a connection killed between the
//! server applying a command and the client reading its reply looks like. The client then sends
//! the command again; the decorator checks what comes back and journals it:
//!
//! - a dropped **grant** must come back as the same grant (the retry recognises its request id and
//!   adopts its claim), never as "busy with my own token" (a phantom execution nobody runs);
//! - a dropped **completion** must be accepted again (same token, same result).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Error, FencingToken, RecordId, Result,
};
use sentinel_testkit::{Decorated, Decorator};

use crate::journal::{Entry, Journal};
use crate::rng::Rng;

/// Loses the replies of a fraction of applied claims and completions: a [`Decorator`], so the
/// store it wraps is a `Decorated<Lossy>`.
#[derive(Debug)]
pub struct Lossy {
    rate: f64,
    journal: Arc<Journal>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rng: Rng,
    /// Claims whose reply was dropped here (with the granted token, if it was a grant) or failed
    /// in transit (`true`), by request id: their retry is checked.
    claims: HashMap<u128, (Option<i64>, bool)>,
    /// Completions whose reply was dropped.
    completions: HashMap<(RecordId, i64), ()>,
}

/// A claim sent to the store and not yet answered; dropped unanswered (the caller cancelled it),
/// it is recorded as failed in transit, so that its retry is journaled and checked.
struct InTransit<'a> {
    lossy: &'a Lossy,
    request: u128,
    answered: bool,
}

impl InTransit<'_> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for InTransit<'_> {
    fn drop(&mut self) {
        if !self.answered {
            // Keeps what an earlier attempt recorded (a dropped grant) if there is one.
            self.lossy
                .state()
                .claims
                .entry(self.request)
                .or_insert((None, true));
        }
    }
}

fn answer_of(outcome: &ClaimOutcome) -> (&'static str, Option<i64>) {
    match outcome {
        ClaimOutcome::Acquired(g) => ("acquired", Some(g.token.get())),
        ClaimOutcome::Busy { token, .. } => ("busy", Some(token.get())),
        ClaimOutcome::Uncertain { token, .. } => ("uncertain", Some(token.get())),
        ClaimOutcome::Completed { token, .. } => ("completed", Some(token.get())),
        ClaimOutcome::Reconciling { token, .. } => ("reconciling", Some(token.get())),
    }
}

impl Lossy {
    /// Wraps `inner`, losing each applied claim's and completion's reply with probability `rate`
    /// (0: none; it still journals the retries of claims that failed in transit).
    pub fn wrap(
        inner: Arc<dyn CoordinationStore>,
        rate: f64,
        seed: u64,
        journal: Arc<Journal>,
    ) -> Decorated<Lossy> {
        Decorated::around(inner, Lossy::new(rate, seed, journal))
    }

    fn new(rate: f64, seed: u64, journal: Arc<Journal>) -> Self {
        Lossy {
            rate,
            journal,
            state: Mutex::new(State {
                rng: Rng::new(seed),
                claims: HashMap::new(),
                completions: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn lost(&self, store: &dyn CoordinationStore, operation: &str) -> Error {
        Error::Unavailable {
            store: store.backend(),
            source: format!("chaos: the reply to {operation} was lost after the store applied it")
                .into(),
        }
    }
}

#[async_trait]
impl Decorator for Lossy {
    async fn claim(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        request: &ClaimRequest,
    ) -> Result<ClaimOutcome> {
        let req = request.request_id.as_u128();
        // A call the client abandons before its answer (its call timeout fires while a restart
        // stalls the connection) may have been applied, like one that failed in transit.
        let pending = InTransit {
            lossy: self,
            request: req,
            answered: false,
        };
        let answer = store.claim(id, request).await;
        pending.answered();
        let retried = self.state().claims.remove(&req);
        if let Some((granted, in_transit)) = retried {
            match &answer {
                Ok(outcome) => {
                    let (kind, token) = answer_of(outcome);
                    self.journal.log(&Entry::ClaimRetried {
                        key: id.key.as_str().to_owned(),
                        request: format!("{req:x}"),
                        granted,
                        answer: kind.to_owned(),
                        token,
                        adopted: granted.is_some() && kind == "acquired" && token == granted,
                        in_transit,
                    });
                }
                // Not answered this time either: the next retry is checked instead.
                Err(_) => {
                    self.state().claims.insert(req, (granted, in_transit));
                }
            }
            return answer;
        }
        let outcome = match &answer {
            Ok(outcome) => outcome,
            Err(e) => {
                // Lost on a real connection (the proxy, a killed connection, a restart): it may
                // have been applied. Its retry is journaled too.
                if e.is_transient() {
                    self.state().claims.insert(req, (None, true));
                }
                return answer;
            }
        };
        if !self.state().rng.chance(self.rate) {
            return answer;
        }
        let granted = match outcome {
            ClaimOutcome::Acquired(g) => Some(g.token.get()),
            _ => None,
        };
        self.state().claims.insert(req, (granted, false));
        self.journal.log(&Entry::LostClaim {
            key: id.key.as_str().to_owned(),
            request: format!("{req:x}"),
            granted,
        });
        Err(self.lost(store, "claim"))
    }

    async fn complete(
        &self,
        store: &dyn CoordinationStore,
        id: &RecordId,
        token: FencingToken,
        result: &Value,
    ) -> Result<()> {
        let answer = store.complete(id, token, result).await;
        let slot = (id.clone(), token.get());
        let retried = self.state().completions.remove(&slot).is_some();
        if retried {
            match &answer {
                Ok(()) => self.journal.log(&Entry::CompleteRetried {
                    key: id.key.as_str().to_owned(),
                    token: token.get(),
                    ok: true,
                    detail: None,
                }),
                Err(e) if e.is_transient() => {
                    self.state().completions.insert(slot, ());
                }
                Err(e) => self.journal.log(&Entry::CompleteRetried {
                    key: id.key.as_str().to_owned(),
                    token: token.get(),
                    ok: false,
                    detail: Some(e.to_string()),
                }),
            }
            return answer;
        }
        if answer.is_err() || !self.state().rng.chance(self.rate) {
            return answer;
        }
        self.state().completions.insert(slot, ());
        self.journal.log(&Entry::LostComplete {
            key: id.key.as_str().to_owned(),
            token: token.get(),
        });
        Err(self.lost(store, "complete"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use sentinel_core::{OwnerId, RequestId, Ttl};

    use super::*;

    /// Holds the first claim until it is cancelled: a connection stalled by a restart.
    #[derive(Debug, Default)]
    struct StallFirstClaim {
        stalled: AtomicBool,
    }

    #[async_trait]
    impl Decorator for StallFirstClaim {
        async fn claim(
            &self,
            store: &dyn CoordinationStore,
            id: &RecordId,
            request: &ClaimRequest,
        ) -> Result<ClaimOutcome> {
            if !self.stalled.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            store.claim(id, request).await
        }
    }

    #[tokio::test]
    async fn a_claim_abandoned_before_its_answer_has_its_retry_journaled() {
        let dir = std::env::temp_dir().join(format!("chaos-lossy-{}", crate::unix_micros()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = Arc::new(Journal::create(&dir.join("w0.0.jsonl")).unwrap());
        let stalling: Arc<dyn CoordinationStore> = Arc::new(Decorated::around(
            Arc::new(sentinel_memory::MemoryStore::new()),
            StallFirstClaim::default(),
        ));
        let lossy = Lossy::wrap(stalling, 0.0, 7, Arc::clone(&journal));
        let id = RecordId::parse("ns", "k").unwrap();
        let request = ClaimRequest {
            owner: OwnerId::new("w").unwrap(),
            ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
            start: true,
            request_id: RequestId::random(),
            fingerprint: None,
        };
        // The client's call timeout gives up on the first attempt; the retry is answered.
        let first = tokio::time::timeout(Duration::from_millis(20), lossy.claim(&id, &request));
        assert!(first.await.is_err(), "the first attempt never answers");
        let retry = lossy.claim(&id, &request).await.unwrap();
        assert!(matches!(retry, ClaimOutcome::Acquired(_)));

        let (journals, torn) = crate::journal::read_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(torn, 0);
        let retried: Vec<&Entry> = journals
            .iter()
            .flat_map(|(_, entries)| entries)
            .filter(|e| {
                matches!(
                    e,
                    Entry::ClaimRetried {
                        in_transit: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(retried.len(), 1, "{journals:?}");
    }
}
