//! The memory store against the whole conformance suite.

sentinel_testkit::conformance_tests!(sentinel_testkit::MemoryFactory);
