//! The invariants, checked from the stores' own data: Sentinel's records and histories, the
//! ledger, the reconciler's decisions, and the workers' journals.
//!
//! 1. No key's side effect applied by two generations, unless the key was reported uncertain and
//!    an operator reset it although the ledger showed the earlier write.
//! 2. Every write by a fenced-out generation was rejected: no write lands in the ledger with a
//!    token below a reconciliation's token unless the reconciler saw it when it decided.
//! 3. Every completed result survives a restart.
//! 4. Every key ends completed, or uncertain and listed by the reconciliation queue; none stuck
//!    claimed-and-alive, none silently lost; every completion describes a write that happened.
//! 5. Tokens strictly increase per key in the event log.
//!
//! Plus the lost-reply checks: a dropped grant is adopted by the retry (no phantom execution), a
//! dropped completion is accepted again and the key stays completed; and every uncertain
//! generation is explained by a worker that ran it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use sentinel_core::{Event, EventKind, ExecutionRecord, ExecutionState};

use crate::backend::LedgerKey;
use crate::journal::Entry;

/// What the reconciler decided for one uncertain execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The key.
    pub key: String,
    /// The reconciliation's token.
    pub token: i64,
    /// The ledger's applied tokens when it decided.
    pub seen: Vec<i64>,
    /// `force_complete` or `reset`.
    pub action: Action,
    /// During the run (`true`) or in the final pass.
    pub online: bool,
}

/// How an uncertain execution was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The ledger had the write: completed with it.
    ForceComplete,
    /// The ledger had none: run again.
    Reset,
}

/// One check that completed results survive a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestartCheck {
    /// `clean`, `crash`, or why none was possible.
    pub kind: String,
    /// Completed records read before the restart.
    pub checked: u64,
    /// Keys whose completed result was gone or different after it.
    pub lost: Vec<String>,
}

/// The state of every key after the workers stopped and every lease expired, before the final
/// reconciliation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Checkpoint {
    /// Completed keys.
    pub completed: u64,
    /// Uncertain keys (executing, lease expired).
    pub uncertain: u64,
    /// Of those, listed by `list(ListFilter::uncertain())`.
    pub listed: u64,
    /// Keys claimed or executing and still alive (nobody is running any more).
    pub stuck_alive: Vec<String>,
    /// Keys left in `reconciling`.
    pub stuck_reconciling: Vec<String>,
    /// Keys claimable (or without a record) with no delivery left: silently lost.
    pub lost: Vec<String>,
    /// Uncertain keys missing from the reconciliation queue.
    pub unlisted: Vec<String>,
}

/// One violation, with the key it concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant (1–5), or 6 for the lost-reply checks.
    pub invariant: u8,
    /// The key.
    pub key: String,
    /// What is wrong.
    pub detail: String,
}

/// The figures of the audit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    /// Keys audited.
    pub keys: u64,
    /// Keys whose payment was applied exactly once.
    pub applied_once: u64,
    /// Keys applied by two generations after an explicit reset (allowed by invariant 1).
    pub applied_twice_after_reset: u64,
    /// Ledger write attempts, and what became of them.
    pub writes: Writes,
    /// Restart checks.
    pub restarts: Vec<RestartCheck>,
    /// End states.
    pub checkpoint: Checkpoint,
    /// Keys completed after the final reconciliation.
    pub completed_at_end: u64,
    /// History events read, and reconciliations among them.
    pub events: u64,
    /// Uncertain executions and how they were resolved.
    pub uncertain: Uncertain,
    /// The lost-reply figures.
    pub lost_replies: LostReplies,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
}

/// Ledger write attempts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Writes {
    /// Attempts recorded by the ledger.
    pub attempts: u64,
    /// Applied.
    pub applied: u64,
    /// Refused by the fence (stale token, or a lease already expired).
    pub rejected: u64,
    /// Neither (the worker died or lost its connection before the ledger answered).
    pub lost: u64,
    /// Writes the ledger holds with a token below a later reconciliation's token.
    pub below_a_reconciliation: u64,
    /// Of those, applied after the reconciliation fenced them out (must be 0).
    pub after_the_fence: u64,
}

/// Uncertain executions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Uncertain {
    /// Keys that were uncertain at some point.
    pub keys: u64,
    /// Uncertain generations reconciled.
    pub generations: u64,
    /// Resolved with the ledger's write.
    pub force_completed: u64,
    /// Reset and run again (the ledger had no write).
    pub reset: u64,
    /// Why each generation was uncertain.
    pub causes: BTreeMap<String, u64>,
}

/// Lost replies.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LostReplies {
    /// Claim replies dropped after the claim was applied.
    pub claims_dropped: u64,
    /// Of those, grants.
    pub grants_dropped: u64,
    /// Grants the retry adopted.
    pub grants_adopted: u64,
    /// Grants whose retry came after their lease had lapsed and a newer generation took over
    /// (the process paused in between): too late to adopt, reconciled like any lapsed claim.
    pub grants_lapsed: u64,
    /// Dropped claims never retried (the worker died first).
    pub claims_not_retried: u64,
    /// Claims that failed on a real connection (proxy, killed connection, restart) and were
    /// retried: whether the failed try was applied is unknown to the client.
    pub claims_failed_in_transit: u64,
    /// Completion replies dropped after the completion was applied.
    pub completions_dropped: u64,
    /// Repeats the store accepted.
    pub completions_accepted_again: u64,
}

