//! The client's one background task that renews everything it holds, in one store call per tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::authority::{Authority, AuthorityCell, LostReason};
use super::background::Background;
use super::observe::{Telemetry, TransitionKind};
use crate::store::{CoordinationStore, Renewal};
use crate::ttl::Ttl;

/// The smallest pause between retries of a failed heartbeat.
const MIN_RETRY: Duration = Duration::from_millis(5);

/// The registry of held executions and leases, and the task renewing them.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn CoordinationStore>,
    telemetry: Telemetry,
    held: Mutex<Registry>,
    wake: Notify,
    closed: AtomicBool,
    task: Background,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Held>,
    /// When the task will next wake on its own (`None` while it waits for a registration).
    armed: Option<Instant>,
    /// How many registrations have woken the task.
    wakes: u64,
}

#[derive(Debug)]
struct Held {
    renewal: Renewal,
    ttl: Duration,
    /// When the next renewal is due.
    due: Instant,
    cell: AuthorityCell,
}

impl Held {
    fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(1))
    }
}

/// Keeps one held record in the heartbeat; dropping it stops the renewals and marks authority
/// lost as [`LostReason::Released`], or reports it lost if it ran out before (a deadline the
/// task had not acted on yet).
#[derive(Debug)]
pub(crate) struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self.shared.registry().entries.remove(&self.id);
        if let Some(held) = removed {
            match held.cell.state().lost_at(Instant::now()) {
                Some(reason) => self.shared.lose(&held, reason),
                None => {
                    held.cell.lose(LostReason::Released);
                    self.shared.telemetry.held(held.renewal.keyspace, -1.0);
                }
            }
        }
    }
}

impl Heartbeat {
    pub(crate) fn new(store: Arc<dyn CoordinationStore>, telemetry: Telemetry) -> Self {
        Heartbeat {
            shared: Arc::new(Shared {
                store,
                telemetry,
                held: Mutex::new(Registry::default()),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
                task: Background::default(),
            }),
        }
    }

    /// Starts renewing `renewal`, granted by a request sent at `sent` with `ttl`.
    ///
    /// Must be called inside a tokio runtime: the task is spawned on first use.
    pub(crate) fn register(
        &self,
        renewal: Renewal,
        ttl: Ttl,
        sent: Instant,
    ) -> (Registration, Authority) {
        let (cell, authority) =
            AuthorityCell::new(renewal.token, sent + ttl.ttl(), sent + ttl.hard());
        let held = Held {
            renewal,
            ttl: ttl.ttl(),
            due: sent,
            cell,
        };
        let first_due = sent + held.period();
        self.shared.telemetry.held(held.renewal.keyspace, 1.0);
        let (id, wake) = {
            let mut registry = self.shared.registry();
            let id = registry.next_id;
            registry.next_id += 1;
            registry.entries.insert(
                id,
                Held {
                    due: first_due,
                    ..held
                },
            );
            // Wake the task only if this registration is due before the task's own alarm: with
            // equal ttls (the usual case) most registrations need no wake-up at all. The alarm
            // moves to this registration's due time at once, and stays there even if the
            // registration is dropped before the task runs (work shorter than the wake-up):
            // otherwise every short execution would wake the task anew.
            let wake = registry.armed.is_none_or(|armed| first_due < armed);
            if wake {
                registry.armed = Some(first_due);
                registry.wakes += 1;
            }
            (id, wake)
        };
        self.ensure_task();
        if wake {
            self.shared.wake.notify_one();
        }
        (
            Registration {
                shared: Arc::clone(&self.shared),
                id,
            },
            authority,
        )
    }

    /// How many executions and leases are held right now.
    pub(crate) fn held(&self) -> usize {
        self.shared.registry().entries.len()
    }

    fn ensure_task(&self) {
        self.shared.task.ensure(|| run(Arc::clone(&self.shared)));
    }

    /// Stops the task; held records lose authority at their deadlines.
    pub(crate) fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent: every update is a
        // single insert, remove or field write.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the task must next wake: the earliest due time of what is held or, with nothing
    /// held, the alarm a registration set while it is still ahead. Remembered, so that a
    /// registration due later does not wake the task.
    fn next_due(&self) -> Option<Instant> {
        let mut registry = self.registry();
        let now = Instant::now();
        let due = registry
            .entries
            .values()
            .map(|h| h.due.min(h.cell.state().deadline))
            .min()
            .or(registry.armed.filter(|alarm| *alarm > now));
        registry.armed = due;
        due
    }

