//! One test per row of the execution state machine (DESIGN §3), on the pure transition function.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;

use sentinel_core::execution::transition;
use sentinel_core::{
    ClaimOutcome, ClaimRequest, Disposition, EventKind, ExecutionCommand as C, ExecutionOutcome,
    ExecutionSlot, ExecutionState, ExecutionStep, FencingToken, Fingerprint, Grant, ManualClock,
    OwnerId, RecordId, RejectReason, RequestId, Timestamp, Ttl,
};

const TTL_MS: u64 = 1_000;
const HARD_MS: u64 = 5_000;

fn id() -> RecordId {
    RecordId::parse("ns", "payment-1").unwrap()
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).unwrap()
}

/// The instant `ms` milliseconds after the test epoch.
fn at(ms: u64) -> Timestamp {
    ManualClock::START.saturating_add(Duration::from_millis(ms))
}

fn request(who: &str, start: bool) -> ClaimRequest {
    ClaimRequest {
        owner: owner(who),
        ttl: Ttl::with_hard(
            Duration::from_millis(TTL_MS),
            Duration::from_millis(HARD_MS),
        )
        .unwrap(),
        start,
        request_id: RequestId::random(),
        fingerprint: None,
    }
}

fn step(slot: &ExecutionSlot, command: C, now: Timestamp) -> ExecutionStep {
    transition(&id(), slot, &command, now)
}

/// Applies a step that must succeed and returns the new slot (unchanged if the step changed nothing).
fn ok(slot: &ExecutionSlot, command: C, now: Timestamp) -> (ExecutionSlot, ExecutionOutcome) {
    let s = step(slot, command, now);
    let outcome = s.outcome.clone().expect("the command should be accepted");
    (s.slot.unwrap_or_else(|| slot.clone()), outcome)
}

fn rejected(slot: &ExecutionSlot, command: C, now: Timestamp) -> RejectReason {
    let s = step(slot, command, now);
    assert_eq!(s.slot, None, "a rejected command changes nothing");
    let rejection = s.outcome.expect_err("the command should be refused");
    // Every refusal names the record's current state and token (DESIGN §3).
    let current = slot.record.as_ref();
    assert_eq!(
        (rejection.state, rejection.token),
        (current.map(|r| r.state), current.map(|r| r.token)),
        "{rejection:?}"
    );
    rejection.reason
}

/// A slot claimed at t=0 by `a`, started or not, and its token.
fn claimed(start: bool) -> (ExecutionSlot, FencingToken) {
    let (slot, outcome) = ok(
        &ExecutionSlot::default(),
        C::Claim(request("a", start)),
        at(0),
    );
    let ExecutionOutcome::Claim(ClaimOutcome::Acquired(grant)) = outcome else {
        panic!("expected a grant, got {outcome:?}")
    };
    (slot, grant.token)
}

fn state(slot: &ExecutionSlot) -> ExecutionState {
    slot.record.as_ref().expect("a record").state
}

fn completed() -> (ExecutionSlot, FencingToken) {
    let (slot, token) = claimed(true);
    let (slot, _) = ok(
        &slot,
        C::Complete {
            token,
            result: json!({"receipt": 1}),
        },
        at(10),
    );
    (slot, token)
}

fn reconciling() -> (ExecutionSlot, FencingToken) {
    let (slot, _) = claimed(true);
    let (slot, outcome) = ok(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS));
    let ExecutionOutcome::Reconciling { token } = outcome else {
        panic!("{outcome:?}")
    };
    (slot, token)
}

#[test]
fn claim_on_no_record_grants_a_new_token_and_logs_claimed() {
    let s = step(
        &ExecutionSlot::default(),
        C::Claim(request("a", false)),
        at(0),
    );
    let grant = Grant {
        token: FencingToken::new(at(0).as_micros()).unwrap(),
        lease_expires_at: at(TTL_MS),
        hard_expires_at: at(HARD_MS),
    };
    assert_eq!(
        s.outcome,
        Ok(ExecutionOutcome::Claim(ClaimOutcome::Acquired(grant)))
    );
    let record = s.slot.unwrap().record.unwrap();
    assert_eq!(record.state, ExecutionState::Claimed);
    assert_eq!(record.owner, owner("a"));
    let event = s.event.unwrap();
    assert_eq!(
        (event.kind, event.token, event.state),
        (
            EventKind::Claimed,
            grant.token,
            Some(ExecutionState::Claimed)
        )
    );
}

