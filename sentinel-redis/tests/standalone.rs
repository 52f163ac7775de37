//! Redis-specific behaviour of the store on a standalone server, beyond the conformance suite:
//! exact 64-bit arithmetic in Lua, one script call per transition, the key layout on the server,
//! canonical results, typed errors for corrupt or foreign data, `WAIT`, and the compact field `c`
//! (small records, cheap claims, records written before it still served).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Error, EventKind, FencingToken,
    HistoryQuery, Keyspace, LeaseRequest, ManualClock, OwnerId, RecordId, RejectReason, Renewal,
    RequestId, TimeSource, Timestamp, Ttl,
};
use sentinel_redis::RedisStore;
use sentinel_testkit::servers::RedisOptions;

use support::{calls_since, command_calls, private_redis, raw, standalone};

fn owner(s: &str) -> OwnerId {
    OwnerId::new(s).unwrap()
}

fn claim(who: &str, ttl: Ttl, start: bool) -> ClaimRequest {
    ClaimRequest {
        owner: owner(who),
        ttl,
        start,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

fn id(key: &str) -> RecordId {
    RecordId::parse("ns", key).unwrap()
}

fn grant(outcome: ClaimOutcome) -> sentinel_core::Grant {
    match outcome {
        ClaimOutcome::Acquired(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Loads the claim, heartbeat and complete scripts on `store`'s server (claims, renews and
/// completes the key "warm"), so that counted calls see no `NOSCRIPT`.
async fn load_scripts(store: &RedisStore, ttl: Ttl) {
    let warm = grant(
        store
            .claim(&id("warm"), &claim("w", ttl, true))
            .await
            .unwrap(),
    );
    store
        .heartbeat(&[Renewal {
            keyspace: Keyspace::Execution,
            id: id("warm"),
            token: warm.token,
        }])
        .await
        .unwrap();
    store
        .complete(&id("warm"), warm.token, &json!(0))
        .await
        .unwrap();
}

#[tokio::test]
async fn numbers_stay_exact_near_the_end_of_time() {
    // Timestamps near 9999-12-31 are ~2.5e17 µs, far above 2^53: doubles would round them.
    let clock = ManualClock::starting_at(Timestamp::from_micros(
        Timestamp::MAX.as_micros() - 1_000_001,
    ));
    let store = standalone(TimeSource::Manual(clock.clone())).await;
    let ttl = Ttl::with_hard(Duration::from_micros(999_999), Ttl::MAX).unwrap();
    let k = id("end-of-time");
    let now = clock.now();
    let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
    assert_eq!(g.token, FencingToken::next(None, now));
    assert_eq!(g.lease_expires_at.as_micros(), now.as_micros() + 999_999);
    assert_eq!(
        g.hard_expires_at,
        Timestamp::MAX,
        "saturates at Timestamp::MAX"
    );
    // One microsecond renewals are visible exactly.
    clock.advance(Duration::from_micros(1));
    let renewed = store
        .heartbeat(&[Renewal {
            keyspace: Keyspace::Execution,
            id: k.clone(),
            token: g.token,
        }])
        .await
        .unwrap();
    assert_eq!(
        renewed,
        vec![Ok(Timestamp::from_micros(now.as_micros() + 1_000_000))]
    );
    // The clock moves backwards: the next token is still last + 1, exactly.
    clock.set(Timestamp::from_micros(1_000));
    store
        .abort(&k, g.token, sentinel_core::Disposition::NotApplied)
        .await
        .unwrap();
    let g2 = grant(store.claim(&k, &claim("b", ttl, false)).await.unwrap());
    assert_eq!(g2.token.get(), g.token.get() + 1);
    let record = store.inspect(&k).await.unwrap().unwrap();
    assert_eq!(record.token, g2.token);
    assert_eq!(record.created_at, now);
    let events = store
        .history(Keyspace::Execution, &k, &HistoryQuery::default())
        .await
        .unwrap();
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(events.last().unwrap().token, g2.token);
}

#[tokio::test]
async fn results_compare_as_json_values_whatever_the_key_order() {
    let store = standalone(TimeSource::Server).await;
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let k = id("receipt");
    let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
    let mut first = serde_json::Map::new();
    first.insert("z".into(), json!(1));
    first.insert("a".into(), json!({"y": [1.5, -0.0, "é"], "b": null}));
    let mut second = serde_json::Map::new();
    second.insert("a".into(), json!({"b": null, "y": [1.5, 0.0, "é"]}));
    second.insert("z".into(), json!(1));
    assert_eq!(
        serde_json::Value::Object(first.clone()),
        serde_json::Value::Object(second.clone())
    );
    store
        .complete(&k, g.token, &serde_json::Value::Object(first))
        .await
        .unwrap();
    // The same value built in another order is the same completion: no second event.
    store
        .complete(&k, g.token, &serde_json::Value::Object(second.clone()))
        .await
        .unwrap();
    // A different value is refused and logged with the presented token and result.
    let stale = FencingToken::new(g.token.get() - 1).unwrap();
    let refused = store.complete(&k, stale, &json!({"other": true})).await;
    let rejection = refused.unwrap_err().rejection().cloned().unwrap();
    assert_eq!(rejection.reason, RejectReason::Fenced);
    assert_eq!(rejection.token, Some(g.token));
    let events = store
        .history(Keyspace::Execution, &k, &HistoryQuery::default())
        .await
        .unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Claimed,
            EventKind::Completed,
            EventKind::CompletionRejected
        ]
    );
    let rejected = events.last().unwrap();
    assert_eq!(rejected.token, stale);
    assert_eq!(rejected.owner, None);
    assert_eq!(
        rejected.detail,
        Some(json!({"reason": "fenced", "result": {"other": true}}))
    );
    match store.claim(&k, &claim("b", ttl, true)).await.unwrap() {
        ClaimOutcome::Completed { result, token } => {
            assert_eq!(result, serde_json::Value::Object(second));
            assert_eq!(token, g.token);
        }
        other => panic!("expected the cached result, got {other:?}"),
    }
}

#[tokio::test]
async fn every_transition_is_one_script_call_and_a_heartbeat_tick_is_one() {
    let server = private_redis(RedisOptions::default());
    let mut admin = raw(server.url()).await;
    let clock = ManualClock::new();
    let store = RedisStore::builder()
        .prefix("rt")
        .time(TimeSource::Manual(clock.clone()))
        // Waiting for no replica is not waiting: no WAIT is sent (checked with the other
        // commands below).
        .wait_for_replicas(0, Duration::from_millis(50))
        .connect(server.url())
        .await
        .unwrap();
    let shown = format!("{store:?}");
    assert!(
        shown.starts_with("RedisStore") && shown.contains("\"rt\""),
        "{shown}"
    );
    let ttl = Ttl::with_hard(Duration::from_secs(10), Duration::from_secs(60)).unwrap();
    // Load the scripts first so NOSCRIPT retries do not count.
    load_scripts(&store, ttl).await;
    let mut renewals = Vec::new();
    let before = command_calls(&mut admin).await;
    for i in 0..300 {
        let k = id(&format!("job-{i}"));
        let g = grant(store.claim(&k, &claim("a", ttl, i % 2 == 0)).await.unwrap());
        renewals.push(Renewal {
            keyspace: Keyspace::Execution,
            id: k,
            token: g.token,
        });
    }
    let after = command_calls(&mut admin).await;
    // The first claim of a key takes the fast section, on the manual clock too: it asks whether
    // anything exists under the name and reads no record.
    assert_eq!(calls_since(&before, &after, "exists"), 300);
    assert_eq!(calls_since(&before, &after, "hgetall"), 0);
    for i in 0..50 {
        let k = id(&format!("lock-{i}"));
        let request = LeaseRequest {
            owner: owner("a"),
            ttl,
            request_id: RequestId::random(),
        };
        let Acquisition::Acquired(g) = store.acquire_lease(&k, &request).await.unwrap() else {
            panic!("lease held")
        };
        renewals.push(Renewal {
            keyspace: Keyspace::Lease,
            id: k,
            token: g.token,
        });
    }
    clock.advance(Duration::from_secs(1));
    let before = command_calls(&mut admin).await;
    let results = store.heartbeat(&renewals).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // 350 renewals are two script calls (256 per call), sent as one pipeline.
    assert_eq!(calls_since(&before, &after, "evalsha"), 2);

    let k = id("job-0");
    let before = command_calls(&mut admin).await;
    store
        .complete(&k, renewals[0].token, &json!({"ok": 1}))
        .await
        .unwrap();
    store.inspect(&k).await.unwrap();
    let after = command_calls(&mut admin).await;
    // commandstats also counts the commands a script runs inside itself (its HGETs, XADD, HSET,
    // SPUBLISH); EVALSHA can only come from a client. The completion takes the fast section: two
    // HGETs (the compact field and the owner) instead of reading the whole hash.
    assert_eq!(calls_since(&before, &after, "evalsha"), 1);
    assert_eq!(calls_since(&before, &after, "hget"), 2, "c and owner");
    assert_eq!(calls_since(&before, &after, "hgetall"), 1, "the inspect");
    assert_eq!(
        calls_since(&before, &after, "spublish"),
        1,
        "the notification"
    );
    let others: Vec<&(String, u64)> = after
        .iter()
        .filter(|(n, _)| {
            ![
                "evalsha", "hget", "hgetall", "hset", "xadd", "spublish", "info",
            ]
            .contains(&n.as_str())
        })
        .filter(|(n, c)| before.iter().find(|(m, _)| m == n).map_or(0, |(_, c)| *c) != *c)
        .collect();
    assert!(others.is_empty(), "no other commands: {others:?}");
}

/// On the server's clock every transition reads Redis's own `TIME`, inside its script, once
/// (DESIGN §2: the store's time, never the client's); on a manual clock, never.
#[tokio::test]
async fn transitions_read_the_servers_time_inside_their_scripts() {
    let server = private_redis(RedisOptions::default());
    let mut admin = raw(server.url()).await;
    let ttl = Ttl::with_hard(Duration::from_secs(10), Duration::from_secs(60)).unwrap();
    for (time, expected) in [
        (TimeSource::Server, 1),
        (TimeSource::Manual(ManualClock::new()), 0),
    ] {
        let store = RedisStore::builder()
            .prefix(format!("time-{expected}"))
            .time(time)
            .connect(server.url())
            .await
            .unwrap();
        load_scripts(&store, ttl).await;
        let k = id(&format!("timed-{expected}"));
        let before = command_calls(&mut admin).await;
        let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
        let after = command_calls(&mut admin).await;
        assert_eq!(calls_since(&before, &after, "time"), expected, "a claim");
        let renewal = Renewal {
            keyspace: Keyspace::Execution,
            id: k.clone(),
            token: g.token,
        };
        let before = after;
        store.heartbeat(&[renewal]).await.unwrap();
        let after = command_calls(&mut admin).await;
        assert_eq!(calls_since(&before, &after, "time"), expected, "a renewal");
        let before = after;
        store.complete(&k, g.token, &json!(1)).await.unwrap();
        let after = command_calls(&mut admin).await;
        assert_eq!(
            calls_since(&before, &after, "time"),
            expected,
            "a completion"
        );
    }
}

#[tokio::test]
async fn records_live_in_one_hash_and_one_stream_per_key() {
    let store = standalone(TimeSource::Server).await;
    let k = RecordId::parse("a:b", "{c}:d").unwrap();
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
    let (hash, stream) = store.key_names(Keyspace::Execution, &k);
    let text = String::from_utf8(hash.clone()).unwrap();
    assert!(
        text.starts_with(&format!("{}:{{", store.prefix())),
        "{text}"
    );
    assert!(text.ends_with(":er:3:a:b:{c}:d"), "{text}");
    let mut conn = raw(&support::redis_url()).await;
    let fields: std::collections::HashMap<String, String> = conn.hgetall(&hash).await.unwrap();
    assert_eq!(fields["state"], "executing");
    assert_eq!(fields["token"], g.token.get().to_string());
    assert_eq!(fields["last"], g.token.get().to_string());
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);
    assert_eq!(
        redis::cluster_routing::Slot::for_key(&hash),
        redis::cluster_routing::Slot::for_key(&stream)
    );
}

/// The compact field `c` keeps usual records in Redis's listpack encoding (every value under 64
/// bytes), the result lives in `c` only, and the fast sections answer busy and cached claims from
/// it with one or two `HGET`s and no `HGETALL`.
#[tokio::test]
async fn the_compact_field_keeps_records_small_and_claims_cheap() {
    let server = private_redis(RedisOptions::default());
    let mut admin = raw(server.url()).await;
    let store = RedisStore::builder()
        .prefix("compact")
        .connect(server.url())
        .await
        .unwrap();
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let k = id("order-1");
    let worker = "worker-7.example.org:12345:deadbeef";
    let g = grant(store.claim(&k, &claim(worker, ttl, true)).await.unwrap());
    let (hash, _) = store.key_names(Keyspace::Execution, &k);
    let encoding = |conn: &mut redis::aio::MultiplexedConnection| {
        let hash = hash.clone();
        let mut conn = conn.clone();
        async move {
            redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg(&hash)
                .query_async::<String>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        encoding(&mut admin).await,
        "listpack",
        "an executing record"
    );

    let before = command_calls(&mut admin).await;
    let busy = store.claim(&k, &claim("other", ttl, true)).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert!(matches!(busy, ClaimOutcome::Busy { ref owner, .. } if owner.as_str() == worker));
    assert_eq!(calls_since(&before, &after, "hgetall"), 0);
    assert_eq!(calls_since(&before, &after, "hget"), 2, "c and the owner");

    // A claim that is not started yet is busy for others, from the compact field as well.
    let claimed = id("order-2");
    grant(
        store
            .claim(&claimed, &claim(worker, ttl, false))
            .await
            .unwrap(),
    );
    let before = command_calls(&mut admin).await;
    let busy = store
        .claim(&claimed, &claim("other", ttl, true))
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert!(
        matches!(
            busy,
            ClaimOutcome::Busy {
                state: sentinel_core::ExecutionState::Claimed,
                ..
            }
        ),
        "{busy:?}"
    );
    assert_eq!(calls_since(&before, &after, "hgetall"), 0);

    // The executing worker's completion, on the server's clock: two HGETs, no HGETALL; the same
    // for a record with a fingerprint (the compact field starts with it).
    let before = command_calls(&mut admin).await;
    store.complete(&k, g.token, &json!("ch_42")).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(calls_since(&before, &after, "hgetall"), 0);
    assert_eq!(calls_since(&before, &after, "hget"), 2, "c and the owner");
    let printed = id("order-3");
    let mut request = claim(worker, ttl, true);
    request.fingerprint = Some(sentinel_core::Fingerprint::new("sha256:ab12").unwrap());
    let g3 = grant(store.claim(&printed, &request).await.unwrap());
    let before = command_calls(&mut admin).await;
    store.complete(&printed, g3.token, &json!(3)).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(
        calls_since(&before, &after, "hgetall"),
        0,
        "with a fingerprint"
    );
    assert_eq!(encoding(&mut admin).await, "listpack", "a completed record");
    let fields: std::collections::HashMap<String, String> = admin.hgetall(&hash).await.unwrap();
    assert!(
        !fields.contains_key("result"),
        "the result is kept in c only"
    );
    assert!(fields["c"].ends_with("\"ch_42\""), "{:?}", fields["c"]);

    let before = command_calls(&mut admin).await;
    let cached = store.claim(&k, &claim("other", ttl, true)).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(
        cached,
        ClaimOutcome::Completed {
            token: g.token,
            result: json!("ch_42")
        }
    );
    assert_eq!(
        calls_since(&before, &after, "hget"),
        1,
        "one HGET, nothing else"
    );
    assert_eq!(calls_since(&before, &after, "hgetall"), 0);
    assert_eq!(calls_since(&before, &after, "time"), 0);
    assert_eq!(
        store.inspect(&k).await.unwrap().unwrap().result,
        Some(json!("ch_42"))
    );
}

/// A record written before the compact field existed (no `c`, the result in its own field) is
/// still read, claimed and completed: the scripts' full sections handle it.
#[tokio::test]
async fn records_without_the_compact_field_are_still_served() {
    let store = standalone(TimeSource::Server).await;
    let mut conn = raw(&support::redis_url()).await;
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let old = |key: &str, state: &str, extra: &[(&'static str, &str)]| {
        let (hash, _) = store.key_names(Keyspace::Execution, &id(key));
        let mut fields: Vec<(&'static str, String)> = vec![
            ("state", state.to_owned()),
            ("owner", "old-worker".to_owned()),
            ("token", "1767225600000000".to_owned()),
            ("rid", "0123456789abcdef0123456789abcdef".to_owned()),
            ("lease", "4000000000000000".to_owned()),
            ("hard", "4000000000000000".to_owned()),
            ("ttl", "30000000".to_owned()),
            ("hard_ttl", "30000000".to_owned()),
            ("created", "1767225600000000".to_owned()),
            ("updated", "1767225600000000".to_owned()),
            ("last", "1767225600000000".to_owned()),
            ("seq", "1767225600000000".to_owned()),
        ];
        fields.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        (hash, fields)
    };
    let (hash, fields) = old("done", "completed", &[("result", "{\"a\":1}")]);
    let _: () = conn.hset_multiple(&hash, &fields).await.unwrap();
    let token = FencingToken::new(1_767_225_600_000_000).unwrap();
    assert_eq!(
        store
            .claim(&id("done"), &claim("b", ttl, true))
            .await
            .unwrap(),
        ClaimOutcome::Completed {
            token,
            result: json!({"a": 1})
        }
    );
    assert_eq!(
        store.inspect(&id("done")).await.unwrap().unwrap().result,
        Some(json!({"a": 1}))
    );

    let (hash, fields) = old("held-by-operator", "reconciling", &[]);
    let _: () = conn.hset_multiple(&hash, &fields).await.unwrap();
    assert_eq!(
        store
            .claim(&id("held-by-operator"), &claim("b", ttl, true))
            .await
            .unwrap(),
        ClaimOutcome::Reconciling {
            owner: owner("old-worker"),
            token,
        }
    );

    let (hash, fields) = old("running", "executing", &[]);
    let _: () = conn.hset_multiple(&hash, &fields).await.unwrap();
    assert!(matches!(
        store
            .claim(&id("running"), &claim("b", ttl, true))
            .await
            .unwrap(),
        ClaimOutcome::Busy { .. }
    ));
    store
        .complete(&id("running"), token, &json!([1, 2]))
        .await
        .unwrap();
    assert_eq!(
        store
            .claim(&id("running"), &claim("b", ttl, true))
            .await
            .unwrap(),
        ClaimOutcome::Completed {
            token,
            result: json!([1, 2])
        }
    );
}

#[tokio::test]
async fn history_streams_are_trimmed_to_the_configured_length() {
    let clock = ManualClock::new();
    let store = RedisStore::builder()
        .prefix(support::unique_prefix())
        .time(TimeSource::Manual(clock.clone()))
        .stream_max_len(3)
        .connect(&support::redis_url())
        .await
        .unwrap();
    let ttl = Ttl::new(Duration::from_secs(1)).unwrap();
    let k = id("busy-key");
    for _ in 0..5 {
        grant(store.claim(&k, &claim("a", ttl, false)).await.unwrap());
        clock.advance(Duration::from_secs(2));
    }
    let events = store
        .history(Keyspace::Execution, &k, &HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(events.len(), 3);
    let after = store
        .history(
            Keyspace::Execution,
            &k,
            &HistoryQuery {
                after: Some(events[0].id),
                limit: 10,
                ..HistoryQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(after, events[1..]);
    // Settings Redis cannot take, or that could only end in a timeout, are refused before
    // anything is sent.
    let url = support::redis_url();
    let b = RedisStore::builder;
    for (what, builder) in [
        ("no event kept", b().stream_max_len(0)),
        ("beyond XADD MAXLEN", b().stream_max_len(u64::MAX)),
        ("beyond WAIT", b().wait_for_replicas(1, Duration::MAX)),
        (
            "as long as the reply",
            b().wait_for_replicas(1, Duration::from_secs(10)),
        ),
        (
            "longer than the reply",
            b().wait_for_replicas(1, Duration::from_secs(2))
                .response_timeout(Duration::from_secs(1)),
        ),
    ] {
        let refused = builder.connect(&url).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "{what}: {:?}",
            refused.err()
        );
    }
    b().stream_max_len(i64::MAX as u64)
        .wait_for_replicas(1, Duration::from_millis(9_999))
        .connect(&url)
        .await
        .unwrap();
    // A connection of your own has its own response timeout: only WAIT's bound applies.
    let client = redis::Client::open(url.as_str()).unwrap();
    let own = || async { client.get_connection_manager().await.unwrap() };
    assert!(
        b().wait_for_replicas(1, Duration::from_secs(3600))
            .build(own().await)
            .is_ok()
    );
    assert!(matches!(
        b().wait_for_replicas(1, Duration::MAX).build(own().await),
        Err(Error::InvalidInput(_))
    ));
}

/// A transition and a read of a corrupt record both report it as such, and the transition logged
/// nothing to the record's history `stream`.
async fn reported_and_unlogged<T: std::fmt::Debug, U: std::fmt::Debug>(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &[u8],
    transition: sentinel_core::Result<T>,
    read: sentinel_core::Result<U>,
) {
    assert!(
        matches!(transition, Err(Error::CorruptRecord { .. })),
        "{transition:?}"
    );
    assert!(matches!(read, Err(Error::CorruptRecord { .. })), "{read:?}");
    let len: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "nothing was logged");
}

#[tokio::test]
async fn corrupt_and_foreign_data_give_typed_errors_and_write_nothing() {
    let store = standalone(TimeSource::Server).await;
    let mut conn = raw(&support::redis_url()).await;
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();

    let k = id("corrupt");
    let (hash, stream) = store.key_names(Keyspace::Execution, &k);
    let _: () = conn
        .hset_multiple(
            &hash,
            &[("token", "12"), ("state", "executing"), ("owner", "x")],
        )
        .await
        .unwrap();
    reported_and_unlogged(
        &mut conn,
        &stream,
        store.claim(&k, &claim("a", ttl, true)).await,
        store.inspect(&k).await,
    )
    .await;

    // A completed record that lost its result (both places it can be kept): the claim reports
    // it, never replays `null` as the recorded result, and logs nothing.
    let k = id("completed-without-result");
    let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
    store
        .complete(&k, g.token, &json!({"charge": "ch_1"}))
        .await
        .unwrap();
    let (hash, stream) = store.key_names(Keyspace::Execution, &k);
    let _: () = conn.hdel(&hash, &["c", "result"]).await.unwrap();
    let _: () = conn.del(&stream).await.unwrap();
    let claimed = store.claim(&k, &claim("b", ttl, true)).await;
    assert!(
        matches!(claimed, Err(Error::CorruptRecord { .. })),
        "{claimed:?}"
    );
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "nothing was logged");

    // An unknown state, every other field in place: a transition and a read both refuse it.
    let k = id("unknown-state");
    let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
    let (hash, stream) = store.key_names(Keyspace::Execution, &k);
    let _: () = conn.hset(&hash, "state", "paused").await.unwrap();
    let _: () = conn.del(&stream).await.unwrap();
    reported_and_unlogged(
        &mut conn,
        &stream,
        store
            .abort(&k, g.token, sentinel_core::Disposition::NotApplied)
            .await,
        store.inspect(&k).await,
    )
    .await;

    let k = id("foreign");
    let (hash, _) = store.key_names(Keyspace::Execution, &k);
    let _: () = conn.set(&hash, "not a hash").await.unwrap();
    let err = store.claim(&k, &claim("a", ttl, true)).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    let value: String = conn.get(&hash).await.unwrap();
    assert_eq!(value, "not a hash");

    // A lease hash missing its expiry: acquiring and reading both report it, nothing is logged.
    let k = id("corrupt-lease");
    let (hash, stream) = store.key_names(Keyspace::Lease, &k);
    let _: () = conn
        .hset_multiple(&hash, &[("token", "12"), ("owner", "x")])
        .await
        .unwrap();
    let request = LeaseRequest {
        owner: owner("a"),
        ttl,
        request_id: RequestId::random(),
    };
    reported_and_unlogged(
        &mut conn,
        &stream,
        store.acquire_lease(&k, &request).await,
        store.inspect_lease(&k).await,
    )
    .await;

    // A held lease that lost its request id: the same.
    let k = id("lease-without-rid");
    let (hash, stream) = store.key_names(Keyspace::Lease, &k);
    let Acquisition::Acquired(_) = store.acquire_lease(&k, &request).await.unwrap() else {
        panic!("the lease is free")
    };
    let _: () = conn.hdel(&hash, "rid").await.unwrap();
    let _: () = conn.del(&stream).await.unwrap();
    let other = LeaseRequest {
        owner: owner("b"),
        ttl,
        request_id: RequestId::random(),
    };
    reported_and_unlogged(
        &mut conn,
        &stream,
        store.acquire_lease(&k, &other).await,
        store.inspect_lease(&k).await,
    )
    .await;

    // A heartbeat carrying a corrupt record among good ones fails as a whole, and renews none of
    // them: every record is judged before the first write.
    let good = id("renewed-before-the-corrupt-one");
    let renewable = Ttl::with_hard(Duration::from_secs(30), Duration::from_secs(600)).unwrap();
    let gg = grant(
        store
            .claim(&good, &claim("a", renewable, true))
            .await
            .unwrap(),
    );
    let (good_hash, _) = store.key_names(Keyspace::Execution, &good);
    let before: std::collections::HashMap<String, String> = conn.hgetall(&good_hash).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renewals = [
        Renewal {
            keyspace: Keyspace::Execution,
            id: good.clone(),
            token: gg.token,
        },
        Renewal {
            keyspace: Keyspace::Execution,
            id: id("unknown-state"),
            token: g.token,
        },
    ];
    let failed = store.heartbeat(&renewals).await;
    assert!(
        matches!(failed, Err(Error::CorruptRecord { .. })),
        "{failed:?}"
    );
    let after: std::collections::HashMap<String, String> = conn.hgetall(&good_hash).await.unwrap();
    assert_eq!(before, after, "the good record was not renewed either");
    assert!(store.heartbeat(&renewals[..1]).await.unwrap()[0].is_ok());
    let renewed: std::collections::HashMap<String, String> =
        conn.hgetall(&good_hash).await.unwrap();
    assert_ne!(before["lease"], renewed["lease"], "renewed alone");

    // A foreign key in place of the history stream: the XADD fails first, nothing is written.
    let k = id("foreign-stream");
    let (hash, stream) = store.key_names(Keyspace::Execution, &k);
    let _: () = conn.set(&stream, "not a stream").await.unwrap();
    let err = store.claim(&k, &claim("a", ttl, true)).await.unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    let exists: bool = conn.exists(&hash).await.unwrap();
    assert!(!exists, "the record was not written");

    // The same for a transition of the full script (an abort) and for a completion (the fast
    // section's XADD): refused, and the record stays as it was, executing.
    for (key, completion) in [("stream-replaced-abort", false), ("stream-replaced", true)] {
        let k = id(key);
        let (hash, stream) = store.key_names(Keyspace::Execution, &k);
        let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
        let _: () = conn.del(&stream).await.unwrap();
        let _: () = conn.set(&stream, "not a stream").await.unwrap();
        let before: std::collections::HashMap<String, String> = conn.hgetall(&hash).await.unwrap();
        let refused = if completion {
            store.complete(&k, g.token, &json!(1)).await
        } else {
            store
                .abort(&k, g.token, sentinel_core::Disposition::NotApplied)
                .await
        };
        assert!(
            matches!(refused, Err(Error::CorruptRecord { .. })),
            "{key}: {refused:?}"
        );
        let after: std::collections::HashMap<String, String> = conn.hgetall(&hash).await.unwrap();
        assert_eq!(before, after, "{key}: the record was not written");
        assert_eq!(after["state"], "executing");
    }
}

/// Every other transition that logs an event meets a foreign key in place of its history stream
/// the same way: refused as corrupt before it writes anything, so a transition and its event are
/// one step (DESIGN §5) in every script, not only in the claim, abort and completion above. (A
/// purge drops the old history, whatever is in its place, before it logs.)
#[tokio::test]
async fn every_logging_script_writes_nothing_when_its_event_cannot_be_logged() {
    let clock = ManualClock::new();
    let store = standalone(TimeSource::Manual(clock.clone())).await;
    let mut conn = raw(&support::redis_url()).await;
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let op = owner("operator");
    let lease = LeaseRequest {
        owner: owner("a"),
        ttl,
        request_id: RequestId::random(),
    };
    type Hash = std::collections::HashMap<String, String>;
    for name in [
        "start",
        "reconcile",
        "force_complete",
        "reset",
        "acquire",
        "release",
    ] {
        let k = RecordId::parse(&format!("logged-{name}"), "k").unwrap();
        let keyspace = if matches!(name, "acquire" | "release") {
            Keyspace::Lease
        } else {
            Keyspace::Execution
        };
        let (hash, stream) = store.key_names(keyspace, &k);
        // Bring the record to where the transition applies.
        let token = match name {
            "start" => Some(grant(store.claim(&k, &claim("a", ttl, false)).await.unwrap()).token),
            "reconcile" | "force_complete" | "reset" => {
                let g = grant(store.claim(&k, &claim("a", ttl, true)).await.unwrap());
                clock.advance(Duration::from_secs(31));
                if name != "reconcile" {
                    store.reconcile(&k, &op).await.unwrap();
                }
                Some(g.token)
            }
            "release" => match store.acquire_lease(&k, &lease).await.unwrap() {
                Acquisition::Acquired(g) => Some(g.token),
                other => panic!("the lease is free: {other:?}"),
            },
            _ => None,
        };
        let _: () = conn.del(&stream).await.unwrap();
        let _: () = conn.set(&stream, "not a stream").await.unwrap();
        let before: Hash = conn.hgetall(&hash).await.unwrap();
        let refused = match name {
            "start" => store.start(&k, token.unwrap()).await.map(drop),
            "reconcile" => store.reconcile(&k, &op).await.map(drop),
            "force_complete" => store.force_complete(&k, &op, &json!(2)).await,
            "reset" => store.reset_to_claimed(&k, &op).await,
            "acquire" => store.acquire_lease(&k, &lease).await.map(drop),
            _ => store.release_lease(&k, token.unwrap()).await,
        };
        assert!(
            matches!(refused, Err(Error::CorruptRecord { .. })),
            "{name}: {refused:?}"
        );
        let after: Hash = conn.hgetall(&hash).await.unwrap();
        assert_eq!(before, after, "{name}: the record was not written");
    }
}

#[tokio::test]
async fn a_server_refusing_writes_is_unavailable_and_nothing_is_written() {
    // Redis refuses a script at its first write when it takes no writes for now: a replica
    // (READONLY), too few replicas (NOREPLICAS), over maxmemory (OOM). Each script's first write
    // is its XADD, so nothing is written, and the client must be told to try again (transient),
    // not that the record is corrupt: a completion refused this way after the side effect ran is
    // retried, and recorded once the server takes writes again.
    let server = private_redis(RedisOptions::default());
    let mut admin = raw(server.url()).await;
    let store = RedisStore::builder()
        .prefix("refusing")
        .connect(server.url())
        .await
        .unwrap();
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    load_scripts(&store, ttl).await;
    let refusals: [(&str, &[&str], &[&str]); 3] = [
        (
            "NOREPLICAS",
            &["CONFIG", "SET", "min-replicas-to-write", "1"],
            &["CONFIG", "SET", "min-replicas-to-write", "0"],
        ),
        (
            "OOM",
            &["CONFIG", "SET", "maxmemory", "1"],
            &["CONFIG", "SET", "maxmemory", "0"],
        ),
        (
            // A replica of a port nobody listens on: it never syncs, so it keeps its data.
            "READONLY",
            &["REPLICAOF", "127.0.0.1", "1"],
            &["REPLICAOF", "NO", "ONE"],
        ),
    ];
    for (code, refuse, accept) in refusals {
        let held = id(&format!("held-{code}"));
        let g = grant(store.claim(&held, &claim("a", ttl, true)).await.unwrap());
        let aborted = id(&format!("aborted-{code}"));
        let ga = grant(store.claim(&aborted, &claim("a", ttl, true)).await.unwrap());
        let fresh = id(&format!("fresh-{code}"));
        let before: std::collections::HashMap<String, String> = admin
            .hgetall(store.key_names(Keyspace::Execution, &held).0)
            .await
            .unwrap();
        let _: () = redis::cmd(refuse[0])
            .arg(&refuse[1..])
            .query_async(&mut admin)
            .await
            .unwrap();
        let refused = [
            (
                "first claim",
                store.claim(&fresh, &claim("b", ttl, true)).await.map(drop),
            ),
            (
                "completion",
                store.complete(&held, g.token, &json!("paid")).await,
            ),
            (
                "abort",
                store
                    .abort(&aborted, ga.token, sentinel_core::Disposition::NotApplied)
                    .await,
            ),
        ];
        for (what, answer) in refused {
            match answer {
                Err(error @ Error::Unavailable { .. }) => {
                    let said = error.to_string().to_lowercase();
                    assert!(
                        said.contains(&code.to_lowercase()),
                        "{code} {what}: {error}"
                    )
                }
                other => panic!("{code} {what}: expected Unavailable, got {other:?}"),
            }
        }
        let after: std::collections::HashMap<String, String> = admin
            .hgetall(store.key_names(Keyspace::Execution, &held).0)
            .await
            .unwrap();
        assert_eq!(before, after, "{code}: the held record was not written");
        let written: bool = admin
            .exists(store.key_names(Keyspace::Execution, &fresh).0)
            .await
            .unwrap();
        assert!(!written, "{code}: the first claim wrote nothing");
        let _: () = redis::cmd(accept[0])
            .arg(&accept[1..])
            .query_async(&mut admin)
            .await
            .unwrap();
        store
            .complete(&held, g.token, &json!("paid"))
            .await
            .unwrap();
        let record = store.inspect(&held).await.unwrap().unwrap();
        assert_eq!(record.result, Some(json!("paid")), "{code}");
        let history = store
            .history(Keyspace::Execution, &held, &HistoryQuery::default())
            .await
            .unwrap();
        let completed = history
            .iter()
            .filter(|e| e.kind == EventKind::Completed)
            .count();
        assert_eq!(completed, 1, "{code}: one completion event");
    }
}

#[tokio::test]
async fn a_script_that_failed_is_not_sent_again() {
    // Redis does not roll back a script that fails halfway: only NOSCRIPT (it did not run at all)
    // may be answered by loading the script and sending the call again.
    let server = private_redis(RedisOptions::default());
    let mut admin = raw(server.url()).await;
    let store = RedisStore::builder()
        .prefix("failed")
        .connect(server.url())
        .await
        .unwrap();
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    load_scripts(&store, ttl).await;
    let k = id("foreign");
    let (hash, _) = store.key_names(Keyspace::Execution, &k);
    let _: () = admin.set(&hash, "not a hash").await.unwrap();
    let before = command_calls(&mut admin).await;
    let err = store.claim(&k, &claim("a", ttl, true)).await.unwrap_err();
    let after = command_calls(&mut admin).await;
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert_eq!(calls_since(&before, &after, "evalsha"), 1, "sent once");
    assert_eq!(calls_since(&before, &after, "script|load"), 0);
    // The same for calls sent together in one pipeline (a heartbeat tick).
    let renewal = Renewal {
        keyspace: Keyspace::Execution,
        id: k.clone(),
        token: FencingToken::new(1).unwrap(),
    };
    let before = command_calls(&mut admin).await;
    let failed = store.heartbeat(&[renewal]).await;
    let after = command_calls(&mut admin).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(calls_since(&before, &after, "evalsha"), 1, "sent once");
    assert_eq!(calls_since(&before, &after, "script|load"), 0);
}

#[tokio::test]
async fn bad_configuration_is_refused_before_connecting() {
    for prefix in ["", "a{b}", "x*", "sp ace"] {
        let err = RedisStore::builder()
            .prefix(prefix)
            .connect("redis://127.0.0.1:1")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{prefix:?}: {err}");
    }
    let err = RedisStore::connect("not a url").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = RedisStore::builder()
        .connection_timeout(Duration::from_millis(200))
        .connect("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn wait_for_replicas_reports_unreplicated_writes_and_passes_with_a_replica() {
    let mut primary = private_redis(RedisOptions::default());
    let lonely = RedisStore::builder()
        .prefix("wait")
        .wait_for_replicas(1, Duration::from_millis(50))
        .connect(primary.url())
        .await
        .unwrap();
    let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
    let request = claim("a", ttl, true);
    let k = id("replicated");
    let err = lonely.claim(&k, &request).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("only 0 of 1 replicas"), "{err}");
    // The primary applied it; the retry adopts the same grant.
    let first = lonely.inspect(&k).await.unwrap().unwrap();

    let replica = private_redis(RedisOptions::default());
    let mut conn = raw(replica.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let g = loop {
        match lonely.claim(&k, &request).await {
            Ok(outcome) => break grant(outcome),
            Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(g.token, first.token, "the retry adopted its own claim");
    lonely.complete(&k, g.token, &json!("done")).await.unwrap();
    // Heartbeats wait too, in the same round trip.
    let k2 = id("replicated-2");
    let g2 = grant(lonely.claim(&k2, &claim("a", ttl, true)).await.unwrap());
    let renewed = lonely
        .heartbeat(&[Renewal {
            keyspace: Keyspace::Execution,
            id: k2,
            token: g2.token,
        }])
        .await
        .unwrap();
    assert!(renewed[0].is_ok());
    primary.stop().unwrap();
}