    /// Signals each of `lost`, taken out of the registry, as lost. Call it without the registry's
    /// lock held.
    fn report(&self, lost: Vec<(Held, LostReason)>) {
        for (held, reason) in lost {
            self.lose(&held, reason);
        }
    }

    /// Signals that `held` lost its authority; the caller removes it from the registry.
    fn lose(&self, held: &Held, reason: LostReason) {
        let renewal = &held.renewal;
        tracing::warn!(
            keyspace = %renewal.keyspace,
            id = %renewal.id,
            token = %renewal.token,
            %reason,
            "authority lost"
        );
        held.cell.lose(reason);
        self.telemetry.held(renewal.keyspace, -1.0);
        self.telemetry.transition(
            renewal.keyspace,
            Some(&renewal.id),
            TransitionKind::AuthorityLost,
            Some(renewal.token),
        );
    }

    /// Drops what has lost authority, then renews everything due soon in one store call.
    ///
    /// Losses are reported (to the observer, among others) only once the registry's lock is
    /// released: an observer may call back into the client.
    async fn tick(&self) {
        let now = Instant::now();
        let (batch, lost): (Vec<(u64, Renewal, Duration)>, _) = {
            let mut registry = self.registry();
            let expired: Vec<(u64, LostReason)> = registry
                .entries
                .iter()
                .filter_map(|(id, held)| held.cell.state().lost_at(now).map(|reason| (*id, reason)))
                .collect();
            let lost = take(&mut registry, expired);
            let batch = registry
                .entries
                .iter_mut()
                .filter_map(|(id, held)| {
                    let state = held.cell.state();
                    if state.deadline >= state.hard_deadline {
                        // Nothing left to extend: wait for the hard deadline.
                        held.due = state.hard_deadline;
                        return None;
                    }
                    (held.due <= now + held.period() / 2)
                        .then(|| (*id, held.renewal.clone(), held.ttl))
                })
                .collect();
            (batch, lost)
        };
        self.report(lost);
        if batch.is_empty() {
            return;
        }
        let renewals: Vec<Renewal> = batch.iter().map(|(_, r, _)| r.clone()).collect();
        let budget = batch
            .iter()
            .map(|(_, _, ttl)| *ttl / 3)
            .min()
            .unwrap_or(MIN_RETRY)
            .max(MIN_RETRY);
        let sent = Instant::now();
        let span = tracing::debug_span!("heartbeat", held = batch.len());
        let answer = {
            let _enter = span.enter();
            tokio::time::timeout(budget, self.store.heartbeat(&renewals)).await
        };
        let mut registry = self.registry();
        match answer {
            Ok(Ok(results)) if results.len() == batch.len() => {
                let mut refused = Vec::new();
                for ((id, _, ttl), result) in batch.into_iter().zip(results) {
                    let Some(held) = registry.entries.get_mut(&id) else {
                        continue;
                    };
                    match result {
                        Ok(_) => {
                            held.cell.extend(sent + ttl);
                            held.due = sent + held.period();
                        }
                        Err(rejection) => refused.push((id, LostReason::Rejected(rejection))),
                    }
                }
                let lost = take(&mut registry, refused);
                drop(registry);
                self.report(lost);
            }
            failed => {
                self.telemetry.heartbeat_failed();
                match failed {
                    Ok(Ok(results)) => tracing::warn!(
                        sent = batch.len(),
                        answered = results.len(),
                        "heartbeat answered the wrong number of renewals; retrying"
                    ),
                    Ok(Err(error)) => tracing::warn!(%error, "heartbeat failed; retrying"),
                    Err(_) => tracing::warn!(after = ?budget, "heartbeat timed out; retrying"),
                }
                for (id, _, ttl) in &batch {
                    if let Some(held) = registry.entries.get_mut(id) {
                        held.due = Instant::now() + (*ttl / 12).max(MIN_RETRY);
                    }
                }
            }
        }
    }
}