#[test]
fn fused_claim_goes_straight_to_executing() {
    let (slot, _) = claimed(true);
    assert_eq!(state(&slot), ExecutionState::Executing);
}

#[test]
fn claim_of_an_expired_claim_grants_a_higher_token() {
    let (slot, first) = claimed(false);
    let (slot, outcome) = ok(&slot, C::Claim(request("b", true)), at(TTL_MS));
    let ExecutionOutcome::Claim(ClaimOutcome::Acquired(grant)) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(grant.token > first);
    assert_eq!(slot.record.unwrap().owner, owner("b"));
}

#[test]
fn claim_of_a_live_execution_is_busy() {
    for start in [false, true] {
        let (slot, token) = claimed(start);
        let s = step(&slot, C::Claim(request("b", true)), at(TTL_MS - 1));
        let expected_state = if start {
            ExecutionState::Executing
        } else {
            ExecutionState::Claimed
        };
        assert_eq!(
            s.outcome,
            Ok(ExecutionOutcome::Claim(ClaimOutcome::Busy {
                state: expected_state,
                owner: owner("a"),
                token,
                lease_expires_at: at(TTL_MS),
            }))
        );
        assert_eq!(
            (s.slot, s.event),
            (None, None),
            "reads change and log nothing"
        );
    }
}

#[test]
fn claim_of_an_expired_execution_is_uncertain() {
    let (slot, token) = claimed(true);
    let s = step(&slot, C::Claim(request("b", true)), at(TTL_MS));
    assert_eq!(
        s.outcome,
        Ok(ExecutionOutcome::Claim(ClaimOutcome::Uncertain {
            owner: owner("a"),
            token,
            expired_at: at(TTL_MS),
        }))
    );
    assert_eq!((s.slot, s.event), (None, None), "a read, not logged");
    // What `list` filters and operators see: uncertain from the instant the lease ends, and
    // only for an execution that started.
    let record = slot.record.as_ref().unwrap();
    assert!(!record.is_uncertain(at(TTL_MS - 1)));
    assert!(record.is_uncertain(at(TTL_MS)));
    let (claim, _) = claimed(false);
    assert!(!claim.record.as_ref().unwrap().is_uncertain(at(TTL_MS)));
}

#[test]
fn claim_of_a_completed_record_returns_its_result() {
    let (slot, token) = completed();
    let s = step(&slot, C::Claim(request("b", true)), at(HARD_MS * 10));
    assert_eq!(
        s.outcome,
        Ok(ExecutionOutcome::Claim(ClaimOutcome::Completed {
            token,
            result: json!({"receipt": 1}),
        }))
    );
    assert_eq!(s.event, None);
}

#[test]
fn claim_of_a_reconciling_record_says_so() {
    let (slot, token) = reconciling();
    let s = step(&slot, C::Claim(request("b", true)), at(TTL_MS * 3));
    assert_eq!(
        s.outcome,
        Ok(ExecutionOutcome::Claim(ClaimOutcome::Reconciling {
            owner: owner("op"),
            token
        }))
    );
    assert_eq!((s.slot, s.event), (None, None), "a read, not logged");
}

#[test]
fn start_moves_a_live_claim_to_executing_and_renews() {
    let (slot, token) = claimed(false);
    let s = step(&slot, C::Start { token }, at(400));
    assert_eq!(
        s.outcome,
        Ok(ExecutionOutcome::Started {
            lease_expires_at: at(1_400)
        })
    );
    assert_eq!(s.event.unwrap().kind, EventKind::Started);
    assert_eq!(state(&s.slot.unwrap()), ExecutionState::Executing);
}

