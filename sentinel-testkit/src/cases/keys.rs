//! Case 5: keys and namespaces round-trip exactly and never collide; invalid input is refused
//! with a typed error and writes nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use sentinel_core::store::{LeaseListQuery, ListQuery};
use sentinel_core::{
    Acquisition, ClaimOutcome, CoordinationStore, Error, Failure, HistoryQuery, InvalidInput, Key,
    Keyspace, Namespace, Once, RecordId, Sentinel,
};

use crate::StoreFactory;
use crate::cases::operations::executions;
use crate::harness::{Harness, claim_request, lease_request, unique_namespace};

/// Keys that trip naive layouts: separators, hash-tag braces, escapes, quotes, unicode, 1 KiB.
pub fn awkward_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain",
        "a:b",
        "a",
        "b:c",
        ":",
        "::",
        "{",
        "}",
        "{}",
        "{a}",
        "a}b{c",
        "%",
        "%25",
        "%3A",
        "/",
        "a/b",
        "\\",
        "'",
        "\"",
        "`",
        "' OR '1'='1",
        "*",
        "?",
        "[a]",
        "\n",
        "\t",
        " ",
        "  leading",
        "trailing  ",
        "ü",
        "é",
        "e\u{301}",
        "日本語",
        "🔑",
        "💸:{payment}",
        "a\u{1}b",
        "\u{7f}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("k".repeat(1024));
    keys.push(format!("{}é", "x".repeat(1022)));
    keys.push("é".repeat(512));
    keys
}

/// Every awkward key is its own record, comes back byte for byte, and lists in bytewise order.
pub async fn keys_round_trip_and_never_collide<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "keys").await;
    let keys = awkward_keys();
    for (n, key) in keys.iter().enumerate() {
        let grant = h.acquire(key, "w", true).await;
        h.store
            .complete(&h.id(key), grant.token, &json!({ "key": key, "n": n }))
            .await
            .unwrap_or_else(|e| panic!("[keys] completing {key:?}: {e}"));
    }
    for (n, key) in keys.iter().enumerate() {
        let record = h
            .store
            .inspect(&h.id(key))
            .await
            .expect("inspect")
            .unwrap_or_else(|| panic!("[keys] {key:?} is missing"));
        assert_eq!(
            record.key.as_str(),
            key,
            "[keys] the key comes back byte for byte"
        );
        assert_eq!(record.namespace, h.namespace);
        assert_eq!(
            record.result,
            Some(json!({ "key": key, "n": n })),
            "[keys] {key:?} collided with another key"
        );
        let history = h.history(Keyspace::Execution, key).await;
        assert_eq!(
            history.len(),
            2,
            "[keys] {key:?} has its own history: {history:?}"
        );
    }
    let listed: Vec<String> = executions(&h, &Default::default(), 7, keys.len() / 7 + 2, "[keys]")
        .await
        .into_iter()
        .map(|r| r.key.as_str().to_owned())
        .collect();
    let mut expected = keys.clone();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(
        listed, expected,
        "[keys] list returns every key once, in bytewise order"
    );
}

/// The same key in two namespaces (including ones that look like prefixes of each other) is two
/// records; the execution and lease keyspaces never meet.
pub async fn namespaces_are_separate<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "namespaces").await;
    let base = unique_namespace("ns");
    let spaces: Vec<Namespace> = ["", ":", ":a", "{x}", "/"]
        .iter()
        .map(|suffix| Namespace::new(format!("{base}{suffix}")).expect("namespace"))
        .collect();
    // ("ns", "a:b") against ("ns:a", "b") and the like.
    let pairs = [(0, ":a:b"), (1, "a:b"), (2, ":b"), (3, "k"), (4, "k")];
    for (n, (space, key)) in pairs.iter().enumerate() {
        let id = RecordId::new(spaces[*space].clone(), Key::new(*key).expect("key"));
        let ClaimOutcome::Acquired(grant) = h
            .store
            .claim(&id, &claim_request("w", true))
            .await
            .expect("claim")
        else {
            panic!("[namespaces] {id} collided with another record")
        };
        h.store
            .complete(&id, grant.token, &json!(n))
            .await
            .expect("complete");
    }
    for (n, (space, key)) in pairs.iter().enumerate() {
        let id = RecordId::new(spaces[*space].clone(), Key::new(*key).expect("key"));
        let record = h
            .store
            .inspect(&id)
            .await
            .expect("inspect")
            .expect("present");
        assert_eq!(record.result, Some(json!(n)), "[namespaces] {id}");
        let page = h
            .store
            .list(&ListQuery::new(spaces[*space].clone()))
            .await
            .expect("list");
        let listed: BTreeSet<_> = page
            .items
            .iter()
            .map(|r| r.key.as_str().to_owned())
            .collect();
        assert_eq!(
            listed,
            BTreeSet::from([key.to_string()]),
            "[namespaces] {} lists only its own records",
            spaces[*space]
        );
    }
    // Same key, same namespace, other keyspace: a lease never sees the execution record.
    let id = RecordId::new(spaces[3].clone(), Key::new("k").expect("key"));
    assert!(
        h.store.inspect_lease(&id).await.expect("inspect").is_none(),
        "[namespaces] keyspaces are separate"
    );
    let Acquisition::Acquired(_) = h
        .store
        .acquire_lease(&id, &lease_request("w"))
        .await
        .expect("acquire")
    else {
        panic!("[namespaces] the lease keyspace is separate from executions")
    };
    let leases = h
        .store
        .list_leases(&LeaseListQuery::new(spaces[3].clone()))
        .await
        .expect("list leases");
    assert_eq!(leases.items.len(), 1);
    assert_eq!(
        h.store
            .list(&ListQuery::new(spaces[3].clone()))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
}

