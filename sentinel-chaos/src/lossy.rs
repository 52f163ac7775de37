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
        let answer = store.claim(id, request).await;
        let req = request.request_id.as_u128();
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
