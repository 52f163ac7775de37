//! The PostgreSQL store for Sentinel: leases, fencing tokens and `once()` in the database you
//! already run.
//!
//! - **One statement, one round trip per transition.** Every command of the state machine
//!   (DESIGN §3) is a single SQL statement that reads the record, applies the rules of
//!   [`sentinel_core::execution::transition`] / [`sentinel_core::lease::transition`], writes the
//!   record and appends its event (data-modifying CTEs), in one atomic step. A fresh `once()`
//!   costs two statements (claim-and-start, complete), a cached one a single read that takes no
//!   lock and writes nothing, a heartbeat tick one statement for everything the client holds.
//!   The claim and complete statements call PL/pgSQL functions (migrations 5 and 6), where their
//!   rules live: a cached or busy answer is one plain read, only a grant runs the writes, and a
//!   completion that applies is one update and its event.
//! - **Concurrent calls share statements.** Under load, claims waiting for one of the store's
//!   claim statements in flight go together in one statement, each keeping its own answer
//!   (completions likewise): one commit for several calls. A lone call is sent alone at once (see
//!   [`PostgresStoreBuilder::in_flight`]).
//! - **Waiting without polling**: clients waiting for a busy key are woken by LISTEN/NOTIFY (one
//!   listening connection per store, outside the pool, opened by the first wait). Transitions
//!   notify only for records someone waits on, so the hot path's commits stay concurrent (see
//!   [`PostgresStoreBuilder::listen`]).
//! - **The server's clock** (`clock_timestamp()`) decides every expiry, unless the store is given
//!   a [`sentinel_core::ManualClock`] (tests), whose time the same SQL takes as a parameter.
//! - **Fencing downstream**: [`PostgresStore::fence`] checks a token inside your own transaction
//!   and holds the record until you commit; [`PostgresStore::complete_in`] commits the result with
//!   your own writes. The transaction must be READ COMMITTED (any other level is refused), and
//!   must be committed inside the work, before it returns `Ok` (see [`fence`]).
//! - **Embedded migrations** in a schema of their own (`sentinel` by default), with their own
//!   history table, safe when several processes start at once ([`migrate`], [`migrator`]).
//!
//! ```no_run
//! # async fn example() -> sentinel_core::Result<()> {
//! use sentinel_core::{Failure, Once, Sentinel};
//! use sentinel_postgres::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://app@db/app").await?;
//! let sentinel = Sentinel::builder(store).namespace("emails").build()?;
//! let sent: Once<u32> = sentinel
//!     .once("welcome:42", |_| async { Ok::<_, Failure>(1) })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`sentinel_core::Error`]s by meaning: `Unavailable` when the server cannot be
//! reached or the connection broke mid-call, `Timeout` when the pool had no connection in time,
//! `CorruptRecord` when a row does not decode, `Backend` otherwise. None of them reports a state:
//! the command may or may not have been applied, and every command is safe to send again.

mod batch;
mod error;
pub mod fence;
mod migrate;
mod notify;
mod rows;
mod schema;
mod sql;
mod store;

pub use migrate::{EmbeddedMigration, HISTORY_TABLE, MIGRATIONS, migrate, migrator};
pub use schema::Schema;
pub use store::{DEFAULT_IN_FLIGHT, DEFAULT_LISTENER_PROBE, PostgresStore, PostgresStoreBuilder};
