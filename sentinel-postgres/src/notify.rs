//! Change notifications for [`CoordinationStore::wait_for_change`], over LISTEN/NOTIFY.
//!
//! **Sending.** Every statement that appends an execution event (a granting claim, start,
//! complete and completion_rejected, abort, reconcile, force_complete, reset, purge) calls
//! `pg_notify` from the `RETURNING` clause of its `INSERT` into `events` — one notification per
//! event written, none when nothing is written, delivered when the transaction commits (never if
//! it rolls back) — **if the record is watched**: the first client that waits on a record marks it
//! (`watch.sql`, migration 0002). NOTIFY serializes the commits of every notifying transaction of
//! the cluster (PostgreSQL holds one global lock from queueing the notification until after the
//! commit's WAL flush); notifying only for records someone waits on keeps the hot path's commits
//! concurrent. The channel is one per schema ([`channel`]); the payload is the 32 hex digits of a
//! digest of the record's namespace and key ([`digest`]), a fixed size whatever their length
//! (payloads are limited to 8000 bytes, namespace and key may take 1 KiB each). Two records with
//! the same digest only wake each other's waiters spuriously, which the contract allows.
//!
//! **Receiving.** A store keeps one [`PgListener`] on a connection of its own, outside the pool
//! (a waiting store never takes a pooled connection away from the calls), opened by a task that
//! the first wait starts and shared by every waiter of the store. The same task then reads its
//! notifications and keeps, per digest, the instant the last one arrived and the waiters of this
//! process.
//!
//! **Timeouts.** No wait takes much longer than its timeout: a wait waits for the listener to be
//! opened only until its own timeout passes (answering `TimedOut`; the task keeps trying, and
//! later waits find it listening), and the statement that marks a record watched (below) gives up
//! waiting for the record's row lock after at most [`lock_timeout`] of the time left (a
//! transition of the record in a transaction still open:
//! [`complete_in`](crate::PostgresStore::complete_in) in a caller's transaction, say), and the
//! wait answers `TimedOut`. PostgreSQL counts that limit per lock wait, so a waiter queued behind
//! others of the same record keeps its pooled connection up to one limit per waiter ahead of it.
//!
//! **The `since` rule** (a change after `since` that happened before the wait must not be
//! missed). The store remembers what its busy claims saw ([`Notifier::observe`]): the record's
//! `version` (the count of its logged transitions) and whether it was watched, with when each
//! claim was sent. Then:
//!
//! - a notification received after `since` answers `Changed` at once;
//! - when listening began before `since` and every busy claim sent since `since` (the caller's own
//!   is one of them) saw the record watched, every later transition notified: the waiter waits;
//! - otherwise (the record was not watched yet, or listening began after `since`: the first wait,
//!   or after a reconnect) the waiter marks the record watched and reads its version in one
//!   statement (`watch.sql`, one round trip), and waits only if every busy claim sent since
//!   `since` saw that same version; a difference, or nothing to compare with, answers `Changed`;
//! - while the connection is lost, current waiters are woken and new waits answer `Changed` at
//!   once, until the listener is back (it reconnects by itself, with a backoff);
//! - a listener that cannot be opened answers `Unsupported` (the client polls), and is tried again
//!   after [`RETRY_START_AFTER`]; one still being opened when the wait's timeout passes answers
//!   `TimedOut`.
//!
//! Memory is bounded: a digest nobody waits on is forgotten [`FORGET_AFTER`] after its last
//! notification or busy claim; a wait whose `since` is older than a forgotten notification
//! answers `Changed`, and so does a wait whose claims were forgotten.
//!
//! [`CoordinationStore::wait_for_change`]: sentinel_core::CoordinationStore::wait_for_change

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use md5::{Digest, Md5};
use sentinel_core::store::Wait;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::schema::Schema;

