//! Execution records and their state machine: the rules behind `once`.
//!
//! [`transition`] is the whole rule book: a record (or none) plus a command plus the store's time
//! gives the new record, the outcome and the event. It does no I/O. The memory store calls it
//! directly; the PostgreSQL and Redis stores encode the same rules in one statement or script per
//! command, and the conformance suite (`sentinel-testkit`) checks them against this function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::InvalidInput;
use crate::event::{EventDraft, EventKind};
use crate::key::{Key, Namespace, RecordId, check_name};
use crate::owner::{OwnerId, RequestId};
use crate::rejection::{RejectReason, Rejection};
use crate::step::{Grant, Step, renewed_expiry};
use crate::time::Timestamp;
use crate::token::FencingToken;
use crate::ttl::Ttl;

/// Where an execution stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Claimed, not started: nothing has been applied, so it is safe to run again once the lease
    /// expires.
    Claimed,
    /// Started: side effects may be in flight. If the lease expires here the outcome is uncertain.
    Executing,
    /// Finished, with its result kept for replay.
    Completed,
    /// An operator is resolving an uncertain execution; nothing runs until they decide.
    Reconciling,
}

impl ExecutionState {
    /// Every state, in lifecycle order.
    pub const ALL: [ExecutionState; 4] = [
        ExecutionState::Claimed,
        ExecutionState::Executing,
        ExecutionState::Completed,
        ExecutionState::Reconciling,
    ];

    /// `claimed`, `executing`, `completed` or `reconciling`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Claimed => "claimed",
            ExecutionState::Executing => "executing",
            ExecutionState::Completed => "completed",
            ExecutionState::Reconciling => "reconciling",
        }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionState {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        ExecutionState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InvalidInput::Malformed {
                what: "execution state",
                detail: format!(
                    "unknown state {s:?}; expected claimed, executing, completed or reconciling"
                ),
            })
    }
}

/// The longest fingerprint, in bytes.
pub const MAX_FINGERPRINT_BYTES: usize = 256;

/// A fingerprint of a request's payload (for example a hex SHA-256 of its canonical form).
///
/// Reusing a key with a different fingerprint is refused, so a second request that happens to
/// share a key never receives the first one's result.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl Fingerprint {
    /// A fingerprint, checked: non-empty, at most 256 bytes, no U+0000.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
        let value = value.into();
        check_name("fingerprint", &value, MAX_FINGERPRINT_BYTES)?;
        Ok(Fingerprint(value))
    }

    /// The fingerprint as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, InvalidInput> {
        Self::new(value)
    }
}

impl From<Fingerprint> for String {
    fn from(value: Fingerprint) -> String {
        value.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One execution record: the state of the work behind one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// The namespace.
    pub namespace: Namespace,
    /// The key.
    pub key: Key,
    /// Where the execution stands.
    pub state: ExecutionState,
    /// Who holds it: the claiming worker, or the operator who reconciled it.
    pub owner: OwnerId,
    /// The current fencing token.
    pub token: FencingToken,
    /// The claim call that was granted the current token (`None` after a reconcile).
    pub request_id: Option<RequestId>,
    /// The lease ends here unless renewed. Alive means `now < lease_expires_at`.
    pub lease_expires_at: Timestamp,
    /// No renewal passes this instant.
    pub hard_expires_at: Timestamp,
    /// The ttl of the current claim.
    pub ttl: Ttl,
    /// The result, once completed.
    pub result: Option<Value>,
    /// The request fingerprint given with the first claim, if any.
    pub fingerprint: Option<Fingerprint>,
    /// When the key was first claimed.
    pub created_at: Timestamp,
    /// When the last transition happened (heartbeats do not count).
    pub updated_at: Timestamp,
}

impl ExecutionRecord {
    /// The record's address.
    pub fn id(&self) -> RecordId {
        RecordId::new(self.namespace.clone(), self.key.clone())
    }

    /// True while the lease holds at `now` (store time).
    pub fn is_alive(&self, now: Timestamp) -> bool {
        now < self.lease_expires_at
    }

