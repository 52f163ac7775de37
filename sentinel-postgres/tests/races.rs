//! A transition racing a change that its statement's snapshot cannot see yet: PostgreSQL judges
//! the record again at its latest version, and the store sends the statement again when the
//! function asks for it, so the race settles on the right answer. And a claim that races the
//! holder at the end of its lease judges the record it read at a time that record was current.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{PgFactory, claim, granted, id, manual_store, set_row};
use sentinel_core::{
    ClaimOutcome, CoordinationStore, Error, EventKind, ExecutionState, FencingToken, Grant,
    HistoryQuery, InvalidInput, Keyspace, OwnerId, RecordId, RejectReason, Renewal, TimeSource,
    Timestamp,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_meets_an_uncommitted_start_is_sent_again_and_applies() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let (store, _clock) = manual_store(&factory).await;
    let order = id("pay", "order-race");
    let token = granted(
        store
            .claim(&order, &claim("worker-a", 60_000, false))
            .await
            .unwrap(),
    );

    // The record's move to 'executing' is written but not committed when the completion arrives:
    // the completion's update sees the claimed record and applies to nothing; its judging read
    // waits for the lock, then sees the record executing under this very token ('retry').
    let mut tx = store.pool().begin().await.unwrap();
    set_row(
        &mut *tx,
        &store,
        "executions",
        &order,
        "state = 'executing'",
    )
    .await;
    let completer = store.clone();
    let oid = order.clone();
    let completion =
        tokio::spawn(async move { completer.complete(&oid, token, &json!("ch_1")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !completion.is_finished(),
        "the completion waits for the uncommitted change"
    );
    tx.commit().await.unwrap();

    tokio::time::timeout(Duration::from_secs(10), completion)
        .await
        .expect("the completion proceeds once the change commits")
        .unwrap()
        .expect("sent again, the completion applies");
    let record = store.inspect(&order).await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Completed);
    assert_eq!(record.result, Some(json!("ch_1")));
    let kinds: Vec<EventKind> = store
        .history(Keyspace::Execution, &order, &HistoryQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Claimed, EventKind::Completed]);
}

/// How long the rival's backend is held just before it reads the clock.
const PAUSE: Duration = Duration::from_millis(800);

/// The holder's ttl: the rival claims [`RIVAL_BEFORE`] the lease ends and the holder acts
/// [`ACT_BEFORE`] it, while the rival is held; renewed then, the lease outlasts the rival's pause.
/// The margins (300 ms for the holder to act before its lease ends, 500 ms to finish before the
/// rival answers) leave room for a loaded machine.
const TTL_MS: u64 = 1500;

/// How long before the holder's lease ends the rival claims.
const RIVAL_BEFORE: Duration = Duration::from_millis(600);

/// How long before the holder's lease ends the holder acts.
const ACT_BEFORE: Duration = Duration::from_millis(300);

