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
//!             let mut tx = store.pool().begin().await.map_err(Failure::not_applied)?;
//!             // Refused (nothing written) if this worker lost the key.
//!             store.fence(&mut tx, &id, ctx.token()).await.map_err(Failure::not_applied)?;
//!             sqlx::query("UPDATE accounts SET balance = balance + 100 WHERE id = 7")
//!                 .execute(&mut *tx)
//!                 .await
//!                 .map_err(Failure::not_applied)?;
//!             let receipt = "rf_42".to_owned();
//!             store.complete_in(&mut tx, &id, ctx.token(), &json!(receipt)).await?;
//!             tx.commit().await?; // the refund and its completion, together or not at all
//!             Ok::<_, Failure>(receipt)
//!         }
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use sentinel_core::{FencingToken, RecordId, Result};
use serde_json::Value;
use sqlx::PgTransaction;

use crate::rows;
use crate::store::{PostgresStore, Via, query};

impl PostgresStore {
    /// Inside `tx`, checks that `token` is the current token of the execution `id`, that it is
    /// executing and that its lease is alive (store time), and holds a share lock on the record
    /// until `tx` commits or rolls back, so no other worker can take the key over before then.
    ///
    /// Refusals are [`sentinel_core::Error::Rejected`] with the record's state and token:
    /// `Fenced` (another generation holds it), `Expired`, `WrongState` (not executing),
    /// `NotFound`. Roll back on a refusal. One statement, one round trip, on `tx`'s connection.
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
    /// releasing it wait; renewals do not).
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
        rows::verdict(row, &["held"], with_state).map(drop)
    }

    /// Records the result of execution `id` inside `tx`: the same transition as
    /// [`sentinel_core::CoordinationStore::complete`], committed or rolled back with your own
    /// writes, so a same-database side effect and its completion happen together or not at all.
    ///
    /// The completion takes effect when `tx` commits. When `once` later records the same result
    /// with the same token, that is an accepted repeat that logs nothing. A refusal (fenced,
    /// wrong state) is returned and its `completion_rejected` event is written in `tx` as well:
    /// roll back. The record stays locked until `tx` ends, which delays heartbeats for it, so
    /// commit right after.
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
