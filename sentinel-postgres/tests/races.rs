//! A transition racing a change that its statement's snapshot cannot see yet: PostgreSQL judges
//! the record again at its latest version, and the store sends the statement again when the
//! function asks for it, so the race settles on the right answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PgFactory, claim, granted, id, manual_store, set_row};
use sentinel_core::{CoordinationStore, EventKind, ExecutionState, HistoryQuery, Keyspace};
use serde_json::json;

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