    /// True when the execution started and its lease expired before it completed: the outcome of
    /// its side effects is unknown and needs reconciliation.
    pub fn is_uncertain(&self, now: Timestamp) -> bool {
        self.state == ExecutionState::Executing && !self.is_alive(now)
    }

    fn rejection(&self, reason: RejectReason) -> Rejection {
        Rejection {
            reason,
            state: Some(self.state),
            token: Some(self.token),
        }
    }
}

/// The per-key slot a store keeps: the record, if any, and the last token ever issued for the key,
/// which survives a purge so tokens stay increasing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionSlot {
    /// The record, or `None` if the key was never claimed or was purged.
    pub record: Option<ExecutionRecord>,
    /// The highest token issued for the key.
    pub last_token: Option<FencingToken>,
}

/// A request to claim a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Who claims.
    pub owner: OwnerId,
    /// The lease window and its ceiling.
    pub ttl: Ttl,
    /// Claim and start in one step (the `once` path): the record goes straight to `executing`.
    pub start: bool,
    /// Identifies this call, so a retry after a lost reply adopts its own claim.
    pub request_id: RequestId,
    /// The request's payload fingerprint, if the caller uses them.
    pub fingerprint: Option<Fingerprint>,
}

/// What the worker says about its side effects when it gives up an execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Nothing was applied: the key becomes claimable again at once.
    NotApplied,
    /// Something may have been applied: the execution is uncertain until reconciled.
    Uncertain,
}

impl Disposition {
    /// `not_applied` or `uncertain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::NotApplied => "not_applied",
            Disposition::Uncertain => "uncertain",
        }
    }
}

/// A command on the execution keyspace: one row group of the state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecutionCommand {
    /// Claim the key (and start it, if asked).
    Claim(ClaimRequest),
    /// Cross from `claimed` into `executing`.
    Start {
        /// The claim's token.
        token: FencingToken,
    },
    /// Renew the lease: `min(now + ttl, hard)`.
    Heartbeat {
        /// The current token.
        token: FencingToken,
    },
    /// Record the result. An expired but current token is accepted: it proves no other
    /// generation exists.
    Complete {
        /// The current token.
        token: FencingToken,
        /// The result to keep.
        result: Value,
    },
    /// Give up the execution.
    Abort {
        /// The current token.
        token: FencingToken,
        /// Whether anything was applied.
        disposition: Disposition,
    },
    /// Fence out the worker of an uncertain execution (a new token) to resolve it.
    Reconcile {
        /// The operator.
        owner: OwnerId,
    },
    /// Resolve a reconciling execution as completed with a known result.
    ForceComplete {
        /// The operator.
        owner: OwnerId,
        /// The result to keep.
        result: Value,
    },
    /// Resolve a reconciling execution by making it claimable again: the next `once` runs.
    ResetToClaimed {
        /// The operator.
        owner: OwnerId,
    },
    /// Remove a completed record last changed at or before `completed_before`, keeping its token.
    Purge {
        /// The cutoff (store time).
        completed_before: Timestamp,
    },
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ClaimOutcome {
    /// The caller holds the key now.
    Acquired(Grant),
    /// Another worker holds it and is alive.
    Busy {
        /// `claimed` or `executing`.
        state: ExecutionState,
        /// The holder.
        owner: OwnerId,
        /// The holder's token.
        token: FencingToken,
        /// When the holder's lease ends unless renewed.
        lease_expires_at: Timestamp,
    },
    /// A worker started and its lease expired before it completed: the outcome is unknown.
    /// Nothing runs again until an operator reconciles it.
    Uncertain {
        /// The worker that was executing.
        owner: OwnerId,
        /// Its token.
        token: FencingToken,
        /// When its lease expired.
        expired_at: Timestamp,
    },
    /// Done before; here is the result.
    Completed {
        /// The token of the generation that completed (or of the reconciliation).
        token: FencingToken,
        /// The stored result.
        result: Value,
    },
    /// An operator is resolving it.
    Reconciling {
        /// The operator.
        owner: OwnerId,
        /// The reconciliation's token.
        token: FencingToken,
    },
}

