//! The conformance suite of `sentinel-testkit` against a standalone Redis.
//!
//! The server comes from `sentinel_testkit::servers::redis()`: `SENTINEL_TEST_REDIS_URL`, or a
//! local `redis-server` started for this test binary. Every store gets a key prefix of its own.

mod support;

sentinel_testkit::conformance_tests!(support::Standalone);