/// The prefix of every notification channel.
const CHANNEL_PREFIX: &str = "sentinel_";
/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); `pg_notify` refuses longer names.
const MAX_CHANNEL_LEN: usize = 63;
/// A digest nobody waits on is forgotten this long after its last notification.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How often (at most) forgotten digests are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// After a failed attempt to open the listener, waits answer `Unsupported` for this long before
/// the next attempt.
pub(crate) const RETRY_START_AFTER: Duration = Duration::from_secs(5);
/// The first pause before reconnecting a lost listener; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// The most distinct versions remembered per record; the oldest is forgotten first.
const MAX_VERSIONS: usize = 8;

/// What a busy claim saw of a record: its version (the count of its logged transitions) and
/// whether it was watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) version: i64,
    pub(crate) watched: bool,
}

/// How the statement that marks a record watched (`watch.sql`) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The record is watched; its version.
    Version(i64),
    /// There is no record.
    NoRecord,
    /// The statement gave up waiting for the record's row lock (its lock timeout, see
    /// [`lock_timeout`]).
    LockTimedOut,
    /// The statement failed otherwise.
    Failed,
}

/// How long the statement that marks a record watched may wait for the record's row lock when
/// the wait has `left` to go: a tenth less, so that the server gives up first and the pooled
/// connection comes back in order (a statement dropped mid-flight costs its connection), and at
/// most [`MAX_LOCK_WAIT`]; at least 1 ms (0 would mean no limit). PostgreSQL applies it to each
/// lock wait, and a waiter queued behind other waiters of the same row waits once per waiter
/// ahead of it: the cap keeps that short. A transition holds the row for a statement's time; only
/// a transaction kept open on it (a caller's `complete_in`) holds it longer, and then waiters
/// answer `TimedOut` and claim again.
pub(crate) fn lock_timeout(left: Duration) -> Duration {
    (left - left / 10).clamp(Duration::from_millis(1), MAX_LOCK_WAIT)
}

/// The longest the watch statement waits for the record's row lock (see [`lock_timeout`]).
const MAX_LOCK_WAIT: Duration = Duration::from_millis(100);

/// `future`'s output, or `None` if `deadline` (when there is one) passes first.
async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// The notification channel of `schema`: `sentinel_<schema>` when that fits PostgreSQL's 63-byte
/// identifiers, else `sentinel_` and the MD5 of the schema name in hex (41 bytes). Only
/// `[a-z0-9_]`: it is put into the SQL text as a literal.
pub(crate) fn channel(schema: &Schema) -> String {
    let name = schema.as_str();
    if CHANNEL_PREFIX.len() + name.len() <= MAX_CHANNEL_LEN {
        format!("{CHANNEL_PREFIX}{name}")
    } else {
        format!("{CHANNEL_PREFIX}{:032x}", md5(&[name.as_bytes()]))
    }
}

/// The digest of a record, as its notifications carry it: the MD5 of the namespace's UTF-8
/// bytes, a zero byte and the key's (neither contains a zero byte, so the split is unambiguous).
/// The statements compute the same with
/// `md5(convert_to(namespace, 'UTF8') || decode('00', 'hex') || convert_to(key, 'UTF8'))`.
pub(crate) fn digest(namespace: &str, key: &str) -> u128 {
    md5(&[namespace.as_bytes(), &[0], key.as_bytes()])
}

fn md5(parts: &[&[u8]]) -> u128 {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let bytes: [u8; 16] = hasher.finalize().into();
    u128::from_be_bytes(bytes)
}

/// A payload as [`digest`] produces it, or `None` for anything else on the channel.
fn parse(payload: &str) -> Option<u128> {
    if payload.len() != 32 {
        return None;
    }
    u128::from_str_radix(payload, 16).ok()
}

/// The waiting side of one store: its listener task and its waiters.
pub(crate) struct Notifier {
    channel: String,
    /// How long the listener may hear nothing before it probes its connection.
    probe: Duration,
    shared: Arc<Shared>,
    /// Held only to look at or replace the task, never across I/O.
    control: Mutex<Control>,
}

/// The listener task (which opens the listener, then runs it), with what it reports.
#[derive(Default)]
struct Control {
    task: Option<(JoinHandle<()>, watch::Receiver<Start>)>,
}