/// The successful outcome of an execution command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ExecutionOutcome {
    /// The claim's outcome.
    Claim(ClaimOutcome),
    /// The execution is now `executing`.
    Started {
        /// The renewed lease expiry.
        lease_expires_at: Timestamp,
    },
    /// The lease was renewed.
    Renewed {
        /// The new lease expiry.
        lease_expires_at: Timestamp,
    },
    /// The result is recorded (now, or already by an identical earlier call).
    Completed,
    /// The execution was given up as asked.
    Aborted,
    /// The execution is being reconciled under a new token.
    Reconciling {
        /// The reconciliation's token.
        token: FencingToken,
    },
    /// The reconciled execution is completed.
    ForceCompleted,
    /// The reconciled execution is claimable again.
    Reset,
    /// The record was removed; its token is kept.
    Purged,
}

/// One transition of the execution keyspace.
pub type ExecutionStep = Step<ExecutionSlot, ExecutionOutcome>;

/// Applies `command` to the record at `id` as the store found it, at store time `now`.
///
/// This is the rule book of DESIGN §3. Every combination not listed there changes nothing and
/// returns a [`Rejection`] naming the current state and token.
pub fn transition(
    id: &RecordId,
    slot: &ExecutionSlot,
    command: &ExecutionCommand,
    now: Timestamp,
) -> ExecutionStep {
    use ExecutionCommand as C;
    match command {
        C::Claim(request) => claim(id, slot, request, now),
        C::Start { token } => existing(slot, |r| start(slot, r, *token, now)),
        C::Heartbeat { token } => existing(slot, |r| heartbeat(slot, r, *token, now)),
        C::Complete { token, result } => existing(slot, |r| complete(slot, r, *token, result, now)),
        C::Abort { token, disposition } => {
            existing(slot, |r| abort(slot, r, *token, *disposition, now))
        }
        C::Reconcile { owner } => existing(slot, |r| reconcile(slot, r, owner, now)),
        C::ForceComplete { owner, result } => {
            existing(slot, |r| force_complete(slot, r, owner, result, now))
        }
        C::ResetToClaimed { owner } => existing(slot, |r| reset(slot, r, owner, now)),
        C::Purge { completed_before } => existing(slot, |r| purge(slot, r, *completed_before, now)),
    }
}

/// Applies `f` to the record, or refuses with `NotFound` when there is none.
fn existing(
    slot: &ExecutionSlot,
    f: impl FnOnce(&ExecutionRecord) -> ExecutionStep,
) -> ExecutionStep {
    match slot.record.as_ref() {
        Some(record) => f(record),
        None => Step::rejected(Rejection::not_found()),
    }
}

fn claim(
    id: &RecordId,
    slot: &ExecutionSlot,
    request: &ClaimRequest,
    now: Timestamp,
) -> ExecutionStep {
    let Some(record) = slot.record.as_ref() else {
        return grant(id, slot, None, request, now);
    };
    if record.fingerprint != request.fingerprint {
        return Step::rejected(record.rejection(RejectReason::FingerprintMismatch {
            stored: record.fingerprint.clone(),
        }));
    }
    let alive = record.is_alive(now);
    let own = record.request_id == Some(request.request_id);
    let outcome = match record.state {
        ExecutionState::Claimed | ExecutionState::Executing if own && alive => {
            // A retry of the call that was granted this token: hand it back.
            ClaimOutcome::Acquired(Grant {
                token: record.token,
                lease_expires_at: record.lease_expires_at,
                hard_expires_at: record.hard_expires_at,
            })
        }
        // A retry of our own expired claim: the reply never reached the caller, so nothing ran
        // under that token and granting anew is safe.
        ExecutionState::Executing if own => return grant(id, slot, Some(record), request, now),
        ExecutionState::Claimed if !alive => return grant(id, slot, Some(record), request, now),
        ExecutionState::Claimed | ExecutionState::Executing if alive => ClaimOutcome::Busy {
            state: record.state,
            owner: record.owner.clone(),
            token: record.token,
            lease_expires_at: record.lease_expires_at,
        },
        ExecutionState::Claimed | ExecutionState::Executing => ClaimOutcome::Uncertain {
            owner: record.owner.clone(),
            token: record.token,
            expired_at: record.lease_expires_at,
        },
        ExecutionState::Completed => ClaimOutcome::Completed {
            token: record.token,
            result: record.result.clone().unwrap_or(Value::Null),
        },
        ExecutionState::Reconciling => ClaimOutcome::Reconciling {
            owner: record.owner.clone(),
            token: record.token,
        },
    };
    Step::unchanged(ExecutionOutcome::Claim(outcome))
}

