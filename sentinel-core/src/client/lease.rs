//! Leases through the client: a guard that renews itself, signals loss, and releases.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::Sentinel;
use super::authority::{Authority, LostReason};
use super::background::{forget_if_unanswered, look_for_a_while, send_in_background};
use super::heartbeat::Registration;
use super::observe::TransitionKind;
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::key::{Keyspace, RecordId};
use crate::lease::{Acquisition, LeaseRequest};
use crate::owner::{OwnerId, RequestId};
use crate::rejection::RejectReason;
use crate::store::{CoordinationStore, HistoryQuery, Renewal};
use crate::time::Timestamp;
use crate::token::FencingToken;

/// Per-call settings for [`Sentinel::lease_with`]; anything unset takes the client's default.
#[derive(Clone, Debug, Default)]
pub struct LeaseOptions {
    ttl: Option<Duration>,
    hard_ttl: Option<Duration>,
}

impl LeaseOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease window heartbeats renew.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The ceiling no heartbeat extends past, counted from the acquisition.
    pub fn hard_ttl(mut self, hard_ttl: Duration) -> Self {
        self.hard_ttl = Some(hard_ttl);
        self
    }
}

/// What an attempt to take a lease found.
#[derive(Debug)]
#[must_use]
pub enum LeaseAttempt {
    /// The lease is ours until the guard is released or dropped.
    Acquired(LeaseGuard),
    /// Someone else holds it.
    Held {
        /// The holder.
        owner: OwnerId,
        /// The holder's token.
        token: FencingToken,
        /// When the holder's lease ends unless renewed (store time).
        lease_expires_at: Timestamp,
    },
}

impl LeaseAttempt {
    /// The guard, if the lease was acquired.
    pub fn acquired(self) -> Option<LeaseGuard> {
        match self {
            LeaseAttempt::Acquired(guard) => Some(guard),
            LeaseAttempt::Held { .. } => None,
        }
    }
}

/// What [`Sentinel::with_lease`] did.
#[derive(Debug)]
#[must_use]
pub enum Leased<T> {
    /// The lease was acquired, the work ran and the lease was released.
    Ran(T),
    /// Someone else holds the lease; the work did not run.
    Held {
        /// The holder.
        owner: OwnerId,
        /// The holder's token.
        token: FencingToken,
    },
}

/// A held lease. The client's heartbeat renews it (up to its hard ttl) while the guard lives.
///
/// Release it with [`LeaseGuard::release`]; dropping the guard releases it in the background as a
/// fallback.
#[derive(Debug)]
pub struct LeaseGuard {
    id: RecordId,
    authority: Authority,
    registration: Option<Registration>,
    /// Set once the store has answered a release: the guard's drop has nothing left to do.
    released: bool,
    sentinel: Sentinel,
}

impl LeaseGuard {
    /// The fencing token of this acquisition: pass it to every downstream write.
    pub fn token(&self) -> FencingToken {
        self.authority.token()
    }

    /// The lease's address.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// True while the lease still holds (see [`Authority::is_held`]).
    pub fn is_held(&self) -> bool {
        self.authority.is_held()
    }

    /// Resolves when the lease is lost, with the reason.
    pub async fn lost(&self) -> LostReason {
        self.authority.lost().await
    }

    /// The authority handle, to hand to other tasks.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Stops renewing and frees the lease in the store.
    ///
    /// A lease that expired and was taken by someone else is reported as
    /// [`crate::RejectReason::Fenced`]: work done after it expired was not protected. If this
    /// future is dropped before the store answers, the guard's drop fallback still frees the
    /// lease.
    pub async fn release(mut self) -> Result<()> {
        drop(self.registration.take());
        let token = self.authority.token();
        let store = &self.sentinel.inner.store;
        let id = &self.id;
        let (answer, retried) = self
            .sentinel
            .call_retried("release", || store.release_lease(id, token))
            .await;
        let released = match answer {
            // Already free: an earlier attempt of this release was applied.
            Err(Error::Rejected(r)) if r.reason == RejectReason::NotFound => Ok(()),
            // An earlier attempt may have been applied, and someone took the free lease before
            // the retry: the history says whether this token was released.
            Err(Error::Rejected(r)) if retried && r.reason == RejectReason::Fenced => {
                if self.sentinel.lease_released(id, token).await? {
                    Ok(())
                } else {
                    Err(Error::Rejected(r))
                }
            }
            other => other,
        };
        self.released = !matches!(&released, Err(error) if error.is_transient());
        if released.is_ok() {
            self.sentinel.inner.telemetry.transition(
                Keyspace::Lease,
                Some(id),
                TransitionKind::LeaseReleased,
                Some(token),
            );
        }
        released
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        drop(self.registration.take());
        let store = Arc::clone(&self.sentinel.inner.store);
        let token = self.authority.token();
        send_in_background("lease release", self.id.clone(), token, move |id| {
            let store = Arc::clone(&store);
            async move { store.release_lease(&id, token).await }
        });
    }
}

/// Looks, for a while, for a lease granted to `request_id` whose reply never arrived (every
/// attempt of the acquire failed, so no guard holds it), and releases it. Like the search for a
/// lost claim, it runs its whole schedule: an attempt still on its way may land after a release.
/// A lease granted to another request is never touched.
async fn forget_lease(store: Arc<dyn CoordinationStore>, id: RecordId, request_id: RequestId) {
    look_for_a_while(|| async {
        if let Ok(Some(lease)) = store.inspect_lease(&id).await
            && lease.request_id == request_id
            && store.release_lease(&id, lease.token).await.is_ok()
        {
            tracing::info!(%id, token = %lease.token, "released a lease whose grant was lost");
        }
    })
    .await;
}

