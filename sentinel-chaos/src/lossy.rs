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
    use sentinel_testkit::CallCounter;

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

    /// A journal in a scratch directory, and what it holds once the test is done.
    struct Scratch {
        dir: std::path::PathBuf,
        journal: Arc<Journal>,
    }

    impl Scratch {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "chaos-lossy-{}-{}",
                std::process::id(),
                RequestId::random()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let journal = Arc::new(Journal::create(&dir.join("w0.0.jsonl")).unwrap());
            Scratch { dir, journal }
        }

        fn entries(self) -> Vec<Entry> {
            let (journals, torn) = crate::journal::read_all(&self.dir).unwrap();
            std::fs::remove_dir_all(&self.dir).unwrap();
            assert_eq!(torn, 0);
            journals.into_iter().flat_map(|(_, e)| e).collect()
        }
    }

    fn claim_request() -> ClaimRequest {
        ClaimRequest {
            owner: OwnerId::new("w").unwrap(),
            ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
            start: true,
            request_id: RequestId::random(),
            fingerprint: None,
        }
    }

    /// A reply-losing store at `rate`, journaling to `scratch`, over a memory store seen
    /// through `flaw`.
    fn lossy_over(flaw: impl Decorator, rate: f64, scratch: &Scratch) -> Decorated<Lossy> {
        let flawed = Decorated::around(Arc::new(sentinel_memory::MemoryStore::new()), flaw);
        Lossy::wrap(Arc::new(flawed), rate, 7, Arc::clone(&scratch.journal))
    }

    fn granted_token(outcome: &ClaimOutcome) -> FencingToken {
        match outcome {
            ClaimOutcome::Acquired(grant) => grant.token,
            other => panic!("a grant, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_claim_abandoned_before_its_answer_has_its_retry_journaled() {
        let scratch = Scratch::new();
        let lossy = lossy_over(StallFirstClaim::default(), 0.0, &scratch);
        let id = RecordId::parse("ns", "k").unwrap();
        let request = claim_request();
        // The client's call timeout gives up on the first attempt; the retry is answered.
        let first = tokio::time::timeout(Duration::from_millis(20), lossy.claim(&id, &request));
        assert!(first.await.is_err(), "the first attempt never answers");
        let retry = lossy.claim(&id, &request).await.unwrap();
        assert!(matches!(retry, ClaimOutcome::Acquired(_)));

        let entries = scratch.entries();
        let retried = entries
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Entry::ClaimRetried {
                        in_transit: true,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(retried, 1, "{entries:?}");
    }

    #[tokio::test]
    async fn at_rate_zero_every_reply_arrives() {
        let scratch = Scratch::new();
        let lossy = lossy_over(CallCounter::default(), 0.0, &scratch);
        for k in 0..20 {
            let id = RecordId::parse("ns", &format!("k{k}")).unwrap();
            let token = granted_token(&lossy.claim(&id, &claim_request()).await.unwrap());
            lossy.complete(&id, token, &Value::from(k)).await.unwrap();
        }
        let entries = scratch.entries();
        assert!(
            entries.is_empty(),
            "nothing lost, nothing retried: {entries:?}"
        );
    }

    #[tokio::test]
    async fn at_rate_one_every_reply_is_lost_once_and_its_retry_checked() {
        let scratch = Scratch::new();
        let lossy = lossy_over(CallCounter::default(), 1.0, &scratch);
        let id = RecordId::parse("ns", "k").unwrap();
        let request = claim_request();
        let lost = lossy.claim(&id, &request).await.unwrap_err();
        assert!(lost.is_transient(), "{lost}");
        let token = granted_token(&lossy.claim(&id, &request).await.unwrap());
        let result = Value::from("done");
        let lost = lossy.complete(&id, token, &result).await.unwrap_err();
        assert!(lost.is_transient(), "{lost}");
        lossy.complete(&id, token, &result).await.unwrap();

        let t = token.get();
        let key = "k".to_owned();
        let request = format!("{:x}", request.request_id.as_u128());
        assert_eq!(
            scratch.entries(),
            [
                Entry::LostClaim {
                    key: key.clone(),
                    request: request.clone(),
                    granted: Some(t),
                },
                Entry::ClaimRetried {
                    key: key.clone(),
                    request,
                    granted: Some(t),
                    answer: "acquired".to_owned(),
                    token: Some(t),
                    adopted: true,
                    in_transit: false,
                },
                Entry::LostComplete {
                    key: key.clone(),
                    token: t,
                },
                Entry::CompleteRetried {
                    key,
                    token: t,
                    ok: true,
                    detail: None,
                },
            ]
        );
    }

    /// A store that forgets request ids (every claim is new to it), and fails the completions
    /// it is told to before they reach the store.
    #[derive(Debug, Default)]
    struct Flawed {
        complete_errors: Mutex<std::collections::VecDeque<Option<Error>>>,
    }

    #[async_trait]
    impl Decorator for Flawed {
        async fn claim(
            &self,
            store: &dyn CoordinationStore,
            id: &RecordId,
            request: &ClaimRequest,
        ) -> Result<ClaimOutcome> {
            let mut forgotten = request.clone();
            forgotten.request_id = RequestId::random();
            store.claim(id, &forgotten).await
        }

        async fn complete(
            &self,
            store: &dyn CoordinationStore,
            id: &RecordId,
            token: FencingToken,
            result: &Value,
        ) -> Result<()> {
            let next = self.complete_errors.lock().unwrap().pop_front().flatten();
            match next {
                Some(error) => Err(error),
                None => store.complete(id, token, result).await,
            }
        }
    }

    #[tokio::test]
    async fn a_retry_the_store_does_not_recognise_is_journaled_as_not_adopted() {
        let scratch = Scratch::new();
        let lossy = lossy_over(Flawed::default(), 1.0, &scratch);
        let id = RecordId::parse("ns", "k").unwrap();
        let request = claim_request();
        lossy.claim(&id, &request).await.unwrap_err();
        let retry = lossy.claim(&id, &request).await.unwrap();
        assert!(matches!(retry, ClaimOutcome::Busy { .. }), "{retry:?}");
        let entries = scratch.entries();
        let retried: Vec<(&str, bool)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::ClaimRetried {
                    answer, adopted, ..
                } => Some((answer.as_str(), *adopted)),
                _ => None,
            })
            .collect();
        assert_eq!(retried, [("busy", false)], "{entries:?}");
    }

    #[tokio::test]
    async fn a_completion_retry_is_judged_by_the_first_answer_that_arrives() {
        let scratch = Scratch::new();
        let unavailable = || Error::Unavailable {
            store: "memory",
            source: "connection reset".into(),
        };
        let corrupt = Error::CorruptRecord {
            store: "memory",
            detail: "a field is missing".to_owned(),
        };
        // First key: the lost completion's retry fails in transit, the next one arrives.
        // Second key: its retry is refused for good.
        let flawed = Flawed {
            complete_errors: Mutex::new(
                [None, Some(unavailable()), None, None, Some(corrupt)].into(),
            ),
        };
        let lossy = lossy_over(flawed, 1.0, &scratch);
        let result = Value::from(1);
        let mut tokens = Vec::new();
        for key in ["a", "b"] {
            let id = RecordId::parse("ns", key).unwrap();
            // Claimed past the decorator: only the completion's reply is lost here.
            let token = granted_token(&lossy.inner().claim(&id, &claim_request()).await.unwrap());
            tokens.push(token.get());
            lossy.complete(&id, token, &result).await.unwrap_err();
            let retried = lossy.complete(&id, token, &result).await;
            if key == "a" {
                assert!(retried.unwrap_err().is_transient());
                lossy.complete(&id, token, &result).await.unwrap();
            } else {
                assert!(!retried.unwrap_err().is_transient());
            }
        }
        let completions: Vec<Entry> = scratch
            .entries()
            .into_iter()
            .filter(|e| matches!(e, Entry::CompleteRetried { .. }))
            .collect();
        assert_eq!(
            completions,
            [
                Entry::CompleteRetried {
                    key: "a".to_owned(),
                    token: tokens[0],
                    ok: true,
                    detail: None,
                },
                Entry::CompleteRetried {
                    key: "b".to_owned(),
                    token: tokens[1],
                    ok: false,
                    detail: Some("memory holds a corrupt record: a field is missing".to_owned()),
                },
            ]
        );
    }
}
