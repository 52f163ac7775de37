//! The append-only history of every record, written in the same atomic step as each transition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::InvalidInput;
use crate::execution::ExecutionState;
use crate::owner::OwnerId;
use crate::time::Timestamp;
use crate::token::FencingToken;

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A claim was granted (with `state` executing when it was a fused claim-and-start).
    Claimed,
    /// A claimed execution crossed into `executing`.
    Started,
    /// The worker recorded its result.
    Completed,
    /// A completion was refused (stale token or wrong state); the event keeps the result the
    /// worker reported, which an operator may need for reconciliation.
    CompletionRejected,
    /// The worker gave up its execution (`detail.disposition` says whether anything was applied).
    Aborted,
    /// An operator fenced out the worker of an uncertain execution to resolve it.
    Reconciling,
    /// An operator recorded the result of a reconciled execution.
    ForceCompleted,
    /// An operator returned a reconciled execution to `claimed`, so it runs again.
    Reset,
    /// A lease was acquired.
    LeaseAcquired,
    /// A lease was released.
    LeaseReleased,
    /// A completed record was purged; its token is kept so tokens stay increasing.
    Purged,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 11] = [
        EventKind::Claimed,
        EventKind::Started,
        EventKind::Completed,
        EventKind::CompletionRejected,
        EventKind::Aborted,
        EventKind::Reconciling,
        EventKind::ForceCompleted,
        EventKind::Reset,
        EventKind::LeaseAcquired,
        EventKind::LeaseReleased,
        EventKind::Purged,
    ];

    /// The snake_case name stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Claimed => "claimed",
            EventKind::Started => "started",
            EventKind::Completed => "completed",
            EventKind::CompletionRejected => "completion_rejected",
            EventKind::Aborted => "aborted",
            EventKind::Reconciling => "reconciling",
            EventKind::ForceCompleted => "force_completed",
            EventKind::Reset => "reset",
            EventKind::LeaseAcquired => "lease_acquired",
            EventKind::LeaseReleased => "lease_released",
            EventKind::Purged => "purged",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| InvalidInput::Malformed {
                what: "event kind",
                detail: format!("unknown kind {s:?}"),
            })
    }
}

/// An event as the state machine produces it, before a store gives it its position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// What happened.
    pub kind: EventKind,
    /// The token of the generation the event concerns.
    pub token: FencingToken,
    /// Who caused it (the worker or the operator), when known.
    pub owner: Option<OwnerId>,
    /// The execution's state after the event (`None` for leases and purges).
    pub state: Option<ExecutionState>,
    /// The store's time of the transition.
    pub at: Timestamp,
    /// Extra facts: the abort disposition, a rejected completion's result and reason.
    pub detail: Option<Value>,
}

impl EventDraft {
    /// The stored event, once the store has given it its id.
    pub fn into_event(self, id: i64) -> Event {
        Event {
            id,
            kind: self.kind,
            token: self.token,
            owner: self.owner,
            state: self.state,
            at: self.at,
            detail: self.detail,
        }
    }
}

/// One entry of a record's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases along one record's history (gaps allowed); history is returned in this order.
    pub id: i64,
    /// What happened.
    pub kind: EventKind,
    /// The token of the generation the event concerns.
    pub token: FencingToken,
    /// Who caused it, when known.
    pub owner: Option<OwnerId>,
    /// The execution's state after the event (`None` for leases and purges).
    pub state: Option<ExecutionState>,
    /// The store's time of the transition.
    pub at: Timestamp,
    /// Extra facts: the abort disposition, a rejected completion's result and reason.
    pub detail: Option<Value>,
}

impl Event {
    /// The event without its id, as the state machine produced it.
    pub fn draft(&self) -> EventDraft {
        EventDraft {
            kind: self.kind,
            token: self.token,
            owner: self.owner.clone(),
            state: self.state,
            at: self.at,
            detail: self.detail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        for (kind, name) in EventKind::ALL.iter().zip(&names) {
            assert_eq!(kind.to_string(), *name);
            assert_eq!(name.parse::<EventKind>().unwrap(), *kind);
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        let mut distinct = names.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len(), "every kind has its own name");
        assert_eq!(EventKind::Claimed.as_str(), "claimed");
        assert!("claimed ".parse::<EventKind>().is_err());
    }
}
