//! What every case starts from: a fresh store on a manual clock, a namespace of its own, and
//! shorthand for building requests and reading results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Error, Event, EventKind,
    FencingToken, Grant, HistoryQuery, Key, Keyspace, LeaseRequest, ManualClock, Namespace,
    OwnerId, RecordId, RequestId, TimeSource, Ttl,
};

use crate::StoreFactory;

/// A store under test, the manual clock that drives it and a namespace no other case uses.
pub struct Harness<S> {
    /// The store.
    pub store: S,
    /// Its clock.
    pub clock: ManualClock,
    /// This case's namespace.
    pub namespace: Namespace,
}

/// A namespace unique to this process and run.
pub fn unique_namespace(case: &str) -> Namespace {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run = RequestId::random().as_u128() as u32;
    Namespace::new(format!("kit-{case}-{run:08x}-{n}")).expect("a valid namespace")
}

impl<S: CoordinationStore + Clone> Harness<S> {
    /// A fresh store from `factory` on a new manual clock.
    pub async fn new<F: StoreFactory<Store = S>>(factory: &F, case: &str) -> Self {
        let clock = ManualClock::new();
        let store = factory
            .create(TimeSource::Manual(clock.clone()))
            .await
            .unwrap_or_else(|e| panic!("[{case}] the factory could not create a store: {e}"));
        Harness {
            store,
            clock,
            namespace: unique_namespace(case),
        }
    }

    /// The record `key` of this case's namespace.
    pub fn id(&self, key: &str) -> RecordId {
        RecordId::new(self.namespace.clone(), Key::new(key).expect("a valid key"))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Claims `key` for `owner` (and starts it when `start`), expecting a grant.
    pub async fn acquire(&self, key: &str, owner: &str, start: bool) -> Grant {
        match self.claim(key, owner, start).await {
            Ok(ClaimOutcome::Acquired(grant)) => grant,
            other => panic!("claiming {key:?} for {owner}: expected a grant, got {other:?}"),
        }
    }

    /// Acquires the lease `key` for `owner` with the default ttl, expecting it free.
    pub async fn acquire_lease(&self, key: &str, owner: &str) -> Grant {
        match self
            .store
            .acquire_lease(&self.id(key), &lease_request(owner))
            .await
        {
            Ok(Acquisition::Acquired(grant)) => grant,
            other => panic!("acquiring the lease {key:?} for {owner}: expected it, got {other:?}"),
        }
    }

    /// Claims `key` for `owner` with the default ttl (1 s, hard 5 s).
    pub async fn claim(&self, key: &str, owner: &str, start: bool) -> Result<ClaimOutcome, Error> {
        self.store
            .claim(&self.id(key), &claim_request(owner, start))
            .await
    }

    /// The history of `key`.
    pub async fn history(&self, keyspace: Keyspace, key: &str) -> Vec<Event> {
        self.store
            .history(keyspace, &self.id(key), &HistoryQuery::default())
            .await
            .expect("history is readable")
    }

    /// Asserts that the execution `key` was purged: no record, and a history that starts again
    /// from the purge (one event, with the last token, `token`). `context` names the case.
    pub async fn assert_purged(&self, key: &str, token: FencingToken, context: &str) {
        let record = self.store.inspect(&self.id(key)).await.expect("inspect");
        assert_eq!(record, None, "{context} {key}: purged");
        let history = self.history(Keyspace::Execution, key).await;
        assert!(
            matches!(history.as_slice(), [e] if e.kind == EventKind::Purged && e.token == token),
            "{context} {key}: the history after purge is the purge alone: {history:?}"
        );
    }
}

/// The ttl most cases use: 1 s, hard 5 s.
pub fn ttl() -> Ttl {
    Ttl::with_hard(Duration::from_secs(1), Duration::from_secs(5)).expect("a valid ttl")
}

/// An owner id.
pub fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("a valid owner id")
}

/// A claim request with a fresh request id and the default ttl.
pub fn claim_request(who: &str, start: bool) -> ClaimRequest {
    ClaimRequest {
        owner: owner(who),
        ttl: ttl(),
        start,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

/// A lease request with a fresh request id and the default ttl.
pub fn lease_request(who: &str) -> LeaseRequest {
    LeaseRequest {
        owner: owner(who),
        ttl: ttl(),
        request_id: RequestId::random(),
    }
}

/// A token above every real one, never issued.
pub fn bogus_token() -> FencingToken {
    FencingToken::new(i64::MAX / 2).expect("positive")
}

/// The JSON result used by cases.
pub fn result(n: u64) -> Value {
    serde_json::json!({ "receipt": n, "note": "ok" })
}
