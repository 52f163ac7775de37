//! "One statement, one round trip", counted on the wire: every store call is a single
//! statement exchange, whatever the outcome (see tests/common/proxy.rs for how it counts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::Duration;

use common::{PgFactory, claim, granted, id, lease};
use proxy::CountingProxy;
use sentinel_core::{
    CoordinationStore, Disposition, HistoryQuery, Keyspace, ListFilter, ListQuery, ManualClock,
    Namespace, OwnerId, Renewal, TimeSource,
};
use sentinel_postgres::PostgresStore;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;

/// Runs `op` once to prepare its statement on the (single) connection, then again, and returns
/// the statement round trips of the second run. Both runs must succeed: a call that failed before
/// it sent anything would count zero.
macro_rules! trips {
    ($proxy:expr, $op:expr) => {{
        if let Err(error) = $op {
            panic!("{}: {error}", stringify!($op));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = $proxy.counts();
        if let Err(error) = $op {
            panic!("{}: {error}", stringify!($op));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let spent = $proxy.counts().since(before);
        assert_eq!(
            spent.prepares, 0,
            "statements are prepared once per connection"
        );
        spent.statements
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_one_statement() {
    let Some(factory) = PgFactory::new() else {
        return;
    };
    let options: PgConnectOptions = factory.url().parse().unwrap();
    let (pool, proxy) = CountingProxy::pool(&options, 1).await.unwrap();
    let clock = ManualClock::new();
    let store = PostgresStore::builder(pool)
        .schema(common::unique_schema("sentinel_rt"))
        .time(TimeSource::Manual(clock.clone()))
        .build()
        .await
        .unwrap();
    let operator = OwnerId::new("operator").unwrap();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        id("rt", &format!("k{n}"))
    };

    // once() on a fresh key: claim-and-start, then complete.
    assert_eq!(
        trips!(
            proxy,
            store.claim(&fresh(), &claim("w", 60_000, true)).await
        ),
        1
    );
    let (c, d) = (fresh(), fresh());
    let tc = granted(store.claim(&c, &claim("w", 60_000, true)).await.unwrap());
    let td = granted(store.claim(&d, &claim("w", 60_000, true)).await.unwrap());
    let _ = store.complete(&c, tc, &json!("r")).await;
    let before = proxy.counts();
    store.complete(&d, td, &json!("r")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.counts().since(before).statements, 1, "complete");

    // Cached, busy and uncertain claims: one read each.
    assert_eq!(
        trips!(proxy, store.claim(&d, &claim("x", 60_000, true)).await),
        1
    );
    let e = fresh();
    let te = granted(store.claim(&e, &claim("w", 1_000, true)).await.unwrap());
    assert_eq!(
        trips!(proxy, store.claim(&e, &claim("x", 1_000, true)).await),
        1
    );

    // A heartbeat tick for 40 held executions and leases: one statement.
    let mut renewals = Vec::new();
    for _ in 0..20 {
        let key = fresh();
        let token = granted(store.claim(&key, &claim("w", 60_000, true)).await.unwrap());
        renewals.push(Renewal {
            keyspace: Keyspace::Execution,
            id: key,
            token,
        });
        let key = fresh();
        let sentinel_core::Acquisition::Acquired(grant) = store
            .acquire_lease(&key, &lease("w", 60_000))
            .await
            .unwrap()
        else {
            panic!("a free lease");
        };
        renewals.push(Renewal {
            keyspace: Keyspace::Lease,
            id: key,
            token: grant.token,
        });
    }
    assert_eq!(trips!(proxy, store.heartbeat(&renewals).await), 1);

    // Leases: acquire (fresh and held) and release.
    assert_eq!(
        trips!(
            proxy,
            store.acquire_lease(&fresh(), &lease("w", 60_000)).await
        ),
        1
    );
    let sentinel_core::Acquisition::Acquired(held) = store
        .acquire_lease(&fresh(), &lease("w", 60_000))
        .await
        .unwrap()
    else {
        panic!("a free lease");
    };
    let _ = held;
    let before = proxy.counts();
    let renewal = &renewals[1];
    store
        .release_lease(&renewal.id, renewal.token)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.counts().since(before).statements, 1, "release");

    // The reconcile path, abort and start, and the reads.
    clock.advance(Duration::from_secs(2));
    let before = proxy.counts();
    let tr = store.reconcile(&e, &operator).await.unwrap();
    store
        .force_complete(&e, &operator, &json!("known"))
        .await
        .unwrap();
    let f = fresh();
    let tf = granted(store.claim(&f, &claim("w", 60_000, false)).await.unwrap());
    store.start(&f, tf).await.unwrap();
    store.abort(&f, tf, Disposition::Uncertain).await.unwrap();
    store.inspect(&f).await.unwrap();
    store
        .list(&ListQuery {
            filter: ListFilter::uncertain(),
            ..ListQuery::new(Namespace::new("rt").unwrap())
        })
        .await
        .unwrap();
    store
        .history(Keyspace::Execution, &f, &HistoryQuery::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spent = proxy.counts().since(before);
    assert_eq!(spent.statements, 8, "{spent:?}");
    assert!(tr > te);

    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await;
}
