//! The conformance suite every Sentinel store must pass, and real servers for backend test suites.
//!
//! (Under construction: the factory trait and the test macro are the stable entry points.)

pub mod servers;

use async_trait::async_trait;
use sentinel_core::{CoordinationStore, Result, TimeSource};

/// Builds the stores the suite runs against. Implement it for your store.
///
/// Every store it returns must be isolated from every other one (its own namespace prefix, schema
/// or database), so cases can run in parallel.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: CoordinationStore + Clone;

    /// A fresh, empty, isolated store whose clock is `time`: the kit passes
    /// [`TimeSource::Manual`] for every case but the one that checks the store's own clock.
    async fn create(&self, time: TimeSource) -> Result<Self::Store>;

    /// A second instance over the same backing data as `store`, as after a process restart
    /// (new connections, same records), on `time`.
    async fn reopen(&self, store: &Self::Store, time: TimeSource) -> Result<Self::Store>;
}