fn grant(
    id: &RecordId,
    slot: &ExecutionSlot,
    previous: Option<&ExecutionRecord>,
    request: &ClaimRequest,
    now: Timestamp,
) -> ExecutionStep {
    let token = FencingToken::next(slot.last_token, now);
    let state = if request.start {
        ExecutionState::Executing
    } else {
        ExecutionState::Claimed
    };
    let granted = Grant {
        token,
        lease_expires_at: now.saturating_add(request.ttl.ttl()),
        hard_expires_at: now.saturating_add(request.ttl.hard()),
    };
    let record = ExecutionRecord {
        namespace: id.namespace.clone(),
        key: id.key.clone(),
        state,
        owner: request.owner.clone(),
        token,
        request_id: Some(request.request_id),
        lease_expires_at: granted.lease_expires_at,
        hard_expires_at: granted.hard_expires_at,
        ttl: request.ttl,
        result: None,
        fingerprint: request.fingerprint.clone(),
        created_at: previous.map_or(now, |p| p.created_at),
        updated_at: now,
    };
    let event = event(
        EventKind::Claimed,
        &record,
        Some(request.owner.clone()),
        now,
        None,
    );
    Step::changed(
        ExecutionSlot {
            record: Some(record),
            last_token: Some(token),
        },
        ExecutionOutcome::Claim(ClaimOutcome::Acquired(granted)),
        event,
    )
}

/// Whether `token` holds the execution at `now`: it is the current token, the execution is held
/// (`claimed` or `executing`) and its lease is alive. Authority never revives: once the lease has
/// expired this refuses, whatever the token.
fn authority(
    record: &ExecutionRecord,
    token: FencingToken,
    now: Timestamp,
) -> Result<(), Rejection> {
    if record.token != token {
        Err(record.rejection(RejectReason::Fenced))
    } else if !matches!(
        record.state,
        ExecutionState::Claimed | ExecutionState::Executing
    ) {
        Err(record.rejection(RejectReason::WrongState))
    } else if !record.is_alive(now) {
        Err(record.rejection(RejectReason::Expired))
    } else {
        Ok(())
    }
}

fn start(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    token: FencingToken,
    now: Timestamp,
) -> ExecutionStep {
    if let Err(rejection) = authority(record, token, now) {
        return Step::rejected(rejection);
    }
    if record.state == ExecutionState::Executing {
        // Already started by this token: a retried start.
        return Step::unchanged(ExecutionOutcome::Started {
            lease_expires_at: record.lease_expires_at,
        });
    }
    let mut next = record.clone();
    next.state = ExecutionState::Executing;
    next.lease_expires_at = renewed_expiry(
        record.lease_expires_at,
        record.hard_expires_at,
        now,
        record.ttl.ttl(),
    );
    next.updated_at = now;
    let lease_expires_at = next.lease_expires_at;
    let event = event(
        EventKind::Started,
        &next,
        Some(next.owner.clone()),
        now,
        None,
    );
    Step::changed(
        with_record(slot, next),
        ExecutionOutcome::Started { lease_expires_at },
        event,
    )
}

fn heartbeat(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    token: FencingToken,
    now: Timestamp,
) -> ExecutionStep {
    if let Err(rejection) = authority(record, token, now) {
        return Step::rejected(rejection);
    }
    let lease_expires_at = renewed_expiry(
        record.lease_expires_at,
        record.hard_expires_at,
        now,
        record.ttl.ttl(),
    );
    let outcome = ExecutionOutcome::Renewed { lease_expires_at };
    if lease_expires_at == record.lease_expires_at {
        return Step::unchanged(outcome);
    }
    let mut next = record.clone();
    next.lease_expires_at = lease_expires_at;
    Step {
        slot: Some(with_record(slot, next)),
        outcome: Ok(outcome),
        event: None,
        clears_history: false,
    }
}

