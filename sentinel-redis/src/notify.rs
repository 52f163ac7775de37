//! Change notifications for [`CoordinationStore::wait_for_change`](sentinel_core::CoordinationStore::wait_for_change).
//!
//! Every script that appends an execution event also runs `SPUBLISH <record hash name> <event id>`
//! (see `lua/lib.lua`). The record's name carries its hash tag, so on a cluster the message stays
//! in the shard that owns the record. A store keeps **one subscription connection** (RESP3, opened
//! on the first wait, shared by every waiter of the store and re-established by redis-rs after a
//! disconnect; on a cluster redis-rs's cluster connection sends each `SSUBSCRIBE` to the node that
//! owns the channel's slot and moves it when the slot moves) and, per record, the waiters of this
//! process, when the subscription was confirmed and when its last message arrived.
//!
//! The `since` rule (a change after `since` that happened before the wait must not be missed):
//!
//! - a message received after `since` answers `Changed` at once;
//! - a subscription confirmed before `since` has delivered every change after `since`, so with no
//!   such message the waiter waits;
//! - a subscription confirmed after `since` (the first wait on a key, or after a reconnect) may
//!   have missed a change in between: once subscribed, the waiter reads the record's event
//!   sequence (`HGET seq`, one round trip) and compares it with the sequence its busy claim saw
//!   (recorded by [`Notifier::observe`]); a difference, or no observation to compare with, answers
//!   `Changed` (spurious early returns are allowed, missed ones are not).
//!
//! A disconnect, or the server dropping a subscription (a slot that migrated), wakes the key's
//! waiters: something may have been missed while nobody listened. A subscription confirmed after
//! such a loss began (a wait's own `SSUBSCRIBE` racing an unsubscribe or a disconnect) is not
//! taken for a live one: each entry counts its losses, and a wait records its confirmation only
//! if none happened since it sent its `SSUBSCRIBE`.
//!
//! No wait takes much longer than its timeout: the subscription connection is opened by a task of
//! its own, and a wait waits for it only until its timeout passes (answering `TimedOut`; later
//! waits find it open).
//!
//! Memory is bounded: entries nobody waits on are forgotten (and unsubscribed) after
//! [`IDLE`], observations after [`OBSERVED_FOR`]. A channel whose record is used again before
//! its unsubscription is sent is not unsubscribed (the new entry unsubscribes it when it is
//! forgotten in turn).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use sentinel_core::store::Wait;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An entry nobody waits on is forgotten, and its channel unsubscribed, this long after its last
/// use.
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// A busy claim's observation of the event sequence is kept this long for a wait to compare with.
pub(crate) const OBSERVED_FOR: Duration = Duration::from_secs(30);
/// How often (at most) idle entries are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// After a failed attempt to open the subscription connection, waits answer `Unsupported` for
/// this long before the next attempt.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(5);
/// The most observations kept per key; older ones are merged conservatively.
const MAX_OBSERVED: usize = 8;

/// Where the subscription connection is opened.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A store over a connection the caller built: no URL to subscribe with.
    None,
    /// A standalone server, through this RESP3 client (boxed: with TLS compiled in, a client is
    /// several hundred bytes).
    Standalone {
        client: Box<redis::Client>,
        response_timeout: Duration,
        connection_timeout: Duration,
        /// How long the connection may go without a probe (`PING`).
        probe: Duration,
    },
    /// A cluster, through these node URLs.
    Cluster {
        urls: Vec<String>,
        response_timeout: Duration,
        connection_timeout: Duration,
    },
}

impl Source {
    /// A standalone source over `client`'s server, switched to RESP3 (pushes on a multiplexed
    /// connection).
    pub(crate) fn standalone(
        client: &redis::Client,
        response_timeout: Duration,
        connection_timeout: Duration,
        probe: Duration,
    ) -> Self {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        match redis::Client::open(info.set_redis_settings(settings)) {
            Ok(client) => Source::Standalone {
                client: Box::new(client),
                response_timeout,
                connection_timeout,
                probe,
            },
            Err(_) => Source::None,
        }
    }
}

