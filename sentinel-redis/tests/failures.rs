//! Failures against private Redis servers this test binary starts and stops: a connection killed
//! server-side, a server restart (NOSCRIPT afterwards), a `kill -9` with AOF in the middle of a
//! run, `FLUSHALL`, `SCRIPT FLUSH`. Each answers a typed, transient error or a transparent safe
//! retry, recovers once the server is back, and keeps tokens increasing.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, CoordinationStore, Error, ExecutionState,
    FencingToken, Keyspace, LeaseRequest, Once, OwnerId, RecordId, Renewal, RequestId, Sentinel,
    Ttl,
};
use sentinel_redis::RedisStore;
use sentinel_testkit::servers::{AppendFsync, RedisOptions};

use support::{private_redis, raw};

fn claim(who: &str) -> ClaimRequest {
    ClaimRequest {
        owner: OwnerId::new(who).unwrap(),
        ttl: Ttl::with_hard(Duration::from_secs(30), Duration::from_secs(120)).unwrap(),
        start: true,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

fn id(key: &str) -> RecordId {
    RecordId::parse("ns", key).unwrap()
}

fn token_of(outcome: ClaimOutcome) -> FencingToken {
    match outcome {
        ClaimOutcome::Acquired(g) => g.token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Retries `f` until it succeeds (within 20 s), asserting every failure on the way is a typed,
/// transient error; returns the value and how many failures were seen.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    loop {
        match f().await {
            Ok(v) => return (v, failures),
            Err(e) => {
                assert!(
                    e.is_transient(),
                    "{what}: expected a transient error, got {e}"
                );
                assert!(Instant::now() < deadline, "{what}: no recovery: {e}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .response_timeout(Duration::from_secs(2))
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_connection_killed_server_side_fails_typed_or_retries_and_recovers() {
    let server = private_redis(RedisOptions::default());
    let store = connect(server.url(), "kill").await;
    let request = claim("a");
    let token = token_of(store.claim(&id("k"), &request).await.unwrap());
    let mut admin = raw(server.url()).await;
    for round in 0..5 {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            killed >= 1,
            "round {round}: the store's connection was killed"
        );
        // Whatever the first call after the kill says, it is typed, and the same call sent
        // again adopts the claim instead of issuing a second token.
        let k = id("k");
        let (outcome, _) = eventually("claim", || store.claim(&k, &request)).await;
        assert_eq!(token_of(outcome), token);
    }
    store.complete(&id("k"), token, &json!(1)).await.unwrap();
    let record = store.inspect(&id("k")).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    let history = store
        .history(Keyspace::Execution, &id("k"), &Default::default())
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "one claim, one completion: {history:?}");
}

#[tokio::test]
async fn a_restart_fails_typed_while_down_then_recovers_and_reloads_scripts() {
    let mut server = private_redis(RedisOptions {
        appendonly: true,
        appendfsync: AppendFsync::Always,
    });
    let store = connect(server.url(), "restart").await;
    let first = token_of(store.claim(&id("a"), &claim("w")).await.unwrap());
    store
        .complete(&id("a"), first, &json!("done"))
        .await
        .unwrap();
    let held = token_of(store.claim(&id("held"), &claim("w")).await.unwrap());

    server.stop().unwrap();
    let err = store.claim(&id("b"), &claim("w")).await.unwrap_err();
    assert!(err.is_transient(), "while down: {err}");
    let err = store.inspect(&id("a")).await.unwrap_err();
    assert!(err.is_transient(), "while down: {err}");

    server.start().unwrap();
    // The restarted server has an empty script cache: the first EVALSHA gets NOSCRIPT and the
    // store loads the script and sends it again.
    let (b, request) = (id("b"), claim("w"));
    let (outcome, _) = eventually("claim after restart", || store.claim(&b, &request)).await;
    let second = token_of(outcome);
    assert!(second > held && held > first);
    match store.claim(&id("a"), &claim("x")).await.unwrap() {
        ClaimOutcome::Completed { result, token } => {
            assert_eq!(result, json!("done"));
            assert_eq!(token, first);
        }
        other => panic!("the completed result survived the restart: {other:?}"),
    }
    // The batched path reloads too.
    server.restart().unwrap();
    let renewals = [Renewal {
        keyspace: Keyspace::Execution,
        id: id("held"),
        token: held,
    }];
    let (renewed, _) = eventually("heartbeat after restart", || store.heartbeat(&renewals)).await;
    assert!(renewed[0].is_ok(), "{renewed:?}");
}

#[tokio::test]
async fn script_flush_is_recovered_for_single_and_batched_calls() {
    let server = private_redis(RedisOptions::default());
    let store = connect(server.url(), "flush").await;
    let mut admin = raw(server.url()).await;
    let t = token_of(store.claim(&id("a"), &claim("w")).await.unwrap());
    for _ in 0..2 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .unwrap();
        let renewed = store
            .heartbeat(&[Renewal {
                keyspace: Keyspace::Execution,
                id: id("a"),
                token: t,
            }])
            .await
            .unwrap();
        assert!(renewed[0].is_ok());
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(matches!(
            store.claim(&id("a"), &claim("x")).await.unwrap(),
            ClaimOutcome::Busy { .. }
        ));
    }
}

#[tokio::test]
async fn flushall_loses_records_but_tokens_still_increase() {
    let server = private_redis(RedisOptions::default());
    let store = connect(server.url(), "flushall").await;
    let mut admin = raw(server.url()).await;
    let before = token_of(store.claim(&id("k"), &claim("a")).await.unwrap());
    let lease = LeaseRequest {
        owner: OwnerId::new("a").unwrap(),
        ttl: Ttl::new(Duration::from_secs(30)).unwrap(),
        request_id: RequestId::random(),
    };
    let Acquisition::Acquired(lease_before) = store.acquire_lease(&id("k"), &lease).await.unwrap()
    else {
        panic!("held")
    };
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(store.inspect(&id("k")).await.unwrap(), None);
    let after = token_of(store.claim(&id("k"), &claim("b")).await.unwrap());
    assert!(
        after > before,
        "{after} > {before}: the time term survives FLUSHALL"
    );
    let lease = LeaseRequest {
        request_id: RequestId::random(),
        ..lease
    };
    let Acquisition::Acquired(lease_after) = store.acquire_lease(&id("k"), &lease).await.unwrap()
    else {
        panic!("held")
    };
    assert!(lease_after.token > lease_before.token);
}

/// The durability test of the README: a run of `once` calls, the server killed with SIGKILL in
/// the middle (AOF on, `appendfsync always`), started again: every result reported as recorded
/// before the kill is still there, and every token issued after is higher than every token
/// issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aof_restart_mid_run_keeps_completed_results_and_tokens_increase() {
    let server = Arc::new(Mutex::new(private_redis(RedisOptions {
        appendonly: true,
        appendfsync: AppendFsync::Always,
    })));
    let url = server.lock().await.url().to_owned();
    let store = connect(&url, "aof").await;
    let sentinel = Sentinel::builder(store.clone())
        .namespace("ns")
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();

    // Workers complete keys until told to stop, remembering what was reported as recorded.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let executed = Arc::new(Mutex::new(Vec::<(String, FencingToken, u64)>::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (sentinel, stop, executed) = (sentinel.clone(), stop.clone(), executed.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let key = format!("pay-{w}-{n}");
                let value = w * 1_000_000 + n;
                let outcome = sentinel
                    .once(
                        &key,
                        |_| async move { Ok::<_, sentinel_core::Failure>(value) },
                    )
                    .await;
                if let Ok(Once::Executed { value, token }) = outcome {
                    executed.lock().await.push((key, token, value));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.lock().await.kill().unwrap();
    let recorded_before_kill = executed.lock().await.clone();
    assert!(
        recorded_before_kill.len() > 10,
        "the run got going: {}",
        recorded_before_kill.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.lock().await.start().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let max_before = recorded_before_kill
        .iter()
        .map(|(_, t, _)| *t)
        .max()
        .unwrap();
    for (key, token, value) in &recorded_before_kill {
        let k = id(key);
        let (record, _) = eventually("inspect", || store.inspect(&k)).await;
        let record = record.unwrap_or_else(|| panic!("{key} was lost"));
        assert_eq!(record.state, ExecutionState::Completed, "{key}");
        assert_eq!(record.token, *token, "{key}");
        assert_eq!(record.result, Some(json!(value)), "{key}");
    }
    let (k, request) = (id("after-restart"), claim("z"));
    let (fresh, _) = eventually("claim", || store.claim(&k, &request)).await;
    assert!(token_of(fresh) > max_before, "tokens keep increasing");
    let all = executed.lock().await.clone();
    assert!(
        all.len() > recorded_before_kill.len(),
        "the workers went on after the restart"
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out_after_the_response_timeout() {
    let server = private_redis(RedisOptions::default());
    let timeout = Duration::from_millis(200);
    let store = RedisStore::builder()
        .prefix("slow")
        .response_timeout(timeout)
        .connect(server.url())
        .await
        .unwrap();
    let k = id("k");
    let token = token_of(store.claim(&k, &claim("w")).await.unwrap());
    let mut admin = raw(server.url()).await;
    // The server holds every client's commands, unanswered, for 1.5 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store.inspect(&k).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, Error::Timeout { store: "redis", after, .. } if after == timeout),
        "{err}"
    );
    assert_eq!(store.backend(), "redis", "the name its errors give");
    assert!(
        waited < Duration::from_millis(1200),
        "gave up after {waited:?}"
    );
    // Once the server answers again, so does the store; nothing was invented meanwhile.
    let (record, _) = eventually("inspect", || store.inspect(&k)).await;
    let record = record.expect("the claim is still there");
    assert_eq!(record.token, token);
    assert_eq!(record.state, ExecutionState::Executing);
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_fails_after_the_connection_timeout() {
    // A socket that completes TCP handshakes (the kernel does) but never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let err = RedisStore::builder()
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_transient(), "{err}");
    assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");
    drop(silent);
}
