//! The whole conformance kit of `sentinel-testkit` against PostgreSQL: every case on stores in
//! fresh schemas of the test server, `reopen` being a second store with a new pool over the same
//! schema. The kit runs three times: with the default `in_flight` (concurrent claims and
//! completions beyond it share statements), with one statement of each kind at a time (every
//! concurrent call goes in a batch), and with no limit (every call sent alone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

sentinel_testkit::conformance_tests!({
    match common::PgFactory::new() {
        Some(factory) => factory,
        // No server and backends not required: `SKIPPED` was printed.
        None => return,
    }
});

mod batched {
    use super::common;

    sentinel_testkit::conformance_tests!({
        match common::PgFactory::new() {
            Some(factory) => factory.in_flight(1),
            None => return,
        }
    });
}

mod alone {
    use super::common;

    sentinel_testkit::conformance_tests!({
        match common::PgFactory::new() {
            Some(factory) => factory.in_flight(0),
            None => return,
        }
    });
}
