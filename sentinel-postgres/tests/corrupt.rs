//! Rows that break a record's rules (written by hand, by another program, by a bug) are reported
//! as corrupt records, never trusted, and a claim writes nothing over them. Schema version 4
//! dropped the CHECK constraints of version 1 on that promise (see its migration): these tests
//! hold it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PgFactory, claim, granted, id, lease, manual_store, set_row};
use sentinel_core::{
    ClaimOutcome, CoordinationStore, Error, ListQuery, Namespace, RecordId, Result,
};
use sentinel_postgres::PostgresStore;
use sqlx::AssertSqlSafe;

macro_rules! factory {
    () => {
        match PgFactory::new() {
            Some(factory) => factory,
            None => return,
        }
    };
}

/// The version of the row of `id` (a write makes a new one) and how many events it has.
async fn written(store: &PostgresStore, id: &RecordId) -> (String, i64) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT xmin::text || ctid::text FROM \"{schema}\".executions \
                 WHERE namespace = $1 AND key = $2), \
                (SELECT count(*) FROM \"{schema}\".events WHERE namespace = $1 AND key = $2)",
        schema = store.schema()
    )))
    .bind(id.namespace.as_str())
    .bind(id.key.as_str())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

fn is_corrupt<T>(result: &Result<T>) -> bool {
    matches!(result, Err(Error::CorruptRecord { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_execution_rows_are_reported_and_claims_write_nothing_over_them() {
    let factory = factory!();
    let (store, clock) = manual_store(&factory).await;
    // Breaks of the rules the dropped constraints guarded, in fields every claim of an executing
    // record reads: the claim itself reports them. `bogus` on an expired record is a state the
    // claim cannot judge, so it asks for a retry on every attempt: the store reads the record to
    // tell that from a race, and reports it as corrupt too.
    let read_by_claims = [
        "state = 'bogus'",
        "token = 0",
        "token = -5",
        "owner = NULL",
        "owner = ''",
        "lease_expires_at = NULL",
        "fingerprint = ''",
    ];
    // Breaks in fields a claim of an executing record does not read: it answers from the rest,
    // and reading the record reports them.
    let read_by_inspect = [
        "request_id = '\\x0102'::bytea",
        "ttl_us = 0",
        "hard_ttl_us = 1",
    ];
    let mut n = 0;
    for (set, claim_reports) in read_by_claims
        .iter()
        .map(|set| (set, true))
        .chain(read_by_inspect.iter().map(|set| (set, false)))
    {
        for expired in [false, true] {
            n += 1;
            let k = id("corrupt", &format!("k{n}"));
            granted(store.claim(&k, &claim("a", 1_000, true)).await.unwrap());
            set_row(store.pool(), &store, "executions", &k, set).await;
            if expired {
                clock.advance(Duration::from_secs(2));
            }
            let before = written(&store, &k).await;
            let claimed = store.claim(&k, &claim("b", 1_000, true)).await;
            assert_eq!(
                is_corrupt(&claimed),
                claim_reports,
                "{set}, expired: {expired}: the claim answered {claimed:?}"
            );
            assert!(
                !matches!(claimed, Ok(ClaimOutcome::Acquired(_))),
                "{set}: a corrupt record was granted: {claimed:?}"
            );
            let read = store.inspect(&k).await;
            assert!(is_corrupt(&read), "{set}: inspect answered {read:?}");
            assert_eq!(
                written(&store, &k).await,
                before,
                "{set}, expired: {expired}: the claim wrote nothing"
            );
        }
    }
    let listed = store
        .list(&ListQuery::new(Namespace::new("corrupt").unwrap()))
        .await;
    assert!(is_corrupt(&listed), "list answered {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_lease_rows_are_reported() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    for (n, set) in ["lease_expires_at = NULL", "owner = ''", "token = 0"]
        .iter()
        .enumerate()
    {
        let k = id("corrupt-lease", &format!("l{n}"));
        store.acquire_lease(&k, &lease("a", 1_000)).await.unwrap();
        set_row(store.pool(), &store, "leases", &k, set).await;
        let acquired = store.acquire_lease(&k, &lease("b", 1_000)).await;
        assert!(
            is_corrupt(&acquired),
            "{set}: acquire answered {acquired:?}"
        );
        let read = store.inspect_lease(&k).await;
        assert!(is_corrupt(&read), "{set}: inspect_lease answered {read:?}");
    }
}

/// A completed row that lost its result is reported, never replayed as a `null` result: a
/// caller would take `null` (or `()`) for the recorded outcome of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_row_without_its_result_is_reported_not_replayed_as_null() {
    let factory = factory!();
    let (store, _clock) = manual_store(&factory).await;
    let k = id("corrupt-completed", "k");
    let token = granted(store.claim(&k, &claim("a", 1_000, true)).await.unwrap());
    store
        .complete(&k, token, &serde_json::json!({"charge": "ch_1"}))
        .await
        .unwrap();
    set_row(store.pool(), &store, "executions", &k, "result = NULL").await;
    let before = written(&store, &k).await;
    let claimed = store.claim(&k, &claim("b", 1_000, true)).await;
    assert!(is_corrupt(&claimed), "the claim answered {claimed:?}");
    assert_eq!(written(&store, &k).await, before, "the claim wrote nothing");
}
