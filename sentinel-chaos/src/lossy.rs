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
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use sentinel_core::store::{
    HistoryQuery, LeaseListQuery, ListQuery, Page, Renewal, RenewalResult, Wait,
};
use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, Error, Event,
    ExecutionRecord, FencingToken, Keyspace, LeaseRecord, LeaseRequest, Namespace, OwnerId,
    RecordId, Result, Timestamp,
};

use crate::journal::{Entry, Journal};
use crate::rng::Rng;

/// Loses the replies of a fraction of applied claims and completions.
#[derive(Debug)]
pub struct LossyStore {
    inner: Arc<dyn CoordinationStore>,
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

impl LossyStore {
    /// Wraps `inner`, losing each applied claim's and completion's reply with probability `rate`
    /// (0: none; it still journals the retries of claims that failed in transit).
    pub fn new(
        inner: Arc<dyn CoordinationStore>,
        rate: f64,
        seed: u64,
        journal: Arc<Journal>,
    ) -> Self {
        LossyStore {
            inner,
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

    fn lost(&self, operation: &str) -> Error {
        Error::Unavailable {
            store: self.inner.backend(),
            source: format!("chaos: the reply to {operation} was lost after the store applied it")
                .into(),
        }
    }
}

#[async_trait]
impl CoordinationStore for LossyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn now(&self) -> Result<Timestamp> {
        self.inner.now().await
    }

    async fn claim(&self, id: &RecordId, request: &ClaimRequest) -> Result<ClaimOutcome> {
        let answer = self.inner.claim(id, request).await;
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
        Err(self.lost("claim"))
    }

    async fn start(&self, id: &RecordId, token: FencingToken) -> Result<Timestamp> {
        self.inner.start(id, token).await
    }

    async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
        self.inner.heartbeat(renewals).await
    }

    async fn complete(&self, id: &RecordId, token: FencingToken, result: &Value) -> Result<()> {
        let answer = self.inner.complete(id, token, result).await;
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
        Err(self.lost("complete"))
    }

    async fn abort(
        &self,
        id: &RecordId,
        token: FencingToken,
        disposition: Disposition,
    ) -> Result<()> {
        self.inner.abort(id, token, disposition).await
    }

    async fn reconcile(&self, id: &RecordId, owner: &OwnerId) -> Result<FencingToken> {
        self.inner.reconcile(id, owner).await
    }

    async fn force_complete(&self, id: &RecordId, owner: &OwnerId, result: &Value) -> Result<()> {
        self.inner.force_complete(id, owner, result).await
    }

    async fn reset_to_claimed(&self, id: &RecordId, owner: &OwnerId) -> Result<()> {
        self.inner.reset_to_claimed(id, owner).await
    }

    async fn purge(&self, namespace: &Namespace, older_than: Duration, limit: u32) -> Result<u64> {
        self.inner.purge(namespace, older_than, limit).await
    }

    async fn inspect(&self, id: &RecordId) -> Result<Option<ExecutionRecord>> {
        self.inner.inspect(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ExecutionRecord>> {
        self.inner.list(query).await
    }

    async fn history(
        &self,
        keyspace: Keyspace,
        id: &RecordId,
        query: &HistoryQuery,
    ) -> Result<Vec<Event>> {
        self.inner.history(keyspace, id, query).await
    }

    async fn acquire_lease(&self, id: &RecordId, request: &LeaseRequest) -> Result<Acquisition> {
        self.inner.acquire_lease(id, request).await
    }

    async fn release_lease(&self, id: &RecordId, token: FencingToken) -> Result<()> {
        self.inner.release_lease(id, token).await
    }

    async fn inspect_lease(&self, id: &RecordId) -> Result<Option<LeaseRecord>> {
        self.inner.inspect_lease(id).await
    }

    async fn list_leases(&self, query: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
        self.inner.list_leases(query).await
    }

    async fn wait_for_change(
        &self,
        id: &RecordId,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Wait> {
        self.inner.wait_for_change(id, since, timeout).await
    }
}