impl Sentinel {
    /// Tries to take the lease `key` with the client's default ttl.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use sentinel_core::{LeaseAttempt, Sentinel};
    /// let sentinel = Sentinel::builder(sentinel_memory::MemoryStore::new()).build()?;
    ///
    /// let LeaseAttempt::Acquired(guard) = sentinel.lease("nightly-report").await? else {
    ///     return Ok(()); // another worker runs it
    /// };
    /// assert!(sentinel.lease("nightly-report").await?.acquired().is_none());
    /// // ... work, passing guard.token() downstream ...
    /// guard.release().await?;
    /// # Ok::<(), sentinel_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn lease(&self, key: &str) -> Result<LeaseAttempt> {
        self.lease_with(key, &LeaseOptions::default()).await
    }

    /// [`Sentinel::lease`] with per-call options.
    pub async fn lease_with(&self, key: &str, options: &LeaseOptions) -> Result<LeaseAttempt> {
        let id = self.record_id(key)?;
        let ttl = super::resolve_ttl(options.ttl, options.hard_ttl, self.inner.ttl)?;
        let request = LeaseRequest {
            owner: self.inner.owner.clone(),
            ttl,
            request_id: RequestId::random(),
        };
        let sent = Instant::now();
        let store = &self.inner.store;
        let span = tracing::info_span!(
            "lease",
            namespace = %id.namespace,
            key = %id.key,
            token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let acquired = self
            .call("acquire", || store.acquire_lease(&id, &request))
            .instrument(span.clone())
            .await;
        // Every attempt failed, and one may still have been applied: a lease nobody holds a
        // guard for would keep others out until its ttl ends.
        forget_if_unanswered(&acquired, || {
            forget_lease(Arc::clone(store), id.clone(), request.request_id)
        });
        span.record(
            "outcome",
            match &acquired {
                Ok(Acquisition::Acquired(_)) => "acquired",
                Ok(Acquisition::Held { .. }) => "held",
                Err(_) => super::outcome_of(&acquired),
            },
        );
        let acquired = acquired?;
        let (kind, token) = match &acquired {
            Acquisition::Acquired(grant) => (TransitionKind::LeaseAcquired, grant.token),
            Acquisition::Held { token, .. } => (TransitionKind::LeaseHeld, *token),
        };
        span.record("token", token.get());
        self.inner
            .telemetry
            .transition(Keyspace::Lease, Some(&id), kind, Some(token));
        Ok(match acquired {
            Acquisition::Acquired(grant) => {
                let renewal = Renewal {
                    keyspace: Keyspace::Lease,
                    id: id.clone(),
                    token: grant.token,
                };
                let (registration, authority) = self.inner.heartbeat.register(renewal, ttl, sent);
                LeaseAttempt::Acquired(LeaseGuard {
                    id,
                    authority,
                    registration: Some(registration),
                    released: false,
                    sentinel: self.clone(),
                })
            }
            Acquisition::Held {
                owner,
                token,
                lease_expires_at,
            } => LeaseAttempt::Held {
                owner,
                token,
                lease_expires_at,
            },
        })
    }

    /// Whether `token`'s lease on `id` was released: a `lease_released` event with that token
    /// in the lease's history (each token is granted once and released at most once). The
    /// history is read from its newest end back to the acquisition of `token` (acquisitions are
    /// logged in token order, and a release after its acquisition), so a long history costs
    /// no more than the events since. A store whose pages do not go back in time (one that
    /// ignores `newest_first` or `before`) is an error, not an answer.
    async fn lease_released(&self, id: &RecordId, token: FencingToken) -> Result<bool> {
        let store = &self.inner.store;
        let mut query = HistoryQuery {
            newest_first: true,
            ..HistoryQuery::default()
        };
        loop {
            let page = self
                .call("history", || store.history(Keyspace::Lease, id, &query))
                .await?;
            let ids = query.before.into_iter().chain(page.iter().map(|e| e.id));
            if let Some((newer, older)) = ids.clone().zip(ids.skip(1)).find(|(n, o)| o >= n) {
                return Err(Error::Backend {
                    store: store.backend(),
                    source: format!(
                        "the history of lease {id} came back out of order: asked for the newest \
                         events first, event {older} came after event {newer}"
                    )
                    .into(),
                });
            }
            for event in &page {
                match event.kind {
                    EventKind::LeaseReleased if event.token == token => return Ok(true),
                    EventKind::LeaseAcquired if event.token <= token => return Ok(false),
                    _ => {}
                }
            }
            match page.last() {
                Some(last) if page.len() >= query.limit as usize => query.before = Some(last.id),
                _ => return Ok(false),
            }
        }
    }

    /// Takes the lease `key`, runs `work` with its authority, and releases it.
    ///
    /// If releasing fails the work's value is still returned; the lease then simply expires.
    pub async fn with_lease<T, F, Fut>(&self, key: &str, work: F) -> Result<Leased<T>>
    where
        F: FnOnce(Authority) -> Fut,
        Fut: Future<Output = T>,
    {
        match self.lease(key).await? {
            LeaseAttempt::Held { owner, token, .. } => Ok(Leased::Held { owner, token }),
            LeaseAttempt::Acquired(guard) => {
                let value = work(guard.authority().clone()).await;
                if let Err(error) = guard.release().await {
                    tracing::warn!(%error, key, "lease not released; it will expire");
                }
                Ok(Leased::Ran(value))
            }
        }
    }
}