/// The subscription connection.
#[derive(Clone)]
enum Subscriber {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&self, channel: &[u8]) -> redis::RedisResult<()> {
        match self {
            // One channel per command: the multiplexed connection takes the one confirmation
            // (a RESP3 push) as the command's reply.
            Subscriber::Standalone(conn) => {
                let mut conn = conn.clone();
                redis::cmd("SSUBSCRIBE")
                    .arg(channel)
                    .query_async::<Value>(&mut conn)
                    .await
                    .map(drop)
            }
            Subscriber::Cluster(conn) => conn.clone().ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&self, channel: &[u8]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Standalone(conn) => {
                let mut conn = conn.clone();
                redis::cmd("SUNSUBSCRIBE")
                    .arg(channel)
                    .query_async::<Value>(&mut conn)
                    .await
                    .map(drop)
            }
            Subscriber::Cluster(conn) => conn.clone().sunsubscribe(channel).await,
        }
    }
}

/// The subscription connection's state.
enum Connection {
    NotYet,
    /// Being opened by this task, which reports the outcome to the waiters (and here).
    Opening(JoinHandle<()>, watch::Receiver<Opened>),
    /// Open, and probed by this task (standalone only), which ends when this is replaced or the
    /// notifier dropped (held for its drop).
    Ready(Subscriber, #[allow(dead_code)] Option<AbortOnDrop>),
    Failed(Instant),
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the task opening the subscription connection reports: `None` while it tries, then the
/// connection, or `Some(None)` when it could not be opened.
type Opened = Option<Option<Subscriber>>;

/// `future`'s output, or `None` if `deadline` (when there is one) passes first.
async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// The waiters of one record in this process, and what is known about its notifications.
#[derive(Debug)]
struct Entry {
    /// Since when the channel is subscribed (the confirmation's arrival); `None` when it is not,
    /// or may not be (after a disconnect).
    subscribed: Option<Instant>,
    /// How many times the subscription was lost (an unsubscribe or a disconnect): a wait's
    /// confirmation counts only if none happened since it sent its `SSUBSCRIBE`.
    losses: u64,
    /// Whether the server may hold a subscription to the channel (a subscribe was sent, or one
    /// was kept from a forgotten entry): the sweep then has it unsubscribed.
    on_server: bool,
    /// When the last message for the record arrived.
    message: Option<Instant>,
    notify: Arc<Notify>,
    waiters: usize,
    /// `(claim sent, event sequence it saw)` of recent busy claims, oldest first.
    observed: Vec<(Instant, u64)>,
    /// The last wait or observation.
    used: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            subscribed: None,
            losses: 0,
            on_server: false,
            message: None,
            notify: Arc::default(),
            waiters: 0,
            observed: Vec::new(),
            used: now,
        }
    }

    fn observe(&mut self, sent: Instant, seq: u64, now: Instant) {
        self.observed
            .retain(|(at, _)| now.saturating_duration_since(*at) <= OBSERVED_FOR);
        let at = self.observed.partition_point(|(t, _)| *t <= sent);
        self.observed.insert(at, (sent, seq));
        if self.observed.len() > MAX_OBSERVED {
            // Merge the two oldest into (the later time, the smaller sequence): a wait that would
            // have compared with either now compares with a sequence no greater, which can only
            // make it answer `Changed` early, never miss a change.
            let (t0, s0) = self.observed.remove(0);
            if let Some((t1, s1)) = self.observed.first_mut() {
                *t1 = (*t1).max(t0);
                *s1 = (*s1).min(s0);
            }
        }
    }

    /// The smallest sequence seen by a claim sent at or after `since`: the state of the record
    /// no later than the caller's own claim read it.
    fn seen_since(&self, since: Instant) -> Option<u64> {
        self.observed
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, s)| *s)
            .min()
    }
}

#[derive(Debug)]
struct State {
    keys: HashMap<Vec<u8>, Entry>,
    swept: Instant,
    /// Channels of forgotten entries, to unsubscribe.
    forgotten: Vec<Vec<u8>>,
}

impl State {
    fn new(now: Instant) -> Self {
        State {
            keys: HashMap::new(),
            swept: now,
            forgotten: Vec::new(),
        }
    }