fn violation(out: &mut Vec<Violation>, invariant: u8, key: &str, detail: String) {
    out.push(Violation {
        invariant,
        key: key.to_owned(),
        detail,
    });
}

/// The worker name in an owner id: `chaos-w1.2-4711` (a process) or `chaos-w1.2` (memory).
fn worker_of(owner: &str) -> String {
    let name = owner.strip_prefix("chaos-").unwrap_or(owner);
    match name.rsplit_once('-') {
        Some((worker, pid)) if pid.chars().all(|c| c.is_ascii_digit()) => worker.to_owned(),
        _ => name.to_owned(),
    }
}

fn result_token(result: Option<&Value>) -> Option<i64> {
    result?.get("token")?.as_i64()
}

/// Everything the audit reads.
#[derive(Debug)]
pub struct Input<'a> {
    /// Every key the run delivered.
    pub keys: &'a [String],
    /// Sentinel's records after the final reconciliation.
    pub records: &'a BTreeMap<String, ExecutionRecord>,
    /// Each key's history.
    pub histories: &'a BTreeMap<String, Vec<Event>>,
    /// The ledger.
    pub ledger: &'a BTreeMap<String, LedgerKey>,
    /// Every journal entry.
    pub journal: &'a [Entry],
    /// The reconciler's decisions.
    pub decisions: &'a [Decision],
    /// The end-state checkpoint.
    pub checkpoint: &'a Checkpoint,
    /// The restart checks.
    pub restarts: &'a [RestartCheck],
}