#[test]
fn start_is_refused_when_fenced_expired_or_in_the_wrong_state() {
    let (slot, token) = claimed(false);
    let stale = FencingToken::new(token.get() - 1).unwrap();
    assert_eq!(
        rejected(&slot, C::Start { token: stale }, at(1)),
        RejectReason::Fenced
    );
    assert_eq!(
        rejected(&slot, C::Start { token }, at(TTL_MS)),
        RejectReason::Expired
    );
    let (done, token) = completed();
    assert_eq!(
        rejected(&done, C::Start { token }, at(20)),
        RejectReason::WrongState
    );
    assert_eq!(
        rejected(&ExecutionSlot::default(), C::Start { token }, at(0)),
        RejectReason::NotFound
    );
}

#[test]
fn heartbeat_renews_to_now_plus_ttl_capped_by_the_hard_ttl() {
    for start in [false, true] {
        let (slot, token) = claimed(start);
        assert_eq!(
            step(&slot, C::Heartbeat { token }, at(900)).event,
            None,
            "heartbeats are not logged"
        );
        let mut slot = slot;
        for now in [900, 1_800, 2_700, 3_600, 4_500, 4_900] {
            let (next, outcome) = ok(&slot, C::Heartbeat { token }, at(now));
            let expected = (now + TTL_MS).min(HARD_MS);
            assert_eq!(
                outcome,
                ExecutionOutcome::Renewed {
                    lease_expires_at: at(expected)
                }
            );
            slot = next;
        }
        assert_eq!(
            rejected(&slot, C::Heartbeat { token }, at(HARD_MS)),
            RejectReason::Expired
        );
    }
}

#[test]
fn heartbeat_never_revives_an_expired_lease() {
    let (slot, token) = claimed(true);
    assert_eq!(
        rejected(&slot, C::Heartbeat { token }, at(TTL_MS)),
        RejectReason::Expired
    );
    let (slot, _) = ok(&slot, C::Heartbeat { token }, at(999));
    assert_eq!(
        rejected(&slot, C::Heartbeat { token }, at(1_999)),
        RejectReason::Expired
    );
    let stale = FencingToken::new(token.get() + 1).unwrap();
    assert_eq!(
        rejected(&slot, C::Heartbeat { token: stale }, at(1)),
        RejectReason::Fenced
    );
}

#[test]
fn complete_records_the_result_even_after_expiry_while_the_token_is_current() {
    let (slot, token) = claimed(true);
    let s = step(
        &slot,
        C::Complete {
            token,
            result: json!("ok"),
        },
        at(HARD_MS * 2),
    );
    assert_eq!(s.outcome, Ok(ExecutionOutcome::Completed));
    let record = s.slot.unwrap().record.unwrap();
    assert_eq!(
        (record.state, record.result),
        (ExecutionState::Completed, Some(json!("ok")))
    );
    assert_eq!(s.event.unwrap().kind, EventKind::Completed);
}

#[test]
fn a_repeated_completion_succeeds_without_a_second_event() {
    let (slot, token) = completed();
    let s = step(
        &slot,
        C::Complete {
            token,
            result: json!({"receipt": 1}),
        },
        at(20),
    );
    assert_eq!(
        (s.outcome, s.slot, s.event),
        (Ok(ExecutionOutcome::Completed), None, None)
    );
    let s = step(
        &slot,
        C::Complete {
            token,
            result: json!({"receipt": 2}),
        },
        at(20),
    );
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::WrongState);
    assert_eq!(s.event.unwrap().kind, EventKind::CompletionRejected);
}

#[test]
fn a_stale_completion_is_fenced_and_logged_with_its_result() {
    let (slot, _) = claimed(true);
    let old = slot.record.as_ref().unwrap().token;
    let (slot, _) = ok(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS));
    let s = step(
        &slot,
        C::Complete {
            token: old,
            result: json!("late"),
        },
        at(TTL_MS + 5),
    );
    let rejection = s.outcome.unwrap_err();
    assert_eq!(rejection.reason, RejectReason::Fenced);
    assert_eq!(rejection.state, Some(ExecutionState::Reconciling));
    assert_eq!(s.slot, None);
    let event = s.event.unwrap();
    assert_eq!(
        (event.kind, event.token),
        (EventKind::CompletionRejected, old)
    );
    assert_eq!(event.detail.unwrap()["result"], json!("late"));
}

