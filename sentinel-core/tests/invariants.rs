//! Property tests of the state machine's invariants over random command sequences: tokens strictly
//! increase per key, authority never revives, `lease <= hard`, `completed` only leaves by purge,
//! and reconcile always issues a new token.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use sentinel_core::{
    Acquisition, ClaimOutcome, ClaimRequest, Disposition, ExecutionCommand as C, ExecutionOutcome,
    ExecutionSlot, ExecutionState, FencingToken, LeaseCommand as L, LeaseOutcome, LeaseRequest,
    LeaseSlot, ManualClock, OwnerId, RecordId, RequestId, Timestamp, Ttl, execution, lease,
};

#[derive(Clone, Debug)]
enum Op {
    Claim {
        owner: u8,
        start: bool,
        request: u8,
    },
    Start(u8),
    Heartbeat(u8),
    Complete(u8, u8),
    Abort(u8, bool),
    Reconcile,
    ForceComplete(u8),
    Reset,
    Purge(u16),
    Advance(u16),
    /// Moves the clock exactly to the current lease expiry.
    ToExpiry,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, any::<bool>(), 0u8..4).prop_map(|(owner, start, request)| Op::Claim { owner, start, request }),
        2 => (0u8..6).prop_map(Op::Start),
        3 => (0u8..6).prop_map(Op::Heartbeat),
        2 => (0u8..6, 0u8..3).prop_map(|(t, r)| Op::Complete(t, r)),
        2 => (0u8..6, any::<bool>()).prop_map(|(t, n)| Op::Abort(t, n)),
        1 => Just(Op::Reconcile),
        1 => (0u8..3).prop_map(Op::ForceComplete),
        1 => Just(Op::Reset),
        1 => (0u16..3000).prop_map(Op::Purge),
        3 => (0u16..1500).prop_map(Op::Advance),
        1 => Just(Op::ToExpiry),
    ]
}