/// A store on `time`, in a fresh schema whose `micros(timestamptz)` is replaced by one that, on
/// a connection where the setting `sentinel_test.slow` is `on`, when it is given the current time
/// (within 10 ms), turns the setting off, sleeps [`PAUSE`] and returns the time after the sleep
/// instead of its argument. Everywhere else it computes what the original does.
///
/// The claim function reads the server clock as `micros(clock_timestamp())`: on a slow connection
/// the claim's backend is thus held just before it reads the clock, as a backend descheduled there
/// would be, and the clock it reads is the time after the pause. Its other calls of `micros` (the
/// expiries it returns) are given other times and never pause.
async fn store_with_a_pausing_clock(factory: &PgFactory, time: TimeSource) -> PostgresStore {
    let store = factory.store(time).await;
    let pause = PAUSE.as_secs_f64();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION \"{schema}\".micros(t timestamptz) RETURNS bigint
             LANGUAGE plpgsql VOLATILE
             AS $$
         BEGIN
             IF current_setting('sentinel_test.slow', true) = 'on'
                AND abs(extract(epoch FROM clock_timestamp() - t)) < 0.01 THEN
                 PERFORM set_config('sentinel_test.slow', 'off', false);
                 PERFORM pg_sleep({pause});
                 RETURN (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
             END IF;
             RETURN (extract(epoch FROM t) * 1000000)::bigint;
         END
         $$",
        schema = store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    store
}

/// A second store on `holder`'s schema and time, with a pool of one connection, so the setting
/// that slows its next clock reading (see [`slow_down`]) is on the connection its claims run on.
async fn rival_of(factory: &PgFactory, holder: &PostgresStore) -> PostgresStore {
    PostgresStore::builder(common::pool(factory.url(), 1).await)
        .schema(holder.schema().as_str())
        .time(holder.time_source().clone())
        .migrate(false)
        .build()
        .await
        .unwrap()
}

/// Holds `store`'s next clock reading for [`PAUSE`].
async fn slow_down(store: &PostgresStore) {
    sqlx::query("SELECT set_config('sentinel_test.slow', 'on', false)")
        .execute(store.pool())
        .await
        .unwrap();
}

/// Whether `store`'s slowed clock reading has happened (the setting is off again).
async fn slowed_down(store: &PostgresStore) -> bool {
    let (setting,): (Option<String>,) =
        sqlx::query_as("SELECT current_setting('sentinel_test.slow', true)")
            .fetch_one(store.pool())
            .await
            .unwrap();
    setting.as_deref() == Some("off")
}

/// Sleeps until the store's clock reads `at`.
async fn sleep_until(store: &PostgresStore, at: Timestamp) {
    let now = store.now().await.unwrap();
    tokio::time::sleep(at.duration_since(now).unwrap_or_default()).await;
}

/// The race at the end of a lease. The holder claims `key` and starts it (server clock, ttl
/// [`TTL_MS`]); [`RIVAL_BEFORE`] its lease ends a rival claims the key, on a connection held for
/// [`PAUSE`] just before it reads the clock; [`ACT_BEFORE`] the end, while the rival is held, the
/// holder runs `act` (a renewal, a completion), which must finish before the rival answers.
/// Returns the holder's grant, the store and the rival's answer.
///
/// Version 5's claim read the record before the clock: the rival's read, taken before `act`,
/// showed the old lease, judged at a time after its end: `Uncertain`, although the execution was
/// never executing with its lease expired. Reading the clock first, the rival reads the record
/// after `act` and answers what it finds.
async fn claim_at_the_lease_end<F, Fut>(
    factory: &PgFactory,
    key: &RecordId,
    act: F,
) -> (Grant, PostgresStore, ClaimOutcome)
where
    F: FnOnce(PostgresStore, FencingToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let holder = store_with_a_pausing_clock(factory, TimeSource::Server).await;
    let rival = rival_of(factory, &holder).await;
    let ClaimOutcome::Acquired(grant) = holder
        .claim(key, &claim("holder", TTL_MS, true))
        .await
        .unwrap()
    else {
        panic!("a fresh key is granted");
    };
    let end = grant.lease_expires_at;

    sleep_until(&holder, end.saturating_sub(RIVAL_BEFORE)).await;
    slow_down(&rival).await;
    let started = Instant::now();
    let claiming = {
        let (rival, key) = (rival.clone(), key.clone());
        tokio::spawn(async move {
            let outcome = rival.claim(&key, &claim("rival", TTL_MS, true)).await;
            (outcome, Instant::now())
        })
    };
    sleep_until(&holder, end.saturating_sub(ACT_BEFORE)).await;
    act(holder.clone(), grant.token).await;
    let acted = Instant::now();
    let (outcome, answered) = claiming.await.unwrap();
    let outcome = outcome.unwrap();

    assert!(
        slowed_down(&rival).await && answered - started >= PAUSE,
        "the rival's claim was held before it read the clock"
    );
    assert!(
        acted < answered,
        "the holder acted while the rival's claim was held"
    );
    (grant, holder, outcome)
}

/// Asserts that an operator's reconcile of `key` is refused for `reason`: the race left nothing
/// uncertain to reconcile.
async fn operator_refused(store: &PostgresStore, key: &RecordId, reason: RejectReason) {
    let refused = store
        .reconcile(key, &OwnerId::new("operator").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| &r.reason),
        Some(&reason),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_racing_a_renewal_at_the_lease_end_sees_the_holder_alive() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let key = id("pay", "order-renewed");
    let renew = |holder: PostgresStore, token| {
        let key = key.clone();
        async move {
            let renewals = [Renewal {
                keyspace: Keyspace::Execution,
                id: key,
                token,
            }];
            let renewed = holder.heartbeat(&renewals).await.unwrap();
            assert!(renewed[0].is_ok(), "the live holder renews: {renewed:?}");
        }
    };
    let (grant, holder, outcome) = claim_at_the_lease_end(&factory, &key, renew).await;

    match outcome {
        ClaimOutcome::Busy {
            state,
            token,
            lease_expires_at,
            ..
        } => {
            assert_eq!(state, ExecutionState::Executing);
            assert_eq!(token, grant.token);
            assert!(
                lease_expires_at > grant.lease_expires_at,
                "the rival judged the renewed lease"
            );
        }
        other => panic!("expected Busy (the holder renewed in time), got {other:?}"),
    }
    // The record never was uncertain: an operator is refused, the holder still alive.
    operator_refused(&holder, &key, RejectReason::StillAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_racing_a_completion_at_the_lease_end_gets_the_result() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let key = id("pay", "order-completed");
    let complete = |holder: PostgresStore, token| {
        let key = key.clone();
        async move {
            holder.complete(&key, token, &json!("r")).await.unwrap();
        }
    };
    let (grant, holder, outcome) = claim_at_the_lease_end(&factory, &key, complete).await;

    match outcome {
        ClaimOutcome::Completed { token, result } => {
            assert_eq!(token, grant.token);
            assert_eq!(result, json!("r"));
        }
        other => panic!("expected the result (the holder completed in time), got {other:?}"),
    }
    operator_refused(&holder, &key, RejectReason::WrongState).await;
}

/// With a manual time the claim never reads the server clock, in any of its paths: a fresh key,
/// a live holder (busy), an expired claim taken over; its answers follow the manual time alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_manual_clock_never_reads_the_server_clock() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let clock = sentinel_core::ManualClock::new();
    let holder = store_with_a_pausing_clock(&factory, TimeSource::Manual(clock.clone())).await;
    let rival = rival_of(&factory, &holder).await;
    let key = id("pay", "order-manual");
    slow_down(&rival).await;
    let started = Instant::now();

    let ClaimOutcome::Acquired(first) = rival
        .claim(&key, &claim("rival", TTL_MS, false))
        .await
        .unwrap()
    else {
        panic!("a fresh key is granted");
    };
    let ttl = Duration::from_millis(TTL_MS);
    assert_eq!(first.lease_expires_at, clock.now().saturating_add(ttl));
    let busy = rival
        .claim(&key, &claim("other", TTL_MS, false))
        .await
        .unwrap();
    assert!(matches!(busy, ClaimOutcome::Busy { .. }), "{busy:?}");
    let later = clock.advance(ttl);
    let taken = granted(
        rival
            .claim(&key, &claim("other", TTL_MS, false))
            .await
            .unwrap(),
    );
    assert!(taken > first.token);
    let record = rival.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.lease_expires_at, later.saturating_add(ttl));

    assert!(
        !slowed_down(&rival).await && started.elapsed() < PAUSE,
        "no claim read the server clock"
    );
}