fn complete(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    token: FencingToken,
    result: &Value,
    now: Timestamp,
) -> ExecutionStep {
    let reason = if record.token != token {
        RejectReason::Fenced
    } else if record.state == ExecutionState::Executing {
        let mut next = record.clone();
        next.state = ExecutionState::Completed;
        next.result = Some(result.clone());
        next.updated_at = now;
        let event = event(
            EventKind::Completed,
            &next,
            Some(next.owner.clone()),
            now,
            None,
        );
        return Step::changed(with_record(slot, next), ExecutionOutcome::Completed, event);
    } else if record.state == ExecutionState::Completed && record.result.as_ref() == Some(result) {
        // The same completion sent again (its reply was lost): already done, nothing to log.
        return Step::unchanged(ExecutionOutcome::Completed);
    } else {
        RejectReason::WrongState
    };
    // The refusal is logged with the worker's result: an operator reconciling this key may need it.
    let detail = json!({ "reason": reason.as_str(), "result": result });
    let mut rejected = event(
        EventKind::CompletionRejected,
        record,
        None,
        now,
        Some(detail),
    );
    rejected.token = token;
    Step {
        slot: None,
        outcome: Err(record.rejection(reason)),
        event: Some(rejected),
        clears_history: false,
    }
}

fn abort(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    token: FencingToken,
    disposition: Disposition,
    now: Timestamp,
) -> ExecutionStep {
    if record.token != token {
        return Step::rejected(record.rejection(RejectReason::Fenced));
    }
    let allowed = match disposition {
        Disposition::NotApplied => {
            matches!(
                record.state,
                ExecutionState::Claimed | ExecutionState::Executing
            )
        }
        Disposition::Uncertain => record.state == ExecutionState::Executing,
    };
    if !allowed {
        return Step::rejected(record.rejection(RejectReason::WrongState));
    }
    let target = match disposition {
        Disposition::NotApplied => ExecutionState::Claimed,
        Disposition::Uncertain => ExecutionState::Executing,
    };
    if record.state == target && !record.is_alive(now) {
        // Already given up this way (a retried abort, or the lease ran out): nothing to change.
        return Step::unchanged(ExecutionOutcome::Aborted);
    }
    let mut next = record.clone();
    next.state = target;
    next.lease_expires_at = record.lease_expires_at.min(now);
    next.updated_at = now;
    let detail = json!({ "disposition": disposition.as_str() });
    let event = event(
        EventKind::Aborted,
        &next,
        Some(next.owner.clone()),
        now,
        Some(detail),
    );
    Step::changed(with_record(slot, next), ExecutionOutcome::Aborted, event)
}

fn reconcile(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    owner: &OwnerId,
    now: Timestamp,
) -> ExecutionStep {
    if record.state != ExecutionState::Executing {
        return Step::rejected(record.rejection(RejectReason::WrongState));
    }
    if record.is_alive(now) {
        return Step::rejected(record.rejection(RejectReason::StillAlive));
    }
    let token = FencingToken::next(slot.last_token, now);
    let mut next = record.clone();
    next.state = ExecutionState::Reconciling;
    next.owner = owner.clone();
    next.token = token;
    next.request_id = None;
    next.updated_at = now;
    let event = event(
        EventKind::Reconciling,
        &next,
        Some(owner.clone()),
        now,
        None,
    );
    Step::changed(
        ExecutionSlot {
            record: Some(next),
            last_token: Some(token),
        },
        ExecutionOutcome::Reconciling { token },
        event,
    )
}