/// How opening the listener went, as its task reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Still trying.
    Opening,
    /// Listening: the task now runs the listener.
    Listening,
    /// It could not be opened, at this instant.
    Failed(Instant),
}

/// What the listener task and the waiters share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the current connection started listening; `None` while there is none.
    listening_since: Option<Instant>,
    records: HashMap<u128, Record>,
    /// The latest notification among the forgotten ones.
    forgotten_up_to: Option<Instant>,
    swept_at: Option<Instant>,
}

#[derive(Default)]
struct Record {
    /// When the last notification for this digest arrived.
    last: Option<Instant>,
    /// The waiters of this process, while there are some.
    waiters: Option<(Arc<Notify>, usize)>,
    /// The versions busy claims saw, each with whether every claim that saw it saw the record
    /// watched, and the latest instant one of them was sent at.
    seen: Vec<(i64, bool, Instant)>,
    /// The latest instant of a forgotten claim.
    unseen_up_to: Option<Instant>,
}

impl Record {
    fn idle(&self, now: Instant) -> bool {
        let recent = |at: Instant| now - at < FORGET_AFTER;
        self.waiters.is_none()
            && !self.last.is_some_and(recent)
            && !self.seen.iter().any(|(_, _, at)| recent(*at))
    }

    /// The versions seen by the busy claims sent at or after `since`, with whether each saw the
    /// record watched: `None` unless every such claim is remembered and there is one (the
    /// caller's own claim is one of them).
    fn seen_since(&self, since: Instant) -> Option<impl Iterator<Item = (i64, bool)> + '_> {
        let complete = self.unseen_up_to.is_none_or(|at| at < since);
        let mut later = self
            .seen
            .iter()
            .filter(move |(_, _, at)| *at >= since)
            .map(|(version, watched, _)| (*version, *watched))
            .peekable();
        (complete && later.peek().is_some()).then_some(later)
    }

    /// Whether the caller's claim, sent at `since`, saw the record watched.
    fn watched_since(&self, since: Instant) -> bool {
        self.seen_since(since)
            .is_some_and(|mut seen| seen.all(|(_, watched)| watched))
    }

    /// Whether the caller's claim, sent at `since`, saw version `current`.
    fn unchanged_since(&self, since: Instant, current: i64) -> bool {
        self.seen_since(since)
            .is_some_and(|mut seen| seen.all(|(version, _)| version == current))
    }
}

/// What a wait does next, decided under the lock.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Answer this at once.
    Answer(Wait),
    /// Maybe missed (listening began after `since`, or the record was not watched): watch the
    /// record and compare its version with what the claims saw.
    Compare,
    /// Register and wait.
    Wait,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn listening(&self, since: Instant) {
        self.lock().listening_since = Some(since);
    }

    /// The connection is lost: notifications may be missed from now on, so every waiter
    /// re-checks.
    fn lost(&self) {
        let mut state = self.lock();
        state.listening_since = None;
        for record in state.records.values() {
            if let Some((notify, _)) = &record.waiters {
                notify.notify_waiters();
            }
        }
    }

    fn received(&self, payload: &str) {
        let Some(digest) = parse(payload) else {
            tracing::debug!(payload, "ignoring a notification that is no record digest");
            return;
        };
        let now = Instant::now();
        let mut state = self.lock();
        let record = state.records.entry(digest).or_default();
        record.last = Some(now);
        if let Some((notify, _)) = &record.waiters {
            notify.notify_waiters();
        }
        if state.swept_at.is_none_or(|at| now - at >= SWEEP_EVERY) {
            state.sweep(now);
        }
    }
}

