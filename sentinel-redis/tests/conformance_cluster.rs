//! The conformance suite of `sentinel-testkit` against a three-primary Redis Cluster.
//!
//! The cluster comes from `sentinel_testkit::servers::redis_cluster()`:
//! `SENTINEL_TEST_REDIS_CLUSTER_URLS`, or three local `redis-server --cluster-enabled yes` nodes
//! joined by `redis-cli --cluster create`, started for this test binary.

mod support;

sentinel_testkit::conformance_tests!(support::Cluster);