#[test]
fn complete_of_a_claim_that_never_started_is_refused() {
    let (slot, token) = claimed(false);
    assert_eq!(
        rejected(
            &slot,
            C::Complete {
                token,
                result: json!(1)
            },
            at(5)
        ),
        RejectReason::WrongState
    );
}

#[test]
fn abort_not_applied_makes_the_key_claimable_at_once() {
    for start in [false, true] {
        let (slot, token) = claimed(start);
        let (slot, outcome) = ok(
            &slot,
            C::Abort {
                token,
                disposition: Disposition::NotApplied,
            },
            at(100),
        );
        assert_eq!(outcome, ExecutionOutcome::Aborted);
        let record = slot.record.clone().unwrap();
        assert_eq!(
            (record.state, record.lease_expires_at),
            (ExecutionState::Claimed, at(100))
        );
        let (_, outcome) = ok(&slot, C::Claim(request("b", true)), at(100));
        assert!(
            matches!(outcome, ExecutionOutcome::Claim(ClaimOutcome::Acquired(g)) if g.token > token)
        );
        // Sent again (its reply was lost): nothing more to change or log.
        let again = step(
            &slot,
            C::Abort {
                token,
                disposition: Disposition::NotApplied,
            },
            at(101),
        );
        assert_eq!(
            (again.outcome, again.slot, again.event),
            (Ok(ExecutionOutcome::Aborted), None, None)
        );
    }
    // After the lease ran out, the worker that still holds the current token may say so too:
    // the key becomes claimable, and the lease is not extended.
    let (slot, token) = claimed(true);
    let s = step(
        &slot,
        C::Abort {
            token,
            disposition: Disposition::NotApplied,
        },
        at(TTL_MS + 500),
    );
    assert_eq!(s.outcome, Ok(ExecutionOutcome::Aborted));
    assert_eq!(s.event.map(|e| e.kind), Some(EventKind::Aborted));
    let record = s.slot.unwrap().record.unwrap();
    assert_eq!(
        (record.state, record.lease_expires_at),
        (ExecutionState::Claimed, at(TTL_MS))
    );
}

#[test]
fn abort_uncertain_expires_the_lease_so_observers_see_uncertain() {
    let (slot, token) = claimed(true);
    let s = step(
        &slot,
        C::Abort {
            token,
            disposition: Disposition::Uncertain,
        },
        at(100),
    );
    let slot = s.slot.unwrap();
    assert_eq!(
        s.event.unwrap().detail.unwrap()["disposition"],
        json!("uncertain")
    );
    let (_, outcome) = ok(&slot, C::Claim(request("b", true)), at(100));
    assert!(matches!(
        outcome,
        ExecutionOutcome::Claim(ClaimOutcome::Uncertain { .. })
    ));
    // Sent again: nothing more to change or log.
    let again = step(
        &slot,
        C::Abort {
            token,
            disposition: Disposition::Uncertain,
        },
        at(101),
    );
    assert_eq!(
        (again.outcome, again.slot, again.event),
        (Ok(ExecutionOutcome::Aborted), None, None)
    );
}

#[test]
fn abort_is_refused_when_fenced_or_in_the_wrong_state() {
    let (slot, token) = claimed(false);
    assert_eq!(
        rejected(
            &slot,
            C::Abort {
                token,
                disposition: Disposition::Uncertain
            },
            at(1)
        ),
        RejectReason::WrongState
    );
    let stale = FencingToken::new(token.get() - 1).unwrap();
    assert_eq!(
        rejected(
            &slot,
            C::Abort {
                token: stale,
                disposition: Disposition::NotApplied
            },
            at(1)
        ),
        RejectReason::Fenced
    );
    let (done, token) = completed();
    assert_eq!(
        rejected(
            &done,
            C::Abort {
                token,
                disposition: Disposition::NotApplied
            },
            at(20)
        ),
        RejectReason::WrongState
    );
}