/// Checks every invariant.
pub fn audit(input: &Input<'_>) -> Audit {
    let mut out = Audit {
        keys: input.keys.len() as u64,
        checkpoint: input.checkpoint.clone(),
        restarts: input.restarts.to_vec(),
        ..Audit::default()
    };
    let mut v = Vec::new();
    let empty = LedgerKey::default();
    let mut decisions: HashMap<&str, Vec<&Decision>> = HashMap::new();
    for d in input.decisions {
        decisions.entry(d.key.as_str()).or_default().push(d);
    }

    // 1. No double application.
    for key in input.keys {
        let ledger = input.ledger.get(key).unwrap_or(&empty);
        let tokens: Vec<i64> = ledger.accepted.keys().copied().collect();
        if tokens.len() == 1 {
            out.applied_once += 1;
        }
        for pair in tokens.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let reset_knowingly = decisions.get(key.as_str()).is_some_and(|ds| {
                ds.iter().any(|d| {
                    d.action == Action::Reset && d.seen.contains(&a) && a < d.token && d.token < b
                })
            });
            if reset_knowingly {
                out.applied_twice_after_reset += 1;
            } else {
                violation(
                    &mut v,
                    1,
                    key,
                    format!("the payment was applied by two generations, tokens {a} and {b}"),
                );
            }
        }
    }

    // 2. Every stale write rejected.
    for ledger in input.ledger.values() {
        out.writes.attempts += ledger.attempts;
        out.writes.applied += ledger.applied;
        out.writes.rejected += ledger.rejected;
    }
    out.writes.lost = out
        .writes
        .attempts
        .saturating_sub(out.writes.applied + out.writes.rejected);
    for d in input.decisions {
        let ledger = input.ledger.get(&d.key).unwrap_or(&empty);
        for &t in ledger.accepted.keys().filter(|&&t| t < d.token) {
            out.writes.below_a_reconciliation += 1;
            if !d.seen.contains(&t) {
                out.writes.after_the_fence += 1;
                violation(
                    &mut v,
                    2,
                    &d.key,
                    format!(
                        "a write with token {t} was applied after reconciliation {} fenced it out",
                        d.token
                    ),
                );
            }
        }
    }

    // 3. Completed results survive restarts.
    for check in input.restarts {
        for key in &check.lost {
            violation(
                &mut v,
                3,
                key,
                format!(
                    "its completed result did not survive a {} restart",
                    check.kind
                ),
            );
        }
    }

    // 4. Every key ends completed or listed as uncertain; nothing stuck, nothing lost.
    let cp = input.checkpoint;
    for key in &cp.stuck_alive {
        violation(
            &mut v,
            4,
            key,
            "still claimed and alive after every worker stopped".into(),
        );
    }
    for key in &cp.stuck_reconciling {
        violation(&mut v, 4, key, "left in reconciling".into());
    }
    for key in &cp.lost {
        violation(
            &mut v,
            4,
            key,
            "claimable with no delivery left: silently lost".into(),
        );
    }
    for key in &cp.unlisted {
        violation(
            &mut v,
            4,
            key,
            "uncertain but not in the reconciliation queue".into(),
        );
    }
    let executed: BTreeSet<(&str, i64)> = input
        .journal
        .iter()
        .filter_map(|e| match e {
            Entry::Done {
                key,
                kind,
                token: Some(t),
                ..
            } if kind == "executed" => Some((key.as_str(), *t)),
            _ => None,
        })
        .collect();
    for key in input.keys {
        let ledger = input.ledger.get(key).unwrap_or(&empty);
        match input.records.get(key) {
            Some(r) if r.state == ExecutionState::Completed => {
                out.completed_at_end += 1;
                match result_token(r.result.as_ref()) {
                    Some(t) if ledger.accepted.contains_key(&t) => {}
                    other => violation(
                        &mut v,
                        4,
                        key,
                        format!(
                            "completed with a result (token {other:?}) that the ledger does not hold"
                        ),
                    ),
                }
            }
            Some(r) => violation(
                &mut v,
                4,
                key,
                format!("ends {} after the final reconciliation", r.state.as_str()),
            ),
            None => violation(&mut v, 4, key, "has no record: never ran".into()),
        }
    }
    for (key, token) in &executed {
        let ok = input.records.get(*key).is_some_and(|r| {
            r.state == ExecutionState::Completed && result_token(r.result.as_ref()) == Some(*token)
        });
        if !ok {
            violation(
                &mut v,
                4,
                key,
                format!(
                    "once() reported it executed under token {token}, but the record disagrees"
                ),
            );
        }
    }

    // 5. Tokens strictly increasing per key.
    for key in input.keys {
        let Some(events) = input.histories.get(key) else {
            continue;
        };
        out.events += events.len() as u64;
        let mut last_grant: Option<i64> = None;
        let mut last_id: Option<i64> = None;
        for e in events {
            if last_id.is_some_and(|id| e.id <= id) {
                violation(
                    &mut v,
                    5,
                    key,
                    format!("event ids out of order at {}", e.id),
                );
            }
            last_id = Some(e.id);
            let t = e.token.get();
            if matches!(e.kind, EventKind::Claimed | EventKind::Reconciling) {
                if last_grant.is_some_and(|g| t <= g) {
                    violation(
                        &mut v,
                        5,
                        key,
                        format!(
                            "{} token {t} does not exceed the previous grant {last_grant:?}",
                            e.kind
                        ),
                    );
                }
                last_grant = Some(t);
            } else if last_grant.is_none_or(|g| t > g) {
                violation(
                    &mut v,
                    5,
                    key,
                    format!(
                        "{} carries token {t}, above every grant so far ({last_grant:?})",
                        e.kind
                    ),
                );
            }
        }
    }

    // Uncertain generations and their causes.
    let mut runs: HashMap<(&str, i64), &str> = HashMap::new();
    let mut kills: HashMap<(&str, i64), ()> = HashMap::new();
    let mut killed_workers: BTreeSet<&str> = BTreeSet::new();
    let mut done: HashMap<(&str, i64), (&str, bool)> = HashMap::new();
    // Keys whose claiming client reported an error after its retries.
    let mut errors: BTreeSet<&str> = BTreeSet::new();
    // Grants whose reply was lost and whose retry found a newer generation: the retry reached
    // the store only after the grant's lease had lapsed (its process paused, say), too late to
    // adopt it, since authority never revives.
    let mut late_retries: BTreeSet<(&str, i64)> = BTreeSet::new();
    // Claims that failed on a real connection and whose retry found this newer generation: the
    // failed one may have been granted and lapsed before the retry came.
    let mut transit_retries: Vec<(&str, i64)> = Vec::new();
    for e in input.journal {
        match e {
            Entry::ClaimRetried {
                key,
                granted: Some(g),
                token: Some(t),
                adopted: false,
                ..
            } if t > g => {
                late_retries.insert((key.as_str(), *g));
            }
            Entry::ClaimRetried {
                key,
                token: Some(t),
                in_transit: true,
                ..
            } => transit_retries.push((key.as_str(), *t)),
            Entry::Run { key, token, worker } => {
                runs.insert((key.as_str(), *token), worker.as_str());
            }
            Entry::Killing { key, token, worker } => {
                kills.insert((key.as_str(), *token), ());
                killed_workers.insert(worker.as_str());
            }
            // Only these outcomes carry the caller's own generation's token; the others name
            // another worker's (in progress, uncertain, reconciling) or the completed one.
            Entry::Done {
                key,
                kind,
                token: Some(t),
                uncertain,
                ..
            } if matches!(
                kind.as_str(),
                "executed" | "failed" | "panicked" | "completion_failed"
            ) =>
            {
                done.insert((key.as_str(), *t), (kind.as_str(), *uncertain));
            }
            Entry::Done {
                key, token: None, ..
            } => {
                errors.insert(key.as_str());
            }
            _ => {}
        }
    }
    for key in input.keys {
        let Some(events) = input.histories.get(key) else {
            continue;
        };
        let mut generation: Option<(i64, Option<String>)> = None;
        let mut uncertain_here = false;
        for e in events {
            match e.kind {
                EventKind::Claimed => {
                    generation = Some((
                        e.token.get(),
                        e.owner.as_ref().map(|o| worker_of(o.as_str())),
                    ));
                }
                EventKind::Reconciling => {
                    uncertain_here = true;
                    out.uncertain.generations += 1;
                    let Some((t, claimer)) = generation.clone() else {
                        violation(&mut v, 6, key, "reconciled with no claim before it".into());
                        continue;
                    };
                    let k = (key.as_str(), t);
                    let cause = if kills.contains_key(&k) {
                        "worker killed mid-side-effect".to_owned()
                    } else if let Some((kind, uncertain)) = done.get(&k) {
                        if *uncertain {
                            format!("its worker reported {kind}")
                        } else {
                            format!("lease expired under a live worker (it then reported {kind})")
                        }
                    } else if let Some(worker) = runs.get(&k) {
                        if killed_workers.contains(worker) {
                            "its process was killed during another task's side effect".to_owned()
                        } else {
                            "its worker vanished mid-execution".to_owned()
                        }
                    } else if late_retries.contains(&k)
                        || transit_retries
                            .iter()
                            .any(|&(rk, rt)| rk == key.as_str() && rt > t)
                    {
                        "its claim's reply was lost; the retry came after the lease lapsed"
                            .to_owned()
                    } else if claimer
                        .as_deref()
                        .is_some_and(|w| killed_workers.contains(w))
                    {
                        "its process was killed before the work began".to_owned()
                    } else if errors.contains(key.as_str()) {
                        out.notes.push(format!(
                            "{key}: generation {t} was granted but never ran; the claiming client \
                             reported an error after its retries"
                        ));
                        "granted, never ran (client reported an error)".to_owned()
                    } else {
                        violation(
                            &mut v,
                            6,
                            key,
                            format!(
                                "phantom uncertain execution: generation {t} was granted but never ran"
                            ),
                        );
                        "phantom".to_owned()
                    };
                    *out.uncertain.causes.entry(cause).or_default() += 1;
                }
                _ => {}
            }
        }
        if uncertain_here {
            out.uncertain.keys += 1;
        }
    }
    for d in input.decisions {
        match d.action {
            Action::ForceComplete => out.uncertain.force_completed += 1,
            Action::Reset => out.uncertain.reset += 1,
        }
    }

    // Lost replies.
    let mut dropped_claims: HashMap<&str, bool> = HashMap::new();
    for e in input.journal {
        match e {
            Entry::LostClaim {
                request, granted, ..
            } => {
                out.lost_replies.claims_dropped += 1;
                if granted.is_some() {
                    out.lost_replies.grants_dropped += 1;
                }
                dropped_claims.insert(request.as_str(), false);
            }
            Entry::ClaimRetried {
                in_transit: true, ..
            } => out.lost_replies.claims_failed_in_transit += 1,
            Entry::ClaimRetried {
                key,
                request,
                granted,
                answer,
                token,
                adopted,
                ..
            } => {
                dropped_claims.insert(request.as_str(), true);
                if *adopted {
                    out.lost_replies.grants_adopted += 1;
                } else if let (Some(g), Some(t)) = (granted, token)
                    && t > g
                {
                    out.lost_replies.grants_lapsed += 1;
                    out.notes.push(format!(
                        "{key}: a claim granted token {g}, its reply was lost, and the retry reached \
                         the store only after that lease lapsed and generation {t} took over ({answer})"
                    ));
                } else if let Some(g) = granted {
                    violation(
                        &mut v,
                        6,
                        key,
                        format!(
                            "a claim granted token {g} but its reply was lost, and the retry got \
                             {answer} {token:?} instead of adopting it"
                        ),
                    );
                }
            }
            Entry::LostComplete { key, token } => {
                out.lost_replies.completions_dropped += 1;
                let record = input.records.get(key);
                let completed = record.is_some_and(|r| {
                    r.state == ExecutionState::Completed && r.token.get() == *token
                });
                let logged = input.histories.get(key).map_or(0, |events| {
                    events
                        .iter()
                        .filter(|e| e.kind == EventKind::Completed && e.token.get() == *token)
                        .count()
                });
                if !completed {
                    violation(
                        &mut v,
                        6,
                        key,
                        format!(
                            "its completion under token {token} was applied (reply lost) but the key does not end completed by it"
                        ),
                    );
                } else if logged != 1 {
                    violation(
                        &mut v,
                        6,
                        key,
                        format!("its completion under token {token} is logged {logged} times"),
                    );
                }
            }
            Entry::CompleteRetried {
                key,
                token,
                ok,
                detail,
            } => {
                if *ok {
                    out.lost_replies.completions_accepted_again += 1;
                } else {
                    violation(
                        &mut v,
                        6,
                        key,
                        format!(
                            "a repeated completion under token {token} was refused: {detail:?}"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    out.lost_replies.claims_not_retried =
        dropped_claims.values().filter(|retried| !**retried).count() as u64;
    out.violations = v;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::{FencingToken, OwnerId, Timestamp};

    fn event(id: i64, kind: EventKind, token: i64) -> Event {
        Event {
            id,
            kind,
            token: FencingToken::new(token).unwrap(),
            owner: None,
            state: None,
            at: Timestamp::from_micros(id),
            detail: None,
        }
    }

    fn completed(key: &str, token: i64) -> ExecutionRecord {
        let now = Timestamp::from_micros(1);
        ExecutionRecord {
            namespace: sentinel_core::Namespace::new("ns").unwrap(),
            key: sentinel_core::Key::new(key).unwrap(),
            state: ExecutionState::Completed,
            owner: OwnerId::new("o").unwrap(),
            token: FencingToken::new(token).unwrap(),
            request_id: None,
            lease_expires_at: now,
            hard_expires_at: now,
            ttl: sentinel_core::Ttl::new(std::time::Duration::from_secs(1)).unwrap(),
            result: Some(serde_json::json!({ "token": token })),
            fingerprint: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn ledger(tokens: &[i64]) -> LedgerKey {
        LedgerKey {
            accepted: tokens.iter().map(|t| (*t, "w".to_owned())).collect(),
            attempts: tokens.len() as u64,
            rejected: 0,
            applied: tokens.len() as u64,
        }
    }

    #[derive(Clone)]
    struct Case {
        keys: Vec<String>,
        records: BTreeMap<String, ExecutionRecord>,
        histories: BTreeMap<String, Vec<Event>>,
        ledger: BTreeMap<String, LedgerKey>,
        journal: Vec<Entry>,
        decisions: Vec<Decision>,
        checkpoint: Checkpoint,
        restarts: Vec<RestartCheck>,
    }

    impl Case {
        fn clean() -> Case {
            let k = "k".to_owned();
            Case {
                keys: vec![k.clone()],
                records: [(k.clone(), completed("k", 10))].into(),
                histories: [(
                    k.clone(),
                    vec![
                        event(1, EventKind::Claimed, 10),
                        event(2, EventKind::Completed, 10),
                    ],
                )]
                .into(),
                ledger: [(k.clone(), ledger(&[10]))].into(),
                journal: vec![Entry::Run {
                    key: k,
                    token: 10,
                    worker: "w0.0".into(),
                }],
                decisions: vec![],
                checkpoint: Checkpoint::default(),
                restarts: vec![],
            }
        }

        /// The clean case with `k` reconciled from generation 10 (token 20) and reset, then run
        /// again and completed under 30.
        fn reconciled() -> Case {
            let mut case = Case::clean();
            case.ledger.insert("k".into(), ledger(&[30]));
            case.records.insert("k".into(), completed("k", 30));
            let mut claimed = event(1, EventKind::Claimed, 10);
            claimed.owner = Some(OwnerId::new("chaos-w3.0-4711").unwrap());
            case.histories.insert(
                "k".into(),
                vec![
                    claimed,
                    event(2, EventKind::Reconciling, 20),
                    event(3, EventKind::Reset, 20),
                    event(4, EventKind::Claimed, 30),
                    event(5, EventKind::Completed, 30),
                ],
            );
            case.journal = vec![Entry::Run {
                key: "k".into(),
                token: 30,
                worker: "w1.0".into(),
            }];
            case.decisions.push(Decision {
                key: "k".into(),
                token: 20,
                seen: vec![],
                action: Action::Reset,
                online: true,
            });
            case
        }

        /// `reconciled`, with generation 10 killed mid-write: its write is in the ledger, and the
        /// reconciler saw it before resetting the key.
        fn reset_knowingly() -> Case {
            let mut case = Case::reconciled();
            case.ledger.insert("k".into(), ledger(&[10, 30]));
            case.decisions[0].seen = vec![10];
            case.journal.push(killing("k", 10, "w3.0"));
            case
        }

        fn run(&self) -> Audit {
            audit(&Input {
                keys: &self.keys,
                records: &self.records,
                histories: &self.histories,
                ledger: &self.ledger,
                journal: &self.journal,
                decisions: &self.decisions,
                checkpoint: &self.checkpoint,
                restarts: &self.restarts,
            })
        }
    }

    #[test]
    fn names_workers_from_owners() {
        assert_eq!(worker_of("chaos-w1.2-4711"), "w1.2");
        assert_eq!(worker_of("chaos-w0.0"), "w0.0");
        assert_eq!(worker_of("chaos-sweeper"), "sweeper");
        // Only an all-digit suffix is a process id.
        assert_eq!(worker_of("chaos-w1.2-x9"), "w1.2-x9");
    }

    #[test]
    fn a_clean_run_passes() {
        let mut case = Case::clean();
        // The worker reported the execution the record shows.
        case.journal.push(done("k", "executed", Some(10), false));
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.applied_once, 1);
    }

    #[test]
    fn catches_a_double_application() {
        let mut case = Case::clean();
        case.ledger.insert("k".into(), ledger(&[10, 11]));
        let audit = case.run();
        assert!(
            audit.violations.iter().any(|v| v.invariant == 1),
            "{:?}",
            audit.violations
        );
    }

    #[test]
    fn allows_a_second_application_only_after_a_knowing_reset() {
        let mut case = Case::reset_knowingly();
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.applied_twice_after_reset, 1);

        // A reset explains the second application only if it came strictly between the two.
        for token in [10, 30] {
            let mut at_the_edge = Case {
                decisions: vec![Decision {
                    token,
                    ..case.decisions[0].clone()
                }],
                ..case.clone()
            };
            at_the_edge.decisions[0].seen = vec![10];
            let audit = at_the_edge.run();
            assert!(
                audit.violations.iter().any(|v| v.invariant == 1),
                "a reset under token {token}: {:?}",
                audit.violations
            );
        }

        // The same ledger, but the reconciler never saw the first write: it landed after the
        // fence. Invariants 1 and 2 both catch it.
        case.decisions[0].seen.clear();
        let audit = case.run();
        let broken: BTreeSet<u8> = audit.violations.iter().map(|v| v.invariant).collect();
        assert!(
            broken.contains(&1) && broken.contains(&2),
            "{:?}",
            audit.violations
        );
        assert_eq!(
            (
                audit.writes.below_a_reconciliation,
                audit.writes.after_the_fence
            ),
            (1, 1)
        );
    }

    #[test]
    fn catches_phantoms_and_tokens_going_backwards() {
        let mut case = Case::clean();
        case.journal.clear();
        case.histories.insert(
            "k".into(),
            vec![
                event(1, EventKind::Claimed, 10),
                event(2, EventKind::Reconciling, 9),
                event(3, EventKind::ForceCompleted, 9),
            ],
        );
        let audit = case.run();
        let broken: BTreeSet<u8> = audit.violations.iter().map(|v| v.invariant).collect();
        assert!(
            broken.contains(&5) && broken.contains(&6),
            "{:?}",
            audit.violations
        );
    }

    #[test]
    fn a_grant_whose_retry_came_after_its_lease_is_not_a_phantom() {
        let mut case = Case::clean();
        case.ledger.insert("k".into(), ledger(&[20]));
        case.records.insert("k".into(), completed("k", 20));
        case.histories.insert(
            "k".into(),
            vec![
                event(1, EventKind::Claimed, 10),
                event(2, EventKind::Reconciling, 15),
                event(3, EventKind::Reset, 15),
                event(4, EventKind::Claimed, 20),
                event(5, EventKind::Completed, 20),
            ],
        );
        case.journal = vec![
            Entry::LostClaim {
                key: "k".into(),
                request: "1".into(),
                granted: Some(10),
            },
            Entry::ClaimRetried {
                key: "k".into(),
                request: "1".into(),
                granted: Some(10),
                answer: "completed".into(),
                token: Some(20),
                adopted: false,
                in_transit: false,
            },
            Entry::Run {
                key: "k".into(),
                token: 20,
                worker: "w1.0".into(),
            },
        ];
        case.decisions.push(Decision {
            key: "k".into(),
            token: 15,
            seen: vec![],
            action: Action::Reset,
            online: true,
        });
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.lost_replies.grants_lapsed, 1);

        // The same, lost on a real connection: the client never learned the token.
        case.journal[0] = Entry::QueueError {
            op: "none".into(),
            detail: String::new(),
        };
        case.journal[1] = Entry::ClaimRetried {
            key: "k".into(),
            request: "1".into(),
            granted: None,
            answer: "completed".into(),
            token: Some(20),
            adopted: false,
            in_transit: true,
        };
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.lost_replies.claims_failed_in_transit, 1);

        // Without that retry, generation 10 is a phantom.
        case.journal.remove(1);
        assert!(case.run().violations.iter().any(|v| v.invariant == 6));
    }

    #[test]
    fn checks_lost_replies() {
        let mut case = Case::clean();
        case.journal.push(Entry::ClaimRetried {
            key: "k".into(),
            request: "1".into(),
            granted: Some(10),
            answer: "busy".into(),
            token: Some(10),
            adopted: false,
            in_transit: false,
        });
        case.journal.push(Entry::LostComplete {
            key: "k".into(),
            token: 10,
        });
        let audit = case.run();
        assert_eq!(audit.violations.len(), 1, "{:?}", audit.violations);
        assert_eq!(audit.lost_replies.completions_dropped, 1);
    }

    fn done(key: &str, kind: &str, token: Option<i64>, uncertain: bool) -> Entry {
        Entry::Done {
            key: key.into(),
            kind: kind.into(),
            uncertain,
            token,
            us: 1,
            detail: None,
        }
    }

    /// A claim retried after its reply was lost (`in_transit`: on a real connection, the client
    /// never learned whether it was granted) whose retry found generation `token`, not adopted.
    fn retried(key: &str, granted: Option<i64>, token: i64, in_transit: bool) -> Entry {
        Entry::ClaimRetried {
            key: key.into(),
            request: "1".into(),
            granted,
            answer: "busy".into(),
            token: Some(token),
            adopted: false,
            in_transit,
        }
    }

    fn killing(key: &str, token: i64, worker: &str) -> Entry {
        Entry::Killing {
            key: key.into(),
            token,
            worker: worker.into(),
        }
    }

    #[test]
    fn reports_each_violation_with_its_invariant() {
        type Break = fn(&mut Case);
        let rows: [(&str, Break, u8, &str); 17] = [
            (
                "a result lost in a restart",
                |c| {
                    c.restarts.push(RestartCheck {
                        kind: "crash".into(),
                        checked: 1,
                        lost: vec!["k".into()],
                    })
                },
                3,
                "did not survive a crash restart",
            ),
            (
                "a key stuck alive",
                |c| c.checkpoint.stuck_alive.push("k".into()),
                4,
                "still claimed and alive",
            ),
            (
                "a key stuck reconciling",
                |c| c.checkpoint.stuck_reconciling.push("k".into()),
                4,
                "left in reconciling",
            ),
            (
                "a key lost",
                |c| c.checkpoint.lost.push("k".into()),
                4,
                "silently lost",
            ),
            (
                "an uncertain key not listed",
                |c| c.checkpoint.unlisted.push("k".into()),
                4,
                "not in the reconciliation queue",
            ),
            (
                "a result the ledger does not hold",
                |c| {
                    c.records.insert("k".into(), completed("k", 11));
                },
                4,
                "(token Some(11)) that the ledger does not hold",
            ),
            (
                "a key not completed",
                |c| {
                    c.records.get_mut("k").unwrap().state = ExecutionState::Executing;
                },
                4,
                "ends executing after the final reconciliation",
            ),
            (
                "a key without a record",
                |c| {
                    c.records.remove("k");
                },
                4,
                "has no record",
            ),
            (
                "an execution the record does not show",
                |c| {
                    c.journal.push(done("k", "executed", Some(11), false));
                },
                4,
                "reported it executed under token 11",
            ),
            (
                "event ids out of order",
                |c| {
                    c.histories.get_mut("k").unwrap()[1].id = 1;
                },
                5,
                "event ids out of order at 1",
            ),
            (
                "a grant that repeats the token before it",
                |c| {
                    let events = c.histories.get_mut("k").unwrap();
                    events.insert(1, event(2, EventKind::Claimed, 10));
                    events[2].id = 3;
                },
                5,
                "token 10 does not exceed the previous grant Some(10)",
            ),
            (
                "an event above every grant",
                |c| {
                    c.histories.get_mut("k").unwrap()[1].token = FencingToken::new(11).unwrap();
                },
                5,
                "carries token 11, above every grant so far (Some(10))",
            ),
            (
                "an event before any grant",
                |c| {
                    c.histories.get_mut("k").unwrap().remove(0);
                },
                5,
                "carries token 10, above every grant so far (None)",
            ),
            (
                "a reconcile with no claim before it",
                |c| {
                    c.histories
                        .insert("k".into(), vec![event(1, EventKind::Reconciling, 10)]);
                },
                6,
                "reconciled with no claim before it",
            ),
            (
                "a dropped completion that did not stick",
                |c| {
                    c.journal.push(Entry::LostComplete {
                        key: "k".into(),
                        token: 11,
                    });
                },
                6,
                "under token 11 was applied (reply lost) but the key does not end completed",
            ),
            (
                "a dropped completion logged twice",
                |c| {
                    c.journal.push(Entry::LostComplete {
                        key: "k".into(),
                        token: 10,
                    });
                    c.histories
                        .get_mut("k")
                        .unwrap()
                        .push(event(3, EventKind::Completed, 10));
                },
                6,
                "under token 10 is logged 2 times",
            ),
            (
                "a repeated completion refused",
                |c| {
                    c.journal.push(Entry::CompleteRetried {
                        key: "k".into(),
                        token: 10,
                        ok: false,
                        detail: Some("wrong_state".into()),
                    });
                },
                6,
                "a repeated completion under token 10 was refused",
            ),
        ];
        for (what, break_it, invariant, words) in rows {
            let mut case = Case::clean();
            break_it(&mut case);
            let audit = case.run();
            assert!(
                matches!(audit.violations.as_slice(), [v] if v.invariant == invariant
                    && v.key == "k" && v.detail.contains(words)),
                "{what}: expected one violation of invariant {invariant} saying {words:?}, got {:?}",
                audit.violations
            );
        }
    }

    #[test]
    fn names_the_cause_of_each_uncertain_generation() {
        type Explain = fn(&mut Case);
        let rows: [(Explain, &str); 8] = [
            (
                |c| c.journal.push(killing("k", 10, "w3.0")),
                "worker killed mid-side-effect",
            ),
            (
                |c| c.journal.push(done("k", "failed", Some(10), true)),
                "its worker reported failed",
            ),
            (
                |c| c.journal.push(done("k", "panicked", Some(10), false)),
                "lease expired under a live worker (it then reported panicked)",
            ),
            (
                |c| {
                    c.journal.push(Entry::Run {
                        key: "k".into(),
                        token: 10,
                        worker: "w2.0".into(),
                    });
                    c.journal.push(killing("other", 5, "w2.0"));
                },
                "its process was killed during another task's side effect",
            ),
            (
                |c| {
                    c.journal.push(Entry::Run {
                        key: "k".into(),
                        token: 10,
                        worker: "w2.0".into(),
                    })
                },
                "its worker vanished mid-execution",
            ),
            (
                |c| c.journal.push(retried("k", None, 30, true)),
                "its claim's reply was lost; the retry came after the lease lapsed",
            ),
            (
                |c| c.journal.push(killing("other", 5, "w3.0")),
                "its process was killed before the work began",
            ),
            (
                |c| c.journal.push(done("k", "error", None, false)),
                "granted, never ran (client reported an error)",
            ),
        ];
        for (explain, cause) in rows {
            let mut case = Case::reconciled();
            explain(&mut case);
            let audit = case.run();
            assert!(
                audit.violations.is_empty(),
                "{cause}: {:?}",
                audit.violations
            );
            assert_eq!(
                audit.uncertain.causes,
                BTreeMap::from([(cause.to_owned(), 1)]),
                "{cause}"
            );
            assert_eq!((audit.uncertain.keys, audit.uncertain.generations), (1, 1));
            assert_eq!(
                (audit.uncertain.reset, audit.uncertain.force_completed),
                (1, 0)
            );
        }
    }

    #[test]
    fn explains_no_uncertain_generation_by_another_generation_or_key() {
        type Mislead = fn(&mut Case);
        let rows: [(&str, Mislead); 4] = [
            ("a claim lost in transit on another key", |c| {
                c.journal.push(retried("other", None, 30, true))
            }),
            (
                "a claim lost in transit whose retry found generation 10 itself",
                |c| c.journal.push(retried("k", None, 10, true)),
            ),
            ("a lost grant whose retry found that same generation", |c| {
                c.journal.push(retried("k", Some(10), 10, false))
            }),
            ("another worker's generation, reported in progress", |c| {
                c.journal.push(done("k", "in_progress", Some(10), false))
            }),
        ];
        for (what, mislead) in rows {
            let mut case = Case::reconciled();
            mislead(&mut case);
            let audit = case.run();
            assert!(
                audit
                    .violations
                    .iter()
                    .any(|v| v.invariant == 6 && v.detail.contains("phantom")),
                "{what}: generation 10 is still a phantom: {:?}",
                audit.violations
            );
        }
    }

    #[test]
    fn counts_what_it_read() {
        // `k`: generation 10 killed mid-write, its write seen by the reconciler, reset and run
        // again under 30. `idle`: one write rejected, one lost with its process, a claim reply
        // dropped and adopted, two dropped and never retried, a completion reply dropped and
        // accepted again, and a reconciler's decision that saw its write.
        let mut case = Case::reset_knowingly();
        case.keys.push("idle".into());
        case.records.insert("idle".into(), completed("idle", 7));
        case.ledger.insert(
            "idle".into(),
            LedgerKey {
                attempts: 4,
                rejected: 1,
                ..ledger(&[7])
            },
        );
        case.histories.insert(
            "idle".into(),
            vec![
                event(6, EventKind::Claimed, 7),
                event(7, EventKind::Completed, 7),
            ],
        );
        case.decisions.push(Decision {
            key: "idle".into(),
            token: 8,
            seen: vec![7],
            action: Action::ForceComplete,
            online: false,
        });
        case.journal.extend([
            Entry::LostClaim {
                key: "idle".into(),
                request: "a".into(),
                granted: Some(7),
            },
            Entry::ClaimRetried {
                key: "idle".into(),
                request: "a".into(),
                granted: Some(7),
                answer: "acquired".into(),
                token: Some(7),
                adopted: true,
                in_transit: false,
            },
            Entry::LostClaim {
                key: "idle".into(),
                request: "b".into(),
                granted: None,
            },
            Entry::LostClaim {
                key: "idle".into(),
                request: "c".into(),
                granted: None,
            },
            Entry::LostComplete {
                key: "idle".into(),
                token: 7,
            },
            Entry::CompleteRetried {
                key: "idle".into(),
                token: 7,
                ok: true,
                detail: None,
            },
        ]);
        case.restarts.push(RestartCheck {
            kind: "clean".into(),
            checked: 2,
            lost: vec![],
        });
        case.checkpoint.completed = 2;
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(
            (audit.keys, audit.completed_at_end, audit.events),
            (2, 2, 7)
        );
        assert_eq!(
            (audit.applied_once, audit.applied_twice_after_reset),
            (1, 1)
        );
        let w = &audit.writes;
        assert_eq!((w.attempts, w.applied, w.rejected, w.lost), (6, 3, 1, 2));
        assert_eq!((w.below_a_reconciliation, w.after_the_fence), (2, 0));
        let u = &audit.uncertain;
        assert_eq!(
            (u.keys, u.generations, u.reset, u.force_completed),
            (1, 1, 1, 1)
        );
        let l = &audit.lost_replies;
        assert_eq!(
            (l.claims_dropped, l.grants_dropped, l.grants_adopted),
            (3, 1, 1)
        );
        assert_eq!(
            (
                l.grants_lapsed,
                l.claims_not_retried,
                l.claims_failed_in_transit
            ),
            (0, 2, 0)
        );
        assert_eq!(
            (l.completions_dropped, l.completions_accepted_again),
            (1, 1)
        );
        assert_eq!(audit.restarts, case.restarts);
        assert_eq!(audit.checkpoint.completed, 2);
    }

    #[test]
    fn a_write_under_the_reconciliations_own_token_is_not_below_it() {
        let mut case = Case::clean();
        case.decisions.push(Decision {
            key: "k".into(),
            token: 10,
            seen: vec![],
            action: Action::ForceComplete,
            online: false,
        });
        let audit = case.run();
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.writes.below_a_reconciliation, 0);
    }
}