impl State {
    /// What a wait for `digest` whose caller read the record at `since` does next.
    fn next(&self, digest: u128, since: Instant) -> Next {
        let Some(listening_since) = self.listening_since else {
            // Disconnected: whatever happens now is missed.
            return Next::Answer(Wait::Changed);
        };
        let after = |at: Option<Instant>| at.is_some_and(|at| at > since);
        let record = self.records.get(&digest);
        let heard = match record {
            Some(record) => after(record.last),
            None => after(self.forgotten_up_to),
        };
        if heard {
            Next::Answer(Wait::Changed)
        } else if listening_since > since {
            // Listening began after the caller's read: a change in between went unheard.
            Next::Compare
        } else {
            Next::Wait
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.swept_at = Some(now);
        let mut forgotten = self.forgotten_up_to;
        self.records.retain(|_, record| {
            let keep = !record.idle(now);
            if !keep {
                forgotten = forgotten.max(record.last);
            }
            keep
        });
        self.forgotten_up_to = forgotten;
    }
}

/// One waiter, registered under its digest until dropped (also when the wait is cancelled).
struct Registration {
    shared: Arc<Shared>,
    digest: u128,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(record) = state.records.get_mut(&self.digest) else {
            return;
        };
        if let Some((_, count)) = &mut record.waiters {
            *count -= 1;
            if *count == 0 {
                record.waiters = None;
            }
        }
        if record.waiters.is_none() && record.last.is_none() && record.seen.is_empty() {
            state.records.remove(&self.digest);
        }
    }
}