#[test]
fn reconcile_fences_an_expired_execution_with_a_new_token() {
    let (slot, token) = claimed(true);
    let s = step(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS));
    let Ok(ExecutionOutcome::Reconciling { token: new }) = s.outcome else {
        panic!("{:?}", s.outcome)
    };
    assert!(new > token);
    let record = s.slot.unwrap().record.unwrap();
    assert_eq!(
        (record.state, record.token, record.owner),
        (ExecutionState::Reconciling, new, owner("op"))
    );
    assert_eq!(s.event.unwrap().kind, EventKind::Reconciling);
}

#[test]
fn reconcile_of_a_live_execution_is_refused() {
    let (slot, _) = claimed(true);
    assert_eq!(
        rejected(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS - 1)),
        RejectReason::StillAlive
    );
    let (slot, _) = claimed(false);
    assert_eq!(
        rejected(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS)),
        RejectReason::WrongState
    );
    let (slot, _) = completed();
    assert_eq!(
        rejected(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS)),
        RejectReason::WrongState
    );
    let (slot, _) = reconciling();
    assert_eq!(
        rejected(&slot, C::Reconcile { owner: owner("op") }, at(TTL_MS * 2)),
        RejectReason::WrongState
    );
}

#[test]
fn force_complete_resolves_a_reconciling_record() {
    let (slot, token) = reconciling();
    let s = step(
        &slot,
        C::ForceComplete {
            owner: owner("op"),
            result: json!("found"),
        },
        at(2_000),
    );
    assert_eq!(s.outcome, Ok(ExecutionOutcome::ForceCompleted));
    assert_eq!(s.event.unwrap().kind, EventKind::ForceCompleted);
    let slot = s.slot.unwrap();
    let (_, outcome) = ok(&slot, C::Claim(request("b", true)), at(3_000));
    assert_eq!(
        outcome,
        ExecutionOutcome::Claim(ClaimOutcome::Completed {
            token,
            result: json!("found")
        })
    );
    let (executing, _) = claimed(true);
    assert_eq!(
        rejected(
            &executing,
            C::ForceComplete {
                owner: owner("op"),
                result: json!(1)
            },
            at(TTL_MS)
        ),
        RejectReason::WrongState
    );
}

#[test]
fn a_repeated_force_complete_succeeds_without_a_second_event() {
    // The operator's reply was lost and the command is sent again: the same result is accepted
    // and changes nothing; another result is refused, the record keeps the first.
    let (slot, _) = reconciling();
    let force = |result| C::ForceComplete {
        owner: owner("op"),
        result,
    };
    let (slot, _) = ok(&slot, force(json!("found")), at(2_000));
    let s = step(&slot, force(json!("found")), at(2_500));
    assert_eq!(
        (s.outcome, s.slot, s.event),
        (Ok(ExecutionOutcome::ForceCompleted), None, None)
    );
    assert_eq!(
        rejected(&slot, force(json!("other")), at(2_500)),
        RejectReason::WrongState
    );
    let (completed, _) = completed();
    assert_eq!(
        rejected(&completed, force(json!("found")), at(2_500)),
        RejectReason::WrongState,
        "a record completed with another result keeps it"
    );
}

#[test]
fn reset_returns_a_reconciling_record_to_claimed_so_it_runs_again() {
    let (slot, token) = reconciling();
    let (slot, outcome) = ok(&slot, C::ResetToClaimed { owner: owner("op") }, at(2_000));
    assert_eq!(outcome, ExecutionOutcome::Reset);
    assert_eq!(state(&slot), ExecutionState::Claimed);
    let (_, outcome) = ok(&slot, C::Claim(request("b", true)), at(2_000));
    assert!(
        matches!(outcome, ExecutionOutcome::Claim(ClaimOutcome::Acquired(g)) if g.token > token)
    );
    let (executing, _) = claimed(true);
    assert_eq!(
        rejected(
            &executing,
            C::ResetToClaimed { owner: owner("op") },
            at(TTL_MS)
        ),
        RejectReason::WrongState
    );
}

