//! The kit's store decorator: a decorated store must be the store it wraps, call for call, so
//! tests that count or fail calls through it test the real thing. The whole conformance suite
//! runs against a counted memory store, and each port method is counted under its own name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, Disposition, HistoryQuery, Key, Keyspace,
    LeaseListQuery, LeaseRequest, ListQuery, Namespace, OwnerId, RecordId, Renewal, RequestId,
    Result, TimeSource, Ttl,
};
use sentinel_memory::MemoryStore;
use sentinel_testkit::{Counted, StoreFactory};

/// Counted memory stores, remembering which memory store each one wraps so that a restart
/// reopens the same data.
#[derive(Default)]
struct CountedFactory {
    wrapped: Mutex<Vec<(Arc<dyn CoordinationStore>, MemoryStore)>>,
}

impl CountedFactory {
    fn wrap(&self, memory: MemoryStore) -> Counted {
        let inner: Arc<dyn CoordinationStore> = Arc::new(memory.clone());
        self.wrapped
            .lock()
            .expect("not poisoned")
            .push((Arc::clone(&inner), memory));
        Counted::around(inner, Default::default())
    }
}

#[async_trait]
impl StoreFactory for CountedFactory {
    type Store = Counted;

    async fn create(&self, time: TimeSource) -> Result<Counted> {
        Ok(self.wrap(MemoryStore::with_time(time)))
    }

    async fn reopen(&self, store: &Counted, time: TimeSource) -> Result<Counted> {
        let memory = self
            .wrapped
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(inner, _)| Arc::ptr_eq(inner, store.inner()))
            .map(|(_, memory)| memory.clone())
            .expect("a store this factory made");
        Ok(self.wrap(memory.restarted(time)))
    }
}

mod conformance {
    sentinel_testkit::conformance_tests!(super::CountedFactory::default());
}

#[tokio::test]
async fn counts_each_call_under_its_own_name() {
    let store = Counted::counting(MemoryStore::new());
    let namespace = Namespace::new("counted").expect("namespace");
    let id = RecordId::new(namespace.clone(), Key::new("k").expect("key"));
    let owner = OwnerId::new("w-1").expect("owner");
    let ttl = Ttl::new(Duration::from_secs(30)).expect("ttl");
    let claim = ClaimRequest {
        owner: owner.clone(),
        ttl,
        start: false,
        request_id: RequestId::random(),
        fingerprint: None,
    };

    store.now().await.expect("now");
    let Ok(ClaimOutcome::Acquired(grant)) = store.claim(&id, &claim).await else {
        panic!("a fresh key is granted");
    };
    store.start(&id, grant.token).await.expect("start");
    let renewal = Renewal {
        keyspace: Keyspace::Execution,
        id: id.clone(),
        token: grant.token,
    };
    store.heartbeat(&[renewal]).await.expect("heartbeat");
    store
        .complete(&id, grant.token, &json!(1))
        .await
        .expect("complete");
    // Refused or not, every call is counted once.
    let _ = store.abort(&id, grant.token, Disposition::NotApplied).await;
    let _ = store.reconcile(&id, &owner).await;
    let _ = store.force_complete(&id, &owner, &json!(2)).await;
    let _ = store.reset_to_claimed(&id, &owner).await;
    store
        .purge(&namespace, Duration::from_secs(3600), 10)
        .await
        .expect("purge");
    store.inspect(&id).await.expect("inspect");
    store
        .list(&ListQuery::new(namespace.clone()))
        .await
        .expect("list");
    store
        .history(Keyspace::Execution, &id, &HistoryQuery::default())
        .await
        .expect("history");
    let lease = LeaseRequest {
        owner: owner.clone(),
        ttl,
        request_id: RequestId::random(),
    };
    store.acquire_lease(&id, &lease).await.expect("acquire");
    let _ = store.release_lease(&id, grant.token).await;
    store.inspect_lease(&id).await.expect("inspect lease");
    store
        .list_leases(&LeaseListQuery::new(namespace))
        .await
        .expect("list leases");
    store
        .wait_for_change(&id, tokio::time::Instant::now(), Duration::from_millis(1))
        .await
        .expect("wait");
    store
        .wait_for_change(&id, tokio::time::Instant::now(), Duration::from_millis(1))
        .await
        .expect("wait");

    let mut expected: BTreeMap<&'static str, u64> = [
        "now",
        "claim",
        "start",
        "heartbeat",
        "complete",
        "abort",
        "reconcile",
        "force_complete",
        "reset_to_claimed",
        "purge",
        "inspect",
        "list",
        "history",
        "acquire_lease",
        "release_lease",
        "inspect_lease",
        "list_leases",
    ]
    .into_iter()
    .map(|name| (name, 1))
    .collect();
    expected.insert("wait_for_change", 2);
    assert_eq!(store.counts(), expected);
    assert_eq!(store.count("claim"), 1);
    assert_eq!(store.count("wait_for_change"), 2);
    assert_eq!(store.count("no_such_call"), 0);
    assert_eq!(store.backend(), "memory", "the decorated store's name");
}