/// Bad input never reaches the store as a write: the typed error comes back and nothing is
/// written.
pub async fn invalid_input_writes_nothing<F: StoreFactory>(factory: &F) {
    let h = Harness::new(factory, "invalid").await;
    let sentinel = Sentinel::builder(h.store.clone())
        .namespace(h.namespace.as_str())
        .max_result_bytes(64)
        .build()
        .expect("client");
    let work = |_| async { Ok::<_, Failure>(1u8) };
    let refused = |r: Result<Once<u8>, Error>| matches!(r, Err(Error::InvalidInput(_)));
    assert!(
        refused(sentinel.once("", work).await),
        "[invalid] empty key"
    );
    assert!(
        refused(sentinel.once(&"k".repeat(1025), work).await),
        "[invalid] 1025-byte key"
    );
    assert!(
        refused(sentinel.once("nul\0key", work).await),
        "[invalid] NUL in key"
    );
    let zero = sentinel_core::OnceOptions::new().ttl(Duration::ZERO);
    assert!(
        refused(sentinel.once_with("k", &zero, work).await),
        "[invalid] zero ttl"
    );
    let below = sentinel_core::OnceOptions::new()
        .ttl(Duration::from_secs(2))
        .hard_ttl(Duration::from_secs(1));
    assert!(
        refused(sentinel.once_with("k", &below, work).await),
        "[invalid] hard ttl below ttl"
    );
    assert!(
        matches!(sentinel.lease("").await, Err(Error::InvalidInput(_))),
        "[invalid] empty lease key"
    );
    assert!(
        matches!(
            sentinel.force_complete("k", &"x".repeat(200)).await,
            Err(Error::InvalidInput(InvalidInput::ResultTooLarge { .. }))
        ),
        "[invalid] oversized result"
    );
    for limit in [0, sentinel_core::store::MAX_PAGE + 1] {
        let query = ListQuery {
            namespace: h.namespace.clone(),
            filter: Default::default(),
            after: None,
            limit,
        };
        assert!(
            matches!(h.store.list(&query).await, Err(Error::InvalidInput(_))),
            "[invalid] the store refuses page size {limit}"
        );
        let history = HistoryQuery {
            limit,
            ..HistoryQuery::default()
        };
        assert!(
            matches!(
                h.store
                    .history(Keyspace::Execution, &h.id("k"), &history)
                    .await,
                Err(Error::InvalidInput(_))
            ),
            "[invalid] the store refuses history page size {limit}"
        );
    }
    assert!(Namespace::new("").is_err() && Key::new("").is_err());
    let page = h
        .store
        .list(&ListQuery::new(h.namespace.clone()))
        .await
        .expect("list");
    assert!(
        page.items.is_empty(),
        "[invalid] nothing was written: {page:?}"
    );
    let leases = h
        .store
        .list_leases(&LeaseListQuery::new(h.namespace.clone()))
        .await
        .expect("list leases");
    assert!(leases.items.is_empty(), "[invalid] no lease was written");
    assert!(
        h.history(Keyspace::Execution, "k").await.is_empty(),
        "[invalid] no event was written"
    );
}
