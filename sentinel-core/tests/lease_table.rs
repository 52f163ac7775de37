//! One test per row of the lease state machine (DESIGN §3, lease keyspace).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sentinel_core::lease::transition;
use sentinel_core::{
    Acquisition, EventKind, FencingToken, Grant, LeaseCommand as L, LeaseOutcome, LeaseRequest,
    LeaseSlot, LeaseStep, ManualClock, OwnerId, RecordId, RejectReason, RequestId, Timestamp, Ttl,
};

fn id() -> RecordId {
    RecordId::parse("ns", "report").unwrap()
}

fn at(ms: u64) -> Timestamp {
    ManualClock::START.saturating_add(Duration::from_millis(ms))
}

fn request(who: &str) -> LeaseRequest {
    LeaseRequest {
        owner: OwnerId::new(who).unwrap(),
        ttl: Ttl::with_hard(Duration::from_millis(1_000), Duration::from_millis(3_000)).unwrap(),
        request_id: RequestId::random(),
    }
}

fn step(slot: &LeaseSlot, command: L, now: Timestamp) -> LeaseStep {
    transition(&id(), slot, &command, now)
}

fn acquired(slot: &LeaseSlot, who: &str, now: Timestamp) -> (LeaseSlot, Grant) {
    let s = step(slot, L::Acquire(request(who)), now);
    let Ok(LeaseOutcome::Acquire(Acquisition::Acquired(grant))) = s.outcome else {
        panic!("{:?}", s.outcome)
    };
    assert_eq!(s.event.expect("logged").kind, EventKind::LeaseAcquired);
    (s.slot.expect("written"), grant)
}

#[test]
fn acquire_of_a_free_lease_grants_a_token() {
    let (slot, grant) = acquired(&LeaseSlot::default(), "a", at(0));
    assert_eq!(grant.lease_expires_at, at(1_000));
    assert_eq!(grant.hard_expires_at, at(3_000));
    assert_eq!(slot.record.unwrap().token, grant.token);
}

#[test]
fn acquire_of_a_held_lease_names_the_holder() {
    let (slot, grant) = acquired(&LeaseSlot::default(), "a", at(0));
    let s = step(&slot, L::Acquire(request("b")), at(999));
    assert_eq!(
        s.outcome,
        Ok(LeaseOutcome::Acquire(Acquisition::Held {
            owner: OwnerId::new("a").unwrap(),
            token: grant.token,
            lease_expires_at: at(1_000),
        }))
    );
    assert_eq!((s.slot, s.event), (None, None));
}

#[test]
fn acquire_of_an_expired_lease_grants_a_higher_token() {
    let (slot, first) = acquired(&LeaseSlot::default(), "a", at(0));
    let (_, second) = acquired(&slot, "b", at(1_000));
    assert!(second.token > first.token);
}

#[test]
fn a_retried_acquire_adopts_its_own_lease() {
    let req = request("a");
    let first = step(&LeaseSlot::default(), L::Acquire(req.clone()), at(0));
    let slot = first.slot.clone().unwrap();
    let retry = step(&slot, L::Acquire(req), at(10));
    assert_eq!(retry.outcome, first.outcome);
    assert_eq!((retry.slot, retry.event), (None, None));
}

#[test]
fn renew_extends_a_live_lease_up_to_the_hard_ttl() {
    let (slot, grant) = acquired(&LeaseSlot::default(), "a", at(0));
    let token = grant.token;
    let s = step(&slot, L::Renew { token }, at(500));
    assert_eq!(
        s.outcome,
        Ok(LeaseOutcome::Renewed {
            lease_expires_at: at(1_500)
        })
    );
    assert_eq!(s.event, None);
    let mut slot = s.slot.unwrap();
    for now in [1_400, 2_300, 2_900] {
        let s = step(&slot, L::Renew { token }, at(now));
        assert_eq!(
            s.outcome,
            Ok(LeaseOutcome::Renewed {
                lease_expires_at: at((now + 1_000).min(3_000))
            })
        );
        slot = s.slot.unwrap_or(slot);
    }
    let s = step(&slot, L::Renew { token }, at(3_000));
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::Expired);
}

#[test]
fn renew_never_revives_and_refuses_stale_tokens() {
    let (slot, grant) = acquired(&LeaseSlot::default(), "a", at(0));
    let s = step(&slot, L::Renew { token: grant.token }, at(1_000));
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::Expired);
    let stale = FencingToken::new(grant.token.get() - 1).unwrap();
    let s = step(&slot, L::Renew { token: stale }, at(10));
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::Fenced);
    let s = step(&LeaseSlot::default(), L::Renew { token: stale }, at(10));
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::NotFound);
}

#[test]
fn release_frees_the_lease_and_keeps_the_token() {
    let (slot, grant) = acquired(&LeaseSlot::default(), "a", at(0));
    let s = step(&slot, L::Release { token: grant.token }, at(10));
    assert_eq!(s.outcome, Ok(LeaseOutcome::Released));
    assert_eq!(s.event.unwrap().kind, EventKind::LeaseReleased);
    let slot = s.slot.unwrap();
    assert_eq!(
        (slot.record.is_none(), slot.last_token),
        (true, Some(grant.token))
    );
    let (_, next) = acquired(&slot, "b", at(0));
    assert!(
        next.token > grant.token,
        "tokens keep increasing after release, whatever the clock"
    );
}

#[test]
fn release_with_a_stale_token_is_fenced() {
    let (slot, first) = acquired(&LeaseSlot::default(), "a", at(0));
    let (slot, _) = acquired(&slot, "b", at(1_000));
    let s = step(&slot, L::Release { token: first.token }, at(1_001));
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::Fenced);
    assert_eq!((s.slot, s.event), (None, None));
    let s = step(
        &LeaseSlot::default(),
        L::Release { token: first.token },
        at(1_001),
    );
    assert_eq!(s.outcome.unwrap_err().reason, RejectReason::NotFound);
}