    /// Forgets entries nobody waits on and nobody used for [`IDLE`].
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.swept) < SWEEP_EVERY {
            return;
        }
        self.swept = now;
        let forgotten = &mut self.forgotten;
        self.keys.retain(|channel, e| {
            let keep = e.waiters > 0 || now.saturating_duration_since(e.used) < IDLE;
            if !keep && (e.subscribed.is_some() || e.on_server) {
                forgotten.push(channel.clone());
            }
            keep
        });
    }

    /// The forgotten channels to unsubscribe now: those whose record has no entry again. One that
    /// has (its record was used again since) stays subscribed; its entry unsubscribes it when it
    /// is forgotten in turn.
    fn take_forgotten(&mut self) -> Vec<Vec<u8>> {
        let mut forgotten = std::mem::take(&mut self.forgotten);
        forgotten.retain(|channel| !self.keep_subscribed(channel));
        forgotten
    }

    /// Whether `channel`, about to be unsubscribed, has an entry again (which then takes the
    /// subscription over).
    fn keep_subscribed(&mut self, channel: &[u8]) -> bool {
        match self.keys.get_mut(channel) {
            Some(e) => {
                e.on_server = true;
                true
            }
            None => false,
        }
    }

    /// A wait's `SSUBSCRIBE` of `channel`, sent when the entry had lost its subscription `losses`
    /// times, was confirmed at `now`: recorded unless it was lost again since (the unsubscribe or
    /// disconnect that did it may have come after the subscribe).
    fn confirmed(&mut self, channel: &[u8], losses: u64, now: Instant) {
        if let Some(e) = self.keys.get_mut(channel)
            && e.losses == losses
        {
            e.subscribed.get_or_insert(now);
        }
    }

    fn on_push(&mut self, push: PushInfo, now: Instant) {
        let channel = || match push.data.first() {
            Some(Value::BulkString(name)) => Some(name.as_slice()),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                if let Some(e) = channel().and_then(|c| self.keys.get_mut(c)) {
                    e.message = Some(now);
                    e.notify.notify_waiters();
                }
            }
            PushKind::SSubscribe | PushKind::Subscribe => {
                if let Some(e) = channel().and_then(|c| self.keys.get_mut(c)) {
                    e.subscribed.get_or_insert(now);
                }
            }
            PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                // Our own unsubscribe of a forgotten entry finds nothing; the server dropping a
                // subscription (its slot moved) may have lost messages: wake the waiters.
                if let Some(e) = channel().and_then(|c| self.keys.get_mut(c)) {
                    e.subscribed = None;
                    e.losses += 1;
                    e.notify.notify_waiters();
                }
            }
            PushKind::Disconnection => self.lost_all(),
            _ => {}
        }
    }

    /// Every subscription may be gone, and messages with it: wakes every waiter.
    fn lost_all(&mut self) {
        for e in self.keys.values_mut() {
            e.subscribed = None;
            e.losses += 1;
            e.notify.notify_waiters();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few field writes that cannot panic half-way: a poisoned lock is fine.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One store's notifications: the lazily opened subscription connection and the waiters.
pub(crate) struct Notifier {
    source: Source,
    /// Held only to look at or replace the state, never across I/O.
    connection: Arc<Mutex<Connection>>,
    state: Arc<Mutex<State>>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Connection::Opening(task, _) = &*lock(&self.connection) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Decrements the waiter count of a key when a wait ends, however it ends.
struct Waiting<'a> {
    state: &'a Mutex<State>,
    channel: &'a [u8],
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = lock(self.state);
        let now = Instant::now();
        if let Some(e) = state.keys.get_mut(self.channel) {
            e.waiters = e.waiters.saturating_sub(1);
            e.used = now;
        }
    }
}

impl Notifier {
    pub(crate) fn new(source: Source) -> Self {
        Notifier {
            source,
            connection: Arc::new(Mutex::new(Connection::NotYet)),
            state: Arc::new(Mutex::new(State::new(Instant::now()))),
        }
    }

    /// Whether waits can be notified at all (a store over a supplied connection cannot).
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self.source, Source::None)
    }

    /// Records that a claim sent at `sent` found the record busy at event sequence `seq`.
    pub(crate) fn observe(&self, channel: &[u8], sent: Instant, seq: u64) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now);
        let e = state
            .keys
            .entry(channel.to_vec())
            .or_insert_with(|| Entry::new(now));
        e.used = now;
        e.observe(sent, seq, now);
    }

    /// The subscription connection, opened on first use by a task of its own, waited for until
    /// `deadline` at most. `Err` is the wait's answer: `Unsupported` when it cannot be opened (or
    /// failed lately), `TimedOut` when it is still being opened at `deadline` (the task goes on),
    /// `Changed` when the task ended before it said (its runtime stopped: the next wait starts
    /// another).
    async fn subscriber(&self, deadline: Option<Instant>) -> Result<Subscriber, Wait> {
        let mut opened = {
            let mut connection = lock(&self.connection);
            match &*connection {
                Connection::Ready(s, _) => return Ok(s.clone()),
                Connection::Failed(at) if at.elapsed() < RETRY_CONNECT_AFTER => {
                    return Err(Wait::Unsupported);
                }
                Connection::Opening(task, opened) if !task.is_finished() => opened.clone(),
                Connection::Opening(..) | Connection::Failed(_) | Connection::NotYet => {
                    if matches!(self.source, Source::None) {
                        return Err(Wait::Unsupported);
                    }
                    let (report, opened) = watch::channel(None);
                    let task = tokio::spawn(open(
                        self.source.clone(),
                        Arc::downgrade(&self.state),
                        Arc::downgrade(&self.connection),
                        report,
                    ));
                    *connection = Connection::Opening(task, opened.clone());
                    opened
                }
            }
        };
        let outcome = within(deadline, async {
            opened
                .wait_for(Option::is_some)
                .await
                .map(|opened| opened.clone())
        })
        .await;
        match outcome {
            Some(Ok(Some(Some(subscriber)))) => Ok(subscriber),
            Some(Ok(_)) => Err(Wait::Unsupported),
            Some(Err(_)) => Err(Wait::Changed),
            None => Err(Wait::TimedOut),
        }
    }

    /// Waits for a message on `channel` (see the module docs for the `since` rule). `read_seq`
    /// reads the record's current event sequence, for a subscription younger than `since`.
    pub(crate) async fn wait<F, Fut>(
        &self,
        channel: &[u8],
        since: Instant,
        timeout: Duration,
        read_seq: F,
    ) -> Wait
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<Option<u64>>>,
    {
        // A timeout too long to add to the clock (`Duration::MAX`, say) has no deadline.
        let deadline = Instant::now().checked_add(timeout);
        let subscriber = match self.subscriber(deadline).await {
            Ok(subscriber) => subscriber,
            Err(answer) => return answer,
        };
        let notify;
        let (mut notified, subscribed, losses, seen, forgotten) = {
            let now = Instant::now();
            let mut state = lock(&self.state);
            state.sweep(now);
            let e = state
                .keys
                .entry(channel.to_vec())
                .or_insert_with(|| Entry::new(now));
            e.used = now;
            if e.message.is_some_and(|at| at > since) {
                return Wait::Changed;
            }
            e.waiters += 1;
            if e.subscribed.is_none() {
                // Subscribed below: unsubscribed when the entry is forgotten, whatever happens.
                e.on_server = true;
            }
            notify = Arc::clone(&e.notify);
            let mut notified = Box::pin(notify.notified());
            // Registered under the lock that messages are handled under: none can slip between.
            notified.as_mut().enable();
            let (subscribed, losses, seen) = (e.subscribed, e.losses, e.seen_since(since));
            // Taken once this wait's entry exists: its own channel is not unsubscribed under it.
            let forgotten = state.take_forgotten();
            (notified, subscribed, losses, seen, forgotten)
        };
        let _waiting = Waiting {
            state: &self.state,
            channel,
        };
        if !forgotten.is_empty() {
            let (s, state) = (subscriber.clone(), Arc::clone(&self.state));
            tokio::spawn(async move {
                for channel in forgotten {
                    // Its record may have been used again since: then it stays subscribed.
                    if lock(&state).keep_subscribed(&channel) {
                        continue;
                    }
                    // Best effort: a failure leaves a subscription whose messages find no entry.
                    let _ = s.unsubscribe(&channel).await;
                }
            });
        }
        if subscribed.is_none() {
            match within(deadline, subscriber.subscribe(channel)).await {
                Some(Ok(())) => lock(&self.state).confirmed(channel, losses, Instant::now()),
                Some(Err(_)) => return Wait::Unsupported,
                None => return Wait::TimedOut,
            }
        }
        if subscribed.is_none_or(|at| at > since) {
            // The subscription may be younger than the caller's read: compare the record's event
            // sequence with the one the caller's busy claim saw.
            let Some(seen) = seen else {
                return Wait::Changed;
            };
            match within(deadline, read_seq()).await {
                Some(Some(Some(now))) if now == seen => {}
                None => return Wait::TimedOut,
                Some(_) => return Wait::Changed,
            }
        }
        match within(deadline, notified.as_mut()).await {
            Some(()) => Wait::Changed,
            None => Wait::TimedOut,
        }
    }
}

