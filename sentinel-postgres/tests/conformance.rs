//! The whole conformance kit of `sentinel-testkit` against PostgreSQL: every case on stores in
//! fresh schemas of the test server, `reopen` being a second store with a new pool over the same
//! schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

sentinel_testkit::conformance_tests!({
    match common::PgFactory::new() {
        Some(factory) => factory,
        // No server and backends not required: `SKIPPED` was printed.
        None => return,
    }
});
