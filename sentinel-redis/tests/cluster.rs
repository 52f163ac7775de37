//! Redis Cluster specifics beyond the conformance suite: a slot migrated to another node while a
//! record lives in it (`MOVED`, followed transparently; the record's hash and history move
//! together because they share a slot), records spread over every primary, heartbeats grouped by
//! slot, listing that scans every primary, replica acknowledgement asked of the node written to.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use sentinel_core::{
    ClaimOutcome, ClaimRequest, CoordinationStore, ExecutionState, Key, Keyspace, ListQuery,
    ManualClock, Namespace, OwnerId, RecordId, Renewal, RequestId, TimeSource, Ttl,
};

use sentinel_redis::RedisStore;
use support::{calls_since, cluster, cluster_urls, command_calls, raw, unique_prefix};

fn claim(who: &str) -> ClaimRequest {
    ClaimRequest {
        owner: OwnerId::new(who).unwrap(),
        ttl: Ttl::with_hard(Duration::from_secs(10), Duration::from_secs(60)).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

struct Node {
    id: String,
    host: String,
    port: u16,
    primary: bool,
}

async fn nodes() -> Vec<Node> {
    let mut conn = raw(&cluster_urls()[0]).await;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let addr = parts[1].split('@').next().unwrap();
            let (host, port) = addr.rsplit_once(':').unwrap();
            Node {
                id: parts[0].to_owned(),
                host: host.to_owned(),
                port: port.parse().unwrap(),
                primary: parts[2].contains("master"),
            }
        })
        .collect()
}

async fn node_conn(node: &Node) -> redis::aio::MultiplexedConnection {
    raw(&format!("redis://{}:{}", node.host, node.port)).await
}