impl Notifier {
    /// The notifier of a store in `schema`; opens nothing until the first wait.
    pub(crate) fn new(schema: &Schema, probe: Duration) -> Self {
        Notifier {
            channel: channel(schema),
            probe,
            shared: Arc::default(),
            control: Mutex::default(),
        }
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // Nothing panics while holding the lock; a poisoned one is safe to keep using.
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers what a busy claim sent at `sent` saw of the record (see the module
    /// documentation).
    pub(crate) fn observe(&self, digest: u128, sent: Instant, seen: Seen) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let record = state.records.entry(digest).or_default();
        match record.seen.iter_mut().find(|(v, _, _)| *v == seen.version) {
            Some((_, watched, at)) => {
                *watched &= seen.watched;
                *at = (*at).max(sent);
            }
            None => {
                if record.seen.len() >= MAX_VERSIONS {
                    let oldest = (0..record.seen.len())
                        .min_by_key(|&i| record.seen[i].2)
                        .unwrap_or(0);
                    let (_, _, at) = record.seen.swap_remove(oldest);
                    record.unseen_up_to = record.unseen_up_to.max(Some(at));
                }
                record.seen.push((seen.version, seen.watched, sent));
            }
        }
        if state.swept_at.is_none_or(|at| now - at >= SWEEP_EVERY) {
            state.sweep(now);
        }
    }

    /// Waits until a notification for `digest` arrives, or `timeout` passes (see the module
    /// documentation for the `since` rule). `watch` marks the record watched and reads its
    /// version, waiting for the record's row lock no longer than [`lock_timeout`] of the time
    /// it is given (`None`: no limit). Never fails: a listener that cannot be opened answers
    /// [`Wait::Unsupported`], a failed `watch` `Changed`; one still being opened when `timeout`
    /// passes, and a `watch` still waiting for the lock, `TimedOut`.
    pub(crate) async fn wait<W>(
        &self,
        pool: &PgPool,
        digest: u128,
        since: Instant,
        timeout: Duration,
        watch: W,
    ) -> Wait
    where
        W: AsyncFnOnce(Option<Duration>) -> Watched,
    {
        // A timeout too long to add to the clock (`Duration::MAX`, say) has no deadline.
        let deadline = Instant::now().checked_add(timeout);
        if let Err(answer) = self.ensure_listening(pool, deadline).await {
            return answer;
        }
        let next = {
            let state = self.shared.lock();
            match state.next(digest, since) {
                Next::Wait
                    if state
                        .records
                        .get(&digest)
                        .is_some_and(|r| r.watched_since(since)) =>
                {
                    Next::Wait
                }
                Next::Wait => Next::Compare,
                other => other,
            }
        };
        let since = match next {
            Next::Answer(answer) => return answer,
            Next::Wait => since,
            Next::Compare => {
                let comparable = self
                    .shared
                    .lock()
                    .records
                    .get(&digest)
                    .is_some_and(|r| r.seen_since(since).is_some());
                if !comparable {
                    return Wait::Changed;
                }
                // Sent while listening: every change after `watch` commits is heard after this.
                let watched_at = Instant::now();
                let left = deadline.map(|deadline| deadline.saturating_duration_since(watched_at));
                if left.is_some_and(|left| left.is_zero()) {
                    return Wait::TimedOut;
                }
                let current = match within(deadline, watch(left)).await {
                    Some(Watched::Version(current)) => current,
                    Some(Watched::NoRecord | Watched::Failed) => return Wait::Changed,
                    Some(Watched::LockTimedOut) | None => return Wait::TimedOut,
                };
                let unchanged = self
                    .shared
                    .lock()
                    .records
                    .get(&digest)
                    .is_some_and(|r| r.unchanged_since(since, current));
                if !unchanged {
                    return Wait::Changed;
                }
                watched_at
            }
        };
        let (notified, _registration) = {
            let mut state = self.shared.lock();
            match state.next(digest, since) {
                Next::Answer(answer) => return answer,
                // Listening began again after `watch` was sent (a reconnect): maybe missed.
                Next::Compare => return Wait::Changed,
                Next::Wait => {}
            }
            let record = state.records.entry(digest).or_default();
            let (notify, count) = record
                .waiters
                .get_or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            let mut notified = Box::pin(Arc::clone(notify).notified_owned());
            // Registered before the lock is released: a notification cannot slip in between.
            notified.as_mut().enable();
            let registration = Registration {
                shared: Arc::clone(&self.shared),
                digest,
            };
            (notified, registration)
        };
        match within(deadline, notified).await {
            Some(()) => Wait::Changed,
            None => Wait::TimedOut,
        }
    }

    /// Starts the listener task unless it runs (or failed lately), and waits until it listens,
    /// at most until `deadline`. `Err` is the wait's answer: `Unsupported` when the listener
    /// cannot be opened, `TimedOut` when it is still being opened at `deadline` (the task goes
    /// on; a later wait finds it listening), `Changed` when the task ended before it said (its
    /// runtime stopped: the next wait starts another).
    async fn ensure_listening(&self, pool: &PgPool, deadline: Option<Instant>) -> Result<(), Wait> {
        let mut started = {
            let mut control = self.control();
            match &control.task {
                Some((task, started)) if !task.is_finished() => started.clone(),
                previous => {
                    if let Some((_, started)) = previous
                        && let Start::Failed(at) = *started.borrow()
                        && at.elapsed() < RETRY_START_AFTER
                    {
                        return Err(Wait::Unsupported);
                    }
                    let (report, started) = watch::channel(Start::Opening);
                    let task = tokio::spawn(start(
                        Arc::clone(&self.shared),
                        pool.connect_options(),
                        self.channel.clone(),
                        Timing {
                            connect: pool.options().get_acquire_timeout(),
                            probe: self.probe,
                        },
                        report,
                    ));
                    control.task = Some((task, started.clone()));
                    started
                }
            }
        };
        let outcome = within(deadline, async {
            started
                .wait_for(|start| *start != Start::Opening)
                .await
                .map(|start| *start)
        })
        .await;
        match outcome {
            Some(Ok(Start::Listening)) => Ok(()),
            Some(Ok(_)) => Err(Wait::Unsupported),
            Some(Err(_)) => Err(Wait::Changed),
            None => Err(Wait::TimedOut),
        }
    }

    /// Whether a listener task is running, for tests.
    #[cfg(test)]
    fn running(&self) -> bool {
        self.control()
            .task
            .as_ref()
            .is_some_and(|(task, _)| !task.is_finished())
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let control = self
            .control
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((task, _)) = control.task.take() {
            task.abort();
        }
    }
}

/// The listener task: opens the listener and reports how that went to the waiters (through
/// `report`), then runs it.
async fn start(
    shared: Arc<Shared>,
    options: Arc<PgConnectOptions>,
    channel: String,
    timing: Timing,
    report: watch::Sender<Start>,
) {
    match listen(&options, &channel, timing.connect).await {
        Ok(listener) => {
            shared.listening(Instant::now());
            report.send_replace(Start::Listening);
            run(shared, listener, options, channel, timing).await;
        }
        Err(error) => {
            tracing::warn!(
                %error,
                %channel,
                "cannot listen for changes; waiting clients poll instead"
            );
            report.send_replace(Start::Failed(Instant::now()));
        }
    }
}

/// Opens a listener on `channel` over a connection of its own (a one-connection pool that only
/// it uses, so it never takes a connection from the store's pool).
async fn listen(
    options: &PgConnectOptions,
    channel: &str,
    timeout: Duration,
) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone());
    let opened = async {
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection is reported at once, and reopened here, by `run`.
        listener.eager_reconnect(false);
        listener.listen(channel).await?;
        Ok(listener)
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(outcome) => outcome,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// The listener task's clocks.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How long opening a listener, or answering its probe, may take (the pool's acquire
    /// timeout).
    connect: Duration,
    /// How long the listener may hear nothing before it probes its connection.
    probe: Duration,
}

