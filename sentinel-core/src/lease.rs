//! Lease records and their state machine: the plain mutex with fencing tokens.
//!
//! Leases live in their own keyspace: a lease on `invoice-1` never meets the execution record of
//! `invoice-1`. Like [`crate::execution::transition`], [`transition`] is pure.

use serde::{Deserialize, Serialize};

use crate::event::{EventDraft, EventKind};
use crate::key::{Key, Namespace, RecordId};
use crate::owner::{OwnerId, RequestId};
use crate::rejection::{RejectReason, Rejection};
use crate::step::{Grant, Step, renewed_expiry};
use crate::time::Timestamp;
use crate::token::FencingToken;
use crate::ttl::Ttl;

/// A held lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The namespace.
    pub namespace: Namespace,
    /// The key.
    pub key: Key,
    /// The holder.
    pub owner: OwnerId,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// The acquire call that was granted the token.
    pub request_id: RequestId,
    /// The lease ends here unless renewed.
    pub lease_expires_at: Timestamp,
    /// No renewal passes this instant.
    pub hard_expires_at: Timestamp,
    /// The ttl of the acquisition.
    pub ttl: Ttl,
    /// When it was acquired.
    pub acquired_at: Timestamp,
}

impl LeaseRecord {
    /// The lease's address.
    pub fn id(&self) -> RecordId {
        RecordId::new(self.namespace.clone(), self.key.clone())
    }

    /// True while the lease holds at `now` (store time).
    pub fn is_alive(&self, now: Timestamp) -> bool {
        now < self.lease_expires_at
    }

    fn rejection(&self, reason: RejectReason) -> Rejection {
        Rejection {
            reason,
            state: None,
            token: Some(self.token),
        }
    }
}

/// The per-key slot of the lease keyspace: the held lease, if any, and the last token issued,
/// which survives release so tokens stay increasing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseSlot {
    /// The lease, or `None` when free.
    pub record: Option<LeaseRecord>,
    /// The highest token issued for the key.
    pub last_token: Option<FencingToken>,
}

/// A request to acquire a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Who acquires.
    pub owner: OwnerId,
    /// The lease window and its ceiling.
    pub ttl: Ttl,
    /// Identifies this call, so a retry after a lost reply adopts its own lease.
    pub request_id: RequestId,
}

/// A command on the lease keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseCommand {
    /// Take the lease if it is free or expired.
    Acquire(LeaseRequest),
    /// Extend it: `min(now + ttl, hard)`.
    Renew {
        /// The holder's token.
        token: FencingToken,
    },
    /// Free it.
    Release {
        /// The holder's token.
        token: FencingToken,
    },
}

/// What an acquire found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Acquisition {
    /// The caller holds the lease now.
    Acquired(Grant),
    /// Someone else holds it and is alive.
    Held {
        /// The holder.
        owner: OwnerId,
        /// The holder's token.
        token: FencingToken,
        /// When the holder's lease ends unless renewed.
        lease_expires_at: Timestamp,
    },
}

/// The successful outcome of a lease command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// The acquire's outcome.
    Acquire(Acquisition),
    /// The lease was extended.
    Renewed {
        /// The new expiry.
        lease_expires_at: Timestamp,
    },
    /// The lease is free.
    Released,
}

/// One transition of the lease keyspace.
pub type LeaseStep = Step<LeaseSlot, LeaseOutcome>;

/// Applies `command` to the lease at `id` as the store found it, at store time `now`.
pub fn transition(
    id: &RecordId,
    slot: &LeaseSlot,
    command: &LeaseCommand,
    now: Timestamp,
) -> LeaseStep {
    match command {
        LeaseCommand::Acquire(request) => acquire(id, slot, request, now),
        LeaseCommand::Renew { token } => match held_by(slot, *token) {
            Err(rejection) => Step::rejected(rejection),
            Ok(record) if !record.is_alive(now) => {
                Step::rejected(record.rejection(RejectReason::Expired))
            }
            Ok(record) => {
                let lease_expires_at = renewed_expiry(
                    record.lease_expires_at,
                    record.hard_expires_at,
                    now,
                    record.ttl.ttl(),
                );
                let outcome = LeaseOutcome::Renewed { lease_expires_at };
                if lease_expires_at == record.lease_expires_at {
                    return Step::unchanged(outcome);
                }
                let mut next = record.clone();
                next.lease_expires_at = lease_expires_at;
                Step {
                    slot: Some(LeaseSlot {
                        record: Some(next),
                        last_token: slot.last_token,
                    }),
                    outcome: Ok(outcome),
                    event: None,
                    clears_history: false,
                }
            }
        },
        LeaseCommand::Release { token } => match held_by(slot, *token) {
            Err(rejection) => Step::rejected(rejection),
            Ok(record) => Step::changed(
                LeaseSlot {
                    record: None,
                    last_token: slot.last_token.max(Some(record.token)),
                },
                LeaseOutcome::Released,
                event(EventKind::LeaseReleased, record, now),
            ),
        },
    }
}

fn held_by(slot: &LeaseSlot, token: FencingToken) -> Result<&LeaseRecord, Rejection> {
    let record = slot.record.as_ref().ok_or_else(Rejection::not_found)?;
    if record.token == token {
        Ok(record)
    } else {
        Err(record.rejection(RejectReason::Fenced))
    }
}

fn acquire(id: &RecordId, slot: &LeaseSlot, request: &LeaseRequest, now: Timestamp) -> LeaseStep {
    if let Some(record) = slot.record.as_ref().filter(|r| r.is_alive(now)) {
        let outcome = if record.request_id == request.request_id {
            // A retry of the call that was granted this lease: hand it back.
            Acquisition::Acquired(Grant {
                token: record.token,
                lease_expires_at: record.lease_expires_at,
                hard_expires_at: record.hard_expires_at,
            })
        } else {
            Acquisition::Held {
                owner: record.owner.clone(),
                token: record.token,
                lease_expires_at: record.lease_expires_at,
            }
        };
        return Step::unchanged(LeaseOutcome::Acquire(outcome));
    }
    let token = FencingToken::next(slot.last_token, now);
    let record = LeaseRecord {
        namespace: id.namespace.clone(),
        key: id.key.clone(),
        owner: request.owner.clone(),
        token,
        request_id: request.request_id,
        lease_expires_at: now.saturating_add(request.ttl.ttl()),
        hard_expires_at: now.saturating_add(request.ttl.hard()),
        ttl: request.ttl,
        acquired_at: now,
    };
    let granted = Grant {
        token,
        lease_expires_at: record.lease_expires_at,
        hard_expires_at: record.hard_expires_at,
    };
    let event = event(EventKind::LeaseAcquired, &record, now);
    Step::changed(
        LeaseSlot {
            record: Some(record),
            last_token: Some(token),
        },
        LeaseOutcome::Acquire(Acquisition::Acquired(granted)),
        event,
    )
}

fn event(kind: EventKind, record: &LeaseRecord, now: Timestamp) -> EventDraft {
    EventDraft {
        kind,
        token: record.token,
        owner: Some(record.owner.clone()),
        state: None,
        at: now,
        detail: None,
    }
}