/// Takes the entries named in `ids` out of the registry, with their reasons.
fn take(registry: &mut Registry, ids: Vec<(u64, LostReason)>) -> Vec<(Held, LostReason)> {
    ids.into_iter()
        .filter_map(|(id, reason)| registry.entries.remove(&id).map(|held| (held, reason)))
        .collect()
}

async fn run(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        match shared.next_due() {
            None => notified.await,
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => shared.tick().await,
                    () = &mut notified => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use async_trait::async_trait;
    use serde_json::Value;

    use super::*;
    use crate::error::{Error, Result};
    use crate::event::Event;
    use crate::execution::{ClaimOutcome, ClaimRequest, Disposition, ExecutionRecord};
    use crate::key::{Keyspace, Namespace, RecordId};
    use crate::lease::{Acquisition, LeaseRecord, LeaseRequest};
    use crate::owner::OwnerId;
    use crate::store::{HistoryQuery, LeaseListQuery, ListQuery, Page, RenewalResult};
    use crate::time::Timestamp;
    use crate::token::FencingToken;

    /// A store that renews everything and answers nothing else: the heartbeat calls nothing else.
    #[derive(Debug, Default)]
    struct RenewsOnly {
        heartbeats: AtomicUsize,
        /// Answers one renewal fewer than it was sent.
        short: AtomicBool,
        /// Never answers its first heartbeat call.
        hangs_once: AtomicBool,
        /// Answers every heartbeat call this many milliseconds after it was sent.
        answers_after_ms: AtomicU64,
    }

    fn unused<T>() -> Result<T> {
        Err(Error::Unavailable {
            store: "renews-only",
            source: "not used by the heartbeat".into(),
        })
    }

    #[async_trait]
    impl CoordinationStore for RenewsOnly {
        fn backend(&self) -> &'static str {
            "renews-only"
        }
        async fn now(&self) -> Result<Timestamp> {
            unused()
        }
        async fn claim(&self, _: &RecordId, _: &ClaimRequest) -> Result<ClaimOutcome> {
            unused()
        }
        async fn start(&self, _: &RecordId, _: FencingToken) -> Result<Timestamp> {
            unused()
        }
        async fn heartbeat(&self, renewals: &[Renewal]) -> Result<Vec<RenewalResult>> {
            self.heartbeats.fetch_add(1, Ordering::SeqCst);
            if self.hangs_once.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let delay = self.answers_after_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let answered = if self.short.load(Ordering::SeqCst) {
                renewals.len() - 1
            } else {
                renewals.len()
            };
            Ok((0..answered)
                .map(|_| Ok(Timestamp::from_micros(1)))
                .collect())
        }
        async fn complete(&self, _: &RecordId, _: FencingToken, _: &Value) -> Result<()> {
            unused()
        }
        async fn abort(&self, _: &RecordId, _: FencingToken, _: Disposition) -> Result<()> {
            unused()
        }
        async fn reconcile(&self, _: &RecordId, _: &OwnerId) -> Result<FencingToken> {
            unused()
        }
        async fn force_complete(&self, _: &RecordId, _: &OwnerId, _: &Value) -> Result<()> {
            unused()
        }
        async fn reset_to_claimed(&self, _: &RecordId, _: &OwnerId) -> Result<()> {
            unused()
        }
        async fn purge(&self, _: &Namespace, _: Duration, _: u32) -> Result<u64> {
            unused()
        }
        async fn inspect(&self, _: &RecordId) -> Result<Option<ExecutionRecord>> {
            unused()
        }
        async fn list(&self, _: &ListQuery) -> Result<Page<ExecutionRecord>> {
            unused()
        }
        async fn history(&self, _: Keyspace, _: &RecordId, _: &HistoryQuery) -> Result<Vec<Event>> {
            unused()
        }
        async fn acquire_lease(&self, _: &RecordId, _: &LeaseRequest) -> Result<Acquisition> {
            unused()
        }
        async fn release_lease(&self, _: &RecordId, _: FencingToken) -> Result<()> {
            unused()
        }
        async fn inspect_lease(&self, _: &RecordId) -> Result<Option<LeaseRecord>> {
            unused()
        }
        async fn list_leases(&self, _: &LeaseListQuery) -> Result<Page<LeaseRecord>> {
            unused()
        }
    }

    fn renewal(n: u64) -> Renewal {
        Renewal {
            keyspace: Keyspace::Execution,
            id: RecordId::parse("heartbeat", &format!("job-{n}")).expect("a valid id"),
            token: FencingToken::new(7).expect("a valid token"),
        }
    }

    fn heartbeat() -> (Heartbeat, Arc<RenewsOnly>) {
        let store = Arc::new(RenewsOnly::default());
        let heartbeat = Heartbeat::new(store.clone(), Telemetry::default());
        (heartbeat, store)
    }

    /// A ttl of 3 s, renewed every second, with room for a minute of renewals.
    fn renewed_every_second() -> Ttl {
        Ttl::with_hard(Duration::from_secs(3), Duration::from_secs(60)).expect("a valid ttl")
    }

    fn wakes(heartbeat: &Heartbeat) -> u64 {
        heartbeat.shared.registry().wakes
    }

    /// Work shorter than a wake-up drops its registration before the task runs. The task must
    /// keep its alarm anyway, so the next registration, due later, does not wake it again: one
    /// wake-up per alarm, not one per execution.
    #[tokio::test(start_paused = true)]
    async fn short_executions_wake_the_task_once_per_alarm_not_once_each() {
        let (heartbeat, store) = heartbeat();
        let ttl = Ttl::new(Duration::from_secs(30)).expect("a valid ttl");
        for n in 0..100 {
            let (registration, _authority) = heartbeat.register(renewal(n), ttl, Instant::now());
            drop(registration);
            // The task runs here, finding nothing held.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            wakes(&heartbeat),
            1,
            "only the first registration woke the task"
        );

        // Past the alarm (a third of the ttl), the task waits for a registration again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (registration, _authority) = heartbeat.register(renewal(100), ttl, Instant::now());
        drop(registration);
        assert_eq!(wakes(&heartbeat), 2);
        assert_eq!(
            store.heartbeats.load(Ordering::SeqCst),
            0,
            "nothing was held at any alarm: nothing was sent"
        );

        // Registrations sent at the same instant (concurrent calls) are due together, past the
        // last alarm: one wake-up for the alarm they share.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let sent = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|n| heartbeat.register(renewal(200 + n), ttl, sent))
            .collect();
        assert_eq!(wakes(&heartbeat), 3, "one wake-up for three at one instant");
        drop(held);
    }

    /// The alarm a dropped registration left never delays one due earlier: it wakes the task and
    /// is renewed in time.
    #[tokio::test(start_paused = true)]
    async fn a_registration_due_before_the_alarm_still_wakes_the_task() {
        let (heartbeat, store) = heartbeat();
        let long = Ttl::new(Duration::from_secs(30)).expect("a valid ttl");
        let (registration, _authority) = heartbeat.register(renewal(0), long, Instant::now());
        drop(registration);
        tokio::time::sleep(Duration::from_millis(1)).await;

        let short = renewed_every_second();
        let (registration, authority) = heartbeat.register(renewal(1), short, Instant::now());
        assert_eq!(wakes(&heartbeat), 2, "due in 1 s, before the 10 s alarm");
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(
            store.heartbeats.load(Ordering::SeqCst) >= 6,
            "renewed every second: {:?}",
            store.heartbeats
        );
        assert!(authority.is_held(), "held past its 3 s ttl");
        drop(registration);
    }

    /// A renewal extends authority from when it was sent, not from when its answer came: the
    /// store measured the new lease from the moment it applied it, which is no earlier than the
    /// send (DESIGN §4). A slow answer must not stretch the client's deadline past the store's.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_extends_authority_from_when_it_was_sent() {
        let (heartbeat, store) = heartbeat();
        store.answers_after_ms.store(500, Ordering::SeqCst);
        let ttl = renewed_every_second();
        let start = Instant::now();
        let (registration, authority) = heartbeat.register(renewal(0), ttl, start);
        assert_eq!(authority.deadline(), start + Duration::from_secs(3));
        // The first renewal is sent at 1 s and answered at 1.5 s.
        tokio::time::sleep_until(start + Duration::from_millis(1_600)).await;
        assert_eq!(store.heartbeats.load(Ordering::SeqCst), 1);
        assert_eq!(
            authority.deadline(),
            start + Duration::from_secs(4),
            "sent at 1 s, plus the 3 s ttl"
        );
        drop(registration);
    }

    /// Renewals come every third of the ttl (DESIGN §4), not more often.
    #[tokio::test(start_paused = true)]
    async fn renewals_come_every_third_of_the_ttl() {
        let (heartbeat, store) = heartbeat();
        let ttl = renewed_every_second();
        let (registration, authority) = heartbeat.register(renewal(0), ttl, Instant::now());
        tokio::time::sleep(Duration::from_millis(7_500)).await;
        assert_eq!(
            store.heartbeats.load(Ordering::SeqCst),
            7,
            "at 1, 2, ... 7 s"
        );
        assert!(authority.is_held());
        drop(registration);
    }

    /// Renewals due within half a period of a tick go in that tick's call; later ones wait for
    /// their own. Registered 0.3 s after the first, a record joins its call at 1 s; 0.6 s after,
    /// it has a call of its own at 1.6 s, which takes the others along (due at 2 s, within half a
    /// period): from then on, one call a second for all three.
    #[tokio::test(start_paused = true)]
    async fn renewals_due_within_half_a_period_share_a_call() {
        let (heartbeat, store) = heartbeat();
        let ttl = renewed_every_second();
        let start = Instant::now();
        let calls = || store.heartbeats.load(Ordering::SeqCst);
        let first = heartbeat.register(renewal(0), ttl, start);
        let joins = heartbeat.register(renewal(1), ttl, start + Duration::from_millis(300));
        let apart = heartbeat.register(renewal(2), ttl, start + Duration::from_millis(600));
        tokio::time::sleep_until(start + Duration::from_millis(1_200)).await;
        assert_eq!(calls(), 1, "at 1 s, the first two");
        tokio::time::sleep_until(start + Duration::from_millis(1_700)).await;
        assert_eq!(calls(), 2, "at 1.6 s, the third (and the others)");
        tokio::time::sleep_until(start + Duration::from_millis(7_500)).await;
        assert_eq!(calls(), 7, "then at 2.6, 3.6, ... 6.6 s");
        drop((first, joins, apart));
    }

    /// A heartbeat call that never answers is given up after a third of the ttl and sent again in
    /// time: authority holds.
    #[tokio::test(start_paused = true)]
    async fn a_hung_heartbeat_call_is_given_up_in_time() {
        let (heartbeat, store) = heartbeat();
        store.hangs_once.store(true, Ordering::SeqCst);
        let (registration, authority) =
            heartbeat.register(renewal(0), renewed_every_second(), Instant::now());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert!(
            authority.is_held(),
            "renewed after the hung call, within the ttl"
        );
        assert!(store.heartbeats.load(Ordering::SeqCst) >= 2);
        drop(registration);
    }

    /// An answer with fewer renewals than were sent is believed for none of them: nothing is
    /// extended, and authority runs out at the deadline.
    #[tokio::test(start_paused = true)]
    async fn an_answer_of_the_wrong_length_renews_nothing() {
        let (heartbeat, store) = heartbeat();
        store.short.store(true, Ordering::SeqCst);
        let ttl = renewed_every_second();
        let now = Instant::now();
        let (a, first) = heartbeat.register(renewal(0), ttl, now);
        let (b, second) = heartbeat.register(renewal(1), ttl, now);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert!(store.heartbeats.load(Ordering::SeqCst) >= 2, "retried");
        assert!(!first.is_held() && !second.is_held());
        drop((a, b));
    }

    /// After shutdown (the client dropped) nothing more is renewed: held records lose authority
    /// at their deadlines.
    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_renewals() {
        let (heartbeat, store) = heartbeat();
        let ttl = renewed_every_second();
        let (registration, authority) = heartbeat.register(renewal(0), ttl, Instant::now());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let sent = store.heartbeats.load(Ordering::SeqCst);
        assert_eq!(sent, 2);
        heartbeat.shutdown();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(store.heartbeats.load(Ordering::SeqCst), sent);
        assert_eq!(authority.lost_reason(), Some(LostReason::Expired));
        drop(registration);
    }
}
