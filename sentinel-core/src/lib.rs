//! Sentinel: leases with heartbeats and fencing tokens, and `once` — run a side effect at most
//! once per key, replay its result to everyone else, and say honestly when its outcome is
//! uncertain instead of retrying blindly.
//!
//! This crate is the core: the pure state machine ([`execution::transition`],
//! [`lease::transition`]), the domain types, the [`CoordinationStore`] port every backend
//! implements, and the [`Sentinel`] client. Pick a store from `sentinel-memory` (tests, examples),
//! `sentinel-postgres` or `sentinel-redis`.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use sentinel_core::{Failure, Once, Sentinel};
//!
//! let sentinel = Sentinel::builder(sentinel_memory::MemoryStore::new())
//!     .namespace("payments")
//!     .build()?;
//! let outcome: Once<String> = sentinel
//!     .once("order-789", |ctx| async move { Ok::<_, Failure>(format!("charged under {}", ctx.token())) })
//!     .await?;
//! match outcome {
//!     Once::Executed { value, .. } | Once::Cached { value, .. } => println!("{value}"),
//!     Once::InProgress { .. } => println!("another worker is on it"),
//!     other if other.is_uncertain() => println!("outcome unknown: reconcile before retrying"),
//!     other => println!("{}", other.kind()),
//! }
//! # Ok::<(), sentinel_core::Error>(())
//! # }).unwrap();
//! ```

pub mod client;
pub mod error;
pub mod event;
pub mod execution;
pub mod key;
pub mod lease;
pub mod owner;
pub mod rejection;
pub mod step;
pub mod store;
pub mod time;
pub mod token;
pub mod ttl;

pub use client::{
    Authority, ExecutionContext, Failure, LeaseAttempt, LeaseGuard, LeaseOptions, Leased,
    LostReason, Once, OnceOptions, Sentinel, SentinelBuilder,
};
pub use error::{BoxError, Error, InvalidInput, Result};
pub use event::{Event, EventDraft, EventKind};
pub use execution::{
    ClaimOutcome, ClaimRequest, Disposition, ExecutionCommand, ExecutionOutcome, ExecutionRecord,
    ExecutionSlot, ExecutionState, ExecutionStep, Fingerprint,
};
pub use key::{Key, Keyspace, Namespace, RecordId};
pub use lease::{
    Acquisition, LeaseCommand, LeaseOutcome, LeaseRecord, LeaseRequest, LeaseSlot, LeaseStep,
};
pub use owner::{OwnerId, RequestId};
pub use rejection::{RejectReason, Rejection};
pub use step::{Grant, Step};
pub use store::{
    CoordinationStore, HistoryQuery, LeaseListQuery, ListFilter, ListQuery, Page, Renewal,
    RenewalResult, Wait,
};
pub use time::{Clock, ManualClock, SystemClock, TimeSource, Timestamp};
pub use token::FencingToken;
pub use ttl::Ttl;
