//! What one transition of the state machine produces.

use serde::{Deserialize, Serialize};

use crate::event::EventDraft;
use crate::rejection::Rejection;
use crate::time::Timestamp;
use crate::token::FencingToken;

/// The authority a successful claim or lease acquisition grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The fencing token to carry into every write.
    pub token: FencingToken,
    /// When the lease ends unless renewed (store time).
    pub lease_expires_at: Timestamp,
    /// When the lease ends whatever the heartbeats (store time).
    pub hard_expires_at: Timestamp,
}

/// The result of applying one command to one record: the new slot (if it changed), the outcome or
/// rejection, and the event to append in the same atomic step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step<S, O> {
    /// The slot after the command, or `None` when nothing changed.
    pub slot: Option<S>,
    /// What the caller is told.
    pub outcome: Result<O, Rejection>,
    /// The event to append, if the transition is logged.
    pub event: Option<EventDraft>,
    /// True when the record's earlier history is dropped (a purge keeps only its `purged` event).
    pub clears_history: bool,
}

impl<S, O> Step<S, O> {
    /// A step that changes nothing and tells the caller `outcome`.
    pub(crate) fn unchanged(outcome: O) -> Self {
        Step {
            slot: None,
            outcome: Ok(outcome),
            event: None,
            clears_history: false,
        }
    }

    /// A step that changes nothing and refuses the command.
    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Step {
            slot: None,
            outcome: Err(rejection),
            event: None,
            clears_history: false,
        }
    }

    /// A step that writes `slot`, logs `event` and tells the caller `outcome`.
    pub(crate) fn changed(slot: S, outcome: O, event: EventDraft) -> Self {
        Step {
            slot: Some(slot),
            outcome: Ok(outcome),
            event: Some(event),
            clears_history: false,
        }
    }
}

/// The expiry of a lease renewed at `now`: `min(now + ttl, hard)`, never earlier than the current
/// expiry, so `lease <= hard` holds and a renewal never shortens a lease.
pub(crate) fn renewed_expiry(
    current: Timestamp,
    hard: Timestamp,
    now: Timestamp,
    ttl: std::time::Duration,
) -> Timestamp {
    now.saturating_add(ttl).min(hard).max(current)
}