/// Wakes every waiter when the task ends, whatever ends it (an abort, its runtime shutting down).
struct LostOnExit(Arc<Shared>);

impl Drop for LostOnExit {
    fn drop(&mut self) {
        self.0.lost();
    }
}

/// Runs the listener: hands notifications to the waiters; when the connection is lost, wakes
/// them all and reconnects, with a backoff.
async fn run(
    shared: Arc<Shared>,
    mut listener: PgListener,
    options: Arc<PgConnectOptions>,
    channel: String,
    timing: Timing,
) {
    let _lost_on_exit = LostOnExit(Arc::clone(&shared));
    loop {
        loop {
            // `try_recv` is cancel-safe: a notification half read when the probe is due stays
            // in the connection's buffer for the next call.
            match tokio::time::timeout(timing.probe, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => shared.received(notification.payload()),
                Ok(Ok(None)) => {
                    tracing::debug!(%channel, "the listener's connection was lost");
                    break;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%channel, %error, "the listener's connection failed");
                    break;
                }
                Err(_heard_nothing) => {
                    // LISTEN again: a no-op on a channel the session listens on, which keeps
                    // the connection shown as the listener in `pg_stat_activity`. Notifications
                    // that arrive meanwhile are buffered for `try_recv`.
                    let probe = sqlx::Executor::execute(
                        &mut listener,
                        sqlx::AssertSqlSafe(format!(r#"LISTEN "{channel}""#)),
                    );
                    match tokio::time::timeout(timing.connect, probe).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(%channel, %error, "the listener's probe failed");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(%channel, after = ?timing.connect, "the listener's connection did not answer its probe; opening another");
                            break;
                        }
                    }
                }
            }
        }
        shared.lost();
        // A connection that stopped answering is closed once its socket gives up (sqlx first
        // sends it an UNLISTEN): the operating system's retransmission timeout, not ours.
        drop(listener);
        let mut pause = RECONNECT_FIRST;
        listener = loop {
            tokio::time::sleep(pause).await;
            match listen(&options, &channel, timing.connect).await {
                Ok(listener) => break listener,
                Err(error) => {
                    tracing::warn!(%channel, %error, "cannot listen for changes again yet");
                    pause = (pause * 2).min(RECONNECT_MAX);
                }
            }
        };
        shared.listening(Instant::now());
        tracing::debug!(%channel, "listening again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fit_postgres_identifiers() {
        let short = Schema::new("billing").unwrap_or_default();
        assert_eq!(channel(&short), "sentinel_billing");
        let longest_kept = Schema::new("a".repeat(54)).unwrap_or_default();
        assert_eq!(
            channel(&longest_kept),
            format!("sentinel_{}", "a".repeat(54))
        );
        for len in [55, 63] {
            let long = Schema::new("a".repeat(len)).unwrap_or_default();
            let name = channel(&long);
            assert_eq!(name.len(), 41, "{name}");
            assert!(name.starts_with("sentinel_"));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
        assert_ne!(
            channel(&Schema::new("a".repeat(62)).unwrap_or_default()),
            channel(&Schema::new("a".repeat(63)).unwrap_or_default())
        );
    }

    #[test]
    fn digests_are_unambiguous_and_parse_back() {
        // The same as PostgreSQL's md5(convert_to('ns', 'UTF8') || '\x00' || convert_to('key', 'UTF8')).
        assert_eq!(
            format!("{:032x}", digest("ns", "key")),
            "10b54db096a40c0de9798decf5a1d140"
        );
        assert_ne!(digest("ab", "c"), digest("a", "bc"));
        let d = digest("payments", "order-7");
        assert_eq!(parse(&format!("{d:032x}")), Some(d));
        assert_eq!(parse("not a digest"), None);
        assert_eq!(parse(&"g".repeat(32)), None);
    }

    fn waiting(state: &mut State, digest: u128) {
        state.records.entry(digest).or_default().waiters = Some((Arc::new(Notify::new()), 1));
    }

    fn seen(version: i64, watched: bool) -> Seen {
        Seen { version, watched }
    }

    #[tokio::test(start_paused = true)]
    async fn the_since_rule() {
        let shared = Shared::default();
        let before_listening = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        shared.listening(Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let read = Instant::now();
        let (a, b) = (digest("n", "a"), digest("n", "b"));
        {
            let state = shared.lock();
            // Listening began after the read: maybe missed, compare.
            assert_eq!(state.next(a, before_listening), Next::Compare);
            // Nothing heard since: wait.
            assert_eq!(state.next(a, read), Next::Wait);
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        shared.received(&format!("{a:032x}"));
        {
            let state = shared.lock();
            assert_eq!(state.next(a, read), Next::Answer(Wait::Changed));
            assert_eq!(state.next(b, read), Next::Wait, "another record");
            // A notification before the read is no news.
            assert_eq!(state.next(a, Instant::now()), Next::Wait);
        }
        shared.lost();
        assert_eq!(
            shared.lock().next(b, Instant::now()),
            Next::Answer(Wait::Changed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_notifications_still_count() {
        let shared = Shared::default();
        shared.listening(Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let read = Instant::now();
        let (a, b, c) = (digest("n", "a"), digest("n", "b"), digest("n", "c"));
        waiting(&mut shared.lock(), c);
        tokio::time::advance(Duration::from_millis(1)).await;
        shared.received(&format!("{a:032x}"));
        tokio::time::advance(FORGET_AFTER + SWEEP_EVERY).await;
        shared.received(&format!("{b:032x}"));
        let state = shared.lock();
        assert!(!state.records.contains_key(&a), "forgotten");
        assert!(state.records.contains_key(&b), "recent");
        assert!(state.records.contains_key(&c), "waited on");
        // `a` was forgotten: a read before its notification still answers Changed …
        assert_eq!(state.next(a, read), Next::Answer(Wait::Changed));
        // … a read after it does not.
        assert_eq!(state.next(a, Instant::now()), Next::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn what_busy_claims_saw_is_forgotten_too() {
        let notifier = Notifier::new(&Schema::default(), crate::DEFAULT_LISTENER_PROBE);
        let (a, b) = (digest("n", "a"), digest("n", "b"));
        notifier.observe(a, Instant::now(), seen(1, false));
        tokio::time::advance(SWEEP_EVERY).await;
        notifier.observe(b, Instant::now(), seen(1, false));
        assert!(notifier.shared.lock().records.contains_key(&a), "recent");
        tokio::time::advance(FORGET_AFTER).await;
        notifier.observe(b, Instant::now(), seen(2, false));
        let state = notifier.shared.lock();
        assert!(!state.records.contains_key(&a), "forgotten");
        assert!(state.records.contains_key(&b), "recent");
    }

    #[tokio::test(start_paused = true)]
    async fn claims_vouch_only_for_what_every_one_saw() {
        let notifier = Notifier::new(&Schema::default(), crate::DEFAULT_LISTENER_PROBE);
        let a = digest("n", "a");
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let first = Instant::now();
        notifier.observe(a, first, seen(7, true));
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = Instant::now();
        notifier.observe(a, second, seen(7, true));
        {
            let state = notifier.shared.lock();
            let record = &state.records[&a];
            assert_eq!(record.seen.len(), 1, "the same version, merged");
            assert!(record.unchanged_since(first, 7));
            assert!(!record.unchanged_since(first, 8));
            assert!(record.watched_since(first));
            // No claim was sent at or after this: nothing to compare with.
            let later = second + Duration::from_millis(1);
            assert!(!record.unchanged_since(later, 7));
            assert!(!record.watched_since(later));
            assert!(record.unchanged_since(before, 7));
        }
        // A claim that saw it unwatched: a waiter from before it must watch and compare.
        tokio::time::advance(Duration::from_millis(1)).await;
        notifier.observe(a, Instant::now(), seen(7, false));
        assert!(!notifier.shared.lock().records[&a].watched_since(first));
        // Another claim saw a later version: a waiter from before it must re-check.
        let eighth = Instant::now();
        notifier.observe(a, eighth, seen(8, true));
        {
            let state = notifier.shared.lock();
            let record = &state.records[&a];
            assert!(!record.unchanged_since(first, 7));
            assert!(!record.unchanged_since(first, 8));
        }
        // Too many versions: the oldest is forgotten, and a waiter from before it re-checks.
        for n in 0..MAX_VERSIONS as i64 {
            tokio::time::advance(Duration::from_millis(1)).await;
            notifier.observe(a, Instant::now(), seen(9 + n, true));
        }
        let state = notifier.shared.lock();
        let record = &state.records[&a];
        assert_eq!(record.seen.len(), MAX_VERSIONS);
        assert!(!record.unchanged_since(before, 7));
        assert!(!record.watched_since(before));
        // A forgotten claim was sent at `eighth`: from then on, not every claim is remembered;
        // every one sent after it is.
        assert!(!record.watched_since(eighth));
        assert!(record.watched_since(eighth + Duration::from_millis(1)));
        assert!(record.unchanged_since(Instant::now(), 9 + MAX_VERSIONS as i64 - 1));
    }

    #[tokio::test]
    async fn waiters_unregister_when_their_wait_ends() {
        let shared = Arc::new(Shared::default());
        let (quiet, heard) = (digest("n", "quiet"), digest("n", "heard"));
        let register = |digest: u128, count: usize| {
            shared.lock().records.entry(digest).or_default().waiters =
                Some((Arc::new(Notify::new()), count));
            (0..count)
                .map(|_| Registration {
                    shared: Arc::clone(&shared),
                    digest,
                })
                .collect::<Vec<_>>()
        };
        let mut waiters = register(quiet, 2);
        drop(waiters.pop());
        assert!(matches!(
            shared.lock().records[&quiet].waiters,
            Some((_, 1))
        ));
        drop(waiters);
        assert!(
            !shared.lock().records.contains_key(&quiet),
            "nothing left to remember of a record nobody waits for and nothing was heard of"
        );
        // A record a notification was heard for is kept (the since rule needs it), unwatched.
        let waiters = register(heard, 1);
        shared.received(&format!("{heard:032x}"));
        drop(waiters);
        let state = shared.lock();
        assert!(state.records[&heard].waiters.is_none());
        assert!(state.records[&heard].last.is_some());
    }

    #[test]
    fn the_server_gives_up_on_the_lock_before_the_wait_ends() {
        assert_eq!(
            lock_timeout(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        // At most 100 ms, whatever is left: each waiter queued ahead costs one lock wait.
        assert_eq!(
            lock_timeout(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        // Never 0, which would mean no limit.
        assert_eq!(lock_timeout(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            lock_timeout(Duration::from_micros(900)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn nothing_runs_before_the_first_wait() {
        let notifier = Notifier::new(&Schema::default(), crate::DEFAULT_LISTENER_PROBE);
        assert!(!notifier.running());
        assert_eq!(notifier.channel, "sentinel_sentinel");
    }
}