#[test]
fn purge_removes_an_old_completed_record_and_keeps_its_token() {
    let (slot, token) = completed();
    assert_eq!(
        rejected(
            &slot,
            C::Purge {
                completed_before: at(9)
            },
            at(50)
        ),
        RejectReason::WrongState
    );
    let s = step(
        &slot,
        C::Purge {
            completed_before: at(10),
        },
        at(50),
    );
    assert_eq!(s.outcome, Ok(ExecutionOutcome::Purged));
    assert!(s.clears_history);
    assert_eq!(s.event.unwrap().kind, EventKind::Purged);
    let slot = s.slot.unwrap();
    assert_eq!(
        (slot.record.is_none(), slot.last_token),
        (true, Some(token))
    );
    // Even with the clock far behind, the next token is above the purged one.
    let (_, outcome) = ok(&slot, C::Claim(request("b", true)), at(0));
    assert!(
        matches!(outcome, ExecutionOutcome::Claim(ClaimOutcome::Acquired(g)) if g.token > token)
    );
}

#[test]
fn purge_never_touches_uncertain_or_reconciling_records() {
    let (slot, _) = claimed(true);
    assert_eq!(
        rejected(
            &slot,
            C::Purge {
                completed_before: at(HARD_MS * 9)
            },
            at(HARD_MS * 10)
        ),
        RejectReason::WrongState
    );
    let (slot, _) = reconciling();
    assert_eq!(
        rejected(
            &slot,
            C::Purge {
                completed_before: at(HARD_MS * 9)
            },
            at(HARD_MS * 10)
        ),
        RejectReason::WrongState
    );
}

#[test]
fn a_retried_claim_adopts_its_own_grant() {
    let req = request("a", true);
    let (slot, first) = ok(&ExecutionSlot::default(), C::Claim(req.clone()), at(0));
    let s = step(&slot, C::Claim(req.clone()), at(300));
    assert_eq!(
        s.outcome,
        Ok(first.clone()),
        "the same request id gets the same grant back"
    );
    assert_eq!((s.slot, s.event), (None, None));
    // If the lease ran out before the retry arrived, nothing ran under it: grant anew.
    let (_, late) = ok(&slot, C::Claim(req), at(TTL_MS + 1));
    let (
        ExecutionOutcome::Claim(ClaimOutcome::Acquired(a)),
        ExecutionOutcome::Claim(ClaimOutcome::Acquired(b)),
    ) = (first, late)
    else {
        panic!("both grants")
    };
    assert!(b.token > a.token);
}

#[test]
fn a_different_fingerprint_is_refused_with_the_stored_one() {
    let mut req = request("a", true);
    req.fingerprint = Some(Fingerprint::new("sha256:aaa").unwrap());
    let (slot, _) = ok(&ExecutionSlot::default(), C::Claim(req.clone()), at(0));
    let (slot, _) = ok(
        &slot,
        C::Complete {
            token: slot.record.as_ref().unwrap().token,
            result: json!(1),
        },
        at(1),
    );
    let mut other = request("b", true);
    other.fingerprint = Some(Fingerprint::new("sha256:bbb").unwrap());
    let s = step(&slot, C::Claim(other), at(2));
    let rejection = s.outcome.unwrap_err();
    assert_eq!(
        rejection.reason,
        RejectReason::FingerprintMismatch {
            stored: req.fingerprint.clone()
        }
    );
    assert_eq!(rejection.state, Some(ExecutionState::Completed));
    let mut same = request("c", true);
    same.fingerprint = req.fingerprint;
    assert!(matches!(
        step(&slot, C::Claim(same), at(3)).outcome,
        Ok(ExecutionOutcome::Claim(ClaimOutcome::Completed { .. }))
    ));
}

#[test]
fn commands_on_a_missing_record_are_not_found() {
    let empty = ExecutionSlot::default();
    let token = FencingToken::new(1).unwrap();
    for command in [
        C::Heartbeat { token },
        C::Complete {
            token,
            result: json!(1),
        },
        C::Abort {
            token,
            disposition: Disposition::Uncertain,
        },
        C::Reconcile { owner: owner("op") },
        C::ForceComplete {
            owner: owner("op"),
            result: json!(1),
        },
        C::ResetToClaimed { owner: owner("op") },
        C::Purge {
            completed_before: at(1),
        },
    ] {
        let s = step(&empty, command, at(0));
        assert_eq!(s.outcome.unwrap_err().reason, RejectReason::NotFound);
        assert_eq!((s.slot, s.event), (None, None));
    }
}
