//! Sends concurrent claims (and, apart from them, concurrent completions) together.
//!
//! A store sends at most [`crate::PostgresStoreBuilder::in_flight`] claim statements at once (and
//! as many complete statements). A call that finds them all in flight waits in a queue; when one
//! finishes, the first waiter takes everything queued (up to [`MAX_BATCH`]) and sends it as one
//! statement (`sql/claim_batch.sql`, `sql/complete_batch.sql`), which calls the same function
//! once per call, in key order, in one transaction. Under load, one statement, one commit and
//! one round trip then serve several calls; with a free slot, a call is sent alone at once, by
//! the statement it always used, so a lone caller waits for nothing.
//!
//! Every call keeps its own answer: a batch answers each call with the row its function call
//! returned. When a batch fails as a whole (a server error in one call aborts the transaction; a
//! broken connection leaves it unknown whether it committed) or its sender is cancelled, each of
//! its calls is sent again alone. That is safe because every claim and completion is safe to
//! send twice: a claim sent again with its request id is handed back its own claim, a completion
//! sent again with its token and result answers `unchanged`. So one call's error never becomes
//! another's.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sentinel_core::{Error, RecordId};
use sqlx::postgres::PgRow;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

/// The most calls one statement carries: bounds how long one batch holds its rows locked.
pub(crate) const MAX_BATCH: usize = 32;

/// A call that can go in a batch: batches send their calls in the order of their records.
pub(crate) trait Call {
    /// The record the call is about.
    fn id(&self) -> &RecordId;
}

/// The calls of one kind waiting to be sent, and the statements of that kind in flight.
pub(crate) struct Coalescer<T> {
    waiting: Mutex<VecDeque<Waiting<T>>>,
    /// One permit per statement that may be in flight.
    slots: Semaphore,
    tickets: AtomicU64,
}

struct Waiting<T> {
    ticket: u64,
    call: T,
    reply: oneshot::Sender<PgRow>,
}

/// What a call does after [`Coalescer::send`].
enum Turn<'a> {
    /// A batch answered it: the row its own function call returned.
    Answered(PgRow),
    /// It sends its own statement, holding a slot when it has one (dropping it frees the slot).
    Alone(Option<SemaphorePermit<'a>>),
}

impl<T: Call> Coalescer<T> {
    /// At most `slots` statements in flight (at least one).
    pub(crate) fn new(slots: usize) -> Self {
        Coalescer {
            waiting: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(slots.max(1)),
            tickets: AtomicU64::new(0),
        }
    }

    /// Queues `call` and waits for a free slot or for another caller's batch to answer it. With
    /// the slot, it takes every queued call: when that is `call` alone, the caller sends it (the
    /// [`Turn::Alone`] slot); when there are several, `together` sends them in one statement (in
    /// key order, which is the order the heartbeat locks rows in, so two batches never deadlock;
    /// it returns one row per call, in the order given) and each caller gets its row. Calls whose
    /// callers stopped waiting are left out: a cancelled call is never sent.
    async fn send<'a, F, Fut>(&'a self, call: T, together: F) -> Turn<'a>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<PgRow>, Error>>,
    {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        self.queue().push_back(Waiting {
            ticket,
            call,
            reply,
        });
        let permit = tokio::select! {
            biased;
            row = &mut answer => return answered(row),
            permit = self.slots.acquire() => permit.expect("the slots are never closed"),
        };
        let mut batch: Vec<Waiting<T>> = {
            let mut queue = self.queue();
            queue.retain(|w| !w.reply.is_closed());
            let n = queue.len().min(MAX_BATCH);
            queue.drain(..n).collect()
        };
        // Stable: two calls of one record go in the order they came.
        batch.sort_by(|a, b| a.call.id().cmp(b.call.id()));
        match batch.len() {
            // Alone, and ours: sent by us, holding the slot.
            1 if batch[0].ticket == ticket => Turn::Alone(Some(permit)),
            // Ours went in an earlier batch, whose answer comes on `answer`. Another caller's
            // lone call is sent by that caller, whom dropping its reply tells.
            0 | 1 => {
                drop(batch);
                drop(permit);
                answered(answer.await)
            }
            n => {
                let (calls, replies): (Vec<T>, Vec<_>) =
                    batch.into_iter().map(|w| (w.call, w.reply)).unzip();
                let rows = match together(calls).await {
                    Ok(rows) if rows.len() == n => rows,
                    Ok(rows) => {
                        tracing::warn!(
                            calls = n,
                            rows = rows.len(),
                            "a batch answered the wrong number of rows; sending each call alone"
                        );
                        Vec::new()
                    }
                    Err(error) => {
                        tracing::debug!(calls = n, %error, "a batch failed; sending each call alone");
                        Vec::new()
                    }
                };
                drop(permit);
                // Each reply is sent its row or, when the batch failed, dropped: its caller then
                // sends the call alone. (A caller that stopped waiting needs no row.)
                for (reply, row) in replies.into_iter().zip(rows) {
                    let _ = reply.send(row);
                }
                answered(answer.await)
            }
        }
    }

    /// A free slot, when no call is waiting for one (a waiting call goes first).
    fn free_slot(&self) -> Option<SemaphorePermit<'_>> {
        let queue = self.queue();
        if queue.is_empty() {
            self.slots.try_acquire().ok()
        } else {
            None
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting<T>>> {
        // The queue is only pushed to and drained: a panic elsewhere cannot leave it half-changed.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends a call through `coalescer` (`None`: no batching): the row a batch answered it with, or
/// else the row of its own statement, sent by `alone` (holding a slot when it has one).
pub(crate) async fn send<T, B, BFut, A, AFut>(
    coalescer: Option<&Coalescer<T>>,
    call: impl FnOnce() -> T,
    together: B,
    alone: A,
) -> Result<Option<PgRow>, Error>
where
    T: Call,
    B: FnOnce(Vec<T>) -> BFut,
    BFut: Future<Output = Result<Vec<PgRow>, Error>>,
    A: FnOnce() -> AFut,
    AFut: Future<Output = Result<Option<PgRow>, Error>>,
{
    let _slot = match coalescer {
        Some(coalescer) => match coalescer.free_slot() {
            // Nobody waiting and a slot free: sent alone at once, queueing nothing.
            Some(slot) => Some(slot),
            None => match coalescer.send(call(), together).await {
                Turn::Answered(row) => return Ok(Some(row)),
                Turn::Alone(slot) => slot,
            },
        },
        None => None,
    };
    alone().await
}

fn answered<'a>(row: Result<PgRow, oneshot::error::RecvError>) -> Turn<'a> {
    match row {
        Ok(row) => Turn::Answered(row),
        // The batch carrying the call failed, or its sender was cancelled, or it was left alone.
        Err(_) => Turn::Alone(None),
    }
}
