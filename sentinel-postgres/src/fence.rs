//! Fencing downstream: tying your own writes in the same database to Sentinel's authority.
//!
//! A fencing token only protects what checks it. When the side effect is a write to the same
//! PostgreSQL database, these helpers check it inside your own transaction:
//!
//! - [`PostgresStore::fence`] (and [`PostgresStore::fence_lease`]) checks that your token is the
//!   current one and still alive, and keeps the record locked `FOR KEY SHARE` until your
//!   transaction ends. Every transition that could hand the key to someone else (a claim of the
//!   expired key, `reconcile`, `abort`, `force_complete`, `reset`, `purge`, and acquiring or
//!   releasing a lease) locks the record `FOR UPDATE` and so waits for your commit or rollback: a
//!   write committed under a fence can never land after a takeover, and a worker that paused past
//!   its lease is refused before it writes. Heartbeats do not wait: your lease keeps being renewed
//!   meanwhile; nor does a `complete` that applies, which only the fenced token can do and which
//!   hands the key to nobody.
//! - [`PostgresStore::complete_in`] records the execution's result in your transaction, so the
//!   side effect and the completion commit together or not at all: exactly once, for effects in
//!   the same database.
//!
//! Two rules go with them:
//!
//! - **The transaction must be READ COMMITTED** (PostgreSQL's default; its READ UNCOMMITTED is
//!   the same level). There each statement judges the record's latest committed version. Under
//!   REPEATABLE READ or SERIALIZABLE a statement sees the snapshot the transaction took first,
//!   and the heartbeats that keep your lease alive replace the record all the time (a fence lets
//!   them through): the fence would judge a stale record (a renewed lease looking expired, a
//!   started execution looking claimed), and `complete_in` would fail to serialize after any
//!   heartbeat, leaving the execution uncertain although nothing was charged. So the three
//!   helpers check the level in their own statement (no extra round trip) and refuse any other
//!   with [`sentinel_core::Error::InvalidInput`] ([`InvalidInput::Malformed`], `what:
//!   "transaction isolation"`) before they lock, read or write anything.
//! - **Commit inside the work, before it returns `Ok`.** The work's `Ok` tells `once` that the
//!   effect is durable, and `once` then records the same completion through the pool. That
//!   completion waits for the row lock `complete_in` holds until your transaction ends: a
//!   transaction committed only after `once` returns (one opened around the call and passed in,
//!   as a web framework's request transaction would be) makes `once` wait on itself until its
//!   calls time out, and it reports the completion failed. Worse, if you then roll back, a
//!   completion still queued on the server applies after the rollback: the result is recorded
//!   for an effect that never happened, and every later `once` returns it cached.
//!
//! ```no_run
//! # async fn example(store: sentinel_postgres::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
//! use sentinel_core::{Failure, Once, Sentinel};
//! use serde_json::json;
//!
//! let sentinel = Sentinel::builder(store.clone()).namespace("payments").build()?;
//! let done: Once<String> = sentinel
//!     .once("refund-42", |ctx| {
//!         let store = store.clone();
//!         async move {
//!             let id = sentinel_core::RecordId::new(ctx.namespace().clone(), ctx.key().clone());
//!             // READ COMMITTED, PostgreSQL's default (see above).
//!             let mut tx = store.pool().begin().await.map_err(Failure::not_applied)?;
//!             // Refused (nothing written) if this worker lost the key.
//!             store.fence(&mut tx, &id, ctx.token()).await.map_err(Failure::not_applied)?;
//!             sqlx::query("UPDATE accounts SET balance = balance + 100 WHERE id = 7")
//!                 .execute(&mut *tx)
//!                 .await
//!                 .map_err(Failure::not_applied)?;
//!             let receipt = "rf_42".to_owned();
//!             store.complete_in(&mut tx, &id, ctx.token(), &json!(receipt)).await?;
//!             // The refund and its completion, together or not at all; committed here, inside
//!             // the work, before it returns Ok.
//!             tx.commit().await?;
//!             Ok::<_, Failure>(receipt)
//!         }
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use sentinel_core::{FencingToken, InvalidInput, RecordId, Result};
use serde_json::Value;
use sqlx::PgTransaction;
use sqlx::postgres::PgRow;

use crate::rows::{self, required};
use crate::store::{PostgresStore, Via, query};

/// The verdict of `sql/fence.sql`, `sql/fence_lease.sql` and `sql/complete_in.sql` in a
/// transaction that is not READ COMMITTED; the row's `isolation` column names its level.
const NOT_READ_COMMITTED: &str = "not_read_committed";

/// `Err` when `row` is the verdict of a fencing statement run in a transaction that is not READ
/// COMMITTED (see the module docs); `operation` names the helper in the error.
pub(crate) fn check_isolation(row: Option<&PgRow>, operation: &'static str) -> Result<()> {
    let Some(row) = row else {
        return Ok(());
    };
    if required::<String>(row, "verdict")? != NOT_READ_COMMITTED {
        return Ok(());
    }
    let level: String = required(row, "isolation")?;
    Err(InvalidInput::Malformed {
        what: "transaction isolation",
        detail: format!(
            "{operation} needs a READ COMMITTED transaction, and this one is {level}: under \
             snapshot isolation it would judge a stale record, and a completion would fail after \
             any heartbeat; nothing was locked or written"
        ),
    }
    .into())
}