/// The task that opens the subscription connection: records the outcome in `connection` (if its
/// notifier is still there) and reports it to the waiters through `report`.
async fn open(
    source: Source,
    state: Weak<Mutex<State>>,
    connection: Weak<Mutex<Connection>>,
    report: watch::Sender<Opened>,
) {
    let opened = connect(&source, state.clone()).await.ok();
    if let Some(cell) = connection.upgrade() {
        *lock(&cell) = match &opened {
            Some(subscriber) => {
                let probing = match (&source, subscriber) {
                    (Source::Standalone { probe: every, .. }, Subscriber::Standalone(conn)) => {
                        Some(AbortOnDrop(tokio::spawn(probe(
                            conn.clone(),
                            *every,
                            state,
                            connection,
                        ))))
                    }
                    _ => None,
                };
                Connection::Ready(subscriber.clone(), probing)
            }
            None => Connection::Failed(Instant::now()),
        };
    }
    report.send_replace(Some(opened));
}

/// Sends `PING` over the subscription connection every `every`. redis-rs reconnects after a
/// reset, but not after a reply that never comes (a flow a NAT forgot without resetting it): a
/// probe that fails (no answer within the response timeout, or any error) means the connection
/// cannot be trusted, so every waiter is woken (they claim again) and the next wait opens another
/// connection. The pings also keep such a flow from going idle.
async fn probe(
    conn: ConnectionManager,
    every: Duration,
    state: Weak<Mutex<State>>,
    connection: Weak<Mutex<Connection>>,
) {
    let error = loop {
        tokio::time::sleep(every).await;
        let mut pinged = conn.clone();
        if let Err(error) = redis::cmd("PING").query_async::<Value>(&mut pinged).await {
            break error;
        }
    };
    tracing::warn!(%error, "the subscription connection failed its probe; opening another");
    if let Some(state) = state.upgrade() {
        lock(&state).lost_all();
    }
    if let Some(connection) = connection.upgrade() {
        // Replacing it drops this task's handle: nothing may follow.
        let replaced = std::mem::replace(&mut *lock(&connection), Connection::NotYet);
        drop(replaced);
    }
}