fn owner(n: u8) -> OwnerId {
    OwnerId::new(format!("w{n}")).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The token a command refers to: one of the issued tokens (most often a recent one), or one never
/// issued.
fn pick(tokens: &[FencingToken], n: u8) -> FencingToken {
    let n = usize::from(n);
    if n < tokens.len() {
        tokens[tokens.len() - 1 - n]
    } else {
        FencingToken::new(7).unwrap()
    }
}

struct Checker {
    issued: Vec<FencingToken>,
    /// For each token: the instant its lease was first seen expired.
    expired_at: HashMap<FencingToken, Timestamp>,
}

impl Checker {
    fn new() -> Self {
        Checker {
            issued: Vec::new(),
            expired_at: HashMap::new(),
        }
    }

    fn issue(&mut self, token: FencingToken) {
        if let Some(last) = self.issued.last() {
            assert!(token > *last, "token {token} issued after {last}");
        }
        self.issued.push(token);
    }

    fn observe(&mut self, token: FencingToken, lease_expires_at: Timestamp, now: Timestamp) {
        if now >= lease_expires_at {
            self.expired_at.entry(token).or_insert(now);
        }
    }

    fn renewed(&self, token: FencingToken) {
        assert!(
            !self.expired_at.contains_key(&token),
            "token {token} renewed after its lease expired"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn execution_invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
        let id = RecordId::parse("ns", "k").unwrap();
        let clock = ManualClock::new();
        let mut slot = ExecutionSlot::default();
        let mut check = Checker::new();
        let ttl = Ttl::with_hard(ms(1_000), ms(2_500)).unwrap();
        for op in ops {
            let now = clock.now();
            if let Some(r) = &slot.record {
                check.observe(r.token, r.lease_expires_at, now);
            }
            let command = match op {
                Op::Advance(n) => { clock.advance(ms(u64::from(n))); continue; }
                Op::ToExpiry => {
                    if let Some(r) = &slot.record && r.lease_expires_at > now { clock.set(r.lease_expires_at); }
                    continue;
                }
                Op::Claim { owner: o, start, request } => C::Claim(ClaimRequest {
                    owner: owner(o), ttl, start,
                    request_id: RequestId::from_u128(u128::from(request)),
                    fingerprint: None,
                }),
                Op::Start(t) => C::Start { token: pick(&check.issued, t) },
                Op::Heartbeat(t) => C::Heartbeat { token: pick(&check.issued, t) },
                Op::Complete(t, r) => C::Complete { token: pick(&check.issued, t), result: json!(r) },
                Op::Abort(t, not_applied) => C::Abort {
                    token: pick(&check.issued, t),
                    disposition: if not_applied { Disposition::NotApplied } else { Disposition::Uncertain },
                },
                Op::Reconcile => C::Reconcile { owner: owner(9) },
                Op::ForceComplete(r) => C::ForceComplete { owner: owner(9), result: json!(r) },
                Op::Reset => C::ResetToClaimed { owner: owner(9) },
                Op::Purge(age) => C::Purge { completed_before: now.saturating_sub(ms(u64::from(age))) },
            };
            let before = slot.clone();
            let step = execution::transition(&id, &slot, &command, now);
            match (&command, &step.outcome) {
                (C::Claim(_), Ok(ExecutionOutcome::Claim(ClaimOutcome::Acquired(grant)))) if step.slot.is_some() => {
                    check.issue(grant.token);
                }
                (C::Reconcile { .. }, Ok(ExecutionOutcome::Reconciling { token })) => {
                    let old = before.record.as_ref().unwrap().token;
                    prop_assert!(*token > old, "reconcile must issue a new token");
                    check.issue(*token);
                }
                (C::Heartbeat { token } | C::Start { token }, Ok(_)) => check.renewed(*token),
                _ => {}
            }
            if step.outcome.is_err() {
                prop_assert!(step.slot.is_none(), "a rejection changed the record");
            }
            if let Some(next) = step.slot {
                slot = next;
            }
            if let Some(r) = &slot.record {
                prop_assert!(r.lease_expires_at <= r.hard_expires_at, "lease past hard: {r:?}");
                prop_assert_eq!(slot.last_token, Some(r.token));
            }
            if let Some(old) = before.record.as_ref().filter(|r| r.state == ExecutionState::Completed) {
                match &slot.record {
                    None => prop_assert!(matches!(command, C::Purge { .. }), "completed left by {command:?}"),
                    Some(r) => {
                        prop_assert_eq!(r.state, ExecutionState::Completed);
                        prop_assert_eq!(&r.result, &old.result);
                        prop_assert_eq!(r.token, old.token);
                    }
                }
            }
            if slot.record.is_none()
                && let Some(last) = check.issued.last() {
                    prop_assert_eq!(slot.last_token, Some(*last), "a purge must keep the last token");
                }
        }
    }

    #[test]
    fn lease_invariants_hold(ops in proptest::collection::vec((0u8..4, 0u8..4, 0u16..1500), 1..60)) {
        let id = RecordId::parse("ns", "k").unwrap();
        let clock = ManualClock::new();
        let mut slot = LeaseSlot::default();
        let mut check = Checker::new();
        let ttl = Ttl::with_hard(ms(1_000), ms(2_500)).unwrap();
        for (kind, arg, advance) in ops {
            let now = clock.now();
            if let Some(r) = &slot.record {
                check.observe(r.token, r.lease_expires_at, now);
            }
            let command = match kind {
                0 => L::Acquire(LeaseRequest { owner: owner(arg), ttl, request_id: RequestId::from_u128(u128::from(arg)) }),
                1 => L::Renew { token: pick(&check.issued, arg) },
                2 => L::Release { token: pick(&check.issued, arg) },
                _ => { clock.advance(ms(u64::from(advance))); continue; }
            };
            let step = lease::transition(&id, &slot, &command, now);
            match (&command, &step.outcome) {
                (L::Acquire(_), Ok(LeaseOutcome::Acquire(Acquisition::Acquired(g)))) if step.slot.is_some() => check.issue(g.token),
                (L::Renew { token }, Ok(_)) => check.renewed(*token),
                _ => {}
            }
            if step.outcome.is_err() {
                prop_assert!(step.slot.is_none());
            }
            if let Some(next) = step.slot {
                slot = next;
            }
            if let Some(r) = &slot.record {
                prop_assert!(r.lease_expires_at <= r.hard_expires_at);
            }
            prop_assert_eq!(slot.last_token, check.issued.last().copied());
        }
    }
}