fn force_complete(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    owner: &OwnerId,
    result: &Value,
    now: Timestamp,
) -> ExecutionStep {
    match record.state {
        ExecutionState::Reconciling => {
            let mut next = record.clone();
            next.state = ExecutionState::Completed;
            next.owner = owner.clone();
            next.result = Some(result.clone());
            next.updated_at = now;
            let event = event(
                EventKind::ForceCompleted,
                &next,
                Some(owner.clone()),
                now,
                None,
            );
            Step::changed(
                with_record(slot, next),
                ExecutionOutcome::ForceCompleted,
                event,
            )
        }
        ExecutionState::Completed if record.result.as_ref() == Some(result) => {
            Step::unchanged(ExecutionOutcome::ForceCompleted)
        }
        _ => Step::rejected(record.rejection(RejectReason::WrongState)),
    }
}

fn reset(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    owner: &OwnerId,
    now: Timestamp,
) -> ExecutionStep {
    if record.state != ExecutionState::Reconciling {
        return Step::rejected(record.rejection(RejectReason::WrongState));
    }
    let mut next = record.clone();
    next.state = ExecutionState::Claimed;
    next.owner = owner.clone();
    next.lease_expires_at = record.lease_expires_at.min(now);
    next.updated_at = now;
    let event = event(EventKind::Reset, &next, Some(owner.clone()), now, None);
    Step::changed(with_record(slot, next), ExecutionOutcome::Reset, event)
}

/// True when `record` may be purged with cutoff `completed_before`: completed, and last changed at
/// or before the cutoff. Uncertain and reconciling records are never purged.
pub fn purgeable(record: &ExecutionRecord, completed_before: Timestamp) -> bool {
    record.state == ExecutionState::Completed && record.updated_at <= completed_before
}

fn purge(
    slot: &ExecutionSlot,
    record: &ExecutionRecord,
    completed_before: Timestamp,
    now: Timestamp,
) -> ExecutionStep {
    if !purgeable(record, completed_before) {
        return Step::rejected(record.rejection(RejectReason::WrongState));
    }
    let event = EventDraft {
        kind: EventKind::Purged,
        token: record.token,
        owner: None,
        state: None,
        at: now,
        detail: None,
    };
    Step {
        slot: Some(ExecutionSlot {
            record: None,
            last_token: slot.last_token.max(Some(record.token)),
        }),
        outcome: Ok(ExecutionOutcome::Purged),
        event: Some(event),
        clears_history: true,
    }
}

fn with_record(slot: &ExecutionSlot, record: ExecutionRecord) -> ExecutionSlot {
    ExecutionSlot {
        last_token: slot.last_token.max(Some(record.token)),
        record: Some(record),
    }
}

fn event(
    kind: EventKind,
    record: &ExecutionRecord,
    owner: Option<OwnerId>,
    now: Timestamp,
    detail: Option<Value>,
) -> EventDraft {
    EventDraft {
        kind,
        token: record.token,
        owner,
        state: Some(record.state),
        at: now,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_the_names_stores_hold() {
        // The PostgreSQL and Redis stores keep these strings in their rows and scripts.
        let names = ["claimed", "executing", "completed", "reconciling"];
        for (state, name) in ExecutionState::ALL.into_iter().zip(names) {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(name.parse::<ExecutionState>(), Ok(state));
        }
        for bad in ["", "done", "Claimed", "executing "] {
            assert!(bad.parse::<ExecutionState>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_fingerprint_is_its_string() {
        let fp = Fingerprint::new("sha256:ab12").expect("valid");
        assert_eq!(fp.as_str(), "sha256:ab12");
        assert_eq!(fp.to_string(), "sha256:ab12");
        assert_eq!(format!("{fp:?}"), "\"sha256:ab12\"");
        assert_eq!(
            serde_json::to_string(&fp).expect("serializes"),
            "\"sha256:ab12\""
        );
        assert_eq!(String::from(fp), "sha256:ab12");
        assert!(serde_json::from_str::<Fingerprint>("\"\"").is_err());
    }

    #[test]
    fn dispositions_keep_their_names() {
        assert_eq!(Disposition::NotApplied.as_str(), "not_applied");
        assert_eq!(Disposition::Uncertain.as_str(), "uncertain");
    }
}