async fn slot_of(key: &[u8]) -> i64 {
    let mut conn = raw(&cluster_urls()[0]).await;
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The primary serving `slot`, found by asking each primary whether it counts keys there the
/// cheap way: `CLUSTER COUNTKEYSINSLOT` answers on any node, so use `CLUSTER SLOTS` instead.
async fn owner_of(slot: i64) -> String {
    let mut conn = raw(&cluster_urls()[0]).await;
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .unwrap();
    for range in ranges {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let start: i64 = redis::from_redis_value(fields[0].clone()).unwrap();
        let end: i64 = redis::from_redis_value(fields[1].clone()).unwrap();
        if (start..=end).contains(&slot) {
            let redis::Value::Array(primary) = &fields[2] else {
                panic!("no primary")
            };
            return redis::from_redis_value(primary[2].clone()).unwrap();
        }
    }
    panic!("slot {slot} is not served")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_slot_is_followed_and_moves_hash_and_history_together() {
    let store = cluster(TimeSource::Server).await;
    let id = RecordId::parse("pay{ments}", "order:{1}").unwrap();
    let token = match store.claim(&id, &claim("a")).await.unwrap() {
        ClaimOutcome::Acquired(g) => g.token,
        other => panic!("{other:?}"),
    };
    let (hash, stream) = store.key_names(Keyspace::Execution, &id);
    let slot = slot_of(&hash).await;
    assert_eq!(slot, slot_of(&stream).await);
    let all = nodes().await;
    let source_id = owner_of(slot).await;
    let source = all.iter().find(|n| n.id == source_id).unwrap();
    let target = all.iter().find(|n| n.primary && n.id != source_id).unwrap();
    let mut src = node_conn(source).await;
    let mut dst = node_conn(target).await;
    let set = |conn: &mut redis::aio::MultiplexedConnection, args: Vec<String>| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot);
        for a in args {
            cmd.arg(a);
        }
        let mut conn = conn.clone();
        async move { cmd.query_async::<()>(&mut conn).await.unwrap() }
    };
    set(&mut dst, vec!["IMPORTING".into(), source.id.clone()]).await;
    set(&mut src, vec!["MIGRATING".into(), target.id.clone()]).await;
    let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query_async(&mut src)
        .await
        .unwrap();
    assert!(keys.contains(&hash) && keys.contains(&stream));
    let _: () = redis::cmd("MIGRATE")
        .arg(&target.host)
        .arg(target.port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&keys)
        .query_async(&mut src)
        .await
        .unwrap();
    for node in all.iter().filter(|n| n.primary) {
        let mut conn = node_conn(node).await;
        set(&mut conn, vec!["NODE".into(), target.id.clone()]).await;
    }

    // The store's slot map is stale: the node it sends to answers MOVED, and the cluster client
    // follows it (the script never ran on the old node, so following it is safe).
    store
        .complete(&id, token, &json!({"ok": true}))
        .await
        .unwrap();
    let record = store.inspect(&id).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    let history = store
        .history(Keyspace::Execution, &id, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        history.len(),
        2,
        "claimed and completed, in one stream: {history:?}"
    );
    assert_eq!(owner_of(slot).await, target.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_primary_and_are_renewed_and_listed_together() {
    let clock = ManualClock::new();
    let store = cluster(TimeSource::Manual(clock.clone())).await;
    let namespace = Namespace::new("spread").unwrap();
    let mut renewals = Vec::new();
    let mut owners = BTreeSet::new();
    let mut keys = Vec::new();
    for i in 0..120 {
        let key = Key::new(format!("k:{i:03}{{x}}")).unwrap();
        let id = RecordId::new(namespace.clone(), key.clone());
        let ClaimOutcome::Acquired(g) = store.claim(&id, &claim("a")).await.unwrap() else {
            panic!("busy")
        };
        let (hash, _) = store.key_names(Keyspace::Execution, &id);
        owners.insert(owner_of(slot_of(&hash).await).await);
        renewals.push(Renewal {
            keyspace: Keyspace::Execution,
            id,
            token: g.token,
        });
        keys.push(key);
    }
    let primaries = nodes().await.into_iter().filter(|n| n.primary).count();
    assert_eq!(owners.len(), primaries, "records live on every primary");

    clock.advance(Duration::from_secs(5));
    let renewed = store.heartbeat(&renewals).await.unwrap();
    let expected = clock.now().saturating_add(Duration::from_secs(10));
    assert!(renewed.iter().all(|r| *r == Ok(expected)), "{renewed:?}");

    let mut listed = Vec::new();
    let mut query = ListQuery::new(namespace.clone());
    query.limit = 7;
    loop {
        let page = store.list(&query).await.unwrap();
        listed.extend(page.items.into_iter().map(|r| r.key));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    keys.sort();
    assert_eq!(
        listed, keys,
        "every record, in key order, from every primary"
    );
}

/// `WAIT` calls answered by every primary so far.
async fn waits_on_primaries() -> u64 {
    let mut total = 0;
    for node in nodes().await.into_iter().filter(|n| n.primary) {
        let calls = command_calls(&mut node_conn(&node).await).await;
        total += calls_since(&[], &calls, "wait");
    }
    total
}

#[tokio::test]
async fn wait_for_replicas_is_asked_of_the_node_that_took_each_write() {
    // The fixture's primaries have no replicas: every write is applied and reported as
    // unreplicated, and the store asks exactly the nodes it wrote to.
    let store = RedisStore::builder()
        .prefix(unique_prefix())
        .wait_for_replicas(1, Duration::from_millis(20))
        .connect_cluster(cluster_urls())
        .await
        .unwrap();
    let namespace = Namespace::new("waited").unwrap();
    // First load the scripts on every primary (a NOSCRIPT reply sends the call, and its WAIT,
    // again): claims and a heartbeat on each.
    let primaries = nodes().await.into_iter().filter(|n| n.primary).count();
    let (mut warmed, mut warm) = (BTreeSet::new(), Vec::new());
    for i in 0.. {
        if warmed.len() == primaries {
            break;
        }
        let id = RecordId::new(namespace.clone(), Key::new(format!("warm{i}")).unwrap());
        store.claim(&id, &claim("a")).await.unwrap_err();
        let (hash, _) = store.key_names(Keyspace::Execution, &id);
        warmed.insert(owner_of(slot_of(&hash).await).await);
        let token = store.inspect(&id).await.unwrap().unwrap().token;
        warm.push(Renewal {
            keyspace: Keyspace::Execution,
            id,
            token,
        });
    }
    store.heartbeat(&warm).await.unwrap_err();

    let mut renewals = Vec::new();
    let mut slots = BTreeSet::new();
    for i in 0..12 {
        let id = RecordId::new(namespace.clone(), Key::new(format!("k{i}")).unwrap());
        let before = waits_on_primaries().await;
        let err = store.claim(&id, &claim("a")).await.unwrap_err();
        assert_eq!(waits_on_primaries().await - before, 1, "one WAIT per write");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("only 0 of 1 replicas"), "{err}");
        // The primary applied it.
        let record = store.inspect(&id).await.unwrap().unwrap();
        assert_eq!(record.state, ExecutionState::Executing);
        let (hash, _) = store.key_names(Keyspace::Execution, &id);
        slots.insert(slot_of(&hash).await);
        renewals.push(Renewal {
            keyspace: Keyspace::Execution,
            id,
            token: record.token,
        });
    }
    // A heartbeat tick sends one call per slot, each followed by its WAIT on the same node.
    let before = waits_on_primaries().await;
    let err = store.heartbeat(&renewals).await.unwrap_err();
    assert!(err.to_string().contains("only 0 of 1 replicas"), "{err}");
    assert_eq!(waits_on_primaries().await - before, slots.len() as u64);
}