/// Opens the subscription connection of `source`, its pushes handled into `state`.
async fn connect(source: &Source, state: Weak<Mutex<State>>) -> redis::RedisResult<Subscriber> {
    match source {
        Source::None => Err((redis::ErrorKind::Client, "no URL to subscribe with").into()),
        Source::Standalone {
            client,
            response_timeout,
            connection_timeout,
            ..
        } => {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(*response_timeout))
                .set_connection_timeout(Some(*connection_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1))
                .set_push_sender(push_handler(state))
                .set_automatic_resubscription();
            ConnectionManager::new_with_config(redis::Client::clone(client), config)
                .await
                .map(Subscriber::Standalone)
        }
        Source::Cluster {
            urls,
            response_timeout,
            connection_timeout,
        } => {
            let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                .use_protocol(ProtocolVersion::RESP3)
                .response_timeout(*response_timeout)
                .connection_timeout(*connection_timeout)
                .push_sender(push_handler(state))
                .build()?;
            client.get_async_connection().await.map(Subscriber::Cluster)
        }
    }
}

/// The push handler of the subscription connection: runs in redis-rs's reader, updates the
/// state and wakes waiters, never blocks.
fn push_handler(state: Weak<Mutex<State>>) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    move |push: PushInfo| {
        if let Some(state) = state.upgrade() {
            lock(&state).on_push(push, Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn push(kind: PushKind, channel: &[u8]) -> PushInfo {
        PushInfo {
            kind,
            data: vec![Value::BulkString(channel.to_vec()), Value::Int(1)],
        }
    }

    #[test]
    fn observations_give_the_smallest_sequence_seen_since() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Entry::new(t0);
        e.observe(at(10), 5, at(10));
        e.observe(at(30), 7, at(30));
        e.observe(at(20), 6, at(30));
        assert_eq!(e.seen_since(at(0)), Some(5));
        assert_eq!(e.seen_since(at(11)), Some(6));
        assert_eq!(e.seen_since(at(25)), Some(7));
        assert_eq!(e.seen_since(at(31)), None);
        let times: Vec<Instant> = e.observed.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [at(10), at(20), at(30)], "kept oldest first");
        // Old observations are dropped; too many are merged, never raising a sequence.
        e.observe(at(40_000), 9, at(40_000));
        assert_eq!(e.observed, vec![(at(40_000), 9)]);
        for i in 0..20 {
            e.observe(at(40_001 + i), 10 + i, at(40_001 + i));
        }
        assert_eq!(e.observed.len(), MAX_OBSERVED);
        assert_eq!(e.seen_since(at(40_000)), Some(9));
        // The oldest are merged: the newest stay exact.
        assert_eq!(e.seen_since(at(40_020)), Some(29));
        assert_eq!(e.seen_since(at(40_019)), Some(28));
        for since in 40_001..40_021 {
            let s = e.seen_since(at(since)).unwrap();
            assert!(s <= 10 + (since - 40_001), "{since}: {s}");
        }
    }

    #[test]
    fn a_notifier_shows_where_it_subscribes() {
        let shown = format!("{:?}", Notifier::new(Source::None));
        assert!(
            shown.starts_with("Notifier") && shown.contains("None"),
            "{shown}"
        );
    }

    #[test]
    fn a_wait_that_ends_leaves_its_entry_to_the_sweep() {
        let t0 = Instant::now();
        let state = Mutex::new(State::new(t0));
        let mut entry = Entry::new(t0);
        entry.waiters = 2;
        lock(&state).keys.insert(b"a".to_vec(), entry);
        let waiting = |n: usize| {
            (0..n)
                .map(|_| Waiting {
                    state: &state,
                    channel: b"a",
                })
                .collect::<Vec<_>>()
        };
        drop(waiting(2));
        let now = Instant::now();
        let mut state = lock(&state);
        assert_eq!(state.keys[b"a".as_slice()].waiters, 0);
        assert!(state.keys[b"a".as_slice()].used >= t0);
        state.sweep(now + IDLE + SWEEP_EVERY);
        assert!(state.keys.is_empty(), "forgotten once idle");
    }

    #[test]
    fn a_confirmation_sent_before_a_loss_is_not_recorded() {
        let t0 = Instant::now();
        let mut state = State::new(t0);
        state.keys.insert(b"a".to_vec(), Entry::new(t0));
        for lost in [
            push(PushKind::SUnsubscribe, b"a"),
            PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            },
        ] {
            // A wait sends SSUBSCRIBE; the subscription is lost before its confirmation is
            // recorded (an unsubscribe sent after it, a disconnect): not subscribed.
            let sent = state.keys[b"a".as_slice()].losses;
            state.on_push(lost, t0);
            state.confirmed(b"a", sent, t0);
            assert_eq!(state.keys[b"a".as_slice()].subscribed, None);
            // Confirmed with nothing lost since it was sent: subscribed.
            let sent = state.keys[b"a".as_slice()].losses;
            state.confirmed(b"a", sent, t0);
            assert_eq!(state.keys[b"a".as_slice()].subscribed, Some(t0));
            state.keys.get_mut(b"a".as_slice()).unwrap().subscribed = None;
        }
        // Nothing to record for a record no longer there.
        state.confirmed(b"gone", 0, t0);
        assert!(!state.keys.contains_key(b"gone".as_slice()));
    }

    #[test]
    fn a_forgotten_channel_used_again_is_unsubscribed_only_when_forgotten_again() {
        let t0 = Instant::now();
        let mut state = State::new(t0);
        for channel in [b"again", b"gone1"] {
            let mut entry = Entry::new(t0);
            entry.subscribed = Some(t0);
            state.keys.insert(channel.to_vec(), entry);
        }
        let swept = t0 + IDLE + SWEEP_EVERY;
        state.sweep(swept);
        assert!(state.keys.is_empty());
        // `again` is used again (a busy claim's observation) before the unsubscription is sent.
        state.keys.insert(b"again".to_vec(), Entry::new(swept));
        assert_eq!(state.take_forgotten(), vec![b"gone1".to_vec()]);
        assert!(state.forgotten.is_empty());
        assert!(state.keys[b"again".as_slice()].on_server);
        // Never subscribed by a wait, it still is on the server: unsubscribed once forgotten.
        state.sweep(swept + IDLE + SWEEP_EVERY);
        assert_eq!(state.take_forgotten(), vec![b"again".to_vec()]);
        // An unsubscription already on its way skips a channel used again meanwhile.
        state.keys.insert(b"again".to_vec(), Entry::new(swept));
        assert!(state.keep_subscribed(b"again"));
        assert!(!state.keep_subscribed(b"gone1"));
    }

    #[test]
    fn pushes_update_entries_and_idle_entries_are_forgotten() {
        let t0 = Instant::now();
        let mut state = State::new(t0);
        state.keys.insert(b"a".to_vec(), Entry::new(t0));
        state.keys.insert(b"b".to_vec(), Entry::new(t0));
        state.on_push(push(PushKind::SSubscribe, b"a"), t0);
        assert_eq!(state.keys[&b"a".to_vec()].subscribed, Some(t0));
        let t1 = t0 + Duration::from_millis(5);
        state.on_push(push(PushKind::SMessage, b"a"), t1);
        state.on_push(push(PushKind::SMessage, b"unknown"), t1);
        assert_eq!(state.keys[&b"a".to_vec()].message, Some(t1));
        assert_eq!(state.keys.len(), 2);
        // The server dropped the subscription (its slot moved): unsubscribed, waiters woken.
        let notify = Arc::clone(&state.keys[&b"a".to_vec()].notify);
        let mut woken = Box::pin(notify.notified());
        woken.as_mut().enable();
        state.on_push(push(PushKind::SUnsubscribe, b"a"), t1);
        assert_eq!(state.keys[&b"a".to_vec()].subscribed, None);
        assert!(
            woken
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        );
        state.on_push(push(PushKind::SSubscribe, b"a"), t1);
        state.on_push(
            PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            },
            t1,
        );
        assert_eq!(state.keys[&b"a".to_vec()].subscribed, None);
        state.on_push(push(PushKind::SSubscribe, b"a"), t1);
        // A waiter keeps its entry; idle ones go, the subscribed one to be unsubscribed.
        state.keys.get_mut(b"b".as_slice()).unwrap().waiters = 1;
        state.sweep(t0 + IDLE + SWEEP_EVERY);
        assert!(state.keys.contains_key(b"b".as_slice()));
        assert!(!state.keys.contains_key(b"a".as_slice()));
        assert_eq!(state.forgotten, vec![b"a".to_vec()]);
        // Sweeps are spaced: an idle entry waits for the next one. One used lately stays.
        let swept = t0 + IDLE + SWEEP_EVERY;
        state.keys.insert(b"c".to_vec(), Entry::new(t0));
        state.keys.insert(b"d".to_vec(), Entry::new(swept));
        state.sweep(swept + Duration::from_secs(1));
        assert!(state.keys.contains_key(b"c".as_slice()), "no sweep yet");
        state.sweep(swept + SWEEP_EVERY);
        assert!(!state.keys.contains_key(b"c".as_slice()));
        assert!(state.keys.contains_key(b"d".as_slice()), "used lately");
    }
}
