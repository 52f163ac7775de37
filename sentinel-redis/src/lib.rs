//! The Redis store for Sentinel: standalone Redis or Redis Cluster, one Lua script per transition.
//!
//! [`RedisStore`] implements [`sentinel_core::CoordinationStore`]. Every transition of the state
//! machine (claim, start, complete, abort, reconcile, force_complete, reset, purge, lease acquire
//! and release) is **one script call and one round trip**: the script reads the record, applies
//! the same rules as `sentinel_core::execution::transition` / `sentinel_core::lease::transition`,
//! writes the record and appends its event to the record's history stream, atomically. A heartbeat
//! renews any number of held executions and leases in one round trip on a standalone server (and
//! one per node on a cluster).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sentinel_core::Error> {
//! use sentinel_core::{Failure, Once, Sentinel};
//! use sentinel_redis::RedisStore;
//!
//! let store = RedisStore::builder()
//!     .prefix("shop")
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
//! let sentinel = Sentinel::builder(store).namespace("payments").build()?;
//! let outcome: Once<u64> = sentinel
//!     .once("order-42", |_ctx| async { Ok::<_, Failure>(4200) })
//!     .await?;
//! assert!(outcome.is_executed() || outcome.is_cached());
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees, and what it does not
//!
//! - **Time is the server's**: scripts read `TIME` (or the manual test clock passed as an
//!   argument). On a cluster, each key's primary uses its own clock: keep the nodes' clocks in
//!   sync.
//! - **Tokens keep increasing** after data loss (`FLUSHALL`, a restart without persistence, a
//!   failover to a lagging replica), because every token is at least the server's clock in
//!   microseconds; after a purge or release because the record's last token is kept.
//! - **At most once needs persistence.** Redis acknowledges a write before it is on disk unless
//!   `appendfsync always` is set: with `appendonly yes` and `appendfsync everysec` a crash can
//!   lose up to a second of transitions (a claim, so a second worker runs the same key; or a
//!   completion, so the key looks uncertain). Without persistence a restart loses everything. A
//!   failover to a replica that had not received a transition loses it in the same way;
//!   [`RedisStoreBuilder::wait_for_replicas`] makes every write wait for replica
//!   acknowledgement, which narrows that window but is not a consensus protocol.
//! - **Retries are safe.** A reply lost after the script ran (a dropped connection) leaves the
//!   caller unsure whether it applied; every script is safe to run again: a claim or lease acquire
//!   carries a request id and a retry adopts its own grant; completion, force completion, start,
//!   abort and renewal are idempotent; reconcile, reset, purge and release of an already-applied
//!   command are refused with a typed rejection instead of applied twice. `NOSCRIPT` (after a
//!   restart) means the script did not run: it is loaded and sent again.
//!
//! # Waiting for another worker's result
//!
//! [`CoordinationStore::wait_for_change`](sentinel_core::CoordinationStore::wait_for_change) is
//! notified, not polled: every script that appends an execution event also publishes the event id
//! with `SPUBLISH` on the record hash's own name (which carries the record's hash tag, so on a
//! cluster the message stays in the record's shard). A store opens one RESP3 subscription
//! connection on its first wait, shared by all its waiters and re-established after a disconnect,
//! and subscribes (`SSUBSCRIBE`) to the records it waits on; a change between the caller's claim
//! and its wait is caught by comparing the record's event sequence once subscribed. A store built
//! over a supplied connection ([`RedisStoreBuilder::build`]), or one that cannot subscribe,
//! answers `Wait::Unsupported` and the client polls. Needs Redis 7 (sharded pub/sub).
//!
//! # Key layout
//!
//! See [`keys`]: `<prefix>:{<tag>}:<kind>:<namespace length>:<namespace>:<key>`, injective for
//! any namespace and key, with a hash tag that puts a record's hash and its history stream in one
//! slot. Listing and purge scan (`SCAN MATCH`) every primary, so they cost time proportional to
//! the number of keys under the prefix: they are operator tools, not a hot path.

pub mod connection;
mod error;
pub mod keys;
mod notify;
mod scripts;
mod store;

pub use connection::RedisConnection;
pub use keys::MAX_PREFIX_BYTES;
pub use redis;
pub use store::{ClusterStore, RedisStore, RedisStoreBuilder};