impl PostgresStore {
    /// Inside `tx`, checks that `token` is the current token of the execution `id`, that it is
    /// executing and that its lease is alive (store time), and holds a share lock on the record
    /// until `tx` commits or rolls back, so no other worker can take the key over before then.
    ///
    /// Refusals are [`sentinel_core::Error::Rejected`] with the record's state and token:
    /// `Fenced` (another generation holds it), `Expired`, `WrongState` (not executing),
    /// `NotFound`. Roll back on a refusal. One statement, one round trip, on `tx`'s connection.
    ///
    /// `tx` must be READ COMMITTED (PostgreSQL's default): under REPEATABLE READ or SERIALIZABLE
    /// the fence would judge the record as the transaction's snapshot shows it, which the
    /// heartbeats renewing your lease keep replacing, so a live execution could look expired. Any
    /// other level is refused with [`sentinel_core::Error::InvalidInput`]
    /// ([`InvalidInput::Malformed`], `what: "transaction isolation"`), checked in the same
    /// statement, before anything is locked or written.
    ///
    /// The lock is held until your transaction ends, and a takeover waits for it: keep the
    /// transaction short, and consider PostgreSQL's `idle_in_transaction_session_timeout` so a
    /// stuck worker cannot hold a key forever.
    pub async fn fence(
        &self,
        tx: &mut PgTransaction<'_>,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<()> {
        self.fence_record(tx, &self.statements().fence, "fence", id, token, true)
            .await
    }

    /// [`Self::fence`] for a lease: `token` must be the current token of the held lease `id`
    /// and alive; the lease stays locked until `tx` ends (acquiring it after expiry and
    /// releasing it wait; renewals do not). `tx` must be READ COMMITTED, as for
    /// [`Self::fence`] and for the same reason: a lease renewed since the transaction's snapshot
    /// would look expired.
    pub async fn fence_lease(
        &self,
        tx: &mut PgTransaction<'_>,
        id: &RecordId,
        token: FencingToken,
    ) -> Result<()> {
        self.fence_record(
            tx,
            &self.statements().fence_lease,
            "fence_lease",
            id,
            token,
            false,
        )
        .await
    }

    /// Runs `statement` (`sql/fence.sql` or `sql/fence_lease.sql`) in `tx` and judges its
    /// verdict; `with_state`: the record is an execution, which must also be executing.
    async fn fence_record(
        &self,
        tx: &mut PgTransaction<'_>,
        statement: &Arc<str>,
        operation: &'static str,
        id: &RecordId,
        token: FencingToken,
        with_state: bool,
    ) -> Result<()> {
        let row = query(statement)
            .bind(id.namespace.as_str())
            .bind(id.key.as_str())
            .bind(self.manual_now())
            .bind(token.get())
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| self.error(e, operation))?;
        check_isolation(row.as_ref(), operation)?;
        rows::verdict(row, &["held"], with_state).map(drop)
    }

    /// Records the result of execution `id` inside `tx`: the same transition as
    /// [`sentinel_core::CoordinationStore::complete`], committed or rolled back with your own
    /// writes, so a same-database side effect and its completion happen together or not at all.
    ///
    /// The completion takes effect when `tx` commits. When `once` later records the same result
    /// with the same token, that is an accepted repeat that logs nothing. A refusal (fenced,
    /// wrong state) is returned and its `completion_rejected` event is written in `tx` as well:
    /// roll back. The record stays locked until `tx` ends, which delays heartbeats for it.
    ///
    /// **Commit `tx` inside the work, right after this call and before the work returns `Ok`.**
    /// The work's `Ok` means the effect is durable: `once` then records the completion again
    /// through the pool, and that statement waits for the lock `tx` holds. A transaction
    /// committed only after `once` returns makes `once` wait on its own caller until its calls
    /// time out, and report the completion failed; rolled back after that, it leaves behind a
    /// completion still queued on the server, which then applies: a result recorded for an
    /// effect that never happened, returned as cached by every later `once`.
    ///
    /// `tx` must be READ COMMITTED (PostgreSQL's default). Under REPEATABLE READ or SERIALIZABLE
    /// the completion's update fails to serialize whenever a heartbeat renewed the record after
    /// the transaction's snapshot (any tick since its first statement), and the execution is
    /// left uncertain although the transaction rolled back. Any other level is refused with
    /// [`sentinel_core::Error::InvalidInput`] ([`InvalidInput::Malformed`], `what: "transaction
    /// isolation"`), checked in the same statement, before anything is written.
    pub async fn complete_in(
        &self,
        tx: &mut PgTransaction<'_>,
        id: &RecordId,
        token: FencingToken,
        result: &Value,
    ) -> Result<()> {
        self.send_complete(Via::Transaction(tx), id, token, result, "complete_in")
            .await
    }
}