/// Asserts that `error` is the build's refusal of connections at `level`, saying how to fix it.
fn assert_refused_at(error: Error, level: &str) {
    match &error {
        Error::InvalidInput(InvalidInput::Malformed { what, detail }) => {
            assert_eq!(*what, "transaction isolation");
            assert!(
                detail.contains(level)
                    && detail.contains("default_transaction_isolation")
                    && detail.contains("read committed"),
                "the refusal names the level and the setting to change: {detail}"
            );
        }
        other => panic!("expected the refusal of a {level} pool, got {other:?}"),
    }
}

/// Whether `schema` exists on the server.
async fn schema_exists(url: &str, schema: &str) -> bool {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let _ = admin.close().await;
    exists
}

/// The claim function reads the clock, then the record, in statements of its own: the record it
/// judges is never older than the time it judges it at only because READ COMMITTED gives each
/// statement a fresh snapshot (migration 6), and the other statements count on it too. Under
/// REPEATABLE READ or SERIALIZABLE the snapshot is taken before the clock is read, so a claim
/// racing a renewal at the lease end could judge the holder dead. A store is therefore refused,
/// when built, over a pool whose connections default to another level (checked once, on one
/// connection), before anything is created, with a message that says what to change; connections
/// set to READ COMMITTED explicitly are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_connections_are_not_read_committed_is_refused() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let schema = factory.adopt(common::unique_schema("sentinel_isolation"));
    let base: PgConnectOptions = factory.url().parse().unwrap();
    let pool_at = |level: &str| {
        let options = base
            .clone()
            .options([("default_transaction_isolation", level)]);
        async move {
            PostgresStore::pool_options()
                .max_connections(2)
                .connect_with(options)
                .await
                .unwrap()
        }
    };
    for level in ["repeatable read", "serializable"] {
        for migrate in [true, false] {
            let refused = PostgresStore::builder(pool_at(level).await)
                .schema(&schema)
                .migrate(migrate)
                .build()
                .await
                .unwrap_err();
            assert_refused_at(refused, level);
        }
    }
    assert!(
        !schema_exists(factory.url(), &schema).await,
        "refused before anything was created"
    );

    // The same setting in the URL (`options=-c default_transaction_isolation=repeatable\ read`).
    let url = format!(
        "{}{}options=-c%20default_transaction_isolation%3Drepeatable%5C%20read",
        factory.url(),
        if factory.url().contains('?') {
            '&'
        } else {
            '?'
        }
    );
    let pool = PostgresStore::pool_options()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let (level,): (String,) = sqlx::query_as("SELECT current_setting('transaction_isolation')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        level, "repeatable read",
        "the URL's options reach the server"
    );
    let refused = PostgresStore::builder(pool)
        .schema(&schema)
        .build()
        .await
        .unwrap_err();
    assert_refused_at(refused, "repeatable read");

    // READ COMMITTED, set explicitly, is what the store needs; READ UNCOMMITTED is the same level
    // in PostgreSQL.
    for (level, key) in [
        ("read committed", "order-isolation"),
        ("read uncommitted", "order-uncommitted"),
    ] {
        let store = PostgresStore::builder(pool_at(level).await)
            .schema(&schema)
            .build()
            .await
            .unwrap();
        granted(
            store
                .claim(&id("pay", key), &claim("worker", 60_000, true))
                .await
                .unwrap(),
        );
    }
}
